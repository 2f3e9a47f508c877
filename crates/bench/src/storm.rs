//! The `storm` scenario: one of three servers dies (`kill -9`) under 1,000 clients; how long
//! until every client is connected again, and how even the load is afterwards.
//!
//! Every client behaves like the JS client (`clients/js/src/switchyard.mjs`): when its
//! connection ends it waits a full-jitter exponential backoff (uniform in `[0, 100 ms)` at
//! first, doubling per failed attempt up to 5 s, [`Backoff::default`]), then dials again and
//! joins its room again; a failed attempt grows the backoff, a success resets it.
//! - `switchyard`: dialing means `GET /v1/assign` then connecting with the token, so the
//!   survivors are chosen by placement (which must itself notice the dead gateway: an
//!   assignment to it fails to connect and is retried).
//! - `node_redis`, `socketioxide_redis`: dialing means the next server in round robin over the
//!   survivors, i.e. a load balancer whose health check noticed the death at once (the most
//!   favourable case for the peers).
//!
//! Figures per run: over the killed server's clients, `p50_ms` / `p99_ms` / `max_ms` from the
//! kill to being connected and joined again; `all_connected_ms`, from the kill until every
//! client of the run is connected again; `spread_after`, max − min clients over the surviving
//! servers `settle_secs` after that; `failed_attempts`, dials that failed after the kill.
//! `phases_p50_ms` splits a killed server's client's way back into its steps (medians over
//! those clients): seeing the connection end, the backoff before the first dial, failed dials
//! and their backoffs, then the successful dial's assignment (or round-robin pick), its
//! Socket.IO CONNECT and its room join.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::{Map, Value};
use switchyard_common::backoff::Backoff;
use tokio::sync::{Semaphore, watch};

use crate::cpu::{self, CpuMeter};
use crate::loadgen::{Clock, DialTimes, Dialer, Setup, Shared, connect_one, room_of};
use crate::peers::{System, Tuning, bench_dir, ensure_profile_env};
use crate::stats::{median, percentile_ms, ratio};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Clients per server before the kill.
    #[arg(long, default_value_t = 1000)]
    clients_per_server: usize,
    /// Servers (the first one is killed).
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Switchyard's relay replicas (every gateway links to each).
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Rooms the clients are in (joined again after every reconnect, as the JS client does).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Give up waiting for the reconnects after this many seconds.
    #[arg(long, default_value_t = 60)]
    deadline_secs: u64,
    /// Seconds to wait after everyone is back before counting clients per server.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Runs per system; the summary takes medians.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Comma list of systems: switchyard, node_redis, node_sharded, socketioxide_redis.
    #[arg(long, default_value = "switchyard,node_redis,socketioxide_redis")]
    systems: String,
    /// Loopback source addresses the clients spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    spread: usize,
    /// Concurrent connection handshakes while setting up (not after the kill: then every
    /// client goes at its own pace).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Where to write the results; default `target/bench/storm.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What one run of one system measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormRun {
    /// Clients on the killed server.
    pub victims: u64,
    /// Of those, connected again within the deadline.
    pub reconnected: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From the kill until every client of the run was connected again (0 if never).
    pub all_connected_ms: f64,
    /// max − min clients over the surviving servers once settled.
    pub spread_after: u64,
    /// Clients per surviving server once settled.
    pub counts_after: Vec<u64>,
    /// Dials (assign, connect or join) that failed after the kill.
    pub failed_attempts: u64,
    /// Clients of surviving servers that lost their connection after the kill.
    pub collateral_drops: u64,
    /// Where the time of the killed server's clients went, step by step (medians).
    pub phases_p50_ms: Phases,
    /// CPU time (user + system, ms) from the kill until everyone was back, by kind of process:
    /// the surviving servers, relays, placement, Redis, and this benchmark's own clients
    /// (`load-generator`), which share the cores.
    pub cpu_ms_by_role: BTreeMap<String, f64>,
}

/// The steps of a client's way back after its server died, in ms (see the module docs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    /// From the kill until the client saw its connection end.
    pub detect: f64,
    /// From then until its first dial (the first backoff).
    pub first_backoff: f64,
    /// From its first dial until the one that succeeded (failed dials and their backoffs).
    pub retries: f64,
    /// The successful dial: where to go (placement's assignment, or the round-robin pick).
    pub assign: f64,
    /// Its Socket.IO CONNECT, the websocket handshake and the token check included.
    pub connect: f64,
    /// Its room join (for Switchyard: the join's history position read).
    pub join: f64,
}

/// A system's medians over its runs (`spread_after`: the worst run).
#[derive(Debug, Clone, Serialize)]
pub struct StormSummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub all_connected_ms: f64,
    pub spread_after: u64,
    pub failed_attempts: f64,
    /// CPU (ms, user + system) of every server-side process from the kill until everyone was
    /// back, per reconnected client of the killed server, in µs: what one way back costs.
    pub server_cpu_us_per_reconnect: f64,
    pub runs: Vec<StormRun>,
}

impl StormSummary {
    fn of(runs: Vec<StormRun>) -> StormSummary {
        let m = |f: fn(&StormRun) -> f64| median(runs.iter().map(f).collect());
        StormSummary {
            p50_ms: m(|r| r.p50_ms),
            p99_ms: m(|r| r.p99_ms),
            max_ms: m(|r| r.max_ms),
            all_connected_ms: m(|r| r.all_connected_ms),
            spread_after: runs.iter().map(|r| r.spread_after).max().unwrap_or(0),
            failed_attempts: m(|r| r.failed_attempts as f64),
            server_cpu_us_per_reconnect: m(StormRun::server_cpu_us_per_reconnect),
            runs,
        }
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(
        args.clients_per_server > 0 && args.servers >= 2 && args.repeats > 0,
        "need at least one client per server, two servers and one repeat"
    );
    let systems = System::parse_list(&args.systems)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, systems))
}

async fn run(args: Args, systems: Vec<System>) -> anyhow::Result<()> {
    let mut results: Vec<(System, Vec<StormRun>)> =
        systems.iter().map(|s| (*s, Vec::new())).collect();
    for repeat in 0..args.repeats {
        let mut order = systems.clone();
        order.rotate_left(repeat % systems.len());
        for system in order {
            eprintln!(
                "storm: {} run {}/{}, {} × {} clients",
                system.name(),
                repeat + 1,
                args.repeats,
                args.servers,
                args.clients_per_server
            );
            let figures = run_once(&args, system)
                .await
                .with_context(|| format!("{} run {}", system.name(), repeat + 1))?;
            eprintln!("  {figures:?}");
            if let Some((_, runs)) = results.iter_mut().find(|(s, _)| *s == system) {
                runs.push(figures);
            }
        }
    }
    let summaries: Vec<(&'static str, StormSummary)> = results
        .into_iter()
        .map(|(s, runs)| (s.name(), StormSummary::of(runs)))
        .collect();
    let mut report = Map::new();
    report.insert("servers".into(), args.servers.into());
    report.insert("clients_per_server".into(), args.clients_per_server.into());
    report.insert("rooms".into(), args.rooms.into());
    report.insert("repeats".into(), args.repeats.into());
    for (name, s) in &summaries {
        report.insert((*name).into(), serde_json::to_value(s)?);
    }
    let find = |name: &str| summaries.iter().find(|(n, _)| *n == name).map(|(_, s)| s);
    if let (Some(s), Some(n)) = (find("switchyard"), find("node_redis")) {
        report.insert(
            "ratios".into(),
            serde_json::json!({
                "p50_ms": ratio(s.p50_ms, n.p50_ms),
                "p99_ms": ratio(s.p99_ms, n.p99_ms),
                "max_ms": ratio(s.max_ms, n.max_ms),
                "all_connected_ms": ratio(s.all_connected_ms, n.all_connected_ms),
            }),
        );
    }
    println!(
        "\nstorm: kill -9 one of {} servers holding {} clients each",
        args.servers, args.clients_per_server
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>17} {:>13} {:>16}",
        "system",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "all_connected_ms",
        "spread_after",
        "failed_attempts"
    );
    for (name, s) in &summaries {
        println!(
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>17.1} {:>13} {:>16.0}",
            name,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.all_connected_ms,
            s.spread_after,
            s.failed_attempts
        );
    }
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join("storm.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(report))?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// One client's state as the scenario sees it.
#[derive(Debug, Default)]
struct Slot {
    /// Server URL of the current connection; `None` while down.
    url: Mutex<Option<String>>,
    /// Clock time (ns) the current connection was up (connected and joined).
    up_since_ns: AtomicU64,
    /// Clock time (ns) the last connection was lost (0 = never).
    lost_at_ns: AtomicU64,
    /// Clock time (ns) of the first dial after the last loss (0 = none yet).
    first_dial_ns: AtomicU64,
    /// The steps of the last successful dial.
    dial: Mutex<DialTimes>,
}

impl Slot {
    fn url(&self) -> Option<String> {
        self.url.lock().ok().and_then(|u| u.clone())
    }

    fn set_url(&self, url: Option<String>) {
        if let Ok(mut u) = self.url.lock() {
            *u = url;
        }
    }
}

/// What every client task shares.
struct Fleet {
    /// Where to dial next; the scenario swaps it when a server dies.
    dialer: RwLock<Dialer>,
    /// Round-robin cursor for redials (the first dial uses the client's own index).
    cursor: AtomicUsize,
    /// Gate for the first dial only (the setup burst).
    first_dial: Semaphore,
    failed_attempts: AtomicU64,
    setup: Setup,
    http: reqwest::Client,
    shared: Arc<Shared>,
    rooms: Vec<String>,
    clients: usize,
}

/// One client's life: dial, join, hold the connection; when it ends, back off (full jitter)
/// and dial again, until `stop`.
async fn supervise(
    fleet: Arc<Fleet>,
    index: usize,
    slot: Arc<Slot>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let room = room_of(&fleet.rooms, index, fleet.clients).map(str::to_owned);
    let mut connected_before = false;
    loop {
        let dialer = match fleet.dialer.read() {
            Ok(d) => d.clone(),
            Err(_) => return,
        };
        let permit = if connected_before {
            None
        } else {
            fleet.first_dial.acquire().await.ok()
        };
        let dial_index = if connected_before {
            fleet.cursor.fetch_add(1, Ordering::Relaxed)
        } else {
            index
        };
        let started = fleet.setup.clock.now_ns();
        let _ =
            slot.first_dial_ns
                .compare_exchange(0, started, Ordering::Relaxed, Ordering::Relaxed);
        let attempt = connect_one(
            &dialer,
            dial_index,
            room.as_deref().as_slice(),
            fleet.setup,
            &fleet.http,
            Arc::clone(&fleet.shared),
        )
        .await;
        drop(permit);
        match attempt {
            Ok((client, target, times)) => {
                connected_before = true;
                backoff.reset();
                if let Ok(mut dial) = slot.dial.lock() {
                    *dial = times;
                }
                slot.up_since_ns.store(times.joined, Ordering::Relaxed);
                slot.set_url(Some(target.url));
                tokio::select! {
                    _ = client.closed() => {}
                    _ = stop.changed() => return,
                }
                slot.lost_at_ns
                    .store(fleet.setup.clock.now_ns(), Ordering::Relaxed);
                slot.first_dial_ns.store(0, Ordering::Relaxed);
                slot.set_url(None);
            }
            Err(_) => {
                fleet.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn run_once(args: &Args, system: System) -> anyhow::Result<StormRun> {
    let running = system
        .start_with(args.servers, args.relays.max(1), &Tuning::default())
        .await?;
    let clients = args.servers * args.clients_per_server;
    let clock = Clock::new();
    let fleet = Arc::new(Fleet {
        dialer: RwLock::new(running.dialer()),
        cursor: AtomicUsize::new(0),
        first_dial: Semaphore::new(args.connect_concurrency.max(1)),
        failed_attempts: AtomicU64::new(0),
        setup: Setup {
            concurrency: args.connect_concurrency,
            spread: args.spread,
            clock,
        },
        http: reqwest::Client::new(),
        shared: Arc::new(Shared::default()),
        rooms: (0..args.rooms.max(1))
            .map(|k| format!("storm-{k}"))
            .collect(),
        clients,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots: Vec<Arc<Slot>> = (0..clients).map(|_| Arc::new(Slot::default())).collect();
    let tasks: Vec<_> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            tokio::spawn(supervise(
                Arc::clone(&fleet),
                i,
                Arc::clone(slot),
                stop_rx.clone(),
            ))
        })
        .collect();
    let stop = || {
        let _ = stop_tx.send(true);
        for t in &tasks {
            t.abort();
        }
    };

    // Everyone up, then a moment for the servers' own bookkeeping (load reports).
    let setup_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while slots.iter().any(|s| s.url().is_none()) {
        if tokio::time::Instant::now() > setup_deadline {
            stop();
            bail!("not every client connected within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.failed_attempts.store(0, Ordering::Relaxed);

    let servers = running.server_urls();
    let victim_url = servers.first().context("no servers")?.clone();
    let on_victim: Vec<bool> = slots
        .iter()
        .map(|s| s.url().as_deref() == Some(victim_url.as_str()))
        .collect();
    let victims = on_victim.iter().filter(|v| **v).count() as u64;
    eprintln!("  {clients} clients up, {victims} on {victim_url}; killing it");

    // The kill. The dialer learns of it at once (the peers' load balancer); placement has to
    // find out by itself.
    let victim_pid = running.server_pid(0).context("no servers")?;
    let mut measured = running.processes();
    measured.retain(|(_, pid)| *pid != victim_pid);
    measured.push((LOAD_GENERATOR.to_owned(), std::process::id()));
    let meter = CpuMeter::new()?;
    let cpu_before = meter.each(&measured)?;
    let killed_at = clock.now_ns();
    if let Ok(mut d) = fleet.dialer.write() {
        *d = d.without(&victim_url);
    }
    running.kill_server(0)?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.deadline_secs);
    let back = |s: &Slot| s.url().is_some() && s.up_since_ns.load(Ordering::Relaxed) > killed_at;
    loop {
        let victims_back = slots
            .iter()
            .zip(&on_victim)
            .filter(|(s, v)| **v && back(s))
            .count() as u64;
        let all_up = slots.iter().all(|s| s.url().is_some());
        if (victims_back == victims && all_up) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_ms_by_role = cpu::by_role(&cpu_before, &meter.each(&measured)?)
        .into_iter()
        .map(|(role, t)| (role, t.total().as_secs_f64() * 1e3))
        .collect();
    let mut reconnect: Vec<Duration> = slots
        .iter()
        .zip(&on_victim)
        .filter(|(s, v)| **v && back(s))
        .map(|(s, _)| Duration::from_nanos(s.up_since_ns.load(Ordering::Relaxed) - killed_at))
        .collect();
    reconnect.sort_unstable();
    let reconnected = reconnect.len() as u64;
    let phases_p50_ms = phases(
        slots
            .iter()
            .zip(&on_victim)
            .filter(|(s, v)| **v && back(s))
            .map(|(s, _)| s.as_ref()),
        killed_at,
    );
    eprintln!("  the way back, medians over the killed server's clients: {phases_p50_ms:?}");
    let all_up = slots.iter().all(|s| s.url().is_some());
    let all_connected_ms = if all_up {
        slots
            .iter()
            .filter(|s| s.up_since_ns.load(Ordering::Relaxed) > killed_at)
            .map(|s| (s.up_since_ns.load(Ordering::Relaxed) - killed_at) as f64 / 1e6)
            .fold(0.0, f64::max)
    } else {
        0.0
    };
    let collateral_drops = slots
        .iter()
        .zip(&on_victim)
        .filter(|(s, v)| !**v && s.lost_at_ns.load(Ordering::Relaxed) > killed_at)
        .count() as u64;
    let failed_attempts = fleet.failed_attempts.load(Ordering::Relaxed);

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let counts_after: Vec<u64> = servers[1..]
        .iter()
        .map(|url| {
            slots
                .iter()
                .filter(|s| s.url().as_deref() == Some(url.as_str()))
                .count() as u64
        })
        .collect();
    let spread_after =
        counts_after.iter().max().unwrap_or(&0) - counts_after.iter().min().unwrap_or(&0);
    stop();
    drop(running);
    Ok(StormRun {
        victims,
        reconnected,
        p50_ms: percentile_ms(&reconnect, 50.0),
        p99_ms: percentile_ms(&reconnect, 99.0),
        max_ms: reconnect.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        all_connected_ms,
        spread_after,
        counts_after,
        failed_attempts,
        collateral_drops,
        phases_p50_ms,
        cpu_ms_by_role,
    })
}

impl StormRun {
    /// Server-side CPU (every role but the load generator) per reconnected client, µs.
    fn server_cpu_us_per_reconnect(&self) -> f64 {
        let ms: f64 = self
            .cpu_ms_by_role
            .iter()
            .filter(|(role, _)| role.as_str() != LOAD_GENERATOR)
            .map(|(_, ms)| ms)
            .sum();
        ms * 1e3 / self.reconnected.max(1) as f64
    }
}

/// The name [`StormRun::cpu_ms_by_role`] gives this benchmark's own process.
const LOAD_GENERATOR: &str = "load-generator";

/// The median of each step of the way back of `slots` (clients back after a kill at
/// `killed_at`).
fn phases<'a>(slots: impl Iterator<Item = &'a Slot>, killed_at: u64) -> Phases {
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let mut steps: [Vec<f64>; 6] = Default::default();
    for s in slots {
        let Ok(dial) = s.dial.lock().map(|d| *d) else {
            continue;
        };
        let lost = s.lost_at_ns.load(Ordering::Relaxed);
        let first = s.first_dial_ns.load(Ordering::Relaxed);
        let each = [
            ms(killed_at, lost),
            ms(lost, first),
            ms(first, dial.started),
            ms(dial.started, dial.targeted),
            ms(dial.targeted, dial.connected),
            ms(dial.connected, dial.joined),
        ];
        for (all, one) in steps.iter_mut().zip(each) {
            all.push(one);
        }
    }
    let [detect, first_backoff, retries, assign, connect, join] = steps.map(median);
    Phases {
        detect,
        first_backoff,
        retries,
        assign,
        connect,
        join,
    }
}
