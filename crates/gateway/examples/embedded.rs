//! A custom socketioxide application that mounts Switchyard through the library API.
//!
//! It takes the gateway's own flags (flattened into its command line) and adds:
//! - an `echo` event on `/`: acks the argument back, and also emits `echo` with it;
//! - an `/hello` HTTP route;
//! - a `cluster` event on `/` running one socketioxide cluster operation, named by `op`, for
//!   the tests of the cluster adapter (with `--relay-urls` these span every gateway):
//!   `fetch_sockets` → `{ok, count, ids}`, `rooms` → `{ok, rooms}`, `ask_all` (`timeout_ms`) →
//!   `{ok, replies, acked}` (one reply per client on every gateway, a timeout counting as
//!   one), `join_all` / `leave_all` (`room`) → `{ok}` (every socket everywhere), and
//!   `disconnect_room` (`room`) → `{ok}`.
//!
//! Built-in `join` / `leave` / `publish`, admission, load reports and drain all come from
//! Switchyard; it prints the same `SWITCHYARD_READY http=... node=...` line, so tests spawn it
//! like the binary (`target/debug/examples/embedded`).
//!
//! ```text
//! cargo run -p switchyard-gateway --example embedded -- --listen 127.0.0.1:0 --allow-anonymous --placement-url ''
//! ```

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use socketioxide::{
    SocketIo, SocketIoBuilder,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef},
};
use socketioxide_core::adapter::DefinedAdapter;
use switchyard_common::{http_server::HttpListener, telemetry::TelemetryArgs};
use switchyard_gateway::{
    ClusterAdapter, Switchyard, config::GatewayArgs, payload::Payload, server,
};

#[derive(Debug, Parser)]
#[command(
    name = "embedded",
    about = "A custom Socket.IO app with Switchyard mounted"
)]
struct Args {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// The application's own connect handler: Switchyard has already admitted the socket.
async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    tracing::info!(sid = %s.id, "embedded app: client connected");
    s.on(
        "echo",
        async |s: SocketRef<A>, Data::<Payload>(msg), ack: AckSender<A>| {
            let _ = s.emit("echo", &msg);
            let _ = ack.send(&msg);
        },
    );
    s.on(
        "cluster",
        async |s: SocketRef<A>, io: SocketIo<A>, Data::<Value>(req), ack: AckSender<A>| {
            let res = cluster_op(&io, s.ns(), &req).await;
            let _ = ack.send(&res.unwrap_or_else(|e| json!({"ok": false, "error": e})));
        },
    );
}

/// Runs the cluster operation `req.op` on namespace `ns` (see the module docs).
async fn cluster_op<A: Adapter>(io: &SocketIo<A>, ns: &str, req: &Value) -> Result<Value, String> {
    let op = io.of(ns).ok_or("no such namespace")?;
    let room = req["room"].as_str().map(str::to_owned);
    let need_room = || room.clone().ok_or_else(|| "room missing".to_owned());
    match req["op"].as_str().unwrap_or_default() {
        "fetch_sockets" => {
            let sockets = op.fetch_sockets().await.map_err(|e| e.to_string())?;
            let ids: Vec<String> = sockets.iter().map(|s| s.data().id.to_string()).collect();
            Ok(json!({"ok": true, "count": ids.len(), "ids": ids}))
        }
        "rooms" => {
            let rooms = op.rooms().await.map_err(|e| e.to_string())?;
            Ok(json!({"ok": true, "rooms": rooms}))
        }
        "ask_all" => {
            let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(1000));
            let stream = op
                .timeout(timeout)
                .emit_with_ack::<_, Value>("question", &json!({"q": 1}))
                .await
                .map_err(|e| e.to_string())?;
            let replies: Vec<bool> = stream.map(|(_, r)| r.is_ok()).collect().await;
            let acked = replies.iter().filter(|ok| **ok).count();
            Ok(json!({"ok": true, "replies": replies.len(), "acked": acked}))
        }
        "join_all" => {
            op.join(need_room()?).await.map_err(|e| e.to_string())?;
            Ok(json!({"ok": true}))
        }
        "leave_all" => {
            op.leave(need_room()?).await.map_err(|e| e.to_string())?;
            Ok(json!({"ok": true}))
        }
        "disconnect_room" => {
            op.to(need_room()?)
                .disconnect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({"ok": true}))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = switchyard_common::telemetry::init("switchyard-embedded", &args.telemetry)?;
    let tls = args.gateway.tls.server.load()?;
    let listener = HttpListener::bind(
        args.gateway.listen,
        tls.as_ref(),
        &args.gateway.http,
        switchyard_gateway::metrics::HTTP_LISTENER,
    )
    .await?;
    let gateway = Switchyard::new(args.gateway.settings(listener.local_addr()?)?)?;
    let metrics = telemetry.metrics.clone();
    // With --relay-urls the cluster adapter (rooms span every gateway), else the local one.
    match gateway.cluster_state()? {
        Some(state) => {
            let builder = SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state);
            run(listener, gateway, builder, metrics).await
        }
        None => run(listener, gateway, SocketIo::builder(), metrics).await,
    }
}

async fn run<A: Adapter + DefinedAdapter>(
    listener: HttpListener,
    gateway: Switchyard,
    builder: SocketIoBuilder<A>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    use socketioxide_core::adapter::Spawnable;
    let (layer, io) = gateway.configure(builder).build_layer();
    // Our handler on "/", Switchyard-only on any other configured namespace.
    gateway.ns(&io, "/", on_connect::<A>).spawn();
    for ns in gateway.settings().namespaces.iter().filter(|n| *n != "/") {
        gateway.ns(&io, ns.clone(), async || {}).spawn();
    }
    let running = gateway.start(io.clone())?;

    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(async || "hello from the embedded app"),
        )
        .merge(gateway.ops_router(metrics))
        .layer(layer);
    server::serve(listener, app, &gateway, io, running).await
}
