//! The `fanout` scenario: one room spanning three servers, thousands of members, one publisher.
//!
//! Systems (alternated within a run, `repeats` times each; the summary takes medians):
//! - `switchyard`: private Redis, placement, one relay, three gateways (release binaries);
//!   clients are placed with `/v1/assign` and connect with their token.
//! - `node_redis`: three Node processes of `bench/peers/node/server.mjs` (socket.io 4.8 +
//!   `@socket.io/redis-adapter` 8.3) on a private Redis; clients round-robin, websocket only.
//!
//! Per run, `clients` members join room `fanout` and one more client (not a member) publishes
//! stamped messages (`{"s": seq, "t": send time}`) with the built-in `publish` event:
//! 1. fixed rate (`rate` msg/s for `seconds`): `p50_ms` / `p99_ms` / `max_ms` of
//!    arrival − send over every (member, message) delivery, and `skew_p99_ms`, the p99 over
//!    messages of (latest arrival − earliest arrival across members);
//! 2. rising rates (`start_rate`, doubling every `step_secs`) until the deliveries counted
//!    during a step fall below 90% of what was offered (rate × members): `msgs_per_sec` is the
//!    highest delivery rate (member deliveries per second) any step reached.
//!
//! The load generator shares the machine with the servers, so at high rates it competes for
//! the same cores: when both systems show the same `msgs_per_sec`, the load generator is the
//! limit, not them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::loadgen::{Arrival, Client, Clock, Dialer, Setup, Shared, Stamp, connect_many};
use crate::peers::{NodeCluster, SwitchyardCluster, bench_dir, ensure_profile_env};
use crate::stats::{median, percentile_ms};

const ROOM: &str = "fanout";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Members of the room, spread over three servers.
    #[arg(long, default_value_t = 3000)]
    clients: usize,
    /// Fixed publish rate (messages per second) for the latency phase; must stay below every
    /// system's saturation (5 × 3,000 members = 15,000 deliveries/s; on 2 shared cores both
    /// systems saturate near 50,000).
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Length of the fixed-rate phase, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// First rate of the saturation search (messages per second); doubles each step.
    #[arg(long, default_value_t = 5)]
    start_rate: u64,
    /// Highest rate the saturation search tries.
    #[arg(long, default_value_t = 12_800)]
    max_rate: u64,
    /// Length of one saturation step, seconds.
    #[arg(long, default_value_t = 3)]
    step_secs: u64,
    /// Skip the saturation search (latency phase only).
    #[arg(long)]
    skip_saturation: bool,
    /// Runs per system; the summary takes medians.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Comma list of systems: switchyard, node_redis.
    #[arg(long, default_value = "switchyard,node_redis")]
    systems: String,
    /// Loopback source addresses the clients spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    spread: usize,
    /// Concurrent connection handshakes while setting up.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Where to write the results; default `target/bench/fanout.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What one run of one system measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRun {
    pub msgs_per_sec: f64,
    /// Publish rate of the step where deliveries fell behind (0 = never within `max_rate`).
    pub saturated_at_rate: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub skew_p99_ms: f64,
    /// Deliveries in the fixed-rate phase / (messages × members).
    pub delivered_fraction: f64,
    /// Members whose connection ended during the run.
    pub dropped_clients: u64,
    /// Seconds it took to connect and join every member.
    pub setup_secs: f64,
}

/// A system's medians over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSummary {
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub skew_p99_ms: f64,
    pub delivered_fraction: f64,
    pub runs: Vec<FanoutRun>,
}

impl FanoutSummary {
    fn of(runs: Vec<FanoutRun>) -> FanoutSummary {
        let m = |f: fn(&FanoutRun) -> f64| median(runs.iter().map(f).collect());
        FanoutSummary {
            msgs_per_sec: m(|r| r.msgs_per_sec),
            p50_ms: m(|r| r.p50_ms),
            p99_ms: m(|r| r.p99_ms),
            max_ms: m(|r| r.max_ms),
            skew_p99_ms: m(|r| r.skew_p99_ms),
            delivered_fraction: m(|r| r.delivered_fraction),
            runs,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    rate: u64,
    seconds: u64,
    repeats: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    switchyard: Option<FanoutSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_redis: Option<FanoutSummary>,
    /// switchyard / node_redis for each figure (throughput: higher is better; latencies:
    /// lower is better).
    #[serde(skip_serializing_if = "Option::is_none")]
    ratios: Option<Ratios>,
}

#[derive(Debug, Serialize)]
struct Ratios {
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    skew_p99_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Switchyard,
    NodeRedis,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Switchyard => "switchyard",
            System::NodeRedis => "node_redis",
        }
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(args.clients > 0 && args.repeats > 0 && args.rate > 0 && args.seconds > 0);
    let mut systems = Vec::new();
    for s in args
        .systems
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        systems.push(match s {
            "switchyard" => System::Switchyard,
            "node_redis" => System::NodeRedis,
            other => bail!("unknown system {other:?} (switchyard, node_redis)"),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, systems))
}

async fn run(args: Args, systems: Vec<System>) -> anyhow::Result<()> {
    let mut results: HashMap<&'static str, Vec<FanoutRun>> = HashMap::new();
    for repeat in 0..args.repeats {
        // Alternate which system goes first, so drift over the run hurts both alike.
        let mut order = systems.clone();
        if repeat % 2 == 1 {
            order.reverse();
        }
        for system in order {
            eprintln!(
                "fanout: {} run {}/{}, {} clients",
                system.name(),
                repeat + 1,
                args.repeats,
                args.clients
            );
            let figures = run_once(&args, system)
                .await
                .with_context(|| format!("{} run {}", system.name(), repeat + 1))?;
            eprintln!("  {figures:?}");
            results.entry(system.name()).or_default().push(figures);
        }
    }
    let switchyard = results.remove("switchyard").map(FanoutSummary::of);
    let node_redis = results.remove("node_redis").map(FanoutSummary::of);
    let ratios = match (&switchyard, &node_redis) {
        (Some(s), Some(n)) => Some(Ratios {
            msgs_per_sec: ratio(s.msgs_per_sec, n.msgs_per_sec),
            p50_ms: ratio(s.p50_ms, n.p50_ms),
            p99_ms: ratio(s.p99_ms, n.p99_ms),
            max_ms: ratio(s.max_ms, n.max_ms),
            skew_p99_ms: ratio(s.skew_p99_ms, n.skew_p99_ms),
        }),
        _ => None,
    };
    let report = Report {
        clients: args.clients,
        rate: args.rate,
        seconds: args.seconds,
        repeats: args.repeats,
        switchyard,
        node_redis,
        ratios,
    };
    print_table(&report);
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join("fanout.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

fn print_table(r: &Report) {
    println!(
        "\nfanout: {} clients in one room over 3 servers, fixed rate {} msg/s for {} s",
        r.clients, r.rate, r.seconds
    );
    println!(
        "{:<12} {:>14} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "system", "msgs_per_sec", "p50_ms", "p99_ms", "max_ms", "skew_p99_ms", "delivered"
    );
    for (name, s) in [("switchyard", &r.switchyard), ("node_redis", &r.node_redis)] {
        if let Some(s) = s {
            println!(
                "{:<12} {:>14.0} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>10.4}",
                name,
                s.msgs_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.skew_p99_ms,
                s.delivered_fraction
            );
        }
    }
    if let Some(x) = &r.ratios {
        println!(
            "{:<12} {:>14.2} {:>9.2} {:>9.2} {:>9.2} {:>12.2}",
            "ratio", x.msgs_per_sec, x.p50_ms, x.p99_ms, x.max_ms, x.skew_p99_ms
        );
    }
}

/// Either system's processes, kept alive (and stopped on drop) for the run.
struct Running {
    _switchyard: Option<SwitchyardCluster>,
    _node: Option<NodeCluster>,
}

async fn start(system: System) -> anyhow::Result<(Running, Dialer)> {
    match system {
        System::Switchyard => {
            let cluster =
                tokio::task::spawn_blocking(|| SwitchyardCluster::start(3, true)).await??;
            cluster.wait_all_registered().await?;
            let dialer = cluster.dialer();
            Ok((
                Running {
                    _switchyard: Some(cluster),
                    _node: None,
                },
                dialer,
            ))
        }
        System::NodeRedis => {
            let cluster = tokio::task::spawn_blocking(|| NodeCluster::start(3)).await??;
            let dialer = cluster.dialer();
            Ok((
                Running {
                    _switchyard: None,
                    _node: Some(cluster),
                },
                dialer,
            ))
        }
    }
}

async fn run_once(args: &Args, system: System) -> anyhow::Result<FanoutRun> {
    let (running, dialer) = start(system).await?;
    let clock = Clock::new();
    let shared = Arc::new(Shared::default());
    let setup = std::time::Instant::now();
    let members = connect_many(
        &dialer,
        args.clients,
        1,
        Some(ROOM),
        Setup {
            concurrency: args.connect_concurrency,
            spread: args.spread,
            clock,
        },
        Arc::clone(&shared),
    )
    .await?;
    let publisher = connect_many(
        &dialer,
        1,
        0,
        None,
        Setup {
            concurrency: 1,
            spread: args.spread,
            clock,
        },
        Arc::new(Shared::default()),
    )
    .await?
    .pop()
    .context("no publisher")?;
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!("  {} members joined in {setup_secs:.1} s", members.len());
    // Let joins settle everywhere (remote adapters, relay links) before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Fixed rate.
    let n = members.len() as u64;
    let messages = args.rate * args.seconds;
    let mut seq = 0u64;
    publish_at(
        &publisher,
        clock,
        args.rate,
        Duration::from_secs(args.seconds),
        &mut seq,
    )
    .await?;
    wait_quiet(&shared, messages * n, Duration::from_secs(15)).await;
    let arrivals: Vec<Vec<Arrival>> = members.iter().map(Client::take_arrivals).collect();
    let (p50_ms, p99_ms, max_ms, skew_p99_ms, delivered) = latency_figures(&arrivals);
    let delivered_fraction = delivered as f64 / (messages * n).max(1) as f64;
    drop(arrivals);

    // 2. Rising rates.
    let mut msgs_per_sec = 0.0f64;
    let mut saturated_at_rate = 0;
    if !args.skip_saturation {
        let mut rate = args.start_rate.max(1);
        let step = Duration::from_secs(args.step_secs.max(1));
        while rate <= args.max_rate {
            let before = shared.delivered.load(Ordering::Relaxed);
            publish_at(&publisher, clock, rate, step, &mut seq).await?;
            let during = shared.delivered.load(Ordering::Relaxed) - before;
            let achieved = during as f64 / step.as_secs_f64();
            let offered = (rate * n) as f64;
            eprintln!("  rate {rate}/s: {achieved:.0} deliveries/s of {offered:.0} offered");
            msgs_per_sec = msgs_per_sec.max(achieved);
            // Drop what was recorded (memory), then let any backlog drain before the next step.
            for m in &members {
                drop(m.take_arrivals());
            }
            wait_quiet(&shared, u64::MAX, Duration::from_secs(20)).await;
            for m in &members {
                drop(m.take_arrivals());
            }
            if achieved < 0.9 * offered {
                saturated_at_rate = rate;
                break;
            }
            rate *= 2;
        }
    }
    let dropped_clients = shared.dropped.load(Ordering::Relaxed);
    drop(publisher);
    drop(members);
    drop(running);
    Ok(FanoutRun {
        msgs_per_sec,
        saturated_at_rate,
        p50_ms,
        p99_ms,
        max_ms,
        skew_p99_ms,
        delivered_fraction,
        dropped_clients,
        setup_secs,
    })
}

/// Publishes stamped messages at `rate` per second for `length`, paced in 5 ms slices.
async fn publish_at(
    publisher: &Client,
    clock: Clock,
    rate: u64,
    length: Duration,
    seq: &mut u64,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let total = (rate as f64 * length.as_secs_f64()).round() as u64;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            publisher.publish_stamp(
                ROOM,
                Stamp {
                    s: *seq,
                    t: clock.now_ns(),
                },
            )?;
            *seq += 1;
            sent += 1;
        }
    }
    Ok(())
}

/// Waits until `expected` deliveries were counted, or the count has not moved for 1 s, or
/// `limit` passed.
async fn wait_quiet(shared: &Shared, expected: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut still_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now >= expected || tokio::time::Instant::now() > deadline {
            return;
        }
        if now != last {
            last = now;
            still_since = tokio::time::Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(1) {
            return;
        }
    }
}

/// (p50, p99, max latency, p99 skew, deliveries) over every member's arrivals.
fn latency_figures(arrivals: &[Vec<Arrival>]) -> (f64, f64, f64, f64, u64) {
    let mut latencies = Vec::new();
    let mut spans: HashMap<u64, (u64, u64)> = HashMap::new();
    for client in arrivals {
        for a in client {
            latencies.push(Duration::from_nanos(a.arrived_ns.saturating_sub(a.sent_ns)));
            let e = spans.entry(a.seq).or_insert((a.arrived_ns, a.arrived_ns));
            e.0 = e.0.min(a.arrived_ns);
            e.1 = e.1.max(a.arrived_ns);
        }
    }
    latencies.sort_unstable();
    let mut skews: Vec<Duration> = spans
        .values()
        .map(|(lo, hi)| Duration::from_nanos(hi - lo))
        .collect();
    skews.sort_unstable();
    let max_ms = latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        max_ms,
        percentile_ms(&skews, 99.0),
        latencies.len() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_latest_minus_earliest_per_message() {
        let a = |seq, sent_ns, arrived_ns| Arrival {
            seq,
            sent_ns,
            arrived_ns,
        };
        let arrivals = vec![
            vec![a(0, 0, 1_000_000), a(1, 0, 2_000_000)],
            vec![a(0, 0, 5_000_000), a(1, 0, 2_000_000)],
        ];
        let (_, _, max_ms, skew_p99, n) = latency_figures(&arrivals);
        assert_eq!(n, 4);
        assert!((max_ms - 5.0).abs() < 1e-9);
        assert!((skew_p99 - 4.0).abs() < 1e-9);
    }
}
