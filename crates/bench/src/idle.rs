//! The `idle` scenario: resident memory per idle websocket connection.
//!
//! Systems (alternated, `repeats` times; medians):
//! - `switchyard`: one gateway (release build) with placement (in-memory ledger, no relay:
//!   nothing to relay with one gateway); clients placed with `/v1/assign`.
//! - `node`: one Node process of `bench/peers/node/server.mjs` (socket.io 4.8, no adapter).
//! - `socketioxide_redis`: one `sio-redis-peer` process (socketioxide 0.18 with its Redis
//!   adapter, which holds nothing per idle socket): what the Socket.IO stack under Switchyard
//!   costs by itself, so the difference to `switchyard` is Switchyard's own.
//!
//! Per run: one warm-up client connects (so lazily built server state is in the baseline),
//! RSS is read from `/proc/<pid>/status` (`VmRSS`), `clients` more connect (websocket only,
//! Socket.IO CONNECT done, no rooms) and stay idle, answering pings; after `settle_secs` RSS is
//! read again. `bytes_per_conn` = (after − before) / clients.
//!
//! The load generator holds one file descriptor per client, so `clients` must stay below this
//! process's open-files limit (checked up front).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::loadgen::{Clock, Dialer, Setup, Shared, connect_many};
use crate::peers::{PeerCluster, SwitchyardCluster, bench_dir, ensure_profile_env, rss_bytes};
use crate::stats::{median, ratio};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Idle clients per system.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Seconds to wait after the last connection before reading RSS.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Runs per system; the summary takes medians.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Loopback source addresses the clients spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    spread: usize,
    /// Concurrent connection handshakes while setting up.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Where to write the results; default `target/bench/idle.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_conn: f64,
    pub connect_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleSummary {
    pub bytes_per_conn: f64,
    pub rss_before_bytes: f64,
    pub rss_after_bytes: f64,
    pub runs: Vec<IdleRun>,
}

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    switchyard: IdleSummary,
    node: IdleSummary,
    socketioxide_redis: IdleSummary,
    /// switchyard / node, bytes per connection (lower is better).
    ratio_bytes_per_conn: f64,
    /// switchyard / socketioxide_redis, bytes per connection.
    ratio_vs_socketioxide_redis: f64,
}

/// This process's soft open-files limit, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(args.clients > 0 && args.repeats > 0);
    if let Some(limit) = open_files_limit()
        && args.clients as u64 + 200 > limit
    {
        bail!(
            "{} clients need more file descriptors than this process may open ({limit}); \
             lower --clients or raise the limit (ulimit -n)",
            args.clients
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut runs: HashMap<&'static str, Vec<IdleRun>> = HashMap::new();
    for repeat in 0..args.repeats {
        let mut order = ["switchyard", "node", "socketioxide_redis"];
        let systems = order.len();
        order.rotate_left(repeat % systems);
        for system in order {
            eprintln!("idle: {system} run {}/{}", repeat + 1, args.repeats);
            let figures = run_once(&args, system)
                .await
                .with_context(|| format!("{system} run {}", repeat + 1))?;
            eprintln!("  {figures:?}");
            runs.entry(system).or_default().push(figures);
        }
    }
    let summary = |runs: Vec<IdleRun>| IdleSummary {
        bytes_per_conn: median(runs.iter().map(|r| r.bytes_per_conn).collect()),
        rss_before_bytes: median(runs.iter().map(|r| r.rss_before_bytes as f64).collect()),
        rss_after_bytes: median(runs.iter().map(|r| r.rss_after_bytes as f64).collect()),
        runs,
    };
    let switchyard = summary(runs.remove("switchyard").unwrap_or_default());
    let node = summary(runs.remove("node").unwrap_or_default());
    let socketioxide_redis = summary(runs.remove("socketioxide_redis").unwrap_or_default());
    let ratio_bytes_per_conn = ratio(switchyard.bytes_per_conn, node.bytes_per_conn);
    let ratio_vs_socketioxide_redis =
        ratio(switchyard.bytes_per_conn, socketioxide_redis.bytes_per_conn);
    let report = Report {
        clients: args.clients,
        switchyard,
        node,
        socketioxide_redis,
        ratio_bytes_per_conn,
        ratio_vs_socketioxide_redis,
    };
    println!(
        "\nidle: {} idle websocket clients on one server",
        report.clients
    );
    println!(
        "{:<20} {:>16} {:>16} {:>16}",
        "system", "rss_before_MiB", "rss_after_MiB", "bytes_per_conn"
    );
    for (name, s) in [
        ("switchyard", &report.switchyard),
        ("node", &report.node),
        ("socketioxide_redis", &report.socketioxide_redis),
    ] {
        println!(
            "{:<20} {:>16.1} {:>16.1} {:>16.0}",
            name,
            s.rss_before_bytes / 1048576.0,
            s.rss_after_bytes / 1048576.0,
            s.bytes_per_conn
        );
    }
    println!(
        "{:<20} {:>50.2}",
        "ratio vs node", report.ratio_bytes_per_conn
    );
    println!(
        "{:<20} {:>50.2}",
        "ratio vs socketioxide", report.ratio_vs_socketioxide_redis
    );
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join("idle.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

async fn run_once(args: &Args, system: &str) -> anyhow::Result<IdleRun> {
    // Keep the cluster alive until the figures are read.
    let (pid, dialer, _sy, _node) = if system == "switchyard" {
        let cluster = tokio::task::spawn_blocking(|| SwitchyardCluster::start(1, 0)).await??;
        cluster.wait_all_registered().await?;
        let pid = cluster.gateways.first().context("no gateway")?.pid();
        let dialer = cluster.dialer();
        (pid, dialer, Some(cluster), None)
    } else {
        let cluster = if system == "node" {
            tokio::task::spawn_blocking(|| PeerCluster::node(1)).await??
        } else {
            tokio::task::spawn_blocking(|| PeerCluster::socketioxide_redis(1)).await??
        };
        let pid = cluster.processes.first().context("no peer process")?.pid();
        let dialer: Dialer = cluster.dialer();
        (pid, dialer, None, Some(cluster))
    };
    let clock = Clock::new();
    let shared = Arc::new(Shared::default());
    let warmup = connect_many(
        &dialer,
        1,
        0,
        &[],
        Setup {
            concurrency: 1,
            spread: args.spread,
            clock,
        },
        Arc::clone(&shared),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_bytes = rss_bytes(pid)?;
    let started = std::time::Instant::now();
    let clients = connect_many(
        &dialer,
        args.clients,
        1,
        &[],
        Setup {
            concurrency: args.connect_concurrency,
            spread: args.spread,
            clock,
        },
        Arc::clone(&shared),
    )
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let open = clients.iter().filter(|c| c.is_open()).count();
    ensure!(
        open == clients.len(),
        "{} of {} clients were disconnected while idle",
        clients.len() - open,
        clients.len()
    );
    let rss_after_bytes = rss_bytes(pid)?;
    drop(clients);
    drop(warmup);
    Ok(IdleRun {
        rss_before_bytes,
        rss_after_bytes,
        bytes_per_conn: rss_after_bytes.saturating_sub(rss_before_bytes) as f64
            / args.clients as f64,
        connect_secs,
    })
}
