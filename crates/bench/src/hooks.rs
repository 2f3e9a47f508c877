//! The `hooks` scenario: what a hook costs the gateway.
//!
//! One gateway (no relay: nothing to relay with one) with `--hooks-url` on a backend inside
//! this process that does nothing (`/connect` allows, `/event` answers `{}`, `/disconnect`
//! `{}`), so what is measured is the gateway's own work and the HTTP round trip on loopback.
//! `clients` websocket clients, placed by placement, each send one event at a time and wait
//! for its ack, for `secs` seconds per phase:
//!
//! - `builtin`: the built-in `leave` (answered by the gateway itself): the Socket.IO round
//!   trip without a hook;
//! - `hook`: an application event forwarded to the event hook, acked `{ok: true}` from its
//!   answer.
//!
//! Figures per phase: p50 / p99 round trip (ms) and acked events per second (one gateway, so
//! per gateway); `overhead_p50_ms` / `overhead_p99_ms` are hook − builtin. The backend shares
//! the machine (and this process) with the load generator, as a sidecar backend would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use crate::loadgen::{Client, Clock, Setup, Shared, connect_many};
use crate::peers::{SwitchyardCluster, Tuning, bench_dir, ensure_profile_env};
use crate::stats::percentile_ms;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Clients, each with one event in flight at a time.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Where to write the results; default `target/bench/hooks.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub events: u64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Acks that were not `{ok: true}`, or none within 10 s.
    pub errors: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    secs_per_phase: u64,
    builtin: Phase,
    hook: Phase,
    overhead_p50_ms: f64,
    overhead_p99_ms: f64,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(args.clients > 0 && args.secs > 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// The backend that does nothing; its base URL.
async fn null_backend() -> anyhow::Result<String> {
    use axum::{Json, Router, routing::post};
    let app = Router::new()
        .route("/connect", post(async || Json(json!({"allow": true}))))
        .route("/event", post(async || Json(json!({}))))
        .route("/disconnect", post(async || Json(json!({}))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = null_backend().await?;
    let tuning = Tuning {
        gateway_args: vec![
            "--hooks-url".to_owned(),
            backend,
            "--hook-events".to_owned(),
            "bench".to_owned(),
        ],
        ..Tuning::default()
    };
    let cluster =
        tokio::task::spawn_blocking(move || SwitchyardCluster::start_with(1, 0, &tuning)).await??;
    cluster.wait_all_registered().await?;
    let clients = connect_many(
        &cluster.dialer(),
        args.clients,
        0,
        &[],
        Setup {
            concurrency: 32,
            spread: 4,
            clock: Clock::new(),
        },
        Arc::new(Shared::default()),
    )
    .await?;
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();
    let secs = Duration::from_secs(args.secs);
    eprintln!(
        "hooks: builtin phase ({} clients, {}s)",
        args.clients, args.secs
    );
    let builtin = phase(&clients, "leave", json!("bench-room"), secs).await?;
    eprintln!("hooks: hook phase");
    let hook = phase(&clients, "bench", json!({"n": 1}), secs).await?;
    let report = Report {
        clients: args.clients,
        secs_per_phase: args.secs,
        overhead_p50_ms: hook.p50_ms - builtin.p50_ms,
        overhead_p99_ms: hook.p99_ms - builtin.p99_ms,
        builtin,
        hook,
    };
    println!(
        "\nhooks: {} clients, one event in flight each, one gateway, a backend that does nothing",
        report.clients
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "phase", "events", "p50_ms", "p99_ms", "events/s", "errors"
    );
    for (name, p) in [("builtin", &report.builtin), ("hook", &report.hook)] {
        println!(
            "{:<10} {:>10} {:>10.2} {:>10.2} {:>12.0} {:>8}",
            name, p.events, p.p50_ms, p.p99_ms, p.events_per_sec, p.errors
        );
    }
    println!(
        "hook overhead: p50 {:+.2} ms, p99 {:+.2} ms",
        report.overhead_p50_ms, report.overhead_p99_ms
    );
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join("hooks.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    drop(clients);
    drop(cluster);
    Ok(())
}

/// Every client sends `event(arg)` and waits for its ack, again and again, for `secs`.
async fn phase(
    clients: &[Arc<Client>],
    event: &'static str,
    arg: Value,
    secs: Duration,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let deadline = started + secs;
    let mut tasks = Vec::new();
    for client in clients {
        let (client, arg) = (Arc::clone(client), arg.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client
                    .emit_with_ack(event, std::slice::from_ref(&arg), Duration::from_secs(10))
                    .await
                {
                    Ok(reply) if reply[0]["ok"] == true => latencies.push(sent.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Ok(Phase {
        events: all.len() as u64,
        events_per_sec: all.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50_ms: percentile_ms(&all, 50.0),
        p99_ms: percentile_ms(&all, 99.0),
        errors,
    })
}
