//! Interest routing end to end: four gateways linked to two relay replicas, the official
//! Socket.IO client. Joins race a steady stream of publishes: each round a room gets its first
//! member on every gateway (so every join declares the room to both replicas and waits for them)
//! while the publisher keeps publishing to every room. Then every member must hold exactly the
//! events of its room stamped after its join offset, in offset order, none twice; and the
//! gateway without members must not have received a single room frame.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, metric_value, metrics, wait_relay_members};
use switchyard_testkit::wait::eventually;
use tokio::sync::watch;

/// A guard against hanging, not a measurement.
const WAIT: Duration = Duration::from_secs(60);

/// Rooms (one per round of joins).
const ROOMS: usize = 6;

/// Member gateways (gw-1..=3); gw-0 holds only the publisher.
const MEMBER_GATEWAYS: usize = 3;

/// One publish: its room and the offset it was acknowledged with (`None`: refused).
#[derive(Debug)]
struct Sent {
    room: String,
    offset: Option<u64>,
}

/// Publishes `{"n"}` round robin over every room from client `pub` until `stop` turns true,
/// each after the previous one's ack; returns what was acknowledged.
async fn publish_until(
    mut driver: Driver,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
) -> anyhow::Result<(Driver, Vec<Sent>)> {
    let mut sent = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow_and_update() {
        let room = format!("r{}", n as usize % ROOMS);
        let res = driver
            .try_request(json!({"cmd": "publish", "id": "pub", "room": room,
                                "event": "tick", "data": {"n": n}}))
            .await?;
        let offset = (res["ok"] == true && res["ack"]["ok"] == true)
            .then(|| res["ack"]["offset"].as_u64())
            .flatten();
        sent.push(Sent { room, offset });
        n += 1;
        progress.send_replace(n);
    }
    Ok((driver, sent))
}

/// Offsets of the `tick`s and `fence`s client `id` received, in arrival order.
fn received(driver: &mut Driver, id: &str) -> Vec<(String, u64)> {
    driver
        .events_of(id, "recv")
        .iter()
        .filter_map(|e: &Value| {
            let name = e["name"].as_str()?.to_owned();
            Some((name, e["args"][1]["offset"].as_u64()?))
        })
        .collect()
}

/// The value of the sample written exactly `key` (name and labels) in a scrape.
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == key))
        .and_then(|(_, v)| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_racing_publishes_on_two_replicas_get_every_later_event_once_and_idle_gateways_none()
-> anyhow::Result<()> {
    let cluster = Cluster::with_relays(1 + MEMBER_GATEWAYS, 2, &["--allow-anonymous"], &[])?;
    for relay in &cluster.relays {
        wait_relay_members(relay.grpc_url(), 1 + MEMBER_GATEWAYS, WAIT).await?;
    }
    let ws = json!({"transports": ["websocket"]});

    let mut publisher = Driver::node().await?;
    publisher
        .connect_raw("pub", cluster.gateways[0].url(), None, ws.clone())
        .await?;
    publisher.connected("pub", WAIT).await?;

    // One member per room and member gateway, all connected before the race starts.
    let mut members = Driver::node().await?;
    let member = |room: usize, gw: usize| format!("m{room}-{gw}");
    for room in 0..ROOMS {
        for gw in 1..=MEMBER_GATEWAYS {
            let id = member(room, gw);
            members
                .connect_raw(&id, cluster.gateways[gw].url(), None, ws.clone())
                .await?;
            members.connected(&id, WAIT).await?;
        }
    }

    let (stop, stopped) = watch::channel(false);
    let (progress, mut published) = watch::channel(0u64);
    let publishing = tokio::spawn(publish_until(publisher, stopped, progress));
    // Round `room`: its first member joins on every member gateway, while publishes to it (and
    // to every other room) go on.
    let mut joined_at: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for room in 0..ROOMS {
        let name = format!("r{room}");
        for gw in 1..=MEMBER_GATEWAYS {
            // A round of publishes (one per room) between two joins, so joins keep racing them.
            let target = *published.borrow_and_update() + ROOMS as u64;
            tokio::time::timeout(WAIT, published.wait_for(|n| *n >= target))
                .await
                .context("the publisher stalled")??;
            let id = member(room, gw);
            let ack = members.join(&id, &name).await?;
            ensure!(ack["ok"] == true, "{id} join {name}: {ack}");
            let offset = ack["offset"].as_u64().context("join ack without offset")?;
            joined_at.insert(id, (name.clone(), offset));
        }
    }
    stop.send_replace(true);
    let (mut publisher, sent) = publishing.await??;
    ensure!(
        sent.iter().all(|s| s.offset.is_some()),
        "a publish was refused: {sent:?}"
    );

    // A fence per room, stamped after every tick: once a member has its room's fence, every
    // tick that will ever reach it has.
    let mut fences = BTreeMap::new();
    for room in 0..ROOMS {
        let name = format!("r{room}");
        let ack = publisher.publish("pub", &name, "fence", json!({})).await?;
        ensure!(ack["ok"] == true, "fence of {name}: {ack}");
        fences.insert(name, ack["offset"].as_u64().context("fence offset")?);
    }
    for (id, (room, _)) in &joined_at {
        let fence = fences[room];
        members
            .wait_event(&format!("{id} to get the fence of {room}"), WAIT, |e| {
                e["id"] == id.as_str()
                    && e["event"] == "recv"
                    && e["name"] == "fence"
                    && e["args"][1]["offset"] == fence
            })
            .await?;
    }

    for (id, (room, from)) in &joined_at {
        let got: Vec<u64> = received(&mut members, id)
            .into_iter()
            .filter(|(name, _)| name == "tick")
            .map(|(_, offset)| offset)
            .collect();
        let want: Vec<u64> = sent
            .iter()
            .filter(|s| s.room == *room)
            .filter_map(|s| s.offset)
            .filter(|offset| offset > from)
            .collect();
        if got != want {
            bail!(
                "{id} joined {room} at offset {from}: expected exactly {want:?} in order, \
                 got {got:?}"
            );
        }
    }

    // gw-0 has no member of any room: no room frame reached it, while the replicas saved
    // frames, and the member gateways declared their rooms.
    let idle = metrics(cluster.gateways[0].url()).await?;
    let received_idle =
        metric_value(&idle, "switchyard_gateway_relay_frames_received_total").unwrap_or(0.0);
    ensure!(
        received_idle == 0.0,
        "gw-0 has no members, yet received {received_idle} frames"
    );
    eventually(
        "the member gateways to declare their rooms",
        WAIT,
        async || {
            for gw in 1..=MEMBER_GATEWAYS {
                let text = metrics(cluster.gateways[gw].url()).await?;
                let rooms = sample(&text, "switchyard_gateway_interest_rooms{namespace=\"/\"}");
                ensure!(
                    rooms == Some(ROOMS as f64),
                    "gw-{gw} declares {rooms:?} rooms"
                );
            }
            Ok(())
        },
    )
    .await?;
    for relay in &cluster.relays {
        let text = metrics(relay.http_url()).await?;
        let saved = metric_value(&text, "switchyard_relay_frames_saved_total").unwrap_or(0.0);
        ensure!(saved > 0.0, "relay {} saved no frame", relay.grpc_url());
    }

    // Leaving empties a room on a gateway: the gateway withdraws it from both replicas.
    for room in 0..ROOMS {
        let ack = members.leave(&member(room, 1), &format!("r{room}")).await?;
        ensure!(ack["ok"] == true, "leave: {ack}");
    }
    eventually("gw-1 to withdraw its rooms", WAIT, async || {
        let text = metrics(cluster.gateways[1].url()).await?;
        let rooms = sample(&text, "switchyard_gateway_interest_rooms{namespace=\"/\"}");
        ensure!(rooms == Some(0.0), "gw-1 declares {rooms:?} rooms");
        for relay in &cluster.relays {
            let text = metrics(relay.http_url()).await?;
            let linked = sample(
                &text,
                "switchyard_relay_link_interest_rooms{node_id=\"gw-1\"}",
            );
            ensure!(linked == Some(0.0), "relay sees gw-1 with {linked:?} rooms");
        }
        Ok(())
    })
    .await?;
    publisher.shutdown().await?;
    members.shutdown().await
}

/// A join waits for every replica's acknowledgement, but a frozen replica (SIGSTOP: its
/// connections stay open, it answers nothing) cannot hold joins hostage: its link is cut after
/// the interest timeout and the join completes through the other replica, with every later
/// event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_cut_and_the_join_completes_through_the_other() -> anyhow::Result<()> {
    let cluster = Cluster::with_relays(2, 2, &["--allow-anonymous"], &[])?;
    for relay in &cluster.relays {
        wait_relay_members(relay.grpc_url(), 2, WAIT).await?;
    }
    let ws = json!({"transports": ["websocket"]});
    let mut clients = Driver::node().await?;
    clients
        .connect_raw("pub", cluster.gateways[0].url(), None, ws.clone())
        .await?;
    clients
        .connect_raw("m", cluster.gateways[1].url(), None, ws)
        .await?;
    clients.connected("pub", WAIT).await?;
    clients.connected("m", WAIT).await?;

    cluster.relays[1].pause()?;
    let ack = clients.join("m", "f").await?;
    cluster.relays[1].resume()?;
    ensure!(ack["ok"] == true, "join with a frozen replica: {ack}");
    let from = ack["offset"].as_u64().context("join offset")?;
    let mut want = Vec::new();
    for n in 0..3 {
        let ack = clients
            .publish("pub", "f", "tick", json!({ "n": n }))
            .await?;
        ensure!(ack["ok"] == true, "publish: {ack}");
        want.push(ack["offset"].as_u64().context("publish offset")?);
    }
    ensure!(
        want.iter().all(|o| *o > from),
        "offsets {want:?} after {from}"
    );
    let last = want[want.len() - 1];
    clients
        .wait_event("m to get the last tick", WAIT, |e| {
            e["id"] == "m" && e["event"] == "recv" && e["args"][1]["offset"] == last
        })
        .await?;
    let got: Vec<u64> = received(&mut clients, "m")
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    ensure!(got == want, "m got {got:?}, expected {want:?}");
    clients.shutdown().await
}
