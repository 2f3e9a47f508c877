//! The systems under test, as real processes: a Switchyard cluster (Redis, placement, relay,
//! gateways; release binaries) and the Node peer (`bench/peers/node/server.mjs`: socket.io 4.8 +
//! `@socket.io/redis-adapter` 8.3, installed with `npm ci` from the committed lockfile).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts,
};
use switchyard_testkit::process::{Service, workspace_root};
use switchyard_testkit::redis::RedisServer;

use crate::loadgen::Dialer;

/// Gateway flags for benchmarks: lift the admission limits that protect a production node
/// (connection cap, connect rate) so they are not what is measured. Nothing is tuned for speed.
const GATEWAY_BENCH_ARGS: [&str; 4] = ["--max-connections", "200000", "--connect-rate", "100000"];

/// The services' binaries must come from the same profile as this benchmark (release under
/// `cargo xtask bench`); the testkit finds them through `SWITCHYARD_PROFILE`. Setting the
/// variable for our own process would need `unsafe`, so when it is missing the benchmark runs
/// itself again with it set, and returns that run's exit code.
pub fn ensure_profile_env() -> anyhow::Result<Option<i32>> {
    if std::env::var_os("SWITCHYARD_PROFILE").is_some() {
        return Ok(None);
    }
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("SWITCHYARD_PROFILE", profile)
        .status()
        .context("re-running the benchmark with SWITCHYARD_PROFILE set")?;
    Ok(Some(status.code().unwrap_or(1)))
}

/// `target/bench`, created.
pub fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = switchyard_testkit::process::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Resident set size of `pid` in bytes, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()
        .context("malformed VmRSS value")?;
    Ok(kb * 1024)
}

/// A Switchyard cluster: its own Redis, one placement, one relay, `n` gateways linked to it.
pub struct SwitchyardCluster {
    pub gateways: Vec<Gateway>,
    pub placement: Placement,
    _relay: Option<Relay>,
    _redis: Option<RedisServer>,
}

impl SwitchyardCluster {
    /// `n` gateways; with `relay` false (one gateway, nothing to relay) no Redis or relay is
    /// started and placement keeps its ledger in memory.
    pub fn start(n: usize, relay: bool) -> anyhow::Result<SwitchyardCluster> {
        let redis = if relay {
            Some(RedisServer::start()?)
        } else {
            None
        };
        let placement = Placement::start(PlacementOpts {
            redis_url: redis.as_ref().map(|r| r.url()),
            extra_args: Vec::new(),
        })?;
        let relay = match &redis {
            Some(r) => Some(Relay::start(RelayOpts {
                redis_url: Some(r.url()),
                extra_args: Vec::new(),
            })?),
            None => None,
        };
        let mut gateways = Vec::new();
        for i in 0..n {
            let mut opts = GatewayOpts::new(&placement, format!("bench-gw-{i}"));
            if let Some(r) = &relay {
                opts.relay_urls = vec![r.grpc_url().to_owned()];
            }
            opts.extra_args = GATEWAY_BENCH_ARGS.iter().map(|s| (*s).to_owned()).collect();
            gateways.push(Gateway::start(opts)?);
        }
        Ok(SwitchyardCluster {
            gateways,
            placement,
            _relay: relay,
            _redis: redis,
        })
    }

    /// Clients are placed by `/v1/assign`, as real ones would be.
    pub fn dialer(&self) -> Dialer {
        Dialer::Placement {
            http_url: self.placement.http_url().to_owned(),
        }
    }

    /// Waits until placement assigns across every gateway (each has reported in), so the first
    /// clients are not all sent to the first gateway to register.
    pub async fn wait_all_registered(&self) -> anyhow::Result<()> {
        let want: std::collections::HashSet<String> =
            self.gateways.iter().map(|g| g.url().to_owned()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = std::collections::HashSet::new();
            let mut last_error = None;
            for _ in 0..(want.len() * 4) {
                match switchyard_testkit::assign::assign(self.placement.http_url(), "/").await {
                    Ok(a) => {
                        seen.insert(a.url);
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            if want.is_subset(&seen) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "placement never assigned to every gateway: saw {seen:?}, last error {last_error:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The Node peer's directory, `bench/peers/node`.
pub fn node_peer_dir() -> anyhow::Result<PathBuf> {
    Ok(workspace_root()?.join("bench").join("peers").join("node"))
}

/// Runs `npm ci` in the Node peer's directory when `node_modules` is missing, so the peer is
/// exactly what the committed lockfile says.
pub fn ensure_node_peer_installed() -> anyhow::Result<PathBuf> {
    let dir = node_peer_dir()?;
    ensure!(
        dir.join("package-lock.json").is_file(),
        "{} has no package-lock.json",
        dir.display()
    );
    if !dir.join("node_modules").is_dir() {
        eprintln!("installing the Node peer: npm ci in {}", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .context("running npm ci (is Node.js installed?)")?;
        ensure!(
            status.success(),
            "npm ci failed in {}: {status}",
            dir.display()
        );
    }
    Ok(dir)
}

/// The Node peer: `n` processes of `server.mjs`, with the Redis adapter on a private Redis when
/// `n > 1` (a single process runs without an adapter).
pub struct NodeCluster {
    pub processes: Vec<Service>,
    urls: Vec<String>,
    _redis: Option<RedisServer>,
}

impl NodeCluster {
    pub fn start(n: usize) -> anyhow::Result<NodeCluster> {
        let dir = ensure_node_peer_installed()?;
        let redis = if n > 1 {
            Some(RedisServer::start()?)
        } else {
            None
        };
        let script = dir.join("server.mjs");
        let mut processes = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..n {
            let redis_url = redis.as_ref().map(|r| r.url()).unwrap_or_default();
            let mut env = vec![("PORT", "0")];
            if !redis_url.is_empty() {
                env.push(("REDIS_URL", redis_url.as_str()));
            }
            let service = Service::spawn_program(
                Path::new("node"),
                &[script.as_os_str()],
                &env,
                Duration::from_secs(30),
            )?;
            urls.push(format!("http://{}", service.ready_value("http")?));
            processes.push(service);
        }
        Ok(NodeCluster {
            processes,
            urls,
            _redis: redis,
        })
    }

    /// Clients round-robin over the processes (websocket only: no stickiness needed).
    pub fn dialer(&self) -> Dialer {
        Dialer::RoundRobin(self.urls.clone())
    }
}
