//! History, offsets and resume, end to end: Redis, placement, the relay (history on) and three
//! gateways, all real processes, with the JS helper (`clients/js/src/switchyard.mjs`).
//!
//! - a gateway killed (SIGKILL) mid-stream: every subscriber, wherever it was, ends with every
//!   numbered event exactly once and in order (its helper resumes on another gateway);
//! - a client away longer than the history window, and a client whose epoch was lost (Redis
//!   restarted empty), get `recovered: false` and no replay; a client within the window gets
//!   exactly what it missed;
//! - a client joining mid-stream gets the retained state, then every later event, gap-free.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::json;
use support::{Cluster, Driver, metric_value, metrics};
use switchyard_testkit::cluster::Gateway;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// Connects `id` straight to `gw` with no token (gateways allow anonymous clients).
async fn connect_raw(driver: &mut Driver, id: &str, gw: &Gateway) -> anyhow::Result<()> {
    driver
        .connect_raw(id, gw.url(), None, json!({"transports": ["websocket"]}))
        .await?;
    driver.connected(id, WAIT).await.map(drop)
}

/// The `n` of every `tick` client `id` received, in arrival order.
fn ticks(driver: &mut Driver, id: &str) -> Vec<u64> {
    driver
        .events_of(id, "recv")
        .iter()
        .filter(|e| e["name"] == "tick")
        .filter_map(|e| e["args"][0]["n"].as_u64())
        .collect()
}

/// Publishes `tick {n}` for `range` from a raw client `id` of its own driver, one after the
/// other (each waits for its ack, so the offsets follow `n`), `retain` on each; counts progress.
fn spawn_publisher(
    mut driver: Driver,
    id: &'static str,
    range: std::ops::Range<u64>,
    progress: Arc<AtomicU64>,
    pause: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<Driver>> {
    tokio::spawn(async move {
        for n in range {
            let res = driver
                .request(
                    json!({"cmd": "publish", "id": id, "room": "feed", "event": "tick",
                                "data": {"n": n}, "retain": true}),
                )
                .await
                .with_context(|| format!("publishing {n}"))?;
            if res["ack"]["ok"] != true {
                bail!("publish {n} refused: {res}");
            }
            progress.store(n + 1, Ordering::SeqCst);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(driver)
    })
}

async fn wait_progress(progress: &AtomicU64, at_least: u64) -> anyhow::Result<()> {
    eventually(format!("{at_least} publishes"), WAIT, async || {
        let n = progress.load(Ordering::SeqCst);
        ensure!(n >= at_least, "publisher stuck at {n}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_killed_gateway_miss_nothing_and_get_nothing_twice() -> anyhow::Result<()>
{
    const SUBSCRIBERS: usize = 150;
    const EVENTS: u64 = 1000;
    let cluster = Cluster::with_relay(3, &["--allow-anonymous"], &[])?;
    cluster.wait_linked(WAIT).await?;

    let mut subs = Driver::node().await?;
    subs.connect_many(
        "s",
        SUBSCRIBERS,
        json!({"placement": cluster.placement.http_url(), "transports": ["websocket"],
               "useHelper": true}),
    )
    .await?;
    subs.wait_counts("every subscriber connected", WAIT, |c| {
        c.connected == SUBSCRIBERS
    })
    .await?;
    for i in 0..SUBSCRIBERS {
        let ack = subs.join(&format!("s{i}"), "feed").await?;
        assert_eq!(ack["ok"], true, "s{i} joins: {ack}");
        assert!(ack["epoch"].is_string(), "join gives the epoch: {ack}");
    }
    let on_dead = subs.count().await?.on(cluster.gateways[0].node_id());
    assert!(on_dead > 0, "some subscribers are on the gateway to kill");

    // The publisher sits on a gateway that survives.
    let mut publisher = Driver::node().await?;
    connect_raw(&mut publisher, "p", &cluster.gateways[1]).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let task = spawn_publisher(
        publisher,
        "p",
        0..EVENTS,
        progress.clone(),
        Duration::from_millis(2),
    );
    wait_progress(&progress, EVENTS / 3).await?;
    cluster.gateways[0].kill()?;
    let publisher = task.await??;

    for i in 0..SUBSCRIBERS {
        let id = format!("s{i}");
        subs.wait_event(&format!("{id} to get the last event"), WAIT, |e| {
            e["id"] == id.as_str()
                && e["event"] == "recv"
                && e["name"] == "tick"
                && e["args"][0]["n"] == EVENTS - 1
        })
        .await?;
    }
    let want: Vec<u64> = (0..EVENTS).collect();
    let mut resumed = 0;
    for i in 0..SUBSCRIBERS {
        let id = format!("s{i}");
        let got = ticks(&mut subs, &id);
        assert_eq!(got.len(), want.len(), "{id}: every event exactly once");
        assert!(got == want, "{id}: every event once, in order");
        let resumes = subs.events_of(&id, "resumed");
        for r in &resumes {
            assert_eq!(r["recovered"], true, "{id} recovered: {r}");
        }
        resumed += resumes.len();
    }
    assert_eq!(
        resumed, on_dead,
        "each subscriber of the dead gateway resumed once"
    );
    eprintln!("{SUBSCRIBERS} subscribers x {EVENTS} events, {on_dead} resumed: exact");
    publisher.shutdown().await?;
    subs.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_exact_within_the_window_and_refused_outside_it() -> anyhow::Result<()> {
    let cluster = Cluster::with_relay(2, &["--allow-anonymous"], &["--history-max-len", "10"])?;
    cluster.wait_linked(WAIT).await?;
    let mut js = Driver::node().await?;
    connect_raw(&mut js, "p", &cluster.gateways[0]).await?;
    connect_raw(&mut js, "a", &cluster.gateways[1]).await?;
    let ack = js.join("a", "feed").await?;
    let epoch = ack["epoch"].as_str().context("join epoch")?.to_owned();
    let start = ack["offset"].as_u64().context("join offset")?;

    for n in 0..5u64 {
        let ack = js.publish("p", "feed", "tick", json!({"n": n})).await?;
        assert_eq!(ack["offset"], start + n + 1, "offsets follow: {ack}");
    }

    // Within the window, on another gateway: exactly the missed events, in order.
    connect_raw(&mut js, "b", &cluster.gateways[0]).await?;
    let ack = js
        .request(
            json!({"cmd": "emit", "id": "b", "event": "resume", "ack": true,
                        "args": [{"epoch": epoch, "offset": start + 2, "rooms": ["feed"]}]}),
        )
        .await?["ack"]
        .clone();
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["replayed"], 3, "{ack}");
    eventually("b to get the replay", WAIT, async || {
        let got = ticks(&mut js, "b");
        ensure!(got.len() >= 3, "b got {got:?}");
        Ok(())
    })
    .await?;
    assert_eq!(ticks(&mut js, "b"), [2, 3, 4]);
    // ... then live events.
    js.publish("p", "feed", "tick", json!({"n": 5})).await?;
    js.wait_event("b gets the live event", WAIT, |e| {
        e["id"] == "b" && e["event"] == "recv" && e["args"][0]["n"] == 5
    })
    .await?;
    assert_eq!(ticks(&mut js, "b"), [2, 3, 4, 5]);

    // Away longer than the window (max len 10, trimmed approximately): refused, no replay.
    for n in 6..600u64 {
        js.publish("p", "feed", "tick", json!({"n": n})).await?;
    }
    // Gateway 1 has delivered every tick (to `a`) before `c` and `d` arrive there: what they
    // must not get is a replay, and no tick is still in flight to blur that.
    js.wait_event("a gets the last tick", WAIT, |e| {
        e["id"] == "a" && e["event"] == "recv" && e["args"][0]["n"] == 599
    })
    .await?;
    connect_raw(&mut js, "c", &cluster.gateways[1]).await?;
    let ack = js
        .request(
            json!({"cmd": "emit", "id": "c", "event": "resume", "ack": true,
                        "args": [{"epoch": epoch, "offset": start + 1, "rooms": ["feed"]}]}),
        )
        .await?["ack"]
        .clone();
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["replayed"], 0, "{ack}");

    // History lost (Redis restarted empty): the epoch changed, refused. The relay loses its
    // subscription and cuts every link; when gw-1's link is back it severs every socket holding
    // gates (the gap), as it must. `d` resumes after that: a resume in flight across the gap is
    // severed too, and a raw client does not come back by itself.
    let gaps = async || -> anyhow::Result<f64> {
        let text = metrics(cluster.gateways[1].url()).await?;
        Ok(metric_value(&text, "switchyard_gateway_relay_gaps_total").unwrap_or(0.0))
    };
    let before = gaps().await?;
    cluster.redis.restart_empty()?;
    eventually("gw-1 to relink after the gap", WAIT, async || {
        let now = gaps().await?;
        ensure!(now > before, "gaps {before} -> {now}");
        Ok(())
    })
    .await?;
    connect_raw(&mut js, "d", &cluster.gateways[1]).await?;
    let ack = eventually("d's resume to be answered", WAIT, async || {
        let res = js
            .request(
                json!({"cmd": "emit", "id": "d", "event": "resume", "ack": true,
                            "args": [{"epoch": epoch, "offset": start + 599, "rooms": ["feed"]}]}),
            )
            .await?;
        let ack = res["ack"].clone();
        ensure!(ack["ok"] == true, "answered {ack}");
        Ok(ack)
    })
    .await?;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], json!(epoch), "a new epoch: {ack}");
    assert!(ticks(&mut js, "c").is_empty() && ticks(&mut js, "d").is_empty());
    js.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_retained_state_then_every_later_event() -> anyhow::Result<()> {
    const EVENTS: u64 = 600;
    let cluster = Cluster::with_relay(3, &["--allow-anonymous"], &[])?;
    cluster.wait_linked(WAIT).await?;
    let mut publisher = Driver::node().await?;
    connect_raw(&mut publisher, "p", &cluster.gateways[0]).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let task = spawn_publisher(publisher, "p", 0..EVENTS, progress.clone(), Duration::ZERO);

    let mut js = Driver::node().await?;
    for (i, gw) in cluster.gateways.iter().enumerate() {
        connect_raw(&mut js, &format!("late{i}"), gw).await?;
    }
    let mut states = Vec::new();
    for i in 0..3 {
        wait_progress(&progress, (i + 1) * EVENTS / 5).await?;
        let id = format!("late{i}");
        let ack = js.join(&id, "feed").await?;
        assert_eq!(ack["ok"], true, "{ack}");
        let state = ack["retained"]["data"]["n"]
            .as_u64()
            .with_context(|| format!("{id} gets the retained state: {ack}"))?;
        let retained_at = ack["retained"]["offset"]
            .as_u64()
            .with_context(|| format!("{id}: the retained event has an offset: {ack}"))?;
        let head = ack["offset"]
            .as_u64()
            .with_context(|| format!("{id}: the join has an offset: {ack}"))?;
        assert!(
            retained_at <= head,
            "{id}: the retained event is at or before the head the join starts from: {ack}"
        );
        states.push(state);
    }
    let publisher = task.await??;
    for (i, state) in states.iter().enumerate() {
        let id = format!("late{i}");
        js.wait_event(&format!("{id} to get the last event"), WAIT, |e| {
            e["id"] == id.as_str()
                && e["event"] == "recv"
                && e["name"] == "tick"
                && e["args"][0]["n"] == EVENTS - 1
        })
        .await?;
        let want: Vec<u64> = (state + 1..EVENTS).collect();
        assert!(
            ticks(&mut js, &id) == want,
            "{id}: state {state}, then every later event once, in order"
        );
    }
    publisher.shutdown().await?;
    js.shutdown().await?;
    Ok(())
}
