//! A private three-master Redis Cluster per test, and [`RedisDeployment`]: what a test needs
//! from "a Redis the services share", so one test body runs on a single server and on a cluster.
//!
//! [`RedisCluster::start`] runs three Debian `redis-server`s on free ports of 127.0.0.1 with
//! `--cluster-enabled yes` (each with its cluster bus on another free port, `--cluster-port`,
//! and its `nodes.conf` in a temp dir of its own), persistence off, joins them with
//! `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes` (so each master owns a
//! third of the slots) and returns once every node says `cluster_state:ok` and knows the other
//! two. The processes are SIGKILLed and the temp dir removed when the handle is dropped.
//!
//! [`RedisCluster::start_with`] takes the same [`RedisOptions`] as a single server: with TLS
//! every node serves TLS only, the cluster bus too (`tls-cluster yes`, `tls-replication yes`),
//! and the URL is `rediss+cluster://…`; with an ACL user every node has it (ACL users are per
//! node: managed clusters create them on each).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::ports::free_port;
use crate::process::{log_dir, open_log, tail, unique_suffix};
use crate::redis::{
    Launch, RedisAccess, RedisOptions, RedisServer, find_on_path, no_denials, spawn_ready,
};
use crate::wait::eventually_blocking;

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
    fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default())
    }
    /// Starts one with TLS and/or an ACL user.
    fn start_with(options: RedisOptions) -> anyhow::Result<Self>;
    /// The `--redis-url` the services take.
    fn url(&self) -> String;
    /// Every Redis flag the services take (URL, CA file, user, password).
    fn access(&self) -> RedisAccess;
    /// What the ACL user was refused so far, on every node (`ACL LOG`), one line each.
    fn acl_denials(&self) -> anyhow::Result<Vec<String>>;
    /// Fails, listing the refusals, when the ACL user was refused anything: the proof that
    /// the user's rule gave everything that was asked for.
    fn ensure_no_acl_denials(&self) -> anyhow::Result<()> {
        no_denials(self.acl_denials()?)
    }
    /// SIGKILLs every process (an outage as clients see it).
    fn kill(&self) -> anyhow::Result<()>;
    /// Kills it and starts it again empty on the same ports; returns once it serves commands.
    fn restart_empty(&self) -> anyhow::Result<()>;
}

impl RedisDeployment for RedisServer {
    const KIND: &'static str = "redis";

    fn start_with(options: RedisOptions) -> anyhow::Result<Self> {
        RedisServer::start_with(options)
    }

    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn access(&self) -> RedisAccess {
        RedisServer::access(self)
    }

    fn acl_denials(&self) -> anyhow::Result<Vec<String>> {
        RedisServer::acl_denials(self)
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

    fn start_with(options: RedisOptions) -> anyhow::Result<Self> {
        RedisCluster::start_with(options)
    }

    fn url(&self) -> String {
        RedisCluster::url(self)
    }

    fn access(&self) -> RedisAccess {
        RedisCluster::access(self)
    }

    fn acl_denials(&self) -> anyhow::Result<Vec<String>> {
        RedisCluster::acl_denials(self)
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
    launch: Launch,
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
        Self::start_with(RedisOptions::default())
    }

    /// [`RedisCluster::start`] with TLS and/or an ACL user on every node (see the module docs).
    pub fn start_with(options: RedisOptions) -> anyhow::Result<RedisCluster> {
        let launch = Launch::new(options)?;
        let cli = find_on_path("redis-cli").context(MISSING_REDIS_CLI)?;
        let dir =
            std::env::temp_dir().join(format!("switchyard-redis-cluster-{}", unique_suffix()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = RedisCluster {
            launch,
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

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>` (`rediss+cluster://…`
    /// with TLS): the form placement and the relay take in `--redis-url` for a cluster. Never
    /// carries credentials: see [`RedisCluster::access`].
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let scheme = if self.launch.is_tls() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", nodes.join(","))
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS) of each node.
    pub fn node_urls(&self) -> Vec<String> {
        let scheme = if self.launch.is_tls() {
            "rediss"
        } else {
            "redis"
        };
        self.ports()
            .into_iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// What placement and the relay need to reach it (see [`RedisServer::access`]).
    pub fn access(&self) -> RedisAccess {
        self.launch.access(self.url())
    }

    /// [`RedisServer::ensure_no_acl_denials`] over every node.
    pub fn ensure_no_acl_denials(&self) -> anyhow::Result<()> {
        no_denials(self.acl_denials()?)
    }

    /// What the ACL user was refused so far on any node (`ACL LOG` of each), one line each.
    pub fn acl_denials(&self) -> anyhow::Result<Vec<String>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            all.extend(self.launch.acl_denials(node.port)?);
        }
        Ok(all)
    }

    /// The client ports of the nodes (stable across [`RedisCluster::restart_empty`]).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Sends one command to node `i` and returns the raw RESP reply (see
    /// [`RedisServer::command`]). A key of another node's slot answers `-MOVED …`.
    pub fn command(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let node = self.nodes.get(i).context("no such cluster node")?;
        self.launch.admin(node.port).command(args)
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
        eventually_blocking(
            "restarting the redis cluster",
            Duration::from_secs(10),
            || {
                self.spawn_all().or_else(|e| {
                    self.kill()?;
                    Err(e)
                })
            },
        )?;
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
            let mut extra = vec![
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
            if self.launch.is_tls() {
                extra
                    .extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
            }
            let (child, _log) = spawn_ready(&self.launch, node.port, &extra)?;
            *node.child() = Some(child);
        }
        Ok(())
    }

    /// `redis-cli --cluster create` over the running nodes, then waits for `cluster_state:ok`.
    fn create(&self) -> anyhow::Result<()> {
        let log_path = log_dir()?.join(format!("redis-cluster-create-{}.log", unique_suffix()));
        let log = open_log(&log_path)?;
        let status = Command::new(&self.cli)
            .args(self.launch.cli_args())
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
        let known = format!("cluster_known_nodes:{MASTERS}");
        eventually_blocking("the redis cluster to be ok", CLUSTER_READY_TIMEOUT, || {
            for node in &self.nodes {
                let info = self
                    .launch
                    .admin(node.port)
                    .command(&["CLUSTER", "INFO"])
                    .unwrap_or_default();
                ensure!(
                    info.contains("cluster_state:ok") && info.contains(&known),
                    "node {}: {info}",
                    node.port
                );
            }
            Ok(())
        })
        .with_context(|| {
            format!(
                "--- last lines of {} ---\n{}",
                log_path.display(),
                tail(log_path, 20)
            )
        })
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

    /// Every node TLS only (the cluster bus too) with the ACL user; the cluster forms and
    /// routes as the plain one does.
    #[test]
    fn a_managed_cluster_forms_over_tls_with_the_acl_user_on_every_node() -> anyhow::Result<()> {
        let pki = std::sync::Arc::new(crate::tls::TestPki::generate("redis-cluster-managed")?);
        let cluster = RedisCluster::start_with(RedisOptions::managed(
            pki,
            "app",
            "resetkeys ~{sy:t}:* resetchannels -@all +get",
        ))?;
        assert!(cluster.url().starts_with("rediss+cluster://127.0.0.1:"));
        for i in 0..MASTERS {
            let info = cluster.command(i, &["CLUSTER", "INFO"])?;
            assert!(info.contains("cluster_state:ok"), "{info}");
            let users = cluster.command(i, &["ACL", "USERS"])?;
            assert!(users.contains("app"), "node {i}: {users}");
        }
        let answers: Vec<String> = (0..MASTERS)
            .map(|i| cluster.command(i, &["SET", "{sy:t}:k", "v"]))
            .collect::<anyhow::Result<_>>()?;
        assert_eq!(
            answers.iter().filter(|a| a.as_str() == "+OK\r\n").count(),
            1,
            "{answers:?}"
        );
        assert!(cluster.acl_denials()?.is_empty());
        Ok(())
    }
}
