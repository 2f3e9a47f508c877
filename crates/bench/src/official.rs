//! `--client official`: the receiving clients are the official `socket.io-client` 4.8 in Node
//! processes (`bench/peers/node/receivers.mjs`, from that directory's lockfile) instead of the
//! Rust load generator. The generator is cheap enough to push servers into their batching
//! regime; users' clients are not, and at their pace every delivery tends to be its own write,
//! so this is the figure a server's per-delivery cost shows in production.
//!
//! The publisher stays a generator client, so send stamps are the same in both modes.
//! Arrivals are recorded on the generator's clock: each Node process is told the clock's
//! reading once ([`Receivers::start`]) and adds the offset to `process.hrtime` (both
//! `CLOCK_MONOTONIC`), good to the pipe's latency (well under a millisecond).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::loadgen::{Arrival, Client, Clock, Dialer, Setup, Shared, Target, source_ip};
use crate::peers::ensure_node_peer_installed;

/// Which client receives in a delivery scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// The Rust load generator (`crates/bench/src/loadgen.rs`).
    Generator,
    /// The official `socket.io-client` in Node processes.
    Official,
}

impl ClientKind {
    /// The flag's value, as reported in the results.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Generator => "generator",
            ClientKind::Official => "official",
        }
    }
}

/// A clock sync is kept when its round trip took less than this (nanoseconds)...
const SYNC_ROUND_TRIP_NS: u64 = 500_000;
/// ...or, failing that, the last of this many attempts 20 ms apart is.
const SYNC_ATTEMPTS: usize = 100;

/// How long one request to a receiver process may take (connecting thousands of clients).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The receiving clients of a run, of either kind.
pub enum Receivers {
    Generator(Vec<Client>),
    Official(Vec<NodeReceivers>),
}

impl Receivers {
    /// Connects client `i` (numbered from 0) and joins it to `memberships[i]`, with the kind of
    /// client asked for; the official clients are spread over `processes` Node processes.
    /// Returns where each client went, in order.
    pub async fn connect(
        kind: ClientKind,
        processes: usize,
        dialer: &Dialer,
        memberships: &[Vec<&str>],
        setup: Setup,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Receivers, Vec<Target>)> {
        match kind {
            ClientKind::Generator => {
                let connected =
                    crate::loadgen::connect_members(dialer, 0, memberships, setup, shared).await?;
                let (clients, targets) = connected.into_iter().unzip();
                Ok((Receivers::Generator(clients), targets))
            }
            ClientKind::Official => {
                connect_official(processes, dialer, memberships, setup, shared).await
            }
        }
    }

    /// Every arrival recorded since the last call (one list per client or per process).
    pub async fn take_arrivals(&mut self) -> anyhow::Result<Vec<Vec<Arrival>>> {
        match self {
            Receivers::Generator(clients) => {
                Ok(clients.iter().map(Client::take_arrivals).collect())
            }
            Receivers::Official(procs) => {
                let taken = futures::future::try_join_all(procs.iter_mut().map(|p| p.take()));
                taken.await
            }
        }
    }
}

async fn connect_official(
    processes: usize,
    dialer: &Dialer,
    memberships: &[Vec<&str>],
    setup: Setup,
    shared: Arc<Shared>,
) -> anyhow::Result<(Receivers, Vec<Target>)> {
    ensure!(processes > 0, "--client-processes must be positive");
    let dir = ensure_node_peer_installed()?;
    let mut procs = Vec::new();
    for _ in 0..processes.min(memberships.len().max(1)) {
        procs.push(NodeReceivers::start(&dir, setup.clock, Arc::clone(&shared)).await?);
    }
    // Placement's assignments (or the round robin) are asked here, as the application would
    // before creating its client; the Node processes then connect.
    let http = reqwest::Client::new();
    let targets: Vec<anyhow::Result<Target>> = futures::stream::iter(0..memberships.len())
        .map(|i| {
            let http = http.clone();
            async move {
                dialer
                    .target(i, &http)
                    .await
                    .with_context(|| format!("client {i}"))
            }
        })
        .buffered(setup.concurrency.max(1))
        .collect()
        .await;
    let targets: Vec<Target> = targets.into_iter().collect::<anyhow::Result<_>>()?;
    let n = procs.len();
    let per_process = setup.concurrency.div_ceil(n).max(1);
    let requests = procs.iter_mut().enumerate().map(|(p, proc)| {
        let specs: Vec<Value> = (p..targets.len())
            .step_by(n)
            .map(|i| {
                json!({
                    "url": targets[i].url,
                    "token": targets[i].token,
                    "rooms": memberships[i],
                    "source": source_ip(i, setup.spread).to_string(),
                })
            })
            .collect();
        let want = specs.len();
        async move {
            let reply = proc
                .request(json!({"connect": specs, "concurrency": per_process}))
                .await?;
            let connected = reply["connected"].as_u64().unwrap_or(0) as usize;
            ensure!(
                connected == want,
                "receiver process {p}: {connected} of {want} clients connected; errors: {}",
                reply["errors"]
            );
            Ok(())
        }
    });
    futures::future::try_join_all(requests).await?;
    Ok((Receivers::Official(procs), targets))
}

/// One Node process of official clients.
pub struct NodeReceivers {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<Value>,
}

impl NodeReceivers {
    async fn start(dir: &Path, clock: Clock, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg(dir.join("receivers.mjs"))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node receivers.mjs (is Node.js installed?)")?;
        let stdin = child.stdin.take().context("receiver stdin")?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        let (tx, replies) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("receiver printed {line:?}");
                    continue;
                };
                if let Some(d) = value.get("delivered").and_then(Value::as_u64) {
                    shared.delivered.fetch_add(d, Ordering::Relaxed);
                    let dropped = value.get("dropped").and_then(Value::as_u64).unwrap_or(0);
                    shared.dropped.fetch_add(dropped, Ordering::Relaxed);
                } else if tx.send(value).await.is_err() {
                    return;
                }
            }
        });
        let mut receivers = NodeReceivers {
            child,
            stdin,
            replies,
        };
        let ready = receivers.reply().await?;
        ensure!(ready["ready"] == true, "receiver started with {ready}");
        // The offset is off by at most the round trip of the sync that set it: repeat until
        // one is short (a busy machine, such as one starting 24 Node servers, delays some).
        let mut round_trip = 0;
        for _ in 0..SYNC_ATTEMPTS {
            let sent = clock.now_ns();
            let reply = receivers.request(json!({"sync": sent})).await?;
            ensure!(reply["synced"] == true, "receiver answered {reply} to sync");
            round_trip = clock.now_ns().saturating_sub(sent);
            if round_trip < SYNC_ROUND_TRIP_NS {
                return Ok(receivers);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "  warning: a receiver's clock sync took {round_trip} ns (the last of {SYNC_ATTEMPTS}); its \
             latencies may be off by up to that"
        );
        Ok(receivers)
    }

    async fn request(&mut self, request: Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("writing to a receiver process")?;
        self.reply().await
    }

    async fn reply(&mut self) -> anyhow::Result<Value> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.replies.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => bail!(
                "a receiver process ended ({:?})",
                self.child.try_wait().ok().flatten()
            ),
            Err(_) => bail!("a receiver process did not answer within {REQUEST_TIMEOUT:?}"),
        }
    }

    async fn take(&mut self) -> anyhow::Result<Vec<Arrival>> {
        let reply = self.request(json!({"take": true})).await?;
        let flat = reply["arrivals"]
            .as_array()
            .context("receiver answered take without arrivals")?;
        Ok(flat
            .chunks_exact(3)
            .map(|c| Arrival {
                seq: c[0].as_u64().unwrap_or(0),
                sent_ns: c[1].as_u64().unwrap_or(0),
                arrived_ns: c[2].as_u64().unwrap_or(0),
            })
            .collect())
    }
}
