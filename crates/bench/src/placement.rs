//! The `placement` scenario: how fast, how quick and how balanced least-loaded assignment is.
//!
//! One private `redis-server` (testkit) serves every system, each run under its own key prefix
//! so that no run sees another's state. Per run: `nodes` gateways (16), `callers` concurrent
//! callers (64), a short untimed warm-up, then `assignments` timed ones (20,000). Systems are
//! alternated run by run (so a noisy neighbour hurts all of them alike), `repeats` times (3);
//! the summary takes medians (and the worst spread).
//!
//! - `switchyard`: the ledger alone, [`RedisLedger::assign`]: one Lua script per assignment.
//! - `lock_baseline`: the approach it replaces, against the same Redis: take a lock (`SET NX
//!   PX` with a random value, retried with jittered backoff), read every node's counter
//!   (`MGET`), pick the minimum, `INCR` it, release the lock (compare-and-delete script).
//! - `switchyard_http`: the whole path a client sees: `GET /v1/assign` on a real
//!   `switchyard-placement` (release build, `--rate-limit 0`) whose nodes registered over the
//!   real gRPC report stream and keep reporting; HTTP parsing, token signing and the ledger.
//!
//! Figures: `assigns_per_sec` (timed assignments / wall time of the timed phase), `p50_ms` and
//! `p99_ms` of one assignment as its caller waited for it, `max_spread`: max − min over nodes
//! of connections + pending after the run, read from the ledger (or the baseline's counters).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use deadpool_redis::{Config, Pool, Runtime};
use redis::Script;
use serde::Serialize;
use switchyard_common::backoff::Backoff;
use switchyard_placement::ledger::{
    Ledger, LedgerSettings, LoadReport, NodeRegistration, RedisLedger,
};
use switchyard_proto::placement::v1::{
    GatewayReport, Load, Register, directive, gateway_report, placement_client::PlacementClient,
};
use switchyard_testkit::cluster::{Placement, PlacementOpts};
use switchyard_testkit::redis::RedisServer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::stats::{RunFigures, Summary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed assignments per run and system.
    #[arg(long, default_value_t = 20_000)]
    assignments: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Gateways (nodes) to spread over.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Runs per system; the summary takes medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Untimed assignments before each run (connection pools, script cache).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// After each run of `switchyard` and `switchyard_http`, this many more assignments from a
    /// single caller: latency without queueing behind 63 other callers (0 = skip).
    #[arg(long, default_value_t = 2_000)]
    single_caller: u64,
    /// Leave out the whole-HTTP-path system (e.g. when switchyard-placement is not built).
    #[arg(long)]
    skip_http: bool,
    /// Use this Redis instead of starting a private one (its keys `{bench-*}` and
    /// `{sy:bench-*}` are overwritten). Never point this at a Redis that matters.
    #[arg(long)]
    redis_url: Option<String>,
    /// Where to write the results; default `target/bench/placement.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The testkit finds service binaries through `SWITCHYARD_PROFILE`; the HTTP system must run
/// the placement binary built with the same profile as this benchmark (release under `cargo
/// xtask bench`). Setting the variable for our own process would need `unsafe`, so when it is
/// missing the benchmark runs itself again with it set.
fn ensure_profile_env() -> anyhow::Result<Option<i32>> {
    if std::env::var_os("SWITCHYARD_PROFILE").is_some() {
        return Ok(None);
    }
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("SWITCHYARD_PROFILE", profile)
        .status()
        .context("re-running the benchmark with SWITCHYARD_PROFILE set")?;
    Ok(Some(status.code().unwrap_or(1)))
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if !args.skip_http
        && let Some(code) = ensure_profile_env()?
    {
        std::process::exit(code);
    }
    ensure!(args.callers > 0 && args.nodes > 0 && args.repeats > 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

#[derive(Debug, Serialize)]
struct Report {
    switchyard: Summary,
    lock_baseline: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    switchyard_http: Option<Summary>,
    /// switchyard (ledger alone) over lock_baseline, assignments per second.
    ratio_throughput: f64,
    /// Latency probes: the same systems with one caller (no queueing), `max_spread` not
    /// measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    switchyard_single_caller: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    switchyard_http_single_caller: Option<Summary>,
    /// switchyard_http (whole HTTP path) over lock_baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_throughput_http: Option<f64>,
    setup: Setup,
}

#[derive(Debug, Serialize)]
struct Setup {
    nodes: usize,
    callers: usize,
    assignments_per_run: u64,
    warmup_per_run: u64,
    repeats: usize,
    machine_cpus: usize,
    redis: &'static str,
    notes: &'static str,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (_redis, url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let redis = tokio::task::spawn_blocking(RedisServer::start).await??;
            let url = redis.url();
            (Some(redis), url)
        }
    };
    eprintln!(
        "placement bench: {} nodes, {} callers, {} assignments per run (+{} warm-up), {} repeats; redis at {url}",
        args.nodes, args.callers, args.assignments, args.warmup, args.repeats
    );

    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let mut http = Vec::new();
    let mut ours_single = Vec::new();
    let mut http_single = Vec::new();
    // Key names unique to this invocation, so that a reused --redis-url never mixes runs.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    for run in 0..args.repeats {
        let run = format!("{}-{run}", &tag[..8]);
        let measured = run_switchyard(&url, &args, &run).await?;
        eprintln!("run {run}: switchyard      {:?}", measured.main);
        ours.push(measured.main);
        ours_single.extend(measured.single);

        let figures = run_lock_baseline(&url, &args, &run).await?;
        eprintln!("run {run}: lock_baseline   {figures:?}");
        baseline.push(figures);

        if !args.skip_http {
            let measured = run_http(&url, &args, &run).await?;
            eprintln!("run {run}: switchyard_http {:?}", measured.main);
            http.push(measured.main);
            http_single.extend(measured.single);
        }
    }

    let switchyard = Summary::of(ours);
    let lock_baseline = Summary::of(baseline);
    let switchyard_http = (!http.is_empty()).then(|| Summary::of(http));
    let summary = |runs: Vec<RunFigures>| (!runs.is_empty()).then(|| Summary::of(runs));
    let switchyard_single_caller = summary(ours_single);
    let switchyard_http_single_caller = summary(http_single);
    let ratio = |x: f64| x / lock_baseline.assigns_per_sec.max(f64::EPSILON);
    let report = Report {
        ratio_throughput: ratio(switchyard.assigns_per_sec),
        ratio_throughput_http: switchyard_http.as_ref().map(|s| ratio(s.assigns_per_sec)),
        switchyard,
        lock_baseline,
        switchyard_http,
        switchyard_single_caller,
        switchyard_http_single_caller,
        setup: Setup {
            nodes: args.nodes,
            callers: args.callers,
            assignments_per_run: args.assignments,
            warmup_per_run: args.warmup,
            repeats: args.repeats,
            machine_cpus: std::thread::available_parallelism().map_or(0, usize::from),
            redis: if args.redis_url.is_some() {
                "the Redis given with --redis-url, shared by all systems"
            } else {
                "one private redis-server on loopback (testkit), shared by all systems"
            },
            notes: "switchyard = RedisLedger::assign alone (one Lua script); lock_baseline = \
                    SET NX PX lock + MGET all counters + INCR min + compare-and-delete unlock; \
                    switchyard_http = GET /v1/assign through a real switchyard-placement process \
                    (SWITCHYARD_PROFILE build; release under cargo xtask bench). Medians over \
                    repeats; max_spread is the worst run; *_single_caller = one caller, latency \
                    without queueing.",
        },
    };

    let out = match &args.out {
        Some(path) => path.clone(),
        None => switchyard_testkit::process::target_dir()?
            .join("bench")
            .join("placement.json"),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    print_table(&report);
    println!("\nwritten to {}", out.display());
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "\n{:<18} {:>10} {:>9} {:>9} {:>11}  measures",
        "system", "assigns/s", "p50 ms", "p99 ms", "max_spread"
    );
    let mut rows = vec![
        (
            "switchyard",
            &report.switchyard,
            "ledger alone: RedisLedger::assign",
        ),
        (
            "lock_baseline",
            &report.lock_baseline,
            "lock + read all + INCR min + unlock",
        ),
    ];
    if let Some(http) = &report.switchyard_http {
        rows.push((
            "switchyard_http",
            http,
            "whole path: GET /v1/assign on placement",
        ));
    }
    if let Some(single) = &report.switchyard_single_caller {
        rows.push((
            "switchyard x1",
            single,
            "ledger alone, one caller (latency)",
        ));
    }
    if let Some(single) = &report.switchyard_http_single_caller {
        rows.push((
            "switchyard_http x1",
            single,
            "whole path, one caller (latency)",
        ));
    }
    for (name, s, what) in rows {
        // The single-caller probes run after the spread was read: no spread of their own.
        let spread = if name.ends_with("x1") {
            "-".to_owned()
        } else {
            s.max_spread.to_string()
        };
        println!(
            "{name:<18} {:>10.0} {:>9.3} {:>9.3} {spread:>11}  {what}",
            s.assigns_per_sec, s.p50_ms, s.p99_ms
        );
    }
    println!(
        "\nthroughput ratio switchyard / lock_baseline: {:.1}x",
        report.ratio_throughput
    );
    if let Some(r) = report.ratio_throughput_http {
        println!("throughput ratio switchyard_http / lock_baseline: {r:.1}x");
    }
}

/// Runs `total` calls of `op` from `callers` concurrent tasks (a closed loop: each caller
/// issues its next call when the previous one returned). Returns the latency of every call
/// that succeeded, the wall time of the whole phase and the number of failed calls; more than
/// 1% failures fail the run with the first error.
async fn drive<F, Fut>(callers: usize, total: u64, op: F) -> anyhow::Result<Driven>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let next = Arc::clone(&next);
        let op = op.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                match op().await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => errors.push(e),
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    if let Some(first) = errors.first()
        && errors.len() as u64 > total / 100
    {
        bail!("{} of {total} calls failed; first: {first:#}", errors.len());
    }
    Ok(Driven {
        latencies,
        elapsed,
        errors: errors.len() as u64,
    })
}

struct Driven {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
}

impl Driven {
    fn figures(self, max_spread: u64) -> RunFigures {
        RunFigures::new(self.latencies, self.elapsed, self.errors, max_spread)
    }
}

fn spread(loads: impl IntoIterator<Item = u64>) -> u64 {
    let (min, max) = loads
        .into_iter()
        .fold((u64::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
    max.saturating_sub(min)
}

fn node_id(i: usize) -> String {
    format!("bench-node-{i:02}")
}

/// Long enough that no reservation expires and no node goes stale during a run.
const HOUR: Duration = Duration::from_secs(3600);

async fn ledger_spread(ledger: &RedisLedger, nodes: usize) -> anyhow::Result<u64> {
    let views = ledger.nodes().await?;
    ensure!(
        views.len() == nodes,
        "{} of {nodes} nodes in the ledger",
        views.len()
    );
    Ok(spread(views.iter().map(|v| v.connections + v.pending)))
}

// ---------------------------------------------------------------------------------------------
// switchyard: the ledger alone.

async fn run_switchyard(url: &str, args: &Args, run: &str) -> anyhow::Result<Measured> {
    let ledger = Arc::new(
        RedisLedger::connect(
            &url.parse()?,
            LedgerSettings {
                cluster: format!("bench-ledger-{run}"),
                reservation_ttl: HOUR,
                liveness: HOUR,
            },
        )
        .await?,
    );
    for i in 0..args.nodes {
        let id = node_id(i);
        ledger
            .register(&NodeRegistration {
                node_id: id.clone(),
                url: format!("http://127.0.0.1:{}", 40_000 + i),
                weight: 1,
                capacity: 0,
                namespaces: vec!["/".to_owned()],
            })
            .await?;
        ledger.report(&id, &LoadReport::default()).await?;
    }
    let op = {
        let ledger = Arc::clone(&ledger);
        move || {
            let ledger = Arc::clone(&ledger);
            async move {
                ledger
                    .assign("/")
                    .await?
                    .context("no node for an assignment")?;
                Ok(())
            }
        }
    };
    drive(args.callers, args.warmup, op.clone()).await?;
    let driven = drive(args.callers, args.assignments, op.clone()).await?;
    let spread = ledger_spread(&ledger, args.nodes).await?;
    let single = single_caller(args, op).await?;
    Ok(Measured {
        main: driven.figures(spread),
        single,
    })
}

/// A run's figures, plus the single-caller latency probe when it was taken.
struct Measured {
    main: RunFigures,
    single: Option<RunFigures>,
}

/// `--single-caller` assignments from one caller, after the main run (so its spread is not
/// measured: 0).
async fn single_caller<F, Fut>(args: &Args, op: F) -> anyhow::Result<Option<RunFigures>>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    if args.single_caller == 0 {
        return Ok(None);
    }
    Ok(Some(drive(1, args.single_caller, op).await?.figures(0)))
}

// ---------------------------------------------------------------------------------------------
// lock_baseline: the article's approach.

/// Compare-and-delete: release the lock only if it still holds our value.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// "Take a distributed lock, read every server's count, pick the minimum, increment, release."
struct LockBaseline {
    pool: Pool,
    lock_key: String,
    counter_keys: Vec<String>,
    unlock: Script,
    lock_expired: AtomicU64,
}

impl LockBaseline {
    /// How long the lock lives if its holder dies (never reached in the benchmark).
    const LOCK_TTL_MS: u64 = 1000;

    async fn assign(&self) -> anyhow::Result<usize> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(16));
        let mut conn = loop {
            // The connection goes back to the pool while we back off.
            let mut conn = self.pool.get().await?;
            let taken: Option<String> = redis::cmd("SET")
                .arg(&self.lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(Self::LOCK_TTL_MS)
                .query_async(&mut conn)
                .await?;
            if taken.is_some() {
                break conn;
            }
            drop(conn);
            tokio::time::sleep(backoff.next_delay()).await;
        };
        let counts: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&self.counter_keys)
            .query_async(&mut conn)
            .await?;
        let (index, _) = counts
            .iter()
            .map(|c| c.unwrap_or(0))
            .enumerate()
            .min_by_key(|&(i, c)| (c, i))
            .context("no counters")?;
        let _: u64 = redis::cmd("INCR")
            .arg(&self.counter_keys[index])
            .query_async(&mut conn)
            .await?;
        let released: i64 = self
            .unlock
            .key(&self.lock_key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        if released != 1 {
            // The ttl ran out while we worked: someone else may have picked from the same
            // view. Counted, as it is part of what this approach costs.
            self.lock_expired.fetch_add(1, Ordering::Relaxed);
        }
        Ok(index)
    }
}

async fn run_lock_baseline(url: &str, args: &Args, run: &str) -> anyhow::Result<RunFigures> {
    let mut config = Config::from_url(url);
    config.pool = Some(deadpool_redis::PoolConfig::new(32));
    let prefix = format!("{{bench-lock-{run}}}");
    let baseline = Arc::new(LockBaseline {
        pool: config.create_pool(Some(Runtime::Tokio1))?,
        lock_key: format!("{prefix}:lock"),
        counter_keys: (0..args.nodes)
            .map(|i| format!("{prefix}:count:{}", node_id(i)))
            .collect(),
        unlock: Script::new(UNLOCK),
        lock_expired: AtomicU64::new(0),
    });
    {
        let mut conn = baseline.pool.get().await?;
        let mut mset = redis::cmd("MSET");
        for key in &baseline.counter_keys {
            mset.arg(key).arg(0);
        }
        let () = mset.query_async(&mut conn).await?;
    }
    let op = {
        let baseline = Arc::clone(&baseline);
        move || {
            let baseline = Arc::clone(&baseline);
            async move {
                baseline.assign().await?;
                Ok(())
            }
        }
    };
    drive(args.callers, args.warmup, op.clone()).await?;
    baseline.lock_expired.store(0, Ordering::Relaxed);
    let driven = drive(args.callers, args.assignments, op).await?;
    let mut conn = baseline.pool.get().await?;
    let counts: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&baseline.counter_keys)
        .query_async(&mut conn)
        .await?;
    let spread = spread(counts.into_iter().map(|c| c.unwrap_or(0)));
    let mut figures = driven.figures(spread);
    figures.lock_expired_while_held = Some(baseline.lock_expired.load(Ordering::Relaxed));
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// switchyard_http: the whole path through a real placement process.

/// A gateway as placement sees it: a report stream that registered and keeps reporting.
struct FakeGatewayStream {
    tasks: JoinSet<()>,
}

impl Drop for FakeGatewayStream {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

const REPORT_INTERVAL_MS: u32 = 1000;

/// Registers `id` on placement's real gRPC report stream, waits for `Registered`, then reports
/// zero connections every interval until dropped.
async fn open_report_stream(grpc_url: &str, id: String) -> anyhow::Result<FakeGatewayStream> {
    let mut client = PlacementClient::connect(grpc_url.to_owned()).await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(GatewayReport {
        kind: Some(gateway_report::Kind::Register(Register {
            node_id: id.clone(),
            url: format!("http://{id}.bench:4000"),
            weight: 1,
            capacity: 0,
            namespaces: vec!["/".to_owned()],
            report_interval_ms: REPORT_INTERVAL_MS,
        })),
    })
    .await?;
    let mut directives = client
        .report(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("opening the report stream of {id}"))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), directives.message())
        .await
        .with_context(|| format!("{id}: no answer to Register within 10 s"))??;
    match first.and_then(|d| d.kind) {
        Some(directive::Kind::Registered(_)) => {}
        other => bail!("{id}: expected Registered, got {other:?}"),
    }

    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(REPORT_INTERVAL_MS.into()));
        loop {
            tick.tick().await;
            let load = GatewayReport {
                kind: Some(gateway_report::Kind::Load(Load {
                    connections: 0,
                    consumed_reservations: Vec::new(),
                    draining: false,
                    full: false,
                })),
            };
            if tx.send(load).await.is_err() {
                return;
            }
        }
    });
    // Directives are read (and ignored) so that the stream never backs up.
    tasks.spawn(async move { while let Ok(Some(_)) = directives.message().await {} });
    Ok(FakeGatewayStream { tasks })
}

async fn run_http(url: &str, args: &Args, run: &str) -> anyhow::Result<Measured> {
    let cluster = format!("bench-http-{run}");
    let opts = PlacementOpts {
        redis_url: Some(url.to_owned()),
        extra_args: vec![
            "--cluster".into(),
            cluster.clone(),
            "--rate-limit".into(),
            "0".into(),
            "--reservation-ttl-ms".into(),
            "3600000".into(),
            "--report-interval-ms".into(),
            REPORT_INTERVAL_MS.to_string(),
            "--log".into(),
            "warn".into(),
        ],
    };
    let placement = tokio::task::spawn_blocking(move || Placement::start(opts))
        .await?
        .context("starting switchyard-placement (build it with `cargo build --release -p switchyard-placement --bins`)")?;

    let mut streams = Vec::new();
    for i in 0..args.nodes {
        streams.push(open_report_stream(placement.grpc_url(), node_id(i)).await?);
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.callers)
        .build()?;
    let assign_url = Arc::new(format!("{}/v1/assign?namespace=/", placement.http_url()));
    let op = move || {
        let client = client.clone();
        let assign_url = Arc::clone(&assign_url);
        async move {
            let response = client.get(assign_url.as_str()).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!(
                    "GET /v1/assign: {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        }
    };
    drive(args.callers, args.warmup, op.clone()).await?;
    let driven = drive(args.callers, args.assignments, op.clone()).await?;

    let ledger = RedisLedger::connect(
        &url.parse()?,
        LedgerSettings {
            cluster,
            reservation_ttl: HOUR,
            liveness: HOUR,
        },
    )
    .await?;
    let spread = ledger_spread(&ledger, args.nodes).await?;
    let single = single_caller(args, op).await?;
    drop(streams);
    placement.terminate()?;
    tokio::task::spawn_blocking(move || placement.wait_exit(Duration::from_secs(10)))
        .await?
        .ok();
    Ok(Measured {
        main: driven.figures(spread),
        single,
    })
}
