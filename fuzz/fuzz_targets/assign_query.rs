//! Placement's `GET /v1/assign` over an in-memory ledger with one live gateway: the input is
//! the query string (and, after a newline, an `Authorization` header). Every request must be
//! answered 200 with a token or 400 / 503 with a JSON `error`, never a panic or a 500 (the rate
//! limit is off here; the property test in `assign.rs` covers 429).
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use libfuzzer_sys::fuzz_target;
use switchyard_common::assignment::TokenKey;
use switchyard_placement::assign::{Assigner, router};
use switchyard_placement::ledger::{Ledger, LedgerSettings, MemoryLedger, NodeRegistration};
use tower::ServiceExt;

struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
}

static APP: LazyLock<App> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let ledger = MemoryLedger::new(LedgerSettings {
        cluster: "fuzz".into(),
        reservation_ttl: Duration::from_millis(10),
        liveness: Duration::from_secs(24 * 3600),
    });
    rt.block_on(ledger.register(&NodeRegistration {
        node_id: "gw-1".into(),
        url: "http://127.0.0.1:1".into(),
        weight: 1,
        capacity: 0,
        namespaces: vec!["/".into(), "/chat".into()],
    }))
    .expect("registering the fuzz gateway");
    let assigner = Assigner::new(Arc::new(ledger), TokenKey::new(b"fuzz-secret"), 0);
    App {
        rt,
        router: router(Arc::new(assigner)),
    }
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (query, auth) = text.split_once('\n').unwrap_or((&text, ""));
    // What hyper would refuse before any handler runs is out of scope.
    let Ok(mut req) = http::Request::get(format!("/v1/assign?{query}"))
        .header(http::header::AUTHORIZATION, auth)
        .body(Body::empty())
    else {
        return;
    };
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
    let app = &*APP;
    let res = app
        .rt
        .block_on(app.router.clone().oneshot(req))
        .expect("the router is infallible");
    let status = res.status().as_u16();
    let body = app
        .rt
        .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
        .expect("reading a response body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert!(
        [200, 400, 503].contains(&status),
        "{query:?}: {status} {json}"
    );
    let field = if status == 200 { "token" } else { "error" };
    assert!(json[field].is_string(), "{query:?}: {status} {json}");
});
