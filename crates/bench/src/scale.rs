//! The `scale` scenario: many gateways, rooms of every size, a fixed publish rate, and what a
//! delivery costs as the number of servers G grows.
//!
//! Per G (6, 12, 24 by default) and per system:
//! - `switchyard`: private Redis, placement, two relay replicas, G gateways each linked to both
//!   (interest routing on, the gateway's default; the services' report interval of 1 s; one
//!   runtime worker thread per process, `--worker-threads one`, since G + 3 processes share
//!   the machine's cores as the G single-threaded Node processes do); clients placed with
//!   `/v1/assign`.
//! - `node_redis`: G Node processes, socket.io 4.8 + `@socket.io/redis-adapter` 8.3 classic:
//!   every publish reaches every process through one Redis channel.
//! - `node_sharded`: the same with `createShardedAdapter` and `subscriptionMode: "dynamic"`
//!   (one sharded channel per room, Redis 7): a process receives only the rooms it has members
//!   in. Clients of both Node systems round-robin over the processes, as behind a load
//!   balancer.
//!
//! Workload: 6,000 clients; 2,000 pairs (clients 0..3,999), 200 groups of 10 (clients
//! 4,000..5,999) and 2 rooms of 500 (clients 0..999, who are also in a pair). One more client
//! publishes at a fixed total rate, message `seq` to room `seq % 2,202` (pairs, then groups,
//! then the large rooms), so a publish reaches 3.2 members on average.
//!
//! Figures, per system and G (over the fixed-rate phase):
//! - `cpu_us_per_delivery`, `user_us_per_delivery`, `system_us_per_delivery`: CPU time of every
//!   server-side process (Redis, placement and relays included) over the phase, divided by the
//!   deliveries counted ([`crate::cpu`]);
//! - `p50_ms`, `p99_ms`: arrival − send over every delivery; `loss`: 1 − deliveries / expected;
//! - `member_servers_per_publish`: servers holding a member of the published room, averaged
//!   over the publishes: what interest routing forwards to (a stamped event comes from the
//!   relay, so the publisher's gateway receives it too when it holds a member), and what a
//!   sharded adapter's room channel reaches;
//! - Switchyard only: `frames_per_publish`, frames the relays queued towards gateways
//!   (`switchyard_relay_frames_out_total`, all replicas) per publish, and
//!   `frames_per_publish_per_replica` (each gateway links to every replica, and each replica
//!   forwards to its own links).
//!
//! Writes `target/bench/scale.json`: `{"gateways": [..], "<system>": {"<G>": {figures}}}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Map, Value};
use switchyard_testkit::driver::metric_value;

use crate::cpu::{self, CpuMeter, CpuTime};
use crate::fanout::{CpuPerDelivery, Publish, latency_figures, results_file, wait_quiet};
use crate::loadgen::{Arrival, Clock, Setup, Shared, connect_publisher};
use crate::official::{ClientKind, Receivers};
use crate::peers::{Running, System, Tuning, bench_dir, ensure_profile_env};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Numbers of servers (gateways, or Node processes) to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "6,12,24")]
    gateways: Vec<usize>,
    /// Comma list of systems: switchyard, node_redis, node_sharded.
    #[arg(long, default_value = "switchyard,node_redis,node_sharded")]
    systems: String,
    /// Switchyard's relay replicas.
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// Rooms of two.
    #[arg(long, default_value_t = 2000)]
    pairs: usize,
    /// Rooms of `group_size`, after the pairs' clients.
    #[arg(long, default_value_t = 200)]
    groups: usize,
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Large rooms, whose members are the first clients (also in pairs).
    #[arg(long, default_value_t = 2)]
    large_rooms: usize,
    #[arg(long, default_value_t = 500)]
    large_size: usize,
    /// Fixed total publish rate, messages per second spread over every room; below every
    /// system's saturation at every G on this machine (1,000 msg/s ≈ 3,200 deliveries/s).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the fixed-rate phase, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Loopback source addresses the clients spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 16)]
    spread: usize,
    /// Concurrent connection handshakes while setting up.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Which client receives: the Rust load generator, or the official `socket.io-client`
    /// in Node processes ([`crate::official`]). The publisher is always the generator's.
    #[arg(long, value_enum, default_value = "generator")]
    client: ClientKind,
    /// Node processes the official clients are spread over.
    #[arg(long, default_value_t = 4)]
    client_processes: usize,
    /// Runtime worker threads of each Switchyard process: `one` (`--worker-threads 1`, as in
    /// a pod with a one-CPU limit, and like each single-threaded Node process) or `default`
    /// (one per core of this machine, in every one of the G + 3 processes).
    #[arg(long, value_enum, default_value = "one")]
    worker_threads: WorkerThreads,
    /// Where to write the results; default `target/bench/scale.json` (`scale_official.json`
    /// with `--client official`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// See [`Args::worker_threads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WorkerThreads {
    One,
    Default,
}

/// The rooms and who is in them.
#[derive(Debug)]
struct Layout {
    /// Room names, in publish order.
    rooms: Vec<String>,
    /// Members of each room (client indices), by room index.
    members: Vec<Vec<usize>>,
    /// Rooms of each client (room indices), by client index.
    memberships: Vec<Vec<usize>>,
}

impl Layout {
    fn new(a: &Args) -> anyhow::Result<Layout> {
        let clients = 2 * a.pairs + a.groups * a.group_size;
        ensure!(clients > 0, "no clients: give pairs or groups");
        ensure!(
            a.large_rooms * a.large_size <= clients,
            "large rooms need {} members, there are {clients} clients",
            a.large_rooms * a.large_size
        );
        let mut layout = Layout {
            rooms: Vec::new(),
            members: Vec::new(),
            memberships: vec![Vec::new(); clients],
        };
        let mut add = |name: String, members: std::ops::Range<usize>| {
            let room = layout.rooms.len();
            for c in members.clone() {
                layout.memberships[c].push(room);
            }
            layout.rooms.push(name);
            layout.members.push(members.collect());
        };
        for p in 0..a.pairs {
            add(format!("pair-{p}"), 2 * p..2 * p + 2);
        }
        let first = 2 * a.pairs;
        for g in 0..a.groups {
            let start = first + g * a.group_size;
            add(format!("group-{g}"), start..start + a.group_size);
        }
        for l in 0..a.large_rooms {
            add(
                format!("large-{l}"),
                l * a.large_size..(l + 1) * a.large_size,
            );
        }
        Ok(layout)
    }

    /// Deliveries `messages` publishes make (message `seq` to room `seq % rooms`).
    fn expected(&self, messages: u64) -> u64 {
        (0..messages)
            .map(|seq| self.members[self.room_of(seq)].len() as u64)
            .sum()
    }

    fn room_of(&self, seq: u64) -> usize {
        (seq % self.rooms.len() as u64) as usize
    }
}

/// What one system measured at one G.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub cpu_us_per_delivery: f64,
    pub user_us_per_delivery: f64,
    pub system_us_per_delivery: f64,
    /// `cpu_us_per_delivery` by kind of process (gateways, relays, placement, Redis, Node
    /// servers), summed over the processes of that kind.
    pub cpu_by_role: BTreeMap<String, f64>,
    /// CPU of every server-side process with every client connected and nothing published,
    /// in cores (CPU seconds per second): the floor under the per-delivery figures.
    pub idle_cpu_cores: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub loss: f64,
    pub deliveries: u64,
    pub member_servers_per_publish: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_per_publish: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_per_publish_per_replica: Option<f64>,
    /// Server-side processes measured (Redis included).
    pub processes: usize,
    /// Seconds it took to connect every client and join its rooms.
    pub setup_secs: f64,
    /// Members whose connection ended during the run.
    pub dropped_clients: u64,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(
        args.rate > 0 && args.seconds > 0 && !args.gateways.contains(&0) && args.relays > 0,
        "need positive rate, seconds, gateways and relays"
    );
    let systems = System::parse_list(&args.systems)?;
    let layout = Layout::new(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, &layout, &systems))
}

async fn run(args: &Args, layout: &Layout, systems: &[System]) -> anyhow::Result<()> {
    let meter = CpuMeter::new()?;
    let mut report = Map::new();
    report.insert("gateways".into(), serde_json::to_value(&args.gateways)?);
    report.insert("clients".into(), layout.memberships.len().into());
    report.insert("rooms".into(), layout.rooms.len().into());
    report.insert("rate".into(), args.rate.into());
    report.insert("seconds".into(), args.seconds.into());
    report.insert("relays".into(), args.relays.into());
    report.insert(
        "worker_threads".into(),
        match args.worker_threads {
            WorkerThreads::One => "one",
            WorkerThreads::Default => "default",
        }
        .into(),
    );
    report.insert("client".into(), args.client.name().into());
    let mut results: HashMap<&'static str, Map<String, Value>> = HashMap::new();
    for &g in &args.gateways {
        for &system in systems {
            eprintln!(
                "scale: {} with {g} servers, {} clients in {} rooms, {} msg/s",
                system.name(),
                layout.memberships.len(),
                layout.rooms.len(),
                args.rate
            );
            let figures = run_once(args, layout, system, g, meter)
                .await
                .with_context(|| format!("{} with {g} servers", system.name()))?;
            eprintln!("  {figures:?}");
            results
                .entry(system.name())
                .or_default()
                .insert(g.to_string(), serde_json::to_value(&figures)?);
        }
    }
    for system in systems {
        if let Some(by_g) = results.remove(system.name()) {
            report.insert(system.name().into(), Value::Object(by_g));
        }
    }
    let report = Value::Object(report);
    print_table(args, systems, &report);
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join(results_file("scale", args.client)),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn print_table(args: &Args, systems: &[System], report: &Value) {
    println!(
        "\nscale: {} clients, {} msg/s for {} s; CPU of every server-side process per delivery",
        report["clients"], args.rate, args.seconds
    );
    println!(
        "{:<14} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "system",
        "G",
        "cpu_us",
        "user_us",
        "sys_us",
        "p50_ms",
        "p99_ms",
        "loss",
        "members",
        "frames"
    );
    for &g in &args.gateways {
        for system in systems {
            let Some(r) = report.pointer(&format!("/{}/{g}", system.name())) else {
                continue;
            };
            let f = |k: &str| r.get(k).and_then(Value::as_f64);
            println!(
                "{:<14} {:>4} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>8.2} {:>8.4} {:>9.2} {:>8}",
                system.name(),
                g,
                f("cpu_us_per_delivery").unwrap_or(0.0),
                f("user_us_per_delivery").unwrap_or(0.0),
                f("system_us_per_delivery").unwrap_or(0.0),
                f("p50_ms").unwrap_or(0.0),
                f("p99_ms").unwrap_or(0.0),
                f("loss").unwrap_or(0.0),
                f("member_servers_per_publish").unwrap_or(0.0),
                f("frames_per_publish").map_or("-".to_owned(), |v| format!("{v:.2}")),
            );
        }
    }
}

async fn run_once(
    args: &Args,
    layout: &Layout,
    system: System,
    g: usize,
    meter: CpuMeter,
) -> anyhow::Result<ScaleRun> {
    // The services' own report interval, not the testkit's faster one: placement's ledger
    // counts every assignment at once, so reports only correct it.
    let tuning = Tuning::shared_machine(args.worker_threads == WorkerThreads::One);
    let running = system.start_with(g, args.relays, &tuning).await?;
    let dialer = running.dialer();
    let clock = Clock::new();
    let shared = Arc::new(Shared::default());
    let setup = Setup {
        concurrency: args.connect_concurrency,
        spread: args.spread,
        clock,
    };
    let started = std::time::Instant::now();
    let memberships: Vec<Vec<&str>> = layout
        .memberships
        .iter()
        .map(|rooms| rooms.iter().map(|&r| layout.rooms[r].as_str()).collect())
        .collect();
    let (mut members, servers) = Receivers::connect(
        args.client,
        args.client_processes,
        &dialer,
        &memberships,
        setup,
        Arc::clone(&shared),
    )
    .await?;
    let publisher = connect_publisher(&dialer, memberships.len(), setup).await?;
    let setup_secs = started.elapsed().as_secs_f64();
    eprintln!("  {} clients joined in {setup_secs:.1} s", servers.len());
    // Let joins settle everywhere (relay interest, sharded subscriptions) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let processes = running.processes();
    // What the cluster costs with every client connected and nothing published.
    let idle_before = meter.sum(&processes)?;
    tokio::time::sleep(IDLE_PHASE).await;
    let idle_cpu_cores = meter
        .sum(&processes)?
        .since(idle_before)
        .total()
        .as_secs_f64()
        / IDLE_PHASE.as_secs_f64();

    let messages = args.rate * args.seconds;
    let member_servers_per_publish = (0..messages)
        .map(|seq| {
            let room = &layout.members[layout.room_of(seq)];
            let held: HashSet<&str> = room.iter().map(|&c| servers[c].url.as_str()).collect();
            held.len() as f64
        })
        .sum::<f64>()
        / messages as f64;

    let frames_before = relay_frames_out(&running).await?;
    let each_before = meter.each(&processes)?;
    let publish = Publish {
        client: &publisher,
        clock,
        rooms: &layout.rooms,
    };
    let mut seq = 0u64;
    publish
        .at(args.rate, Duration::from_secs(args.seconds), &mut seq)
        .await?;
    let expected = layout.expected(messages);
    wait_quiet(&shared, expected, Duration::from_secs(15)).await;
    let by_role = cpu::by_role(&each_before, &meter.each(&processes)?);
    let cpu: CpuTime = by_role.values().copied().sum();
    let frames = relay_frames_out(&running).await?.zip(frames_before);

    let arrivals: Vec<Vec<Arrival>> = members.take_arrivals().await?;
    let (p50_ms, p99_ms, _, _, deliveries) = latency_figures(&arrivals);
    let cpu_by_role = by_role
        .into_iter()
        .map(|(role, t)| (role, CpuPerDelivery::of(t, deliveries).total))
        .collect();
    let cpu = CpuPerDelivery::of(cpu, deliveries);
    let frames_per_publish = frames.map(|(after, before)| (after - before) / messages as f64);
    Ok(ScaleRun {
        cpu_us_per_delivery: cpu.total,
        user_us_per_delivery: cpu.user,
        system_us_per_delivery: cpu.system,
        cpu_by_role,
        idle_cpu_cores,
        p50_ms,
        p99_ms,
        loss: 1.0 - deliveries as f64 / expected.max(1) as f64,
        deliveries,
        member_servers_per_publish,
        frames_per_publish,
        frames_per_publish_per_replica: frames_per_publish.map(|f| f / args.relays as f64),
        processes: processes.len(),
        setup_secs,
        dropped_clients: shared.dropped.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// How long the idle cost is measured.
const IDLE_PHASE: Duration = Duration::from_secs(3);

/// `switchyard_relay_frames_out_total` summed over Switchyard's relays; `None` for the peers.
async fn relay_frames_out(running: &Running) -> anyhow::Result<Option<f64>> {
    let Running::Switchyard(cluster) = running else {
        return Ok(None);
    };
    let mut sum = 0.0;
    for relay in &cluster.relays {
        let url = format!("{}/metrics", relay.http_url());
        let text = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("scraping {url}"))?
            .text()
            .await?;
        sum += metric_value(&text, "switchyard_relay_frames_out_total").unwrap_or(0.0);
    }
    Ok(Some(sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_default_layout_is_the_issues() -> anyhow::Result<()> {
        let layout = Layout::new(&Cli::try_parse_from(["scale"])?.args)?;
        assert_eq!(layout.memberships.len(), 6000);
        assert_eq!(layout.rooms.len(), 2202);
        let sizes = |name: &str| {
            layout
                .rooms
                .iter()
                .zip(&layout.members)
                .filter(|(r, _)| r.starts_with(name))
                .map(|(_, m)| m.len())
                .collect::<HashSet<_>>()
        };
        assert_eq!(sizes("pair-"), HashSet::from([2]));
        assert_eq!(sizes("group-"), HashSet::from([10]));
        assert_eq!(sizes("large-"), HashSet::from([500]));
        // Client 0 is in a pair and a large room; the last client in its group only.
        assert_eq!(layout.memberships[0].len(), 2);
        assert_eq!(layout.memberships[5999].len(), 1);
        // One cycle over the rooms delivers to every membership once.
        assert_eq!(layout.expected(2202), 4000 + 2000 + 1000);
        Ok(())
    }
}
