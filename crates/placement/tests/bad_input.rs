//! Placement under bad input, as a real process: malformed and huge `/v1/assign` requests over
//! raw HTTP, and invalid, unauthenticated or undecodable gRPC calls. Every refusal is a clear
//! error (a 4xx with a JSON `error` once the request reaches the handler; a gRPC status), and
//! placement keeps serving good clients afterwards.
//!
//! Run `cargo build -p switchyard-placement -p switchyard-gateway --bins` first.

use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use prost::Message;
use switchyard_proto::{
    admin::v1::{
        ClusterStatsRequest, DrainNodeRequest, ListNodesRequest, RebalanceRequest,
        SetWeightRequest, UndrainNodeRequest, admin_client::AdminClient,
    },
    placement::v1::{
        AssignRequest, GatewayReport, Load, Register, gateway_report,
        placement_client::PlacementClient,
    },
};
use switchyard_testkit::wait::eventually;
use switchyard_testkit::{
    assign::assign,
    cluster::{Gateway, GatewayOpts, Placement, PlacementOpts, TEST_ADMIN_TOKEN},
    raw::{self, http_exchange},
};
use tonic::{Code, Request, transport::Channel};

const WAIT: Duration = Duration::from_secs(20);

/// Placement (in-memory ledger) with one real gateway registered, so a good assign answers 200.
async fn placement_with_a_gateway() -> anyhow::Result<(Placement, Gateway)> {
    let p = Placement::start(PlacementOpts::default())?;
    let gw = Gateway::start(GatewayOpts::new(&p, "gw-0"))?;
    eventually("gw-0 to become assignable", WAIT, async || {
        assign(p.http_url(), "/").await
    })
    .await?;
    Ok((p, gw))
}

/// Fails unless placement still runs and still assigns.
async fn still_serving(p: &Placement) -> anyhow::Result<()> {
    ensure!(
        p.try_status()?.is_none(),
        "placement exited: {}",
        p.log_tail(40)
    );
    let a = assign(p.http_url(), "/").await?;
    ensure!(a.node_id == "gw-0", "{a:?}");
    Ok(())
}

fn host(http_url: &str) -> &str {
    http_url.trim_start_matches("http://")
}

fn get(target: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: placement\r\n{extra_headers}Connection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_huge_assign_requests_get_a_4xx_and_placement_keeps_serving()
-> anyhow::Result<()> {
    let (p, _gw) = placement_with_a_gateway().await?;
    let addr = host(p.http_url()).to_owned();

    // Requests that reach the handler: 400 with `{"error": "bad_request", "detail": ...}`.
    let long_ns = format!("/{}", "n".repeat(300));
    let huge_ns = format!("/{}", "h".repeat(60_000));
    let bad_queries: Vec<String> = vec![
        "namespace=chat".into(),
        "namespace=".into(),
        "namespace=%ZZ".into(),
        "namespace=%2Fa%00b".into(),
        "namespace=%2Fa%0Ab".into(),
        "namespace=/a&namespace=/b".into(),
        format!("namespace={long_ns}"),
        format!("namespace={huge_ns}"),
        "namespace[]=x&&&==&%&namespace=nope".into(),
    ];
    for q in &bad_queries {
        let res = http_exchange(&addr, &get(&format!("/v1/assign?{q}"), ""), WAIT).await?;
        let shown = &q[..q.len().min(60)];
        ensure!(res.status == Some(400), "{shown}: {}", res.head);
        let body = res
            .json()
            .with_context(|| format!("{shown}: body is not JSON"))?;
        ensure!(body["error"] == "bad_request", "{shown}: {body}");
        ensure!(body["detail"].is_string(), "{shown}: {body}");
    }

    // Invalid UTF-8 is decoded lossily (U+FFFD): a well-formed namespace no gateway serves.
    let res = http_exchange(&addr, &get("/v1/assign?namespace=%2F%FF%FE", ""), WAIT).await?;
    let body = res.json().context("invalid UTF-8: body is not JSON")?;
    ensure!(
        res.status == Some(503) && body["error"] == "no_gateway_available",
        "invalid UTF-8: {} {body}",
        res.head
    );

    // Garbage or huge headers next to a good query: a header placement does not use changes
    // nothing; an unreadable Authorization is no token (app tokens are off here).
    let big = "b".repeat(100_000);
    for headers in [
        format!("Authorization: Bearer {big}\r\n"),
        "traceparent: 00-zzzz-yyyy-01\r\n".to_owned(),
        format!("X-Filler: {big}\r\n"),
    ] {
        let res = http_exchange(&addr, &get("/v1/assign?namespace=/", &headers), WAIT).await?;
        ensure!(
            res.status == Some(200),
            "{}: {}",
            &headers[..40.min(headers.len())],
            res.head
        );
    }
    let mut not_utf8 = get("/v1/assign?namespace=/", "");
    let at = not_utf8.len() - 2;
    not_utf8.splice(
        at..at,
        b"Authorization: Bearer \xff\xfe\x80\r\n".iter().copied(),
    );
    let res = http_exchange(&addr, &not_utf8, WAIT).await?;
    ensure!(
        res.status == Some(200),
        "a non-UTF-8 Authorization: {}",
        res.head
    );

    // Requests the HTTP layer refuses before any handler: a 4xx status line (or a closed
    // connection for bytes that are not HTTP at all), never a hang or a crash.
    let too_many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let oversized_head = format!("X-Huge: {}\r\n", "x".repeat(1_000_000));
    let refused_early: Vec<(&str, Vec<u8>)> = vec![
        (
            "a URI beyond the HTTP limit",
            get(&format!("/v1/assign?namespace=/{}", "u".repeat(70_000)), ""),
        ),
        (
            "five hundred headers",
            get("/v1/assign", &too_many_headers),
        ),
        ("a 1 MB header", get("/v1/assign", &oversized_head)),
        (
            "a broken request line",
            b"GET /v1/assign?namespace=/ HTTP/9\x00\r\n\r\n".to_vec(),
        ),
        ("a header without a colon", get("/v1/assign", "broken\r\n")),
        (
            "control characters in a header",
            get("/v1/assign", "Authorization: \u{1}\u{2}garbage\r\n"),
        ),
        (
            "POST",
            b"POST /v1/assign HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
                .to_vec(),
        ),
    ];
    for (what, req) in &refused_early {
        let res = http_exchange(&addr, req, WAIT).await?;
        ensure!(
            res.status.is_some_and(|s| (400..500).contains(&s)),
            "{what}: expected a 4xx, got {:?} {}",
            res.status,
            res.head
        );
    }
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &[0u8; 4096][..],
    ] {
        let res = http_exchange(&addr, garbage, WAIT).await?;
        ensure!(
            res.status.is_none_or(|s| (400..500).contains(&s)),
            "binary garbage: {:?} {}",
            res.status,
            res.head
        );
    }
    still_serving(&p).await
}

type Admin = AdminClient<Channel>;

fn with_token<T>(msg: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

/// Every admin method with `token`, as codes.
async fn admin_codes(
    admin: &mut Admin,
    token: Option<&str>,
) -> anyhow::Result<Vec<(&'static str, Code)>> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    Ok(vec![
        (
            "ListNodes",
            code(
                admin
                    .list_nodes(with_token(ListNodesRequest {}, token)?)
                    .await
                    .map(drop),
            ),
        ),
        (
            "DrainNode",
            code(
                admin
                    .drain_node(with_token(
                        DrainNodeRequest {
                            node_id: "gw-0".into(),
                            rate_per_sec: 0,
                        },
                        token,
                    )?)
                    .await
                    .map(drop),
            ),
        ),
        (
            "UndrainNode",
            code(
                admin
                    .undrain_node(with_token(
                        UndrainNodeRequest {
                            node_id: "gw-0".into(),
                        },
                        token,
                    )?)
                    .await
                    .map(drop),
            ),
        ),
        (
            "SetWeight",
            code(
                admin
                    .set_weight(with_token(
                        SetWeightRequest {
                            node_id: "gw-0".into(),
                            weight: 5,
                        },
                        token,
                    )?)
                    .await
                    .map(drop),
            ),
        ),
        (
            "Rebalance",
            code(
                admin
                    .rebalance(with_token(RebalanceRequest::default(), token)?)
                    .await
                    .map(drop),
            ),
        ),
        (
            "ClusterStats",
            code(
                admin
                    .cluster_stats(with_token(ClusterStatsRequest {}, token)?)
                    .await
                    .map(drop),
            ),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_or_with_forged_tokens_are_unauthenticated_and_change_nothing()
-> anyhow::Result<()> {
    let (p, _gw) = placement_with_a_gateway().await?;
    let mut admin = AdminClient::connect(p.grpc_url().to_owned()).await?;
    let forged = [
        None,
        Some("wrong-token"),
        Some(""),
        Some(&*format!("{TEST_ADMIN_TOKEN}x")),
        Some(&*"t".repeat(8_000)),
    ];
    for token in forged {
        for (method, code) in admin_codes(&mut admin, token).await? {
            ensure!(
                code == Code::Unauthenticated,
                "{method} with token {:?}: {code:?}",
                token.map(|t| &t[..t.len().min(20)])
            );
        }
    }
    // Other schemes and malformed headers are no token either.
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "bearer  ", TEST_ADMIN_TOKEN] {
        let mut req = Request::new(ListNodesRequest {});
        req.metadata_mut().insert("authorization", header.parse()?);
        let code = admin.list_nodes(req).await.err().map(|s| s.code());
        ensure!(code == Some(Code::Unauthenticated), "{header:?}: {code:?}");
    }
    let nodes = admin
        .list_nodes(with_token(ListNodesRequest {}, Some(TEST_ADMIN_TOKEN))?)
        .await?
        .into_inner()
        .nodes;
    ensure!(
        nodes.len() == 1 && !nodes[0].draining && nodes[0].weight == 1,
        "refused calls changed nothing: {nodes:?}"
    );
    still_serving(&p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_and_unknown_node_ids_get_their_status() -> anyhow::Result<()> {
    let (p, _gw) = placement_with_a_gateway().await?;
    let mut admin = AdminClient::connect(p.grpc_url().to_owned()).await?;
    let t = Some(TEST_ADMIN_TOKEN);
    let huge_id = "n".repeat(100_000);
    for node_id in ["nope", "", &huge_id, "gw-0\0", "../gw-0"] {
        let shown = &node_id[..node_id.len().min(20)];
        let drain = admin
            .drain_node(with_token(
                DrainNodeRequest {
                    node_id: node_id.into(),
                    rate_per_sec: 0,
                },
                t,
            )?)
            .await
            .err()
            .map(|s| s.code());
        let undrain = admin
            .undrain_node(with_token(
                UndrainNodeRequest {
                    node_id: node_id.into(),
                },
                t,
            )?)
            .await
            .err()
            .map(|s| s.code());
        let weight = admin
            .set_weight(with_token(
                SetWeightRequest {
                    node_id: node_id.into(),
                    weight: 2,
                },
                t,
            )?)
            .await
            .err()
            .map(|s| s.code());
        for (method, code) in [
            ("DrainNode", drain),
            ("UndrainNode", undrain),
            ("SetWeight", weight),
        ] {
            ensure!(
                matches!(code, Some(Code::NotFound | Code::InvalidArgument)),
                "{method} {shown:?}: {code:?}"
            );
        }
        if node_id == "nope" {
            ensure!(
                drain == Some(Code::NotFound),
                "DrainNode of an unknown node: {drain:?}"
            );
        }
    }
    for weight in [0, u32::MAX] {
        let code = admin
            .set_weight(with_token(
                SetWeightRequest {
                    node_id: "gw-0".into(),
                    weight,
                },
                t,
            )?)
            .await
            .err()
            .map(|s| s.code());
        ensure!(
            code == Some(Code::InvalidArgument),
            "weight {weight}: {code:?}"
        );
    }
    let code = admin
        .drain_node(with_token(
            DrainNodeRequest {
                node_id: "gw-0".into(),
                rate_per_sec: u32::MAX,
            },
            t,
        )?)
        .await
        .err()
        .map(|s| s.code());
    ensure!(
        matches!(code, None | Some(Code::InvalidArgument)),
        "an absurd drain rate: {code:?}"
    );
    if code.is_none() {
        admin
            .undrain_node(with_token(
                UndrainNodeRequest {
                    node_id: "gw-0".into(),
                },
                t,
            )?)
            .await?;
    }

    // gRPC Assign: the same validation as HTTP.
    let mut placement = PlacementClient::connect(p.grpc_url().to_owned()).await?;
    for ns in ["chat", "/a\nb", &format!("/{}", "x".repeat(300))] {
        let code = placement
            .assign(AssignRequest {
                namespace: ns.into(),
            })
            .await
            .err()
            .map(|s| s.code());
        ensure!(
            code == Some(Code::InvalidArgument),
            "Assign {ns:?}: {code:?}"
        );
    }
    still_serving(&p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_report_stream_and_undecodable_calls_are_refused() -> anyhow::Result<()> {
    let (p, _gw) = placement_with_a_gateway().await?;
    let mut placement = PlacementClient::connect(p.grpc_url().to_owned()).await?;
    let report = |kind| GatewayReport { kind: Some(kind) };
    let wrong_first: Vec<(&str, GatewayReport)> = vec![
        ("an empty message", GatewayReport { kind: None }),
        (
            "Load first",
            report(gateway_report::Kind::Load(Load::default())),
        ),
        (
            "Register with garbage fields",
            report(gateway_report::Kind::Register(Register {
                node_id: "\u{0}".repeat(5_000),
                url: "::not a url::".into(),
                namespaces: vec!["no-slash".into()],
                ..Register::default()
            })),
        ),
    ];
    for (what, first) in wrong_first {
        let code = placement
            .report(tokio_stream::iter(vec![first]))
            .await
            .err()
            .map(|s| s.code());
        ensure!(code == Some(Code::InvalidArgument), "{what}: {code:?}");
    }

    // Bytes that are not a protobuf message at all. The gRPC spec makes a parse failure
    // INTERNAL; what matters is that the call ends with that status and nothing else changes.
    let garbage = Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage");
    ensure!(
        GatewayReport::decode(garbage.clone()).is_err(),
        "the bytes must not decode"
    );
    let mut grpc = raw::client(p.grpc_url()).await?;
    let status = match raw::streaming(
        &mut grpc,
        "/switchyard.placement.v1.Placement/Report",
        vec![garbage.clone()],
    )
    .await
    {
        Ok(mut stream) => stream
            .message()
            .await
            .err()
            .context("an undecodable Register was answered")?,
        Err(status) => status,
    };
    ensure!(
        matches!(status.code(), Code::InvalidArgument | Code::Internal),
        "{status:?}"
    );
    let status = raw::unary(
        &mut grpc,
        "/switchyard.placement.v1.Placement/Assign",
        Request::new(garbage),
    )
    .await
    .err()
    .context("an undecodable Assign was answered")?;
    ensure!(
        matches!(status.code(), Code::InvalidArgument | Code::Internal),
        "{status:?}"
    );
    let mut admin = AdminClient::connect(p.grpc_url().to_owned()).await?;
    let nodes = admin
        .list_nodes(with_token(ListNodesRequest {}, Some(TEST_ADMIN_TOKEN))?)
        .await?
        .into_inner()
        .nodes;
    ensure!(
        nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>() == ["gw-0"],
        "no bad stream registered anything: {nodes:?}"
    );
    still_serving(&p).await
}
