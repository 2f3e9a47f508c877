//! A room spans the cluster: Redis, placement, the broadcast relay and three gateways linked to
//! it (`--relay-urls`), all real processes, with the official JS client on every gateway.
//!
//! - members of a room on all three gateways get each of 100 published events exactly once and
//!   in order; non-members get none;
//! - a 1 MiB binary payload published on one gateway arrives intact on the others;
//! - a backend `Publish` on the relay's gRPC API reaches the room's members on every gateway
//!   (to one room without except: through history, with `{room, epoch, offset}`),
//!   and `except` excludes;
//! - in an application (`examples/embedded`): `fetch_sockets`, `rooms`, broadcast with ack,
//!   remote join / leave / disconnect across gateways;
//! - two relays, every gateway linked to both, one killed mid-stream: nothing lost or doubled;
//! - a stalled gateway (SIGSTOP) is cut off by the relay while the others get every event; once
//!   resumed it relinks and receives again.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, bin};
use switchyard_proto::relay::v1::{PublishRequest, publish_request, relay_client::RelayClient};
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts, TEST_PUBLISH_TOKEN,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);
const EVENTS: u64 = 100;

/// `recv` events of client `id` named `name`, in arrival order.
fn received(driver: &mut Driver, id: &str, name: &str) -> Vec<Value> {
    driver
        .events_of(id, "recv")
        .into_iter()
        .filter(|e| e["name"] == name)
        .collect()
}

async fn wait_recv(
    driver: &mut Driver,
    id: &str,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    driver
        .wait_event(&format!("{id} to receive {name}"), WAIT, |e| {
            e["id"] == id && e["event"] == "recv" && e["name"] == name && pred(e)
        })
        .await
}

/// Connects client `id` straight to gateway `gw` (anonymous) and waits until connected.
async fn connect(driver: &mut Driver, id: &str, gw: &Gateway) -> anyhow::Result<()> {
    driver
        .connect_raw(id, gw.url(), None, json!({"transports": ["websocket"]}))
        .await?;
    driver.connected(id, WAIT).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_gateways() -> anyhow::Result<()> {
    let cluster = Cluster::with_relay(
        3,
        &["--allow-anonymous", "--max-payload-bytes", "2097152"],
        &[],
    )?;
    cluster.wait_linked(WAIT).await?;
    let mut js = Driver::node().await?;
    let members = ["m0", "m1", "m2"];
    let others = ["n0", "n1", "n2"];
    for (i, gw) in cluster.gateways.iter().enumerate() {
        connect(&mut js, members[i], gw).await?;
        connect(&mut js, others[i], gw).await?;
    }
    for id in members {
        let ack = js.join(id, "news").await?;
        assert_eq!(ack["ok"], true, "{id} joins: {ack}");
    }
    let ack = js.join("n1", "elsewhere").await?;
    assert_eq!(ack["ok"], true, "n1 joins another room: {ack}");

    // 100 numbered events from one publisher: every member, on every gateway, gets each once,
    // in order.
    for n in 0..EVENTS {
        let ack = js
            .publish("m0", "news", "tick", json!({"n": n}))
            .await
            .with_context(|| format!("publishing {n}"))?;
        assert_eq!(ack["ok"], true, "publish {n}: {ack}");
    }
    for id in members {
        wait_recv(&mut js, id, "tick", |e| e["args"][0]["n"] == EVENTS - 1).await?;
    }
    // A non-member publisher on another gateway: delivered after the 100 from m0 were seen.
    let ack = js
        .publish("n2", "news", "tick", json!({"n": EVENTS}))
        .await?;
    assert_eq!(ack["ok"], true, "non-member publish: {ack}");
    for id in members {
        wait_recv(&mut js, id, "tick", |e| e["args"][0]["n"] == EVENTS).await?;
        let got: Vec<Value> = received(&mut js, id, "tick")
            .iter()
            .map(|e| e["args"][0]["n"].clone())
            .collect();
        let want: Vec<Value> = (0..=EVENTS).map(|n| json!(n)).collect();
        assert_eq!(got, want, "{id} got every event once, in order");
        let first = received(&mut js, id, "tick");
        assert_eq!(
            first.first().map(|e| e["args"][1]["room"].clone()),
            Some(json!("news")),
            "{id} is told the room"
        );
    }

    // 1 MiB of binary from gateway 1 reaches the members on gateways 0 and 2 intact.
    let blob: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let data = json!({"text": "big", "blob": bin(&blob)});
    let ack = js.publish("m1", "news", "big", data.clone()).await?;
    assert_eq!(ack["ok"], true, "1 MiB publish: {ack}");
    for id in members {
        let e = wait_recv(&mut js, id, "big", |_| true).await?;
        assert!(e["args"][0] == data, "{id} got the 1 MiB payload intact");
    }

    // A backend publishes through the relay: every member gets it, `except` excludes.
    let ack = js.join("m2", "vip").await?;
    assert_eq!(ack["ok"], true, "m2 joins vip: {ack}");
    let mut relay = RelayClient::connect(cluster.relay()?.grpc_url().to_owned()).await?;
    let publish = |event: &str, except: Vec<String>| {
        let mut req = tonic::Request::new(PublishRequest {
            namespace: "/".into(),
            rooms: vec!["news".into()],
            except,
            event: event.into(),
            data: Some(publish_request::Data::Json(
                json!({"text": event}).to_string(),
            )),
        });
        let token = format!("Bearer {TEST_PUBLISH_TOKEN}");
        if let Ok(v) = token.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        req
    };
    let res = relay
        .publish(publish("backend", Vec::new()))
        .await?
        .into_inner();
    assert_eq!(res.gateways, 3, "published to every linked gateway");
    // One room, no except: it went through history, so it has a position members see.
    let position = res
        .position
        .ok_or_else(|| anyhow::anyhow!("a one-room backend publish has a position"))?;
    assert!(position.offset > 0, "{position:?}");
    for id in members {
        let e = wait_recv(&mut js, id, "backend", |_| true).await?;
        assert_eq!(e["args"][0]["text"], "backend", "{id}: {e}");
        assert_eq!(e["args"][1]["room"], "news", "{id}: {e}");
        assert_eq!(e["args"][1]["epoch"], position.epoch.as_str(), "{id}: {e}");
        assert_eq!(e["args"][1]["offset"], position.offset, "{id}: {e}");
    }
    relay
        .publish(publish("backend-except", vec!["vip".into()]))
        .await?;
    for id in ["m0", "m1"] {
        wait_recv(&mut js, id, "backend-except", |_| true).await?;
    }
    // A marker after the except publish: once m2 has it, the excluded event had its chance.
    relay.publish(publish("marker", Vec::new())).await?;
    wait_recv(&mut js, "m2", "marker", |_| true).await?;
    assert!(
        received(&mut js, "m2", "backend-except").is_empty(),
        "except excluded m2"
    );

    // Non-members got nothing of any of it.
    for id in others {
        for name in ["tick", "big", "backend", "backend-except", "marker"] {
            assert!(
                received(&mut js, id, name).is_empty(),
                "non-member {id} got {name}"
            );
        }
    }
    js.shutdown().await
}

/// Sends the embedded app's `cluster` event (see `examples/embedded.rs`) and returns the ack.
async fn cluster_op(driver: &mut Driver, id: &str, req: Value) -> anyhow::Result<Value> {
    let res = driver
        .request(json!({"cmd": "emit", "id": id, "event": "cluster", "args": [req], "ack": true}))
        .await?;
    let ack = res["ack"].clone();
    ensure!(ack["ok"] == true, "cluster op {req} failed: {ack}");
    Ok(ack)
}

/// socketioxide's cluster operations in an application (`examples/embedded`) on three gateways
/// linked by the relay: `fetch_sockets` and `rooms` see every gateway, broadcast with ack gets
/// one reply per client on every gateway, remote join / leave / disconnect take effect there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_operations_span_gateways_in_an_embedded_app() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let relay = Relay::start(RelayOpts {
        redis_url: Some(redis.url()),
        extra_args: Vec::new(),
    })?;
    let mut apps = Vec::new();
    for i in 0..3 {
        let node = format!("emb-{i}");
        let app = switchyard_testkit::process::Service::spawn(
            "embedded",
            &[
                "--listen",
                "127.0.0.1:0",
                "--placement-url",
                "",
                "--node-id",
                node.as_str(),
                "--allow-anonymous",
                "--relay-urls",
                relay.grpc_url(),
            ],
            &[],
        )?;
        let url = format!("http://{}", app.ready_value("http")?);
        apps.push((app, url));
    }
    support::wait_relay_members(relay.grpc_url(), 3, WAIT).await?;

    let mut js = Driver::node().await?;
    let ids = ["c0", "c1", "c2"];
    let mut sids = Vec::new();
    for (i, (_, url)) in apps.iter().enumerate() {
        js.connect_raw(ids[i], url, None, json!({"transports": ["websocket"]}))
            .await?;
        let connected = js.connected(ids[i], WAIT).await?;
        sids.push(connected["sid"].clone());
    }

    // fetch_sockets sees the clients of every gateway; rooms lists a remote socket's room.
    let ack = cluster_op(&mut js, "c0", json!({"op": "fetch_sockets"})).await?;
    assert_eq!(ack["count"], 3, "{ack}");
    for sid in &sids {
        assert!(
            ack["ids"].as_array().is_some_and(|a| a.contains(sid)),
            "fetch_sockets lists {sid}: {ack}"
        );
    }
    assert_eq!(js.join("c2", "victims").await?["ok"], true);
    let ack = cluster_op(&mut js, "c0", json!({"op": "rooms"})).await?;
    assert!(
        ack["rooms"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("victims"))),
        "rooms sees the remote room: {ack}"
    );

    // Broadcast with ack: the driver's clients answer every server ack, so one real ack per
    // client on every gateway comes back within the timeout.
    let ack = cluster_op(&mut js, "c0", json!({"op": "ask_all", "timeout_ms": 3000})).await?;
    assert_eq!(ack["replies"], 3, "one reply per client: {ack}");
    assert_eq!(
        ack["acked"], 3,
        "every client's ack arrives, none times out: {ack}"
    );
    for id in ids {
        wait_recv(&mut js, id, "question", |_| true).await?;
    }

    // Remote join: every socket everywhere joins "everyone", then a publish reaches them all.
    cluster_op(&mut js, "c0", json!({"op": "join_all", "room": "everyone"})).await?;
    let ack = js
        .publish("c0", "everyone", "hello", json!({"text": "all"}))
        .await?;
    assert_eq!(ack["ok"], true, "{ack}");
    for id in ids {
        wait_recv(&mut js, id, "hello", |_| true).await?;
    }

    // Remote leave: nobody is in "everyone" any more. The marker, sent after, proves the
    // "after" publish had its chance to arrive.
    cluster_op(
        &mut js,
        "c0",
        json!({"op": "leave_all", "room": "everyone"}),
    )
    .await?;
    js.publish("c0", "everyone", "after", json!({})).await?;
    cluster_op(&mut js, "c0", json!({"op": "join_all", "room": "marker"})).await?;
    js.publish("c0", "marker", "marker", json!({})).await?;
    for id in ids {
        wait_recv(&mut js, id, "marker", |_| true).await?;
        assert!(
            received(&mut js, id, "after").is_empty(),
            "{id} left everyone"
        );
    }

    // Remote disconnect: c2 (on another gateway) is disconnected, c1 is not.
    cluster_op(
        &mut js,
        "c0",
        json!({"op": "disconnect_room", "room": "victims"}),
    )
    .await?;
    js.wait_event("c2 disconnected", WAIT, |e| {
        e["id"] == "c2" && e["event"] == "disconnect"
    })
    .await?;
    assert!(
        js.events_of("c1", "disconnect").is_empty(),
        "c1 was not in the room"
    );
    js.shutdown().await
}

/// Two relays sharing Redis, every gateway linked to both; one relay is killed mid-stream. The
/// members on every gateway still get every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_relays_loses_and_doubles_nothing() -> anyhow::Result<()> {
    const TOTAL: u64 = 200;
    let redis = RedisServer::start()?;
    let placement = Placement::start(PlacementOpts {
        redis_url: Some(redis.url()),
        extra_args: Vec::new(),
    })?;
    let relays = [
        Relay::start(RelayOpts {
            redis_url: Some(redis.url()),
            extra_args: Vec::new(),
        })?,
        Relay::start(RelayOpts {
            redis_url: Some(redis.url()),
            extra_args: Vec::new(),
        })?,
    ];
    let mut gateways = Vec::new();
    for i in 0..3 {
        let mut opts = GatewayOpts::new(&placement, format!("gw-{i}"));
        opts.relay_urls = relays.iter().map(|r| r.grpc_url().to_owned()).collect();
        opts.extra_args = vec!["--allow-anonymous".to_owned()];
        gateways.push(Gateway::start(opts)?);
    }
    for r in &relays {
        support::wait_relay_members(r.grpc_url(), 3, WAIT).await?;
    }
    let mut js = Driver::node().await?;
    let members = ["m0", "m1", "m2"];
    for (i, gw) in gateways.iter().enumerate() {
        connect(&mut js, members[i], gw).await?;
        assert_eq!(js.join(members[i], "feed").await?["ok"], true);
    }
    for n in 0..TOTAL {
        if n == TOTAL / 4 {
            relays[0].kill()?;
        }
        let ack = js
            .publish("m0", "feed", "tick", json!({"n": n}))
            .await
            .with_context(|| format!("publishing {n}"))?;
        assert_eq!(ack["ok"], true, "publish {n}: {ack}");
    }
    for id in members {
        wait_recv(&mut js, id, "tick", |e| e["args"][0]["n"] == TOTAL - 1).await?;
        let got: Vec<Value> = received(&mut js, id, "tick")
            .iter()
            .map(|e| e["args"][0]["n"].clone())
            .collect();
        let want: Vec<Value> = (0..TOTAL).map(|n| json!(n)).collect();
        assert_eq!(got, want, "{id} got every event once, in order");
    }
    js.shutdown().await
}

/// A gateway that stops reading (SIGSTOP) is cut off by the relay; the others keep getting
/// every event meanwhile. Once resumed it relinks; its subscriber missed events while it was
/// cut off, so it is told (disconnected, to resume) rather than left with a silent gap, and a
/// client joining there afterwards gets new events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_is_cut_off_without_delaying_the_others() -> anyhow::Result<()> {
    const TOTAL: u64 = 1000;
    // Engine.IO's liveness timeout far above the pause: m2's client must learn of the gap from
    // the resumed gateway, not give up on it first (publishing 1,000 events can outlast the
    // default 45 s on a loaded machine).
    let cluster = Cluster::with_relay(
        3,
        &[
            "--allow-anonymous",
            "--ping-interval-ms",
            "600000",
            "--ping-timeout-ms",
            "600000",
        ],
        &["--link-queue", "16"],
    )?;
    cluster.wait_linked(WAIT).await?;
    let gateways = &cluster.gateways;
    let mut js = Driver::node().await?;
    let members = ["m0", "m1", "m2"];
    for (i, gw) in gateways.iter().enumerate() {
        connect(&mut js, members[i], gw).await?;
        assert_eq!(js.join(members[i], "feed").await?["ok"], true);
    }
    // 16 KiB per event, so the stalled gateway's transport buffers fill and the relay's queue
    // for it overflows.
    let filler = "x".repeat(16 * 1024);
    gateways[2].pause()?;
    for n in 0..TOTAL {
        let ack = js
            .publish("m0", "feed", "tick", json!({"n": n, "filler": filler}))
            .await
            .with_context(|| format!("publishing {n}"))?;
        assert_eq!(ack["ok"], true, "publish {n}: {ack}");
    }
    // m1 got everything while gw-2 was stopped.
    wait_recv(&mut js, "m1", "tick", |e| e["args"][0]["n"] == TOTAL - 1).await?;
    let got: Vec<Value> = received(&mut js, "m1", "tick")
        .iter()
        .map(|e| e["args"][0]["n"].clone())
        .collect();
    let want: Vec<Value> = (0..TOTAL).map(|n| json!(n)).collect();
    assert!(got == want, "m1 got every event once, in order");
    gateways[2].resume()?;

    // gw-2 relinks and severs m2, which cannot have got every event: m2 is disconnected by
    // the server (its client would resume from its last offset) and got no event out of order.
    js.wait_event("m2 to be disconnected by gw-2", WAIT, |e| {
        e["id"] == "m2" && e["event"] == "disconnect" && e["reason"] == "io server disconnect"
    })
    .await?;
    let got: Vec<u64> = received(&mut js, "m2", "tick")
        .iter()
        .filter_map(|e| e["args"][0]["n"].as_u64())
        .collect();
    ensure!(
        got.iter().enumerate().all(|(i, n)| *n == i as u64),
        "m2 got a gap-free prefix before being severed: {got:?}"
    );

    // A client joining gw-2 now gets events published from then on.
    connect(&mut js, "m3", &gateways[2]).await?;
    assert_eq!(js.join("m3", "feed").await?["ok"], true);
    let mut k = 0u64;
    eventually(
        "a client on the resumed gateway to get events again",
        WAIT,
        async || {
            js.publish("m0", "feed", "later", json!({"k": k})).await?;
            k += 1;
            ensure!(
                !received(&mut js, "m3", "later").is_empty(),
                "m3 got none of {k} events"
            );
            Ok(())
        },
    )
    .await?;
    js.shutdown().await
}
