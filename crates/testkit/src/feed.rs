//! A numbered feed of room events and the exactness check that goes with it: the way every
//! fault test (`crates/gateway/tests/e2e_faults.rs`, `xtask/tests/up.rs`) shows that nothing
//! acknowledged is lost or doubled.
//!
//! [`Publishing`] publishes `{"n": n}` as event [`TICK`] to one room from one [`Driver`]
//! client, one after the other (each waits for its ack, so offsets follow `n`), until stopped.
//! [`every_subscriber_got_exactly`] then checks every subscriber against the acknowledged
//! publishes, and [`placement_waits`] measures how long each client that lost its gateway
//! waited for a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::driver::Driver;
use crate::wait::{eventually, give_up};

/// The event name of the feed.
pub const TICK: &str = "tick";

/// A guard against hanging, not a measurement.
const WAIT: Duration = Duration::from_secs(60);

/// One publish attempt and what the publisher was told.
#[derive(Debug, Clone)]
pub struct Published {
    pub n: u64,
    /// The ack said `ok: true` (the event has an offset and must reach every member).
    pub acked: bool,
    /// The driver's result: the ack, or why there was none.
    pub answer: Value,
}

/// Fails unless every publish was acknowledged, quoting the first that was not.
pub fn all_acked(published: &[Published]) -> anyhow::Result<()> {
    match published.iter().find(|p| !p.acked) {
        Some(p) => bail!("publish {} failed: {}", p.n, p.answer),
        None => Ok(()),
    }
}

/// A publisher running until [`Publishing::stop`]: client `id` of its driver publishes
/// [`TICK`] `{"n": n}` to `room` from `next` on, every 20 ms. A refused or failed publish is
/// recorded, not fatal.
pub struct Publishing {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<(Driver, Vec<Published>)>>,
}

impl Publishing {
    pub fn start(mut driver: Driver, id: &str, room: &str, next: u64) -> Publishing {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let (id, room) = (id.to_owned(), room.to_owned());
        let task = {
            let (stop, progress) = (stop.clone(), progress.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                let mut n = next;
                while !stop.load(Ordering::SeqCst) {
                    let res = driver
                        .try_request(json!({"cmd": "publish", "id": id, "room": room,
                                            "event": TICK, "data": {"n": n}}))
                        .await
                        .with_context(|| format!("publishing {n}"))?;
                    log.push(Published {
                        n,
                        acked: res["ok"] == true && res["ack"]["ok"] == true,
                        answer: res,
                    });
                    n += 1;
                    progress.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok((driver, log))
            })
        };
        Publishing {
            stop,
            progress,
            task,
        }
    }

    /// Waits until `more` further publishes were attempted.
    pub async fn advance(&self, more: u64) -> anyhow::Result<()> {
        let target = self.progress.load(Ordering::SeqCst) + more;
        eventually(format!("{more} more publishes"), WAIT, async || {
            let progress = self.progress.load(Ordering::SeqCst);
            if progress >= target {
                return Ok(());
            }
            let stuck = anyhow::anyhow!("publisher stuck at {progress}");
            Err(if self.task.is_finished() {
                give_up(stuck)
            } else {
                stuck
            })
        })
        .await
    }

    /// Stops publishing; returns the driver and every attempt, in order.
    pub async fn stop(self) -> anyhow::Result<(Driver, Vec<Published>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

/// `(n, epoch)` of every [`TICK`] client `id` received, in arrival order.
pub fn ticks(driver: &mut Driver, id: &str) -> Vec<(u64, String)> {
    driver
        .events_of(id, "recv")
        .iter()
        .filter(|e| e["name"] == TICK)
        .filter_map(|e| {
            let n = e["args"][0]["n"].as_u64()?;
            let epoch = e["args"][1]["epoch"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Some((n, epoch))
        })
        .collect()
}

/// The feed's publisher, which publishes the fence of [`every_subscriber_got_exactly`]: its
/// driver, its client id and the feed's room.
pub struct Fence<'a> {
    pub driver: &'a mut Driver,
    pub id: &'a str,
    pub room: &'a str,
}

/// The event name of a fence.
pub const FENCE: &str = "fence";

/// Publishes a **fence** (an event after every tick, acknowledged) and waits until every one of
/// `subscribers` received it; then checks that each got every acknowledged tick, in order, none
/// twice. Events reach a socket in offset order and the fence was stamped after every tick, so
/// once a subscriber has the fence, every tick that will ever reach it has: the check cannot be
/// early, and nothing sleeps. A refused publish may or may not have been delivered (its refusal
/// may have been a lost answer), but never twice or out of order.
pub async fn every_subscriber_got_exactly(
    subs: &mut Driver,
    subscribers: &[String],
    fence: Fence<'_>,
    published: &[Published],
) -> anyhow::Result<()> {
    let acked: Vec<u64> = published.iter().filter(|p| p.acked).map(|p| p.n).collect();
    ensure!(!acked.is_empty(), "nothing was published");
    static FENCES: AtomicU64 = AtomicU64::new(0);
    let number = FENCES.fetch_add(1, Ordering::SeqCst);
    let publisher = fence.driver;
    eventually("the fence to be acknowledged", WAIT, async || {
        let ack = publisher
            .publish(fence.id, fence.room, FENCE, json!({ "fence": number }))
            .await?;
        ensure!(ack["ok"] == true, "the fence was refused: {ack}");
        Ok(())
    })
    .await?;
    for id in subscribers {
        subs.wait_event(&format!("{id} to get fence {number}"), WAIT, |e| {
            e["id"] == id.as_str()
                && e["event"] == "recv"
                && e["name"] == FENCE
                && e["args"][0]["fence"] == number
        })
        .await?;
    }
    for id in subscribers {
        let got: Vec<u64> = ticks(subs, id).into_iter().map(|(n, _)| n).collect();
        ensure!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{id} got events twice or out of order: {got:?}"
        );
        if !acked.iter().all(|n| got.contains(n)) {
            let missing: Vec<u64> = acked.iter().copied().filter(|n| !got.contains(n)).collect();
            bail!(
                "{id} got {} events for {} acknowledged; missing {missing:?}; got {got:?}",
                got.len(),
                acked.len()
            );
        }
    }
    Ok(())
}

/// Every `resumed` event seen so far.
pub fn resumes(subs: &mut Driver) -> Vec<Value> {
    subs.events()
        .iter()
        .filter(|e| e["event"] == "resumed")
        .cloned()
        .collect()
}

/// For every client that lost its connection: how long from its `disconnect` until it was
/// `reconnected` (ms, as the driver saw them). A client still away counts from its disconnect
/// until now.
pub fn placement_waits(subs: &mut Driver) -> Vec<(String, u64)> {
    let events = subs.events().to_vec();
    let mut waits = Vec::new();
    for d in events.iter().filter(|e| e["event"] == "disconnect") {
        let (Some(id), Some(t)) = (d["id"].as_str(), d["t"].as_u64()) else {
            continue;
        };
        let back = events
            .iter()
            .filter(|e| e["id"] == id && e["event"] == "reconnected")
            .filter_map(|e| e["t"].as_u64())
            .find(|&r| r >= t)
            .unwrap_or_else(now_ms);
        waits.push((id.to_owned(), back - t));
    }
    waits
}

/// Fails when any of `waits` (from [`placement_waits`]) is longer than `bound_ms`; prints the
/// longest.
pub fn assert_waits_within(waits: &[(String, u64)], bound_ms: u64) -> anyhow::Result<()> {
    let worst = waits.iter().max_by_key(|(_, ms)| *ms);
    eprintln!(
        "{} clients re-placed, longest wait {worst:?} ms",
        waits.len()
    );
    if let Some((id, ms)) = worst {
        ensure!(
            *ms <= bound_ms,
            "{id} waited {ms} ms for a new placement (bound {bound_ms} ms)"
        );
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the clock of the driver's `t` fields.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
