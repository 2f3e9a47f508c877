//! Hooks to the application's backend, end to end: Redis, placement, a relay and three
//! gateways, all real processes, calling a real backend process over HTTP — the Python chat
//! backend of `examples/chat-backend`, or `tests/fixtures/odd_backend.py`, which misbehaves on
//! request and holds every body it gets against the JSON Schemas of `docs/hooks.md`, or a gRPC
//! backend in this process (`switchyard.hooks.v1.Hooks`) — with the official JS and Python
//! Socket.IO clients.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, repo_root};
use switchyard_proto::hooks::v1::hooks_server::{Hooks, HooksServer};
use switchyard_proto::hooks::v1::{HookReply, HookRequest};
use switchyard_testkit::cluster::{Gateway, GatewayOpts};
use switchyard_testkit::otlp::{Collector, SpanRecord};
use switchyard_testkit::process::Service;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// A backend script run by the venv's Python; its URL from its `SWITCHYARD_READY http=` line.
struct Backend {
    /// Held for its drop, which kills the process.
    _service: Service,
    url: String,
}

impl Backend {
    fn start(script: &str, args: &[&str]) -> anyhow::Result<Backend> {
        let python = switchyard_testkit::tools::venv_bin_dir()?.join("python");
        ensure!(
            python.exists(),
            "{} is missing: run `python3 -m venv .venv && .venv/bin/pip install -r \
             requirements.txt` at the repository root (cargo xtask test does it)",
            python.display()
        );
        let mut all: Vec<String> = vec![repo_root().join(script).display().to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let service = Service::spawn_program(&python, &all, &[], Duration::from_secs(30))?;
        let url = format!("http://{}", service.ready_value("http")?);
        Ok(Backend {
            _service: service,
            url,
        })
    }

    fn chat() -> anyhow::Result<Backend> {
        Self::start(
            "examples/chat-backend/backend.py",
            &["--port", "0", "--ban", "mallory"],
        )
    }

    fn odd() -> anyhow::Result<Backend> {
        let schemas = repo_root().join("docs/hooks.md");
        Self::start(
            "crates/gateway/tests/fixtures/odd_backend.py",
            &["--schemas", &schemas.display().to_string()],
        )
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let res = switchyard_testkit::reqwest::get(format!("{}{path}", self.url)).await?;
        Ok(res.error_for_status()?.json().await?)
    }
}

fn hook_args(url: &str) -> Vec<String> {
    [
        "--allow-anonymous",
        "--hooks-url",
        url,
        "--hook-events",
        "*",
        "--hook-timeout-ms",
        "1500",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Three gateways with a relay, their hooks on `backend`.
async fn cluster_for(backend: &Backend) -> anyhow::Result<Cluster> {
    let args = hook_args(&backend.url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::with_relay(3, &args, &[])?;
    cluster.wait_linked(WAIT).await?;
    Ok(cluster)
}

/// Connects client `id` straight to `gw` with `auth` (no token: the gateways admit anonymous
/// clients) and returns its socket id.
async fn connect(
    driver: &mut Driver,
    id: &str,
    gw: &Gateway,
    auth: Value,
) -> anyhow::Result<String> {
    driver
        .connect_raw(
            id,
            gw.url(),
            None,
            json!({"transports": ["websocket"], "auth": auth}),
        )
        .await?;
    let e = driver.connected(id, WAIT).await?;
    Ok(e["sid"]
        .as_str()
        .context("connected without a sid")?
        .to_owned())
}

async fn emit(driver: &mut Driver, id: &str, event: &str, args: Value) -> anyhow::Result<Value> {
    Ok(driver
        .request(
            json!({"cmd": "emit", "id": id, "event": event, "args": args, "ack": true,
                        "timeout_ms": 20_000}),
        )
        .await?["ack"]
        .clone())
}

/// The `chat` messages client `id` received: (message, position) pairs.
fn chats(driver: &mut Driver, id: &str) -> Vec<(Value, Value)> {
    driver
        .events_of(id, "recv")
        .iter()
        .filter(|e| e["name"] == "chat")
        .map(|e| (e["args"][0].clone(), e["args"][1].clone()))
        .collect()
}

/// Waits for `id` to get ada's "hello" as the backend emitted it: stored, stamped.
async fn hello_reaches(driver: &mut Driver, id: &str) -> anyhow::Result<()> {
    let got = driver
        .wait_event(&format!("{id} to get the message"), WAIT, |e| {
            e["id"] == id && e["event"] == "recv" && e["args"][0]["text"] == "hello"
        })
        .await?;
    assert_eq!(got["args"][0]["id"], 1, "{got}");
    assert_eq!(
        got["args"][0]["name"], "ada",
        "the connect hook's data: {got}"
    );
    assert_eq!(
        got["args"][1]["room"], "lobby",
        "stamped like a publish: {got}"
    );
    assert!(
        got["args"][1]["offset"].is_u64(),
        "with its position: {got}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_is_stored_once_and_reaches_members_on_every_gateway() -> anyhow::Result<()>
{
    let backend = Backend::chat()?;
    let cluster = cluster_for(&backend).await?;
    let mut js = Driver::node().await?;
    let mut py = Driver::python().await?;
    connect(&mut js, "ada", &cluster.gateways[0], json!({"name": "ada"})).await?;
    connect(&mut js, "bob", &cluster.gateways[1], json!({"name": "bob"})).await?;
    connect(&mut py, "cy", &cluster.gateways[2], json!({"name": "cy"})).await?;

    let ack = emit(&mut js, "ada", "chat", json!([{"text": "hello"}])).await?;
    assert_eq!(
        ack,
        json!({"ok": true, "id": 1}),
        "the ack carries the stored id"
    );
    hello_reaches(&mut js, "bob").await?;
    hello_reaches(&mut py, "cy").await?;
    hello_reaches(&mut js, "ada").await?;
    // From the Python client too; the JS ones get it.
    let ack = emit(&mut py, "cy", "chat", json!([{"text": "hi from python"}])).await?;
    assert_eq!(ack, json!({"ok": true, "id": 2}));
    js.wait_event("ada gets cy's message", WAIT, |e| {
        e["id"] == "ada" && e["args"][0]["text"] == "hi from python"
    })
    .await?;

    let stored = backend.get("/messages?room=lobby").await?;
    let texts: Vec<_> = stored
        .as_array()
        .context("messages")?
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [json!("hello"), json!("hi from python")],
        "stored once each"
    );
    assert_eq!(chats(&mut js, "bob").len(), 2, "no event twice");

    // The backend's own refusal (a 4xx with an error) reaches the client's ack.
    let ack = emit(&mut js, "bob", "shout", json!(["x"])).await?;
    assert_eq!(ack, json!({"ok": false, "error": "unknown_event"}));
    js.shutdown().await?;
    py.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_socket_reach_the_backend_in_the_order_sent() -> anyhow::Result<()> {
    const N: usize = 40;
    let backend = Backend::chat()?;
    let cluster = cluster_for(&backend).await?;
    let mut js = Driver::node().await?;
    connect(&mut js, "ada", &cluster.gateways[0], json!({"name": "ada"})).await?;
    connect(&mut js, "bob", &cluster.gateways[1], json!({"name": "bob"})).await?;
    // Sent back to back, without waiting for acks: socketioxide would run them at once.
    for n in 0..N {
        js.request(json!({"cmd": "emit", "id": "ada", "event": "chat",
                          "args": [{"text": format!("{n}")}]}))
            .await?;
    }
    let want: Vec<Value> = (0..N).map(|n| json!(n.to_string())).collect();
    eventually("every message stored", WAIT, async || {
        let stored = backend.get("/messages?room=lobby").await?;
        let stored = stored.as_array().context("messages")?;
        ensure!(stored.len() == N, "{} stored", stored.len());
        Ok(())
    })
    .await?;
    let stored = backend.get("/messages?room=lobby").await?;
    let texts: Vec<Value> = stored
        .as_array()
        .context("messages")?
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, want, "stored in the order sent");
    eventually("bob to get every message", WAIT, async || {
        let got: Vec<Value> = chats(&mut js, "bob")
            .into_iter()
            .map(|(m, _)| m["text"].clone())
            .collect();
        ensure!(got == want, "bob got {got:?}");
        Ok(())
    })
    .await?;
    js.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_is_refused_with_the_backends_reason() -> anyhow::Result<()> {
    let backend = Backend::chat()?;
    let cluster = cluster_for(&backend).await?;
    let mut js = Driver::node().await?;
    let mut py = Driver::python().await?;
    for (driver, gw) in [(&mut js, 0), (&mut py, 1)] {
        driver
            .connect_raw(
                "m",
                cluster.gateways[gw].url(),
                None,
                json!({"transports": ["websocket"], "auth": {"name": "mallory"}}),
            )
            .await?;
        let refusal = driver.refused("m", WAIT).await?;
        assert_eq!(refusal["message"], "mallory is banned", "{refusal}");
        driver
            .connect_raw(
                "nameless",
                cluster.gateways[gw].url(),
                None,
                json!({"transports": ["websocket"], "auth": {}}),
            )
            .await?;
        let refusal = driver.refused("nameless", WAIT).await?;
        assert_eq!(refusal["message"], "name_required", "{refusal}");
    }
    js.shutdown().await?;
    py.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_hooks_arrive_for_killed_clients() -> anyhow::Result<()> {
    let backend = Backend::chat()?;
    let cluster = cluster_for(&backend).await?;
    let mut sids = Vec::new();
    {
        let mut py = Driver::python().await?;
        let mut js = Driver::node().await?;
        sids.push(connect(&mut py, "p", &cluster.gateways[0], json!({"name": "p"})).await?);
        sids.push(connect(&mut js, "j", &cluster.gateways[2], json!({"name": "j"})).await?);
        // Dropped: both driver processes are killed, their connections cut.
    }
    eventually(
        "a disconnect hook for each killed client",
        WAIT,
        async || {
            let got = backend.get("/disconnects").await?;
            let got: Vec<_> = got
                .as_array()
                .context("disconnects")?
                .iter()
                .filter_map(|d| d["sid"].as_str().map(str::to_owned))
                .collect();
            ensure!(
                sids.iter().all(|s| got.contains(s)),
                "{got:?}, want {sids:?}"
            );
            Ok(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_gets_the_hook_emitted_events_it_missed() -> anyhow::Result<()> {
    let backend = Backend::chat()?;
    let cluster = cluster_for(&backend).await?;
    let mut js = Driver::node().await?;
    connect(&mut js, "ada", &cluster.gateways[0], json!({"name": "ada"})).await?;
    connect(&mut js, "bob", &cluster.gateways[1], json!({"name": "bob"})).await?;
    emit(&mut js, "ada", "chat", json!([{"text": "m0"}])).await?;
    let seen = js
        .wait_event("bob gets m0", WAIT, |e| {
            e["id"] == "bob" && e["args"][0]["text"] == "m0"
        })
        .await?;
    let position = seen["args"][1].clone();
    js.request(json!({"cmd": "close", "id": "bob"})).await?;
    for n in 1..=3 {
        emit(&mut js, "ada", "chat", json!([{"text": format!("m{n}")}])).await?;
    }
    // Bob comes back on another gateway and resumes from the last position it got.
    connect(
        &mut js,
        "bob2",
        &cluster.gateways[2],
        json!({"name": "bob"}),
    )
    .await?;
    let ack = emit(
        &mut js,
        "bob2",
        "resume",
        json!([{"epoch": position["epoch"], "offset": position["offset"],
                           "rooms": ["lobby"]}]),
    )
    .await?;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["replayed"], 3, "{ack}");
    eventually("bob2 to get what it missed", WAIT, async || {
        let got: Vec<_> = chats(&mut js, "bob2")
            .into_iter()
            .map(|(m, _)| m["text"].clone())
            .collect();
        ensure!(
            got == [json!("m1"), json!("m2"), json!("m3")],
            "bob2 got {got:?}"
        );
        Ok(())
    })
    .await?;
    js.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_down_or_garbage_backend_gives_the_documented_errors_and_others_are_served()
-> anyhow::Result<()> {
    let odd = Backend::odd()?;
    let cluster = cluster_for(&odd).await?;
    let mut js = Driver::node().await?;
    let mut py = Driver::python().await?;
    let sid = connect(&mut js, "a", &cluster.gateways[0], json!({"mode": "ok"})).await?;
    connect(&mut py, "b", &cluster.gateways[0], json!({"mode": "ok"})).await?;

    // Binary both ways, the backend's emit to one socket, and the ack's arguments as given.
    let ack = js
        .request(
            json!({"cmd": "emit", "id": "a", "event": "echo", "ack": true,
                        "args": [{"file": {"$bin": "AP9oaQ=="}}]}),
        )
        .await?["ack"]
        .clone();
    assert_eq!(
        ack,
        json!({"file": {"$bin": "AP9oaQ=="}}),
        "binary round trip"
    );
    js.wait_event("a gets its echo", WAIT, |e| {
        e["id"] == "a" && e["args"][0]["file"]["$bin"] == "AP9oaQ=="
    })
    .await?;

    // A slow backend: the client hears `backend_unavailable` at the timeout, while another
    // client on the same gateway is served meanwhile.
    let slow = {
        let mut js2 = Driver::node().await?;
        connect(&mut js2, "s", &cluster.gateways[0], json!({"mode": "ok"})).await?;
        tokio::spawn(async move {
            let ack = emit(&mut js2, "s", "slow", json!([])).await;
            (js2, ack)
        })
    };
    let ack = emit(&mut py, "b", "echo", json!(["still here"])).await?;
    assert_eq!(ack, json!("still here"));
    let (js2, ack) = slow.await?;
    assert_eq!(ack?, json!({"ok": false, "error": "backend_unavailable"}));
    js2.shutdown().await?;

    for (event, error) in [
        ("boom", "backend_unavailable"),
        ("garbage", "invalid_answer"),
        ("refuse", "nope"),
        ("huge", "invalid_answer"),
        ("bad_room", "invalid_answer"),
    ] {
        let ack = emit(&mut js, "a", event, json!([])).await?;
        assert_eq!(ack, json!({"ok": false, "error": error}), "{event}");
        // Served between failures (which also keeps the breaker closed).
        assert_eq!(
            emit(&mut py, "b", "echo", json!([event])).await?,
            json!(event)
        );
    }
    // The built-in events are never forwarded and keep working.
    let ack = js.publish("a", "odd", "note", json!({"n": 1})).await?;
    assert_eq!(ack["ok"], true, "{ack}");

    // Refusals at connect: the backend's reason; under `deny`, garbage and a slow answer.
    for (id, mode, reason) in [
        ("d", "deny", "odd says no"),
        ("g", "garbage", "invalid_answer"),
        ("w", "slow", "backend_unavailable"),
    ] {
        js.connect_raw(
            id,
            cluster.gateways[1].url(),
            None,
            json!({"transports": ["websocket"], "auth": {"mode": mode}}),
        )
        .await?;
        let refusal = js.refused(id, WAIT).await?;
        assert_eq!(refusal["message"], reason, "{mode}: {refusal}");
    }

    // A disconnect reaches the backend too; every body matched its schema in docs/hooks.md.
    js.request(json!({"cmd": "close", "id": "a"})).await?;
    eventually("the disconnect hook of a", WAIT, async || {
        let seen = odd.get("/seen").await?;
        ensure!(
            seen["disconnect"]
                .as_array()
                .is_some_and(|d| d.iter().any(|b| b["sid"] == sid)),
            "{seen}"
        );
        Ok(())
    })
    .await?;
    // Its empty 204 answer is a delivery, not an error.
    let text = support::metrics(cluster.gateways[0].url()).await?;
    assert!(
        !text.contains(r#"switchyard_gateway_hook_errors_total{hook="disconnect""#),
        "{text}"
    );
    let seen = odd.get("/seen").await?;
    assert_eq!(seen["violations"], json!([]), "{seen}");
    assert!(
        seen["connect"].as_u64() >= Some(5) && seen["event"].as_u64() >= Some(10),
        "{seen}"
    );
    js.shutdown().await?;
    py.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_follows_the_connect_failure_policy_and_trips_the_breaker()
-> anyhow::Result<()> {
    // A port nobody listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", l.local_addr()?)
    };
    let cluster = Cluster::start(0, &[])?;
    let start = |policy: &str, node: &str| -> anyhow::Result<Gateway> {
        let mut opts = GatewayOpts::new(&cluster.placement, node);
        opts.extra_args = hook_args(&down);
        opts.extra_args
            .extend(["--hook-connect-failure".into(), policy.into()]);
        Gateway::start(opts)
    };
    let deny = start("deny", "gw-deny")?;
    let allow = start("allow", "gw-allow")?;
    let mut js = Driver::node().await?;
    js.connect_raw(
        "d",
        deny.url(),
        None,
        json!({"transports": ["websocket"], "auth": {}}),
    )
    .await?;
    assert_eq!(
        js.refused("d", WAIT).await?["message"],
        "backend_unavailable"
    );
    connect(&mut js, "a", &allow, json!({})).await?;
    for _ in 0..8 {
        let ack = emit(&mut js, "a", "anything", json!([])).await?;
        assert_eq!(ack, json!({"ok": false, "error": "backend_unavailable"}));
    }
    let text = support::metrics(allow.url()).await?;
    let open = text.lines().any(|l| {
        l.starts_with("switchyard_gateway_hook_errors_total{")
            && l.contains(r#"reason="breaker_open""#)
    });
    assert!(open, "the breaker opened after failures in a row:\n{text}");
    // The hook metrics as scraped (labels and all) are what docs/operations.md says.
    let table: Vec<_> = switchyard_gateway::metrics::ALL
        .iter()
        .map(|m| (m.name, m.kind.as_str(), m.help))
        .collect();
    switchyard_testkit::metrics_check::check("gateway", &text, &table)?;
    js.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_a_hook_call_is_a_span_of_the_events_trace_and_disconnects_arrive_through_retries_and_shutdown()
-> anyhow::Result<()> {
    let collector = Collector::start()?;
    let odd = Backend::odd()?;
    let cluster = Cluster::start(0, &[])?;
    let mut opts = GatewayOpts::new(&cluster.placement, "gw-traced");
    opts.extra_args = hook_args(&odd.url);
    opts.extra_args.extend([
        "--otlp-endpoint".to_owned(),
        collector.endpoint().to_owned(),
    ]);
    let gw = Gateway::start(opts)?;
    let mut js = Driver::node().await?;
    let sid = connect(&mut js, "a", &gw, json!({"mode": "ok"})).await?;
    assert_eq!(
        emit(&mut js, "a", "echo", json!(["traced"])).await?,
        json!("traced")
    );
    // Its disconnect reaches the backend only through retries.
    let flaky = connect(&mut js, "f", &gw, json!({"mode": "flaky"})).await?;
    js.request(json!({"cmd": "close", "id": "a"})).await?;
    // A gateway without a relay delivers disconnect hooks too.
    eventually("the disconnect hook of a", WAIT, async || {
        let seen = odd.get("/seen").await?;
        ensure!(
            seen["disconnect"]
                .as_array()
                .is_some_and(|d| d.iter().any(|b| b["sid"] == sid)),
            "{seen}"
        );
        Ok(())
    })
    .await?;
    // SIGTERM: the gateway drains (closing f), waits for f's disconnect hook through its
    // retries, and flushes its spans as it stops.
    gw.terminate()?;
    let status = tokio::task::block_in_place(|| gw.wait_exit(WAIT))?;
    ensure!(status.success(), "the gateway exited with {status}");
    js.shutdown().await?;
    let seen = odd.get("/seen").await?;
    ensure!(
        seen["refused_disconnects"] == 3
            && seen["disconnect"]
                .as_array()
                .is_some_and(|d| d.iter().any(|b| b["sid"] == flaky)),
        "the disconnect of f, refused 3 times, arrived before the gateway exited: {seen}"
    );

    let is = |s: &SpanRecord, name: &str, key: &str, value: &str| {
        s.service == "switchyard-gateway"
            && s.name == name
            && s.attributes.get(key).map(String::as_str) == Some(value)
    };
    let spans = tokio::task::block_in_place(|| {
        collector.wait_for(WAIT, |spans| {
            spans.iter().any(|s| is(s, "hook", "hook", "event"))
        })
    })?;
    let forward = spans
        .iter()
        .find(|s| is(s, "forward", "event", "echo"))
        .context("no forward span for the echo event")?;
    let hook = spans
        .iter()
        .find(|s| is(s, "hook", "hook", "event"))
        .context("no hook span")?;
    assert_eq!(hook.trace_id, forward.trace_id, "one trace");
    assert_eq!(
        hook.parent_span_id, forward.span_id,
        "the call is a child of the event's span"
    );
    let seen = odd.get("/seen").await?;
    let sent = format!("00-{}-{}-01", hook.trace_id, hook.span_id);
    assert!(
        seen["traceparents"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(sent))),
        "the backend got traceparent {sent}: {seen}"
    );
    Ok(())
}

/// A gRPC backend (`switchyard.hooks.v1.Hooks`) in this process: allows every connect but
/// `{"name": "mallory"}`, acks `echo` with its arguments, refuses `refuse` with
/// PERMISSION_DENIED "nope", answers `down` with UNAVAILABLE, records disconnects; every call
/// must carry the hook token.
#[derive(Default, Clone)]
struct GrpcBackend {
    disconnects: Arc<Mutex<Vec<Value>>>,
}

impl GrpcBackend {
    fn body(req: &tonic::Request<HookRequest>) -> Result<Value, tonic::Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some("Bearer grpc-hook-token") {
            return Err(tonic::Status::unauthenticated("no hook token"));
        }
        serde_json::from_slice(&req.get_ref().json)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
    }

    fn reply(v: Value) -> Result<tonic::Response<HookReply>, tonic::Status> {
        Ok(tonic::Response::new(HookReply {
            json: serde_json::to_vec(&v).map_err(|e| tonic::Status::internal(e.to_string()))?,
        }))
    }
}

#[tonic::async_trait]
impl Hooks for GrpcBackend {
    async fn on_connect(
        &self,
        req: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        let body = Self::body(&req)?;
        if body["auth"]["name"] == "mallory" {
            return Self::reply(json!({"allow": false, "reason": "no mallory over grpc"}));
        }
        Self::reply(json!({"allow": true, "data": {"via": "grpc"}, "join": ["g"]}))
    }

    async fn on_event(
        &self,
        req: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        let body = Self::body(&req)?;
        match body["event"].as_str() {
            Some("echo") => Self::reply(json!({"ack": body["args"], "emit": [
                {"room": "g", "event": "seen", "data": {"via": body["data"]["via"]}}]})),
            Some("refuse") => Err(tonic::Status::permission_denied("nope")),
            _ => Err(tonic::Status::unavailable("down for maintenance")),
        }
    }

    async fn on_disconnect(
        &self,
        req: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        let body = Self::body(&req)?;
        self.disconnects
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .push(body);
        Self::reply(json!({}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_backend_gets_the_same_calls_with_the_same_failure_semantics() -> anyhow::Result<()>
{
    let backend = GrpcBackend::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("grpc://{}", listener.local_addr()?);
    let server = tonic::transport::Server::builder()
        .add_service(HooksServer::new(backend.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let mut args = hook_args(&url);
    args.extend(["--hook-token".to_owned(), "grpc-hook-token".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::with_relay(2, &args, &[])?;
    cluster.wait_linked(WAIT).await?;
    let mut js = Driver::node().await?;
    let mut py = Driver::python().await?;
    let sid = connect(&mut js, "a", &cluster.gateways[0], json!({"name": "ada"})).await?;
    connect(&mut py, "b", &cluster.gateways[1], json!({"name": "bob"})).await?;
    js.connect_raw(
        "m",
        cluster.gateways[0].url(),
        None,
        json!({"transports": ["websocket"], "auth": {"name": "mallory"}}),
    )
    .await?;
    assert_eq!(
        js.refused("m", WAIT).await?["message"],
        "no mallory over grpc"
    );

    let ack = emit(&mut js, "a", "echo", json!([{"bin": {"$bin": "AQI="}}])).await?;
    assert_eq!(ack, json!({"bin": {"$bin": "AQI="}}), "binary through gRPC");
    // The room emit went through the cluster to the other gateway, with the connect data.
    let seen = py
        .wait_event("b to get the emit", WAIT, |e| {
            e["id"] == "b" && e["event"] == "recv" && e["name"] == "seen"
        })
        .await?;
    assert_eq!(seen["args"][0]["via"], "grpc", "{seen}");
    assert!(seen["args"][1]["offset"].is_u64(), "stamped: {seen}");
    assert_eq!(
        emit(&mut js, "a", "refuse", json!([])).await?,
        json!({"ok": false, "error": "nope"})
    );
    assert_eq!(
        emit(&mut py, "b", "down", json!([])).await?,
        json!({"ok": false, "error": "backend_unavailable"})
    );
    js.request(json!({"cmd": "close", "id": "a"})).await?;
    eventually("the disconnect hook over gRPC", WAIT, async || {
        let got = backend
            .disconnects
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        ensure!(got.iter().any(|d| d["sid"] == sid), "{got:?}");
        Ok(())
    })
    .await?;
    js.shutdown().await?;
    py.shutdown().await?;
    server.abort();
    Ok(())
}
