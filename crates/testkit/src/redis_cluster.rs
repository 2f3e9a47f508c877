//! A private three-master Redis Cluster per test, and [`RedisDeployment`]: what a test needs
//! from "a Redis the services share", so one test body runs on a single server and on a cluster.
//!
//! [`RedisCluster::start`] runs three Debian `redis-server`s on free ports of 127.0.0.1 with
//! `--cluster-enabled yes` (each with its cluster bus on another free port, `--cluster-port`,
//! and its `nodes.conf` in a temp dir of its own), persistence off, joins them with
//! `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes` (so each master owns a
//! third of the slots) and returns once every node says `cluster_state:ok` and knows the other
//! two. The processes are SIGKILLed and the temp dir removed when the handle is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ports::free_port;
use crate::process::{log_dir, open_log, tail};
use crate::redis::{
    MISSING_REDIS, RedisServer, find_on_path, raw_command, spawn_ready, unique_suffix,
};

/// Masters in a test cluster: the fewest `redis-cli --cluster create` accepts.
pub const MASTERS: usize = 3;

/// How long the nodes may take to agree that the cluster is up.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The error text when `redis-cli` is missing.
pub const MISSING_REDIS_CLI: &str = "redis-cli not found on PATH; install Debian's redis-tools \
                                     (xtask test installs it in CI with redis-server)";

/// A Redis the services under test share: one [`RedisServer`] or a [`RedisCluster`]. Test
/// bodies generic over it run once per kind (`case::<RedisServer>()`, `case::<RedisCluster>()`).
pub trait RedisDeployment: Sized + Send + Sync + 'static {
    /// Short name for test output (`redis`, `cluster`).
    const KIND: &'static str;
    /// Starts a fresh, empty one; returns once it serves commands.
    fn start() -> anyhow::Result<Self>;
    /// The `--redis-url` the services take.
    fn url(&self) -> String;
    /// SIGKILLs every process (an outage as clients see it).
    fn kill(&self) -> anyhow::Result<()>;
    /// Kills it and starts it again empty on the same ports; returns once it serves commands.
    fn restart_empty(&self) -> anyhow::Result<()>;
}

impl RedisDeployment for RedisServer {
    const KIND: &'static str = "redis";

    fn start() -> anyhow::Result<Self> {
        RedisServer::start()
    }

    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn kill(&self) -> anyhow::Result<()> {
        RedisServer::kill(self)
    }

    fn restart_empty(&self) -> anyhow::Result<()> {
        RedisServer::restart_empty(self)
    }
}

impl RedisDeployment for RedisCluster {
    const KIND: &'static str = "cluster";

    fn start() -> anyhow::Result<Self> {
        RedisCluster::start()
    }

    fn url(&self) -> String {
        RedisCluster::url(self)
    }

    fn kill(&self) -> anyhow::Result<()> {
        RedisCluster::kill(self)
    }

    fn restart_empty(&self) -> anyhow::Result<()> {
        RedisCluster::restart_empty(self)
    }
}

/// One cluster node: its client port, its cluster bus port and its process.
#[derive(Debug)]
struct Node {
    port: u16,
    bus_port: u16,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child().take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// A running three-master Redis Cluster owned by a test; killed and cleaned up on Drop.
#[derive(Debug)]
pub struct RedisCluster {
    program: PathBuf,
    cli: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts three cluster-enabled `redis-server`s on free ports, creates the cluster and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// Retries on other ports when a chosen one was taken in the meantime.
    pub fn start() -> anyhow::Result<RedisCluster> {
        let program = find_on_path("redis-server").context(MISSING_REDIS)?;
        let cli = find_on_path("redis-cli").context(MISSING_REDIS_CLI)?;
        let dir =
            std::env::temp_dir().join(format!("switchyard-redis-cluster-{}", unique_suffix()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = RedisCluster {
            program,
            cli,
            dir,
            nodes: Vec::new(),
        };
        let mut last_error = None;
        for _ in 0..5 {
            cluster.nodes = (0..MASTERS)
                .map(|_| Node {
                    port: free_port(),
                    bus_port: free_port(),
                    child: Mutex::new(None),
                })
                .collect();
            match cluster.spawn_all().and_then(|()| cluster.create()) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    cluster.kill()?;
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the redis cluster did not start")))
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>`: the form placement and
    /// the relay take in `--redis-url` for a cluster.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `redis://127.0.0.1:<port>` of each node.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The client ports of the nodes (stable across [`RedisCluster::restart_empty`]).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Sends one command to node `i` and returns the raw RESP reply (see
    /// [`RedisServer::command`]). A key of another node's slot answers `-MOVED …`.
    pub fn command(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let node = self.nodes.get(i).context("no such cluster node")?;
        raw_command(node.port, args)
    }

    /// SIGKILLs every node. Fine to call twice.
    pub fn kill(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.kill()?;
        }
        Ok(())
    }

    /// Kills every node and starts an empty cluster on the same ports (fresh node ids and
    /// `nodes.conf`, slots spread again); returns once it is up. A cluster that lost all data.
    pub fn restart_empty(&self) -> anyhow::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_all() {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context("restarting the redis cluster"));
                }
                Err(_) => {
                    self.kill()?;
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        self.create()
    }

    /// Spawns every node afresh (no `nodes.conf` left from before).
    fn spawn_all(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let conf = self.dir.join(format!("nodes-{}.conf", node.port));
            match fs::remove_file(&conf) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", conf.display()));
                }
                _ => {}
            }
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                conf.display().to_string(),
                "--cluster-port".to_owned(),
                node.bus_port.to_string(),
                "--cluster-node-timeout".to_owned(),
                "5000".to_owned(),
                "--dir".to_owned(),
                self.dir.display().to_string(),
            ];
            let (child, _log) = spawn_ready(&self.program, node.port, &extra, false)?;
            *node.child() = Some(child);
        }
        Ok(())
    }

    /// `redis-cli --cluster create` over the running nodes, then waits for `cluster_state:ok`.
    fn create(&self) -> anyhow::Result<()> {
        let log_path = log_dir()?.join(format!("redis-cluster-create-{}.log", unique_suffix()));
        let log = open_log(&log_path)?;
        let status = Command::new(&self.cli)
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .status()
            .with_context(|| format!("running {}", self.cli.display()))?;
        if !status.success() {
            bail!(
                "redis-cli --cluster create exited with {status}\n--- last lines of {} ---\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        self.wait_ok(&log_path)
    }

    /// Polls `CLUSTER INFO` on every node until all say the cluster is ok and know each other.
    fn wait_ok(&self, log_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let known = format!("cluster_known_nodes:{MASTERS}");
        loop {
            let mut last = String::new();
            let mut all_ok = true;
            for node in &self.nodes {
                let info = raw_command(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if !(info.contains("cluster_state:ok") && info.contains(&known)) {
                    all_ok = false;
                    last = format!("node {}: {info}", node.port);
                    break;
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the redis cluster was not ok within {CLUSTER_READY_TIMEOUT:?}: {last}\n\
                     --- last lines of {} ---\n{}",
                    log_path.display(),
                    tail(log_path, 20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let slot = node.child.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_share_the_slots_and_restart_empty() -> anyhow::Result<()> {
        let cluster = RedisCluster::start()?;
        assert_eq!(cluster.ports().len(), MASTERS);
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        for i in 0..MASTERS {
            let info = cluster.command(i, &["CLUSTER", "INFO"])?;
            assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
            assert!(info.contains("cluster_size:3"), "{info}");
        }
        // A key lives on exactly one node; the others redirect.
        let answers: Vec<String> = (0..MASTERS)
            .map(|i| cluster.command(i, &["SET", "{sy:t}:k", "v"]))
            .collect::<anyhow::Result<_>>()?;
        let owners = answers.iter().filter(|a| a.as_str() == "+OK\r\n").count();
        let moved = answers.iter().filter(|a| a.starts_with("-MOVED")).count();
        assert_eq!((owners, moved), (1, 2), "{answers:?}");

        cluster.kill()?;
        assert!(
            cluster.command(0, &["PING"]).is_err(),
            "a killed node refuses"
        );
        cluster.restart_empty()?;
        let after: Vec<String> = (0..MASTERS)
            .map(|i| cluster.command(i, &["GET", "{sy:t}:k"]))
            .collect::<anyhow::Result<_>>()?;
        assert!(after.iter().any(|a| a == "$-1\r\n"), "{after:?}");
        assert!(
            after
                .iter()
                .all(|a| a == "$-1\r\n" || a.starts_with("-MOVED"))
        );
        Ok(())
    }
}
