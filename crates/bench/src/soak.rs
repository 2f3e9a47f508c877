//! The `soak` scenario: moderate load for a long time, watching for leaks, errors and lost events.
//!
//! A Switchyard cluster (its own Redis, placement, one relay with history, three gateways) and,
//! for `--minutes`:
//! - **subscribers** placed with `/v1/assign`, each in one of `--rooms` rooms, connected the
//!   whole time;
//! - one **publisher** per room (placed the same way) publishing numbered events (`s` = 0, 1, …
//!   per room) at `--publish-rate` in total, each waiting for its ack;
//! - **churners**: `--churners` loops that assign, connect, join a room, stay 0.5 to 2 s and
//!   hang up, again and again (connection churn through `/v1/assign`);
//! - every `--sample-secs`, the resident memory (`VmRSS`) of every service process.
//!
//! At the end every subscriber must hold exactly the acknowledged events of its room, in order:
//! `lost` counts acknowledged events a subscriber never got, `duplicated` / `out_of_order` the
//! rest. `errors` counts refused or unanswered publishes, failed churn cycles and subscribers
//! whose connection ended. Memory growth per process is the least-squares slope of RSS over time
//! (bytes per minute; noisy on short runs, so it is reported, never asserted).
//!
//! Writes `target/soak.json` (or `--out`), prints a table, and exits non-zero when anything was
//! lost or failed. `cargo xtask soak --minutes N` runs it on release builds; the test suite runs
//! one minute of it on debug builds (`crates/bench/tests/soak.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use crate::loadgen::{BENCH_EVENT, Client, Clock, Setup, Shared, Stamp, connect_one};
use crate::peers::{SwitchyardCluster, ensure_profile_env, rss_bytes};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How long the load runs, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Subscribers connected the whole time.
    #[arg(long, default_value_t = 60)]
    subscribers: usize,
    /// Rooms; subscribers and churners spread over them.
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Publishes per second, all rooms together.
    #[arg(long, default_value_t = 40.0)]
    publish_rate: f64,
    /// Concurrent connect / join / hang-up loops.
    #[arg(long, default_value_t = 8)]
    churners: usize,
    /// Seconds between resident-memory samples.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
    /// Where to write the results; default `target/soak.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Resident memory of one process over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMemory {
    pub name: String,
    pub pid: u32,
    /// `[seconds since the load started, bytes]`.
    pub samples: Vec<(f64, u64)>,
    pub first_bytes: u64,
    pub last_bytes: u64,
    /// Least-squares slope of RSS over time.
    pub slope_bytes_per_min: f64,
}

/// What `target/soak.json` holds.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub subscribers: usize,
    pub rooms: usize,
    pub churners: usize,
    pub publishes_attempted: u64,
    pub publishes_acked: u64,
    /// Acknowledged events × subscribers of their room.
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub churn_cycles: u64,
    /// Failed publishes + failed churn cycles + subscribers whose connection ended.
    pub errors: u64,
    /// The first few error messages, for a human.
    pub error_samples: Vec<String>,
    pub processes: Vec<ProcessMemory>,
}

/// Errors of every task of a run: counted, and the first few kept.
#[derive(Debug, Default)]
struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    fn record(&self, what: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock()
            && s.len() < 10
        {
            s.push(what.to_string());
        }
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(
        args.minutes > 0.0 && args.subscribers > 0 && args.rooms > 0 && args.publish_rate > 0.0,
        "--minutes, --subscribers, --rooms and --publish-rate must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => switchyard_testkit::process::target_dir()?.join("soak.json"),
    };
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    print_table(&report);
    println!("written to {}", out.display());
    ensure!(
        report.lost == 0 && report.duplicated == 0 && report.out_of_order == 0,
        "events lost ({}), duplicated ({}) or out of order ({})",
        report.lost,
        report.duplicated,
        report.out_of_order
    );
    ensure!(
        report.errors == 0,
        "{} errors: {:?}",
        report.errors,
        report.error_samples
    );
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<SoakReport> {
    let cluster = tokio::task::block_in_place(|| SwitchyardCluster::start(3, 1))?;
    cluster.wait_all_registered().await?;
    let dialer = cluster.dialer();
    let clock = Clock::new();
    let setup = Setup {
        concurrency: 16,
        spread: 8,
        clock,
    };
    let http = reqwest::Client::new();
    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("soak-{r}")).collect();
    let shared = Arc::new(Shared::default());
    let errors = Arc::new(Errors::default());

    // Subscribers and publishers: set up before the clock starts, a failure here is fatal.
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let room = i % args.rooms;
        let (client, _, _) = connect_one(&dialer, i, &[&rooms[room]], setup, &http, shared.clone())
            .await
            .with_context(|| format!("subscriber {i}"))?;
        subscribers.push((room, client));
    }
    let mut publishers = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let index = args.subscribers + r;
        let (client, _, _) = connect_one(&dialer, index, &[], setup, &http, shared.clone())
            .await
            .with_context(|| format!("publisher of {room}"))?;
        publishers.push(client);
    }

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(args.rooms as f64 / args.publish_rate);
    let attempted = Arc::new(AtomicU64::new(0));
    let mut publishing = Vec::new();
    for (r, publisher) in publishers.into_iter().enumerate() {
        let (room, stop, errors, attempted) = (
            rooms[r].clone(),
            stop.clone(),
            errors.clone(),
            attempted.clone(),
        );
        publishing.push(tokio::spawn(async move {
            publish_loop(publisher, room, period, clock, stop, errors, attempted).await
        }));
    }
    let cycles = Arc::new(AtomicU64::new(0));
    let mut churning = Vec::new();
    for c in 0..args.churners {
        let (dialer, rooms, http, shared, stop, errors, cycles) = (
            dialer.clone(),
            rooms.clone(),
            http.clone(),
            shared.clone(),
            stop.clone(),
            errors.clone(),
            cycles.clone(),
        );
        let first_index = args.subscribers + args.rooms + c * 1_000_000;
        churning.push(tokio::spawn(async move {
            let mut k = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let room = &rooms[(c + k) % rooms.len()];
                match connect_one(
                    &dialer,
                    first_index + k,
                    &[room],
                    setup,
                    &http,
                    shared.clone(),
                )
                .await
                {
                    Ok((client, _, _)) => {
                        tokio::time::sleep(hold_time(c, k)).await;
                        drop(client);
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.record(format!("churn cycle: {e:#}")),
                }
                k += 1;
            }
        }));
    }

    // Sample memory until the time is up.
    let processes = cluster.processes();
    let mut samples: Vec<Vec<(f64, u64)>> = vec![Vec::new(); processes.len()];
    let sample_every = Duration::from_secs(args.sample_secs.max(1));
    loop {
        let t = started.elapsed().as_secs_f64();
        for ((name, pid), s) in processes.iter().zip(samples.iter_mut()) {
            match rss_bytes(*pid) {
                Ok(bytes) => s.push((t, bytes)),
                Err(e) => errors.record(format!("{name} (pid {pid}): {e:#}")),
            }
        }
        eprintln!(
            "soak: {:>5.0} s, {} publishes, {} deliveries, {} churn cycles, {} errors",
            t,
            attempted.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
            cycles.load(Ordering::Relaxed),
            errors.count.load(Ordering::Relaxed)
        );
        if started.elapsed() >= duration {
            break;
        }
        tokio::time::sleep(sample_every.min(duration.saturating_sub(started.elapsed()))).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<Vec<u64>> = Vec::new();
    for task in publishing {
        acked.push(task.await?);
    }
    for task in churning {
        task.await?;
    }

    // Every subscriber gets until a generous deadline to receive its room's last event.
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); subscribers.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = true;
        for ((room, client), got) in subscribers.iter().zip(received.iter_mut()) {
            got.extend(client.take_arrivals().into_iter().map(|a| a.seq));
            if let Some(last) = acked[*room].last() {
                done &= got.contains(last);
            }
        }
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, (_, client)) in subscribers.iter().enumerate() {
        if !client.is_open() {
            errors.record(format!("subscriber {i} lost its connection"));
        }
    }

    let (mut expected, mut got_total, mut lost, mut duplicated, mut out_of_order) = (0, 0, 0, 0, 0);
    for ((room, _), got) in subscribers.iter().zip(&received) {
        let want = &acked[*room];
        let check = check_sequence(want, got);
        expected += want.len() as u64;
        got_total += got.len() as u64;
        lost += check.lost;
        duplicated += check.duplicated;
        out_of_order += check.out_of_order;
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let processes = processes
        .into_iter()
        .zip(samples)
        .map(|((name, pid), samples)| ProcessMemory {
            name,
            pid,
            first_bytes: samples.first().map(|s| s.1).unwrap_or(0),
            last_bytes: samples.last().map(|s| s.1).unwrap_or(0),
            slope_bytes_per_min: slope_per_min(&samples),
            samples,
        })
        .collect();
    let error_samples = errors.samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(SoakReport {
        minutes,
        subscribers: args.subscribers,
        rooms: args.rooms,
        churners: args.churners,
        publishes_attempted: attempted.load(Ordering::Relaxed),
        publishes_acked: acked.iter().map(|a| a.len() as u64).sum(),
        deliveries_expected: expected,
        deliveries_received: got_total,
        lost,
        duplicated,
        out_of_order,
        churn_cycles: cycles.load(Ordering::Relaxed),
        errors: errors.count.load(Ordering::Relaxed),
        error_samples,
        processes,
    })
}

/// Publishes `s` = 0, 1, … to `room` every `period` until `stop`, each waiting for its ack;
/// returns the acknowledged `s`, in order.
async fn publish_loop(
    publisher: Client,
    room: String,
    period: Duration,
    clock: Clock,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
    attempted: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut s = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let stamp = Stamp {
            s,
            t: clock.now_ns(),
        };
        let body = json!({"room": room, "event": BENCH_EVENT, "data": stamp});
        attempted.fetch_add(1, Ordering::Relaxed);
        match publisher
            .emit_with_ack("publish", &[body], Duration::from_secs(10))
            .await
        {
            Ok(reply) if reply[0]["ok"] == Value::Bool(true) => acked.push(s),
            Ok(reply) => errors.record(format!("publish {room}/{s} refused: {reply}")),
            Err(e) => errors.record(format!("publish {room}/{s}: {e:#}")),
        }
        s += 1;
    }
    acked
}

/// How long churner `c` holds its `k`-th connection: 0.5 to 2 s, spread so the churners do
/// not hang up in step.
fn hold_time(c: usize, k: usize) -> Duration {
    let spread = (c.wrapping_mul(7919) ^ k.wrapping_mul(104_729)) % 1500;
    Duration::from_millis(500 + spread as u64)
}

/// How a received sequence compares with the acknowledged one.
#[derive(Debug, Default, PartialEq, Eq)]
struct SequenceCheck {
    /// Acknowledged, never received.
    lost: u64,
    /// Received more than once (each extra copy counts).
    duplicated: u64,
    /// Received after a higher number.
    out_of_order: u64,
}

fn check_sequence(acked: &[u64], got: &[u64]) -> SequenceCheck {
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out_of_order = 0;
    let mut highest = None;
    for &s in got {
        *seen.entry(s).or_default() += 1;
        if highest.is_some_and(|h| s < h) {
            out_of_order += 1;
        }
        highest = highest.max(Some(s));
    }
    SequenceCheck {
        lost: acked.iter().filter(|s| !seen.contains_key(s)).count() as u64,
        duplicated: seen.values().map(|n| n - 1).sum(),
        out_of_order,
    }
}

/// Least-squares slope of `(seconds, bytes)` samples, in bytes per minute; 0 with fewer than
/// two distinct times.
fn slope_per_min(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_b = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, b) in samples {
        num += (t - mean_t) * (b as f64 - mean_b);
        den += (t - mean_t) * (t - mean_t);
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn print_table(r: &SoakReport) {
    println!(
        "\nsoak: {:.1} min, {} subscribers in {} rooms, {} churners",
        r.minutes, r.subscribers, r.rooms, r.churners
    );
    println!(
        "{:<14} {:>8} {:>14} {:>14} {:>16}",
        "process", "pid", "rss_first_MiB", "rss_last_MiB", "slope_KiB/min"
    );
    for p in &r.processes {
        println!(
            "{:<14} {:>8} {:>14.1} {:>14.1} {:>16.1}",
            p.name,
            p.pid,
            p.first_bytes as f64 / 1048576.0,
            p.last_bytes as f64 / 1048576.0,
            p.slope_bytes_per_min / 1024.0
        );
    }
    let by_outcome = BTreeMap::from([
        ("publishes attempted", r.publishes_attempted),
        ("publishes acked", r.publishes_acked),
        ("deliveries expected", r.deliveries_expected),
        ("deliveries received", r.deliveries_received),
        ("lost", r.lost),
        ("duplicated", r.duplicated),
        ("out of order", r.out_of_order),
        ("churn cycles", r.churn_cycles),
        ("errors", r.errors),
    ]);
    for (what, n) in by_outcome {
        println!("{what:<20} {n:>12}");
    }
    for e in &r.error_samples {
        println!("error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_loss_doubles_and_disorder() {
        assert_eq!(
            check_sequence(&[0, 1, 2, 3], &[0, 1, 2, 3]),
            SequenceCheck::default()
        );
        assert_eq!(
            check_sequence(&[0, 1, 2, 3], &[0, 2, 2, 1]),
            SequenceCheck {
                lost: 1,
                duplicated: 1,
                out_of_order: 1
            }
        );
        // Received but never acknowledged (the ack timed out) is not a loss.
        assert_eq!(
            check_sequence(&[0, 2], &[0, 1, 2]),
            SequenceCheck::default()
        );
    }

    #[test]
    fn slope_is_bytes_per_minute() {
        let samples = [(0.0, 1000), (30.0, 1500), (60.0, 2000)];
        assert!((slope_per_min(&samples) - 1000.0).abs() < 1e-6);
        assert_eq!(slope_per_min(&[(0.0, 5)]), 0.0);
        assert_eq!(slope_per_min(&[(1.0, 5), (1.0, 9)]), 0.0);
    }
}
