//! `@socket.io/admin-ui`'s protocol against three gateways (`--admin-ui`) and a relay, spoken by
//! the official `socket.io-client` exactly as the dashboard speaks it (`ui/src/App.vue`): login
//! with `{username, password}`, a `session` id good on every gateway, `config`, `all_sockets`
//! of the whole cluster, `server_stats` from every gateway through one connection, live
//! `socket_connected` / `socket_disconnected` / `room_joined`, and the `emit`, `join` and
//! `_disconnect` commands acting on sockets of other gateways. Admin connections are not
//! client load. The dashboard itself, in Chromium, is `e2e_admin_ui_browser.rs`.

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
    let cluster = Cluster::with_relay(
        3,
        &[
            "--allow-anonymous",
            "--admin-ui",
            "--admin-ui-password-hash",
            &hash,
        ],
        &[],
    )?;
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

    // Commands act on sockets of other gateways: a socket is named by its id.
    d.request(json!({"cmd": "emit", "id": "admin", "event": "emit",
                     "args": ["/", sids[2], "poke", {"n": 1}, 2]}))
        .await?;
    let poke = wait_recv(&mut d, "c2", "poke", |_| true).await?;
    ensure!(poke == json!([{"n": 1}, 2]), "{poke}");
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
