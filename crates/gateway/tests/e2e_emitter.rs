//! `@socket.io/redis-emitter`, the official npm package unchanged
//! (`clients/socketio-tools/emitter.mjs`), against Redis, placement, two relay replicas with
//! `--emitter` and three gateways, all real processes, with official JS clients on every
//! gateway.
//!
//! Every operation the emitter has: `emit` to everyone, `.to` one room (stamped: history) and
//! several, `.except`, `.of("/chat")`, binary arguments, `.volatile`, `socketsJoin`,
//! `socketsLeave`, `disconnectSockets`, `serverSideEmit` (counted, no effect). Each emitted
//! event reaches each targeted socket exactly once, though both replicas are subscribed to
//! nothing but one is the handler; a client that was away resumes an emitted room event from
//! history; junk published on the emitter's channels changes nothing anyone receives; when the
//! handler replica is killed, the other takes over and events again arrive exactly once.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, bin, metric_value, metrics, wait_relay_members};
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// Client id → (gateway index, namespace, rooms it joins).
const CLIENTS: &[(&str, usize, &str, &[&str])] = &[
    ("c0", 0, "/", &["a"]),
    ("c1", 1, "/", &["a", "b"]),
    ("c2", 2, "/", &["b"]),
    ("k0", 0, "/", &["kick"]),
    ("d1", 1, "/chat", &[]),
];

/// How many times each client received each event name.
fn received(driver: &mut Driver) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for e in driver.events() {
        if e["event"] == "recv" {
            let key = (
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["name"].as_str().unwrap_or_default().to_owned(),
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// The args of the first `name` event client `id` received.
fn args_of(driver: &mut Driver, id: &str, name: &str) -> anyhow::Result<Value> {
    driver
        .events_of(id, "recv")
        .into_iter()
        .find(|e| e["name"] == name)
        .map(|e| e["args"].clone())
        .with_context(|| format!("{id} never got {name}"))
}

/// Emits `fence` to every socket of `/` and `/chat`, and waits until each connected client of
/// `ids` has it: everything emitted before has been delivered (one handler, in order).
async fn fence(
    emitter: &mut Driver,
    clients: &mut Driver,
    n: u64,
    ids: &[&str],
) -> anyhow::Result<()> {
    for nsp in ["/", "/chat"] {
        emitter
            .request(json!({"cmd": "emit", "nsp": nsp, "event": "fence", "args": [n]}))
            .await?;
    }
    for id in ids {
        clients
            .wait_event(&format!("fence {n} at {id}"), WAIT, |e| {
                e["id"] == *id && e["event"] == "recv" && e["name"] == "fence" && e["args"][0] == n
            })
            .await?;
    }
    Ok(())
}

/// Which relays hold the emitter lease right now (by `switchyard_relay_emitter_handler`).
async fn handlers(cluster: &Cluster) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for (i, relay) in cluster.relays.iter().enumerate() {
        let text = metrics(relay.http_url()).await?;
        if metric_value(&text, "switchyard_relay_emitter_handler") == Some(1.0) {
            out.push(i);
        }
    }
    Ok(out)
}

async fn emitter_outcome(cluster: &Cluster, outcome: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    let needle = format!("switchyard_relay_emitter_messages_total{{outcome=\"{outcome}\"}}");
    for relay in &cluster.relays {
        let text = metrics(relay.http_url()).await?;
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_emitter_reaches_every_gateway_exactly_once() -> anyhow::Result<()> {
    let cluster = Cluster::with_relays(
        3,
        2,
        &["--allow-anonymous", "--namespaces", "/,/chat"],
        &["--emitter", "--emitter-namespaces", "/,/chat"],
    )?;
    for relay in &cluster.relays {
        wait_relay_members(relay.grpc_url(), 3, WAIT).await?;
    }
    eventually(
        "exactly one relay replica is the emitter's handler",
        WAIT,
        || async {
            let h = handlers(&cluster).await?;
            ensure!(h.len() == 1, "handlers: {h:?}");
            Ok(())
        },
    )
    .await?;

    let mut clients = Driver::node().await?;
    for (id, gw, nsp, rooms) in CLIENTS {
        let url = cluster.gateways[*gw].url();
        clients
            .connect_raw(
                id,
                url,
                None,
                json!({"namespace": nsp, "transports": ["websocket"]}),
            )
            .await?;
        clients.connected(id, WAIT).await?;
        for room in *rooms {
            let ack = clients.join(id, room).await?;
            ensure!(ack["ok"] == true, "{id} join {room}: {ack}");
        }
    }
    let all = ["c0", "c1", "c2", "k0", "d1"];
    let mut emitter = Driver::emitter(&cluster.redis.url()).await?;
    fence(&mut emitter, &mut clients, 0, &all).await?;

    // Junk first: nothing of it may reach anyone, and the handler must go on.
    for (channel, hex) in [
        ("socket.io#/#", "c1c1c1"),
        ("socket.io#/#", "93a7656d6974746572c0c0"),
        ("socket.io#/#a#", "ffffffff"),
        ("socket.io-request#/#", "7b2274797065223a"),
        ("socket.io-request#/#", "7b2274797065223a397d"),
        ("socket.io#/chat#", ""),
    ] {
        emitter
            .request(json!({"cmd": "publish", "channel": channel, "hex": hex}))
            .await?;
    }

    let cmds = [
        json!({"cmd": "emit", "event": "hello", "args": [1, "two"]}),
        json!({"cmd": "emit", "to": ["a"], "event": "room-a", "args": [{"x": 1}]}),
        json!({"cmd": "emit", "to": ["a", "b"], "event": "multi", "args": ["m"]}),
        json!({"cmd": "emit", "except": ["a"], "event": "not-a", "args": [2]}),
        json!({"cmd": "emit", "nsp": "/chat", "event": "chat", "args": ["x"]}),
        json!({"cmd": "emit", "event": "bin", "args": [bin(&[0, 1, 254, 255])]}),
        json!({"cmd": "emit", "to": ["b"], "event": "bin-room", "args": [{"blob": bin(&[9, 8])}]}),
        json!({"cmd": "emit", "volatile": true, "event": "vol", "args": [3]}),
        json!({"cmd": "socketsJoin", "to": ["b"], "rooms": ["c"]}),
        json!({"cmd": "emit", "to": ["c"], "event": "in-c", "args": [4]}),
        json!({"cmd": "socketsLeave", "to": ["b"], "rooms": ["c"]}),
        json!({"cmd": "emit", "to": ["c"], "event": "after-leave", "args": [5]}),
        json!({"cmd": "serverSideEmit", "args": ["server-side", 6]}),
    ];
    for cmd in cmds {
        emitter.request(cmd).await?;
    }
    fence(&mut emitter, &mut clients, 1, &all).await?;

    let got = received(&mut clients);
    let want: &[(&str, &[&str])] = &[
        ("hello", &["c0", "c1", "c2", "k0"]),
        ("room-a", &["c0", "c1"]),
        ("multi", &["c0", "c1", "c2"]),
        ("not-a", &["c2", "k0"]),
        ("chat", &["d1"]),
        ("bin", &["c0", "c1", "c2", "k0"]),
        ("bin-room", &["c1", "c2"]),
        ("vol", &["c0", "c1", "c2", "k0"]),
        ("in-c", &["c1", "c2"]),
        ("after-leave", &[]),
        ("server-side", &[]),
    ];
    let mut wrong = Vec::new();
    for (event, to) in want {
        for id in all {
            let n = got
                .get(&(id.to_owned(), (*event).to_owned()))
                .copied()
                .unwrap_or(0);
            let expected = usize::from(to.contains(&id));
            if n != expected {
                wrong.push(format!("{id} got {event} {n} times, want {expected}"));
            }
        }
    }
    // Junk reached nobody: every event anyone received is one of the above (or a fence).
    for (id, name) in got.keys() {
        if name != "fence" && !want.iter().any(|(e, _)| e == name) {
            wrong.push(format!("{id} got an unexpected {name}"));
        }
    }
    if !wrong.is_empty() {
        bail!("deliveries: {wrong:#?}");
    }

    // What arrived is what was emitted: every argument, binary as binary, and a room emit
    // with its position from history.
    ensure!(args_of(&mut clients, "c0", "hello")? == json!([1, "two"]));
    ensure!(args_of(&mut clients, "c2", "bin")? == json!([bin(&[0, 1, 254, 255])]));
    let room_a = args_of(&mut clients, "c1", "room-a")?;
    ensure!(room_a[0] == json!({"x": 1}), "{room_a}");
    ensure!(
        room_a[1]["room"] == "a" && room_a[1]["offset"].as_u64().is_some(),
        "{room_a}"
    );
    let bin_room = args_of(&mut clients, "c2", "bin-room")?;
    ensure!(bin_room[0] == json!({"blob": bin(&[9, 8])}), "{bin_room}");

    // disconnectSockets: only the members of "kick", told by the server.
    emitter
        .request(json!({"cmd": "disconnectSockets", "to": ["kick"], "close": true}))
        .await?;
    let gone = clients
        .wait_event("k0 disconnected by the emitter", WAIT, |e| {
            e["id"] == "k0" && e["event"] == "disconnect"
        })
        .await?;
    ensure!(gone["reason"] == "io server disconnect", "{gone}");
    fence(&mut emitter, &mut clients, 2, &["c0", "c1", "c2", "d1"]).await?;
    ensure!(
        clients.events_of("c0", "disconnect").is_empty(),
        "c0 was disconnected too"
    );

    // Resume across an emitted event: c9 joins "feed", goes away, an event is emitted to
    // "feed", and a new connection resumes it from history.
    clients
        .connect_raw(
            "c9",
            cluster.gateways[2].url(),
            None,
            json!({"transports": ["websocket"]}),
        )
        .await?;
    clients.connected("c9", WAIT).await?;
    let joined = clients.join("c9", "feed").await?;
    let (epoch, offset) = (joined["epoch"].clone(), joined["offset"].clone());
    clients.request(json!({"cmd": "close", "id": "c9"})).await?;
    emitter
        .request(json!({"cmd": "emit", "to": ["feed"], "event": "while-away", "args": [7]}))
        .await?;
    fence(&mut emitter, &mut clients, 3, &["c0"]).await?;
    clients
        .connect_raw(
            "c9b",
            cluster.gateways[0].url(),
            None,
            json!({"transports": ["websocket"]}),
        )
        .await?;
    clients.connected("c9b", WAIT).await?;
    let resumed = clients
        .request(
            json!({"cmd": "emit", "id": "c9b", "event": "resume", "ack": true,
                        "args": [{"epoch": epoch, "offset": offset, "rooms": ["feed"]}]}),
        )
        .await?;
    ensure!(
        resumed["ack"]["recovered"] == true && resumed["ack"]["replayed"] == 1,
        "{resumed}"
    );
    let replayed = args_of(&mut clients, "c9b", "while-away")?;
    ensure!(replayed[0] == 7, "{replayed}");

    // The junk and the unsupported request were counted, not carried out.
    ensure!(emitter_outcome(&cluster, "malformed").await? >= 5.0);
    ensure!(emitter_outcome(&cluster, "unsupported").await? >= 2.0);
    ensure!(emitter_outcome(&cluster, "history").await? >= 3.0);
    // The handler dies (SIGKILL): the other replica takes the lease once it expires, and
    // emitted events again reach every socket exactly once.
    let dead = *handlers(&cluster).await?.first().context("a handler")?;
    cluster.relays[dead].kill()?;
    let alive = 1 - dead;
    eventually("the other replica becomes the handler", WAIT, || async {
        let text = metrics(cluster.relays[alive].http_url()).await?;
        ensure!(
            metric_value(&text, "switchyard_relay_emitter_handler") == Some(1.0),
            "not yet"
        );
        Ok(())
    })
    .await?;
    let before = received(&mut clients);
    emitter
        .request(json!({"cmd": "emit", "event": "after-failover", "args": [8]}))
        .await?;
    emitter
        .request(json!({"cmd": "emit", "to": ["a"], "event": "room-after-failover", "args": [9]}))
        .await?;
    fence(&mut emitter, &mut clients, 4, &["c0", "c1", "c2", "d1"]).await?;
    let after = received(&mut clients);
    for (id, event, want) in [
        ("c0", "after-failover", 1),
        ("c1", "after-failover", 1),
        ("c2", "after-failover", 1),
        ("c0", "room-after-failover", 1),
        ("c1", "room-after-failover", 1),
        ("c2", "room-after-failover", 0),
    ] {
        let key = (id.to_owned(), event.to_owned());
        let n = after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0);
        ensure!(
            n == want,
            "{id} got {event} {n} times after the failover, want {want}"
        );
    }

    emitter.shutdown().await?;
    clients.shutdown().await?;
    Ok(())
}
