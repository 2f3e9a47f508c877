//! The systems under test, as real processes: a Switchyard cluster (Redis, placement, relays,
//! gateways; release binaries), the Node peer (`bench/peers/node/server.mjs`: socket.io 4.8 +
//! `@socket.io/redis-adapter` 8.3, classic or sharded, installed with `npm ci` from the
//! committed lockfile) and the Rust peer (`sio-redis-peer`: socketioxide 0.18 +
//! socketioxide-redis 0.4, no relay).

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

/// Further flags for a benchmark's Switchyard processes (each replaces the testkit's default
/// for that flag).
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    pub placement_args: Vec<String>,
    pub relay_args: Vec<String>,
    pub gateway_args: Vec<String>,
}

impl Tuning {
    /// Many services sharing a few cores: the services' own report interval (1 s, instead of
    /// the testkit's 200 ms) on placement (which judges liveness by it) and every gateway,
    /// and with `one_worker`, one runtime worker thread per process (`--worker-threads 1`),
    /// as in a pod with a one-CPU limit and like each single-threaded Node process.
    pub fn shared_machine(one_worker: bool) -> Tuning {
        let mut args = vec!["--report-interval-ms".to_owned(), "1000".to_owned()];
        let workers: Vec<String> = if one_worker {
            vec!["--worker-threads".to_owned(), "1".to_owned()]
        } else {
            Vec::new()
        };
        args.extend(workers.iter().cloned());
        Tuning {
            placement_args: args.clone(),
            relay_args: workers,
            gateway_args: args,
        }
    }
}

/// A Switchyard cluster: its own Redis, one placement, relay replicas, `n` gateways each
/// linked to every replica.
pub struct SwitchyardCluster {
    pub gateways: Vec<Gateway>,
    pub placement: Placement,
    pub relays: Vec<Relay>,
    _redis: Option<RedisServer>,
}

impl SwitchyardCluster {
    /// `n` gateways and `relays` relay replicas; with no relay (one gateway, nothing to relay)
    /// no Redis is started and placement keeps its ledger in memory.
    pub fn start(n: usize, relays: usize) -> anyhow::Result<SwitchyardCluster> {
        Self::start_with(n, relays, &Tuning::default())
    }

    /// [`SwitchyardCluster::start`] with further flags.
    pub fn start_with(
        n: usize,
        relays: usize,
        tuning: &Tuning,
    ) -> anyhow::Result<SwitchyardCluster> {
        let redis = if relays > 0 {
            Some(RedisServer::start()?)
        } else {
            None
        };
        let placement = Placement::start(PlacementOpts {
            redis_url: redis.as_ref().map(|r| r.url()),
            extra_args: tuning.placement_args.clone(),
        })?;
        let mut started = Vec::new();
        if let Some(r) = &redis {
            for _ in 0..relays {
                started.push(Relay::start(RelayOpts {
                    redis_url: Some(r.url()),
                    extra_args: tuning.relay_args.clone(),
                })?);
            }
        }
        let relay_urls: Vec<String> = started.iter().map(|r| r.grpc_url().to_owned()).collect();
        let mut gateways = Vec::new();
        for i in 0..n {
            let mut opts = GatewayOpts::new(&placement, format!("bench-gw-{i}"));
            opts.relay_urls = relay_urls.clone();
            opts.extra_args = GATEWAY_BENCH_ARGS.iter().map(|s| (*s).to_owned()).collect();
            opts.extra_args.extend_from_slice(&tuning.gateway_args);
            gateways.push(Gateway::start(opts)?);
        }
        Ok(SwitchyardCluster {
            gateways,
            placement,
            relays: started,
            _redis: redis,
        })
    }

    /// Every process of the cluster as `(name, pid)`: placement, relays, gateways (by node
    /// id), redis-server. For resident-memory and CPU sampling.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut all = vec![("placement".to_owned(), self.placement.pid())];
        all.extend(
            self.relays
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("relay-{i}"), r.pid())),
        );
        all.extend(
            self.gateways
                .iter()
                .map(|g| (g.node_id().to_owned(), g.pid())),
        );
        if let Some(pid) = self._redis.as_ref().and_then(RedisServer::pid) {
            all.push(("redis-server".to_owned(), pid));
        }
        all
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

/// Runs `npm ci` in the Node peer's directory when `node_modules` is missing or older than the
/// lockfile, so the peer is exactly what the committed lockfile says.
pub fn ensure_node_peer_installed() -> anyhow::Result<PathBuf> {
    let dir = node_peer_dir()?;
    ensure_npm_installed(&dir)?;
    Ok(dir)
}

/// Runs `npm ci` in `dir` when its `node_modules` is missing or older than its
/// `package-lock.json` (npm writes `node_modules/.package-lock.json` at every install).
pub fn ensure_npm_installed(dir: &Path) -> anyhow::Result<()> {
    let lockfile = dir.join("package-lock.json");
    ensure!(
        lockfile.is_file(),
        "{} has no package-lock.json",
        dir.display()
    );
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(&dir.join("node_modules").join(".package-lock.json"));
    if installed.is_none() || installed < modified(&lockfile) {
        eprintln!("installing Node packages: npm ci in {}", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .context("running npm ci (is Node.js installed?)")?;
        ensure!(
            status.success(),
            "npm ci failed in {}: {status}",
            dir.display()
        );
    }
    Ok(())
}

/// A peer cluster: `n` server processes sharing a private Redis through their adapter (a single
/// process runs without Redis or adapter where the peer allows), clients round-robin.
pub struct PeerCluster {
    pub processes: Vec<Service>,
    urls: Vec<String>,
    _redis: Option<RedisServer>,
}

impl PeerCluster {
    /// `n` processes of `bench/peers/node/server.mjs` (socket.io 4.8 + redis-adapter 8.3);
    /// without an adapter when `n == 1`.
    pub fn node(n: usize) -> anyhow::Result<PeerCluster> {
        let dir = ensure_node_peer_installed()?;
        let script = dir.join("server.mjs");
        Self::start(n, n > 1, |env| {
            Service::spawn_program(
                Path::new("node"),
                &[script.as_os_str()],
                env,
                Duration::from_secs(30),
            )
        })
    }

    /// `n` processes of `server.mjs` with `ADAPTER=redis-sharded`: `createShardedAdapter` with
    /// `subscriptionMode: "dynamic"` (a channel per room, SSUBSCRIBE/SPUBLISH on Redis 7), the
    /// Node answer to classic mode's "every publish reaches every server".
    pub fn node_sharded(n: usize) -> anyhow::Result<PeerCluster> {
        Self::node_with_adapter(n, "redis-sharded")
    }

    /// `n` processes of `server.mjs` with `ADAPTER=redis-streams`: socket.io 4.8 +
    /// `@socket.io/redis-streams-adapter` 0.2 and connection state recovery.
    pub fn node_redis_streams(n: usize) -> anyhow::Result<PeerCluster> {
        Self::node_with_adapter(n, "redis-streams")
    }

    fn node_with_adapter(n: usize, adapter: &'static str) -> anyhow::Result<PeerCluster> {
        let dir = ensure_node_peer_installed()?;
        let script = dir.join("server.mjs");
        Self::start(n, true, |env| {
            let mut env = env.to_vec();
            env.push(("ADAPTER", adapter));
            Service::spawn_program(
                Path::new("node"),
                &[script.as_os_str()],
                &env,
                Duration::from_secs(30),
            )
        })
    }

    /// `n` processes of `sio-redis-peer` (socketioxide 0.18 + socketioxide-redis), built with
    /// the benchmark's profile. Always with Redis: the peer has no adapter-less mode.
    pub fn socketioxide_redis(n: usize) -> anyhow::Result<PeerCluster> {
        Self::start(n, true, |env| {
            Service::spawn_with_timeout::<&str>("sio-redis-peer", &[], env, Duration::from_secs(30))
        })
    }

    fn start(
        n: usize,
        with_redis: bool,
        spawn: impl Fn(&[(&str, &str)]) -> anyhow::Result<Service>,
    ) -> anyhow::Result<PeerCluster> {
        let redis = if with_redis {
            Some(RedisServer::start()?)
        } else {
            None
        };
        let redis_url = redis.as_ref().map(|r| r.url());
        let mut processes = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..n {
            let mut env = vec![("PORT", "0")];
            if let Some(url) = &redis_url {
                env.push(("REDIS_URL", url.as_str()));
            }
            let service = spawn(&env)?;
            urls.push(format!("http://{}", service.ready_value("http")?));
            processes.push(service);
        }
        Ok(PeerCluster {
            processes,
            urls,
            _redis: redis,
        })
    }

    /// The processes' `http://host:port`, in start order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Clients round-robin over the processes (websocket only: no stickiness needed).
    pub fn dialer(&self) -> Dialer {
        Dialer::RoundRobin(self.urls.clone())
    }

    /// Every process as `(name, pid)`: the servers, then redis-server.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut all: Vec<(String, u32)> = self
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("server-{i}"), p.pid()))
            .collect();
        if let Some(pid) = self._redis.as_ref().and_then(RedisServer::pid) {
            all.push(("redis-server".to_owned(), pid));
        }
        all
    }
}

/// The systems the delivery and storm scenarios compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Placement, one relay, gateways; clients placed with `/v1/assign`.
    Switchyard,
    /// Node socket.io + `@socket.io/redis-adapter`; clients round-robin.
    NodeRedis,
    /// Node socket.io + the redis adapter's `createShardedAdapter`, `subscriptionMode:
    /// "dynamic"`; clients round-robin.
    NodeSharded,
    /// socketioxide + `socketioxide-redis` (no relay); clients round-robin.
    SocketioxideRedis,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 4] = [
        System::Switchyard,
        System::NodeRedis,
        System::NodeSharded,
        System::SocketioxideRedis,
    ];

    /// The JSON key and table label.
    pub fn name(self) -> &'static str {
        match self {
            System::Switchyard => "switchyard",
            System::NodeRedis => "node_redis",
            System::NodeSharded => "node_sharded",
            System::SocketioxideRedis => "socketioxide_redis",
        }
    }

    /// A comma list of system names (`switchyard,node_redis,...`).
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<System>> {
        let mut systems = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(system) = System::ALL.into_iter().find(|s| s.name() == name) else {
                bail!(
                    "unknown system {name:?} (switchyard, node_redis, node_sharded, \
                     socketioxide_redis)"
                );
            };
            systems.push(system);
        }
        ensure!(!systems.is_empty(), "no systems given");
        Ok(systems)
    }

    /// Starts this system with `n` servers (Switchyard: with one relay and Redis, reporting at
    /// the services' own interval, as deployed) and waits until clients can be spread over all
    /// of them.
    pub async fn start(self, n: usize) -> anyhow::Result<Running> {
        self.start_with(n, 1, &Tuning::shared_machine(false)).await
    }

    /// [`System::start`] with `relays` relay replicas and further flags for Switchyard (both
    /// ignored by the peers).
    pub async fn start_with(
        self,
        n: usize,
        relays: usize,
        tuning: &Tuning,
    ) -> anyhow::Result<Running> {
        let tuning = tuning.clone();
        match self {
            System::Switchyard => {
                let cluster = tokio::task::spawn_blocking(move || {
                    SwitchyardCluster::start_with(n, relays, &tuning)
                })
                .await??;
                cluster.wait_all_registered().await?;
                Ok(Running::Switchyard(Box::new(cluster)))
            }
            System::NodeRedis => Ok(Running::Peer(
                tokio::task::spawn_blocking(move || PeerCluster::node(n)).await??,
            )),
            System::NodeSharded => Ok(Running::Peer(
                tokio::task::spawn_blocking(move || PeerCluster::node_sharded(n)).await??,
            )),
            System::SocketioxideRedis => Ok(Running::Peer(
                tokio::task::spawn_blocking(move || PeerCluster::socketioxide_redis(n)).await??,
            )),
        }
    }
}

/// A started system; its processes stop when it is dropped.
pub enum Running {
    Switchyard(Box<SwitchyardCluster>),
    Peer(PeerCluster),
}

impl Running {
    /// How clients reach it.
    pub fn dialer(&self) -> Dialer {
        match self {
            Running::Switchyard(c) => c.dialer(),
            Running::Peer(c) => c.dialer(),
        }
    }

    /// Every server-side process as `(name, pid)`, Redis included: what the system costs.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match self {
            Running::Switchyard(c) => c.processes(),
            Running::Peer(c) => c.pids(),
        }
    }

    /// The client-facing URL of each server, in start order.
    pub fn server_urls(&self) -> Vec<String> {
        match self {
            Running::Switchyard(c) => c.gateways.iter().map(|g| g.url().to_owned()).collect(),
            Running::Peer(c) => c.urls.clone(),
        }
    }

    /// The pid of server `k`.
    pub fn server_pid(&self, k: usize) -> Option<u32> {
        match self {
            Running::Switchyard(c) => c.gateways.get(k).map(|g| g.pid()),
            Running::Peer(c) => c.processes.get(k).map(|p| p.pid()),
        }
    }

    /// SIGKILLs server `k` (no goodbye to anyone) and returns its URL.
    pub fn kill_server(&self, k: usize) -> anyhow::Result<String> {
        let urls = self.server_urls();
        let url = urls.get(k).context("no such server")?.clone();
        match self {
            Running::Switchyard(c) => c.gateways[k].service().kill()?,
            Running::Peer(c) => c.processes[k].kill()?,
        }
        Ok(url)
    }
}
