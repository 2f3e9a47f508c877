//! Room delivery through three servers: the `fanout` scenario (one room, thousands of members)
//! and, with the same engine, the `rooms` scenario (many small rooms, publishes spread over
//! them; see [`crate::rooms`]).
//!
//! Systems (alternated within a run, `repeats` times each; the summary takes medians):
//! - `switchyard`: private Redis, placement, one relay, three gateways (release binaries);
//!   clients are placed with `/v1/assign` and connect with their token.
//! - `node_redis`: three Node processes of `bench/peers/node/server.mjs` (socket.io 4.8 +
//!   `@socket.io/redis-adapter` 8.3) on a private Redis; clients round-robin, websocket only.
//! - `socketioxide_redis`: three `sio-redis-peer` processes (socketioxide 0.18 +
//!   socketioxide-redis 0.4) on a private Redis; clients round-robin. Rust without the relay.
//!
//! Per run, `clients` members join the rooms (contiguous blocks of clients per room, so with
//! round-robin servers every room spans every server) and one more client (not a member)
//! publishes stamped messages (`{"s": seq, "t": send time}`) with the built-in `publish`
//! event, message `seq` to room `seq % rooms`:
//! 1. fixed rate (`rate` msg/s for `seconds`): `p50_ms` / `p99_ms` / `max_ms` of
//!    arrival − send over every (member, message) delivery, and `skew_p99_ms`, the p99 over
//!    messages of (latest arrival − earliest arrival across the room's members);
//! 2. rising rates (`start_rate`, doubling every `step_secs`) until the deliveries counted
//!    during a step fall below 90% of what was offered (rate × members per room):
//!    `msgs_per_sec` is the highest delivery rate (member deliveries per second) any step
//!    reached.
//!
//! The load generator shares the machine with the servers, so at high rates it competes for
//! the same cores: when the systems show the same `msgs_per_sec`, the load generator is the
//! limit, not them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cpu::{self, CpuMeter, CpuTime};
use crate::loadgen::{Arrival, Client, Clock, Setup, Shared, Stamp, connect_publisher, room_of};
use crate::official::{ClientKind, Receivers};
use crate::peers::{System, bench_dir, ensure_profile_env};
use crate::stats::{median, percentile_ms, ratio};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Members of the room, spread over three servers.
    #[arg(long, default_value_t = 3000)]
    clients: usize,
    /// Fixed publish rate (messages per second) for the latency phase; must stay below every
    /// system's saturation (5 × 3,000 members = 15,000 deliveries/s; on 2 shared cores every
    /// system saturates well above that).
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
    #[command(flatten)]
    common: Common,
}

/// Flags the delivery scenarios share.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Skip the saturation search (latency phase only).
    #[arg(long)]
    pub skip_saturation: bool,
    /// Runs per system; the summary takes medians.
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Comma list of systems: switchyard, node_redis, node_sharded, socketioxide_redis.
    #[arg(long, default_value = "switchyard,node_redis,socketioxide_redis")]
    pub systems: String,
    /// Loopback source addresses the clients spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    pub spread: usize,
    /// Concurrent connection handshakes while setting up.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Which client receives: the Rust load generator, or the official `socket.io-client`
    /// in Node processes ([`crate::official`]). The publisher is always the generator's.
    #[arg(long, value_enum, default_value = "generator")]
    pub client: ClientKind,
    /// Node processes the official clients are spread over.
    #[arg(long, default_value_t = 4)]
    pub client_processes: usize,
    /// Where to write the results; default `target/bench/<scenario>.json`
    /// (`<scenario>_official.json` with `--client official`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One delivery scenario, fully specified.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `fanout` or `rooms`: names the JSON file and the table.
    pub scenario: &'static str,
    pub clients: usize,
    /// Room names; members are spread over them in contiguous blocks, publishes cycle.
    pub rooms: Vec<String>,
    pub rate: u64,
    pub seconds: u64,
    pub start_rate: u64,
    pub max_rate: u64,
    pub step_secs: u64,
    pub common: Common,
}

/// One step of the saturation search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Publish rate, messages per second.
    pub rate: u64,
    /// Member deliveries per second offered (rate × members per room).
    pub offered: f64,
    /// Member deliveries per second counted during the step.
    pub achieved: f64,
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
    /// Deliveries in the fixed-rate phase / (messages × members per room).
    pub delivered_fraction: f64,
    /// CPU time of every server-side process (Redis included) over the fixed-rate phase per
    /// delivery, in µs: user + system, and each mode.
    pub cpu_us_per_delivery: f64,
    pub user_us_per_delivery: f64,
    pub system_us_per_delivery: f64,
    /// The same by kind of process (gateways or servers, relays, placement, Redis).
    pub cpu_by_role: BTreeMap<String, CpuPerDelivery>,
    /// Members whose connection ended during the run.
    pub dropped_clients: u64,
    /// Seconds it took to connect and join every member.
    pub setup_secs: f64,
    /// The saturation search, step by step.
    pub steps: Vec<Step>,
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
    pub cpu_us_per_delivery: f64,
    pub user_us_per_delivery: f64,
    pub system_us_per_delivery: f64,
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
            cpu_us_per_delivery: m(|r| r.cpu_us_per_delivery),
            user_us_per_delivery: m(|r| r.user_us_per_delivery),
            system_us_per_delivery: m(|r| r.system_us_per_delivery),
            runs,
        }
    }
}

/// `a / b` for each figure (throughput: higher is better; latencies: lower is better).
#[derive(Debug, Serialize)]
struct Ratios {
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    skew_p99_ms: f64,
    cpu_us_per_delivery: f64,
    user_us_per_delivery: f64,
}

impl Ratios {
    fn of(a: &FanoutSummary, b: &FanoutSummary) -> Ratios {
        Ratios {
            msgs_per_sec: ratio(a.msgs_per_sec, b.msgs_per_sec),
            p50_ms: ratio(a.p50_ms, b.p50_ms),
            p99_ms: ratio(a.p99_ms, b.p99_ms),
            max_ms: ratio(a.max_ms, b.max_ms),
            skew_p99_ms: ratio(a.skew_p99_ms, b.skew_p99_ms),
            cpu_us_per_delivery: ratio(a.cpu_us_per_delivery, b.cpu_us_per_delivery),
            user_us_per_delivery: ratio(a.user_us_per_delivery, b.user_us_per_delivery),
        }
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    run_plan(Plan {
        scenario: "fanout",
        clients: args.clients,
        rooms: vec!["fanout".to_owned()],
        rate: args.rate,
        seconds: args.seconds,
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        step_secs: args.step_secs,
        common: args.common,
    })
}

/// Runs a delivery scenario: every system `repeats` times, alternating, then writes
/// `target/bench/<scenario>.json` and prints the table.
pub fn run_plan(plan: Plan) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(
        plan.clients > 0
            && plan.common.repeats > 0
            && plan.rate > 0
            && plan.seconds > 0
            && !plan.rooms.is_empty()
            && plan.rooms.len() <= plan.clients,
        "need clients ≥ rooms ≥ 1 and positive repeats, rate, seconds"
    );
    let systems = System::parse_list(&plan.common.systems)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(plan, systems))
}

async fn run(plan: Plan, systems: Vec<System>) -> anyhow::Result<()> {
    let meter = CpuMeter::new()?;
    let mut results: HashMap<&'static str, Vec<FanoutRun>> = HashMap::new();
    for repeat in 0..plan.common.repeats {
        // Rotate which system goes first, so drift over the run hurts all alike.
        let mut order = systems.clone();
        order.rotate_left(repeat % systems.len());
        for system in order {
            eprintln!(
                "{}: {} run {}/{}, {} clients in {} rooms",
                plan.scenario,
                system.name(),
                repeat + 1,
                plan.common.repeats,
                plan.clients,
                plan.rooms.len()
            );
            let figures = run_once(&plan, system, meter)
                .await
                .with_context(|| format!("{} run {}", system.name(), repeat + 1))?;
            eprintln!("  {figures:?}");
            results.entry(system.name()).or_default().push(figures);
        }
    }
    let summaries: Vec<(&'static str, FanoutSummary)> = System::ALL
        .iter()
        .filter_map(|s| Some((s.name(), FanoutSummary::of(results.remove(s.name())?))))
        .collect();
    let find = |name: &str| summaries.iter().find(|(n, _)| *n == name).map(|(_, s)| s);
    let mut report = Map::new();
    report.insert("clients".into(), plan.clients.into());
    report.insert("rooms".into(), plan.rooms.len().into());
    report.insert(
        "members_per_room".into(),
        (plan.clients / plan.rooms.len()).into(),
    );
    report.insert("rate".into(), plan.rate.into());
    report.insert("seconds".into(), plan.seconds.into());
    report.insert("repeats".into(), plan.common.repeats.into());
    report.insert("client".into(), plan.common.client.name().into());
    for (name, summary) in &summaries {
        report.insert((*name).into(), serde_json::to_value(summary)?);
    }
    // `ratios`: switchyard / node_redis (the targets); `ratios_vs_socketioxide_redis`:
    // switchyard / socketioxide_redis (what the relay costs or saves).
    if let (Some(s), Some(n)) = (find("switchyard"), find("node_redis")) {
        report.insert("ratios".into(), serde_json::to_value(Ratios::of(s, n))?);
    }
    if let (Some(s), Some(x)) = (find("switchyard"), find("socketioxide_redis")) {
        report.insert(
            "ratios_vs_socketioxide_redis".into(),
            serde_json::to_value(Ratios::of(s, x))?,
        );
    }
    let report = Value::Object(report);
    print_table(&plan, &summaries, &report);
    let out = match &plan.common.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join(results_file(plan.scenario, plan.common.client)),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn print_table(plan: &Plan, summaries: &[(&str, FanoutSummary)], report: &Value) {
    println!(
        "\n{}: {} clients in {} room(s) over 3 servers, fixed rate {} msg/s for {} s",
        plan.scenario,
        plan.clients,
        plan.rooms.len(),
        plan.rate,
        plan.seconds
    );
    println!(
        "{:<30} {:>14} {:>9} {:>9} {:>9} {:>12} {:>10} {:>8} {:>8}",
        "system",
        "msgs_per_sec",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "skew_p99_ms",
        "delivered",
        "cpu_us",
        "user_us"
    );
    for (name, s) in summaries {
        println!(
            "{:<30} {:>14.0} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>10.4} {:>8.2} {:>8.2}",
            name,
            s.msgs_per_sec,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.skew_p99_ms,
            s.delivered_fraction,
            s.cpu_us_per_delivery,
            s.user_us_per_delivery
        );
    }
    for (key, label) in [
        ("ratios", "ratio vs node_redis"),
        (
            "ratios_vs_socketioxide_redis",
            "ratio vs socketioxide_redis",
        ),
    ] {
        if let Some(x) = report.get(key) {
            let f = |k: &str| x.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            println!(
                "{:<30} {:>14.2} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>10} {:>8.2} {:>8.2}",
                label,
                f("msgs_per_sec"),
                f("p50_ms"),
                f("p99_ms"),
                f("max_ms"),
                f("skew_p99_ms"),
                "",
                f("cpu_us_per_delivery"),
                f("user_us_per_delivery")
            );
        }
    }
}

async fn run_once(plan: &Plan, system: System, meter: CpuMeter) -> anyhow::Result<FanoutRun> {
    let running = system.start(3).await?;
    let dialer = running.dialer();
    let clock = Clock::new();
    let shared = Arc::new(Shared::default());
    let setup = Setup {
        concurrency: plan.common.connect_concurrency,
        spread: plan.common.spread,
        clock,
    };
    let started = std::time::Instant::now();
    let memberships: Vec<Vec<&str>> = (0..plan.clients)
        .map(|i| room_of(&plan.rooms, i, plan.clients).into_iter().collect())
        .collect();
    let (mut members, _) = Receivers::connect(
        plan.common.client,
        plan.common.client_processes,
        &dialer,
        &memberships,
        setup,
        Arc::clone(&shared),
    )
    .await?;
    let publisher = connect_publisher(&dialer, 0, setup).await?;
    let setup_secs = started.elapsed().as_secs_f64();
    eprintln!("  {} members joined in {setup_secs:.1} s", plan.clients);
    // Let joins settle everywhere (remote adapters, relay links) before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Fixed rate.
    let per_message = (plan.clients / plan.rooms.len()) as u64;
    let messages = plan.rate * plan.seconds;
    let mut seq = 0u64;
    let publish = Publish {
        client: &publisher,
        clock,
        rooms: &plan.rooms,
    };
    let processes = running.processes();
    let cpu_before = meter.each(&processes)?;
    publish
        .at(plan.rate, Duration::from_secs(plan.seconds), &mut seq)
        .await?;
    wait_quiet(&shared, messages * per_message, Duration::from_secs(15)).await;
    let by_role = cpu::by_role(&cpu_before, &meter.each(&processes)?);
    let arrivals: Vec<Vec<Arrival>> = members.take_arrivals().await?;
    let (p50_ms, p99_ms, max_ms, skew_p99_ms, delivered) = latency_figures(&arrivals);
    let delivered_fraction = delivered as f64 / (messages * per_message).max(1) as f64;
    let cpu = CpuPerDelivery::of(by_role.values().copied().sum(), delivered);
    let cpu_by_role = by_role
        .into_iter()
        .map(|(role, t)| (role, CpuPerDelivery::of(t, delivered)))
        .collect();
    drop(arrivals);

    // 2. Rising rates.
    let mut msgs_per_sec = 0.0f64;
    let mut saturated_at_rate = 0;
    let mut steps = Vec::new();
    if !plan.common.skip_saturation {
        let mut rate = plan.start_rate.max(1);
        let step = Duration::from_secs(plan.step_secs.max(1));
        while rate <= plan.max_rate {
            let before = shared.delivered.load(Ordering::Relaxed);
            publish.at(rate, step, &mut seq).await?;
            let during = shared.delivered.load(Ordering::Relaxed) - before;
            let achieved = during as f64 / step.as_secs_f64();
            let offered = (rate * per_message) as f64;
            eprintln!("  rate {rate}/s: {achieved:.0} deliveries/s of {offered:.0} offered");
            steps.push(Step {
                rate,
                offered,
                achieved,
            });
            msgs_per_sec = msgs_per_sec.max(achieved);
            // Drop what was recorded (memory), then let any backlog drain before the next step.
            drop(members.take_arrivals().await?);
            wait_quiet(&shared, u64::MAX, Duration::from_secs(20)).await;
            drop(members.take_arrivals().await?);
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
        cpu_us_per_delivery: cpu.total,
        user_us_per_delivery: cpu.user,
        system_us_per_delivery: cpu.system,
        cpu_by_role,
        dropped_clients,
        setup_secs,
        steps,
    })
}

/// `<scenario>.json`, or `<scenario>_official.json` when the official client received.
pub fn results_file(scenario: &str, client: ClientKind) -> String {
    match client {
        ClientKind::Generator => format!("{scenario}.json"),
        ClientKind::Official => format!("{scenario}_official.json"),
    }
}

/// CPU time per delivery, µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerDelivery {
    pub total: f64,
    pub user: f64,
    pub system: f64,
}

impl CpuPerDelivery {
    pub fn of(cpu: CpuTime, deliveries: u64) -> CpuPerDelivery {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / deliveries.max(1) as f64;
        CpuPerDelivery {
            total: per(cpu.total()),
            user: per(cpu.user),
            system: per(cpu.system),
        }
    }
}

/// The publishing client and where its messages go.
pub struct Publish<'a> {
    pub client: &'a Client,
    pub clock: Clock,
    pub rooms: &'a [String],
}

impl Publish<'_> {
    /// Publishes stamped messages at `rate` per second for `length`, paced in 5 ms slices;
    /// message `seq` goes to room `seq % rooms`.
    pub async fn at(&self, rate: u64, length: Duration, seq: &mut u64) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        let total = (rate as f64 * length.as_secs_f64()).round() as u64;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
            while sent < due {
                let room = &self.rooms[(*seq % self.rooms.len() as u64) as usize];
                self.client.publish_stamp(
                    room,
                    Stamp {
                        s: *seq,
                        t: self.clock.now_ns(),
                    },
                )?;
                *seq += 1;
                sent += 1;
            }
        }
        Ok(())
    }
}

/// Waits until `expected` deliveries were counted, or the count has not moved for 1 s, or
/// `limit` passed.
pub async fn wait_quiet(shared: &Shared, expected: u64, limit: Duration) {
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
pub fn latency_figures(arrivals: &[Vec<Arrival>]) -> (f64, f64, f64, f64, u64) {
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
