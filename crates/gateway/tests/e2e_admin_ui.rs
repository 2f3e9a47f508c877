//! `@socket.io/admin-ui`'s protocol against three gateways (`--admin-ui`) and a relay, spoken by
//! the official `socket.io-client` exactly as the dashboard speaks it (`ui/src/App.vue`): login
//! with `{username, password}`, a `session` id good on every gateway, `config`, `all_sockets`
//! of the whole cluster, `server_stats` from every gateway through one connection, live
//! `socket_connected` / `socket_disconnected` / `room_joined`, `event_sent` for what sockets of
//! other gateways got (a room event, an emit command) with `packetsOut` / `bytesOut` in the
//! stats, and the `emit`, `join` and `_disconnect` commands acting on sockets of other
//! gateways. Admin connections are not client load. The dashboard itself, in Chromium, is
//! `e2e_admin_ui_browser.rs`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, metric_value, metrics};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery staple";

fn recv(driver: &mut Driver, id: &str, name: &str) -> Vec<Value> {
    driver
        .events_of(id, "recv")
        .into_iter()
        .filter(|e| e["name"] == name)
        .map(|e| e["args"].clone())
        .collect()
}

async fn wait_recv(
    driver: &mut Driver,
    id: &str,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let e = driver
        .wait_event(&format!("{id} to receive {name}"), WAIT, |e| {
            e["id"] == id && e["event"] == "recv" && e["name"] == name && pred(&e["args"])
        })
        .await?;
    Ok(e["args"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ui_protocol_spans_the_cluster() -> anyhow::Result<()> {
    // Cost 4: the test is about the protocol, not about bcrypt's slowness.
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let cluster = Cluster::with_relay(3, &support::admin_ui_args(&hash), &[])?;
    cluster.wait_linked(WAIT).await?;
    let mut d = Driver::node().await?;
    let mut sids = Vec::new();
    for (i, gw) in cluster.gateways.iter().enumerate() {
        let id = format!("c{i}");
        d.connect_raw(&id, gw.url(), None, json!({"transports": ["websocket"]}))
            .await?;
        let connected = d.connected(&id, WAIT).await?;
        sids.push(connected["sid"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(d.join("c1", "r").await?["ok"] == true);

    // A wrong password is the UI's own refusal.
    let admin_auth = |password: &str| {
        json!({"namespace": "/admin", "transports": ["websocket"],
                                             "auth": {"username": "admin", "password": password}})
    };
    d.connect_raw(
        "intruder",
        cluster.gateways[0].url(),
        None,
        admin_auth("nope"),
    )
    .await?;
    let refused = d.refused("intruder", WAIT).await?;
    ensure!(refused["message"] == "invalid credentials", "{refused}");

    // Login on gw-0: session, config, every socket of the cluster.
    d.connect_raw(
        "admin",
        cluster.gateways[0].url(),
        None,
        admin_auth(PASSWORD),
    )
    .await?;
    d.connected("admin", WAIT).await?;
    let session = wait_recv(&mut d, "admin", "session", |_| true).await?[0]
        .as_str()
        .context("session id")?
        .to_owned();
    let config = wait_recv(&mut d, "admin", "config", |_| true).await?;
    let features = config[0]["supportedFeatures"].clone();
    for f in [
        "EMIT",
        "JOIN",
        "LEAVE",
        "DISCONNECT",
        "AGGREGATED_EVENTS",
        "ALL_EVENTS",
    ] {
        ensure!(
            features.as_array().is_some_and(|a| a.contains(&json!(f))),
            "{features}"
        );
    }
    let all = wait_recv(&mut d, "admin", "all_sockets", |_| true).await?;
    let clients: Vec<&Value> = all[0]
        .as_array()
        .context("all_sockets")?
        .iter()
        .filter(|s| s["nsp"] == "/")
        .collect();
    let ids: BTreeSet<&str> = clients.iter().filter_map(|s| s["id"].as_str()).collect();
    ensure!(
        ids == sids.iter().map(String::as_str).collect(),
        "all_sockets {ids:?}, want {sids:?}"
    );
    let c1 = clients
        .iter()
        .find(|s| s["id"] == sids[1])
        .context("c1 in all_sockets")?;
    let rooms = c1["rooms"].as_array().context("rooms")?;
    ensure!(
        rooms.contains(&json!("r")) && rooms.contains(&json!(sids[1])),
        "c1 (on another gateway) rooms: {rooms:?}"
    );

    // One connection sees every gateway's stats; admin sockets are not client load.
    let mut seen = BTreeSet::new();
    for node in cluster.node_ids() {
        let stats = wait_recv(&mut d, "admin", "server_stats", |a| {
            a[0]["serverId"] == node
        })
        .await?;
        ensure!(stats[0]["clientsCount"] == 1, "{stats}");
        let namespaces = stats[0]["namespaces"].as_array().context("namespaces")?;
        ensure!(
            namespaces.contains(&json!({"name": "/", "socketsCount": 1})),
            "{namespaces:?}"
        );
        seen.insert(node);
    }
    ensure!(seen.len() == 3);
    let text = metrics(cluster.gateways[0].url()).await?;
    ensure!(
        metric_value(&text, "switchyard_gateway_connections") == Some(1.0),
        "the admin connection counted as load"
    );

    // The session id, not the password, logs in on another gateway.
    d.connect_raw(
        "admin2",
        cluster.gateways[2].url(),
        None,
        json!({"namespace": "/admin", "transports": ["websocket"], "auth": {"sessionId": session}}),
    )
    .await?;
    d.connected("admin2", WAIT).await?;
    ensure!(recv(&mut d, "admin2", "session").is_empty());

    // Live events from other gateways.
    d.connect_raw(
        "c3",
        cluster.gateways[1].url(),
        None,
        json!({"transports": ["websocket"]}),
    )
    .await?;
    let c3 = d.connected("c3", WAIT).await?["sid"].clone();
    wait_recv(&mut d, "admin", "socket_connected", |a| a[0]["id"] == c3).await?;
    ensure!(d.join("c3", "lobby").await?["ok"] == true);
    wait_recv(&mut d, "admin", "room_joined", |a| {
        a[0] == "/" && a[1] == "lobby" && a[2] == c3
    })
    .await?;

    // What a socket of another gateway was sent: a room event published on gw-0 reaches c1 on
    // gw-1, and the admin connection on gw-0 sees exactly what c1 got, stamp included.
    let published = d.publish("c0", "r", "news", json!({"x": 1})).await?;
    ensure!(published["ok"] == true, "{published}");
    let got = wait_recv(&mut d, "c1", "news", |_| true).await?;
    ensure!(
        got[0] == json!({"x": 1}) && got[1]["room"] == "r" && got[1]["offset"].is_u64(),
        "{got}"
    );
    let mut want = vec![json!("news")];
    want.extend(got.as_array().context("news args")?.iter().cloned());
    let sent = wait_recv(&mut d, "admin", "event_sent", |a| {
        a[1] == sids[1].as_str() && a[2][0] == "news"
    })
    .await?;
    ensure!(sent[0] == "/", "{sent}");
    ensure!(
        sent[2] == Value::Array(want),
        "event_sent {sent}, c1 got {got}"
    );
    ensure!(sent[3].is_string(), "event_sent's date: {sent}");
    ensure!(
        !recv(&mut d, "admin", "event_sent")
            .iter()
            .any(|a| a[2][0] == "news" && a[1] != sids[1].as_str()),
        "event_sent for a socket outside the room"
    );
    // gw-1's stats count what it sent, in packets and bytes.
    let gw1 = cluster.node_ids()[1].clone();
    let has = |stats: &Value, ty: &str| {
        stats[0]["aggregatedEvents"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["type"] == ty && e["count"].as_u64() > Some(0))
        })
    };
    let stats = wait_recv(&mut d, "admin", "server_stats", |a| {
        a[0]["serverId"] == gw1.as_str() && has(a, "packetsOut")
    })
    .await?;
    ensure!(has(&stats, "bytesOut"), "{stats}");

    // Commands act on sockets of other gateways: a socket is named by its id.
    d.request(json!({"cmd": "emit", "id": "admin", "event": "emit",
                     "args": ["/", sids[2], "poke", {"n": 1}, 2]}))
        .await?;
    let poke = wait_recv(&mut d, "c2", "poke", |_| true).await?;
    ensure!(poke == json!([{"n": 1}, 2]), "{poke}");
    // Applied on gw-2 from another gateway's broadcast, reported there too.
    let sent = wait_recv(&mut d, "admin2", "event_sent", |a| a[2][0] == "poke").await?;
    ensure!(
        sent[0] == "/" && sent[1] == sids[2].as_str() && sent[2] == json!(["poke", {"n": 1}, 2]),
        "{sent}"
    );
    ensure!(recv(&mut d, "c0", "poke").is_empty());
    d.request(json!({"cmd": "emit", "id": "admin", "event": "join", "args": ["/", "j", sids[0]]}))
        .await?;
    d.request(json!({"cmd": "emit", "id": "admin2", "event": "emit", "args": ["/", "j", "in-j"]}))
        .await?;
    wait_recv(&mut d, "c0", "in-j", |_| true).await?;
    d.request(json!({"cmd": "emit", "id": "admin", "event": "_disconnect",
                     "args": ["/", false, sids[2]]}))
        .await?;
    let gone = d
        .wait_event("c2 disconnected by the admin UI", WAIT, |e| {
            e["id"] == "c2" && e["event"] == "disconnect"
        })
        .await?;
    ensure!(gone["reason"] == "io server disconnect", "{gone}");
    wait_recv(&mut d, "admin", "socket_disconnected", |a| {
        a[0] == "/" && a[1] == sids[2].as_str()
    })
    .await?;
    ensure!(recv(&mut d, "c1", "in-j").is_empty());
    ensure!(d.events_of("c1", "disconnect").is_empty());

    d.shutdown().await?;
    Ok(())
}

/// A single gateway (socketioxide's local adapter, no relay): a room event and the UI's own
/// `emit` command are reported as sent, each once, with what the socket got, and counted in
/// the stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_gateway_reports_what_it_sends() -> anyhow::Result<()> {
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let cluster = Cluster::start(1, &support::admin_ui_args(&hash))?;
    let url = cluster.gateways[0].url();
    let mut d = Driver::node().await?;
    let mut sids = Vec::new();
    for id in ["c0", "c1"] {
        d.connect_raw(id, url, None, json!({"transports": ["websocket"]}))
            .await?;
        sids.push(d.connected(id, WAIT).await?["sid"].clone());
    }
    ensure!(d.join("c1", "r").await?["ok"] == true);
    d.connect_raw(
        "admin",
        url,
        None,
        json!({"namespace": "/admin", "transports": ["websocket"],
               "auth": {"username": "admin", "password": PASSWORD}}),
    )
    .await?;
    d.connected("admin", WAIT).await?;
    wait_recv(&mut d, "admin", "config", |_| true).await?;

    ensure!(d.publish("c0", "r", "news", json!({"x": 1})).await?["ok"] == true);
    let got = wait_recv(&mut d, "c1", "news", |_| true).await?;
    ensure!(got == json!([{"x": 1}, {"room": "r"}]), "{got}");
    let sent = wait_recv(&mut d, "admin", "event_sent", |a| a[2][0] == "news").await?;
    ensure!(
        sent[0] == "/" && sent[1] == sids[1] && sent[2] == json!(["news", {"x": 1}, {"room": "r"}]),
        "{sent}"
    );

    d.request(json!({"cmd": "emit", "id": "admin", "event": "emit",
                     "args": ["/", sids[0], "poke", {"n": 1}]}))
        .await?;
    wait_recv(&mut d, "c0", "poke", |_| true).await?;
    // Events reach the UI in the order they were reported: once the next one is there, a
    // second report of the poke would have been too.
    ensure!(d.publish("c0", "r", "after", json!(2)).await?["ok"] == true);
    wait_recv(&mut d, "admin", "event_sent", |a| a[2][0] == "after").await?;
    let pokes: Vec<Value> = recv(&mut d, "admin", "event_sent")
        .into_iter()
        .filter(|a| a[2][0] == "poke")
        .collect();
    ensure!(
        pokes.len() == 1 && pokes[0][1] == sids[0] && pokes[0][2] == json!(["poke", {"n": 1}]),
        "{pokes:?}"
    );
    let stats = wait_recv(&mut d, "admin", "server_stats", |a| {
        a[0]["aggregatedEvents"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "packetsOut"))
    })
    .await?;
    let count = |ty: &str| -> u64 {
        stats[0]["aggregatedEvents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == ty)
            .filter_map(|e| e["count"].as_u64())
            .sum()
    };
    ensure!(count("bytesOut") > count("packetsOut"), "{stats}");
    d.shutdown().await?;
    Ok(())
}
