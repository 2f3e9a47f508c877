//! `.switchyard/cluster.json`: what a running `cargo xtask up` holds, for people and tools in
//! other terminals (`syctl`, `cargo xtask status | kill | down`, tests).
//!
//! The file is rewritten whole on every change (a restart changes a pid) through a temporary
//! file and a rename, so a reader never sees half a file. `up` is its only writer.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::exec::workspace_root;

/// Where the cluster file lives; every verb that works on a running cluster takes it.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Directory of cluster.json. A second cluster (a test, another checkout's ports) needs
    /// its own, so that it cannot overwrite or stop a developer's running one. syctl finds
    /// the file when it runs in the directory's parent, if the directory is called
    /// `.switchyard`.
    #[arg(
        long,
        env = "SWITCHYARD_STATE_DIR",
        value_name = "DIR",
        default_value_os_t = workspace_root().join(".switchyard")
    )]
    pub state_dir: PathBuf,
}

impl StateArgs {
    pub fn cluster_file(&self) -> PathBuf {
        self.state_dir.join("cluster.json")
    }
}

/// `cluster.json`. `placement`, `relays`, `gateways`, `redis` and `admin_token` are the
/// documented contract (syctl reads them); the rest lets `status`, `kill` and `down` work on a
/// cluster whose `up` runs elsewhere.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    pub placement: Vec<PlacementEntry>,
    pub relays: Vec<RelayEntry>,
    pub gateways: Vec<GatewayEntry>,
    /// The Redis URL every service uses; `None`: in-memory ledger and history.
    pub redis: Option<String>,
    pub admin_token: String,
    /// Bearer token of the relay's `Publish` (backends, `syctl publish`).
    #[serde(default)]
    pub publish_token: Option<String>,
    /// The supervising `cargo xtask up` process.
    #[serde(default)]
    pub xtask_pid: Option<u32>,
    /// Which build the services run: `debug` or `release`.
    #[serde(default)]
    pub profile: Option<String>,
    /// The redis-server `up` started and supervises (absent with `--redis URL` or none).
    #[serde(default)]
    pub redis_server: Option<RedisEntry>,
    /// The demo page server.
    #[serde(default)]
    pub demo: Option<DemoEntry>,
    /// The admin UI: every gateway serves `@socket.io/admin-ui`'s namespace with this login;
    /// the dashboard page, when served.
    #[serde(default)]
    pub admin_ui: Option<AdminUiEntry>,
}

/// The process behind one service, as the supervisor last started it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// How often the supervisor started it again after it exited on its own.
    #[serde(default)]
    pub restarts: u32,
    /// When the current process got ready, in ms since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Its stdout and stderr.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementEntry {
    pub http: String,
    pub grpc: String,
    #[serde(flatten)]
    pub process: ProcessInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayEntry {
    #[serde(default)]
    pub http: Option<String>,
    pub grpc: String,
    #[serde(flatten)]
    pub process: ProcessInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayEntry {
    pub node_id: String,
    pub url: String,
    #[serde(flatten)]
    pub process: ProcessInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisEntry {
    pub url: String,
    #[serde(flatten)]
    pub process: ProcessInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoEntry {
    pub url: String,
    #[serde(flatten)]
    pub process: ProcessInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminUiEntry {
    /// The dashboard page (`@socket.io/admin-ui`'s `ui/dist`); `None` when not served.
    pub url: Option<String>,
    /// What to type as the dashboard's server URL: any gateway.
    pub server_url: String,
    pub namespace: String,
    pub username: String,
    pub password: String,
    /// The page server's process.
    #[serde(default)]
    pub process: Option<ProcessInfo>,
}

/// One service of the file, by the name `kill` and `status` use.
pub struct Named<'a> {
    pub name: String,
    pub addresses: String,
    pub process: &'a ProcessInfo,
}

impl ClusterFile {
    /// Reads and parses `path`; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> anyhow::Result<Option<ClusterFile>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster file", path.display()))?;
        Ok(Some(file))
    }

    /// Writes the file atomically: a temporary file beside it, then a rename.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .with_context(|| format!("{} has no parent directory", path.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".cluster.json.{}.tmp", std::process::id()));
        fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Every service with its name: `placement` (`placement-N` with several), `relay-N`, the
    /// gateways' node ids, `redis`, `demo`; in the order `up` starts them.
    pub fn services(&self) -> Vec<Named<'_>> {
        let mut out = Vec::new();
        if let Some(r) = &self.redis_server {
            out.push(Named {
                name: "redis".to_owned(),
                addresses: r.url.clone(),
                process: &r.process,
            });
        }
        for (i, p) in self.placement.iter().enumerate() {
            out.push(Named {
                name: placement_name(i, self.placement.len()),
                addresses: format!("HTTP {}  gRPC {}", p.http, p.grpc),
                process: &p.process,
            });
        }
        for (i, r) in self.relays.iter().enumerate() {
            let http = r
                .http
                .as_deref()
                .map(|h| format!("HTTP {h}  "))
                .unwrap_or_default();
            out.push(Named {
                name: relay_name(i),
                addresses: format!("{http}gRPC {}", r.grpc),
                process: &r.process,
            });
        }
        for g in &self.gateways {
            out.push(Named {
                name: g.node_id.clone(),
                addresses: g.url.clone(),
                process: &g.process,
            });
        }
        if let Some(d) = &self.demo {
            out.push(Named {
                name: "demo".to_owned(),
                addresses: d.url.clone(),
                process: &d.process,
            });
        }
        if let Some(a) = &self.admin_ui
            && let (Some(url), Some(process)) = (&a.url, &a.process)
        {
            out.push(Named {
                name: "admin-ui".to_owned(),
                addresses: url.clone(),
                process,
            });
        }
        out
    }

    /// The process entry of service `name`, for the supervisor to update.
    pub fn process_mut(&mut self, name: &str) -> Option<&mut ProcessInfo> {
        if name == "redis" {
            return self.redis_server.as_mut().map(|r| &mut r.process);
        }
        if name == "demo" {
            return self.demo.as_mut().map(|d| &mut d.process);
        }
        if name == "admin-ui" {
            return self.admin_ui.as_mut().and_then(|a| a.process.as_mut());
        }
        let placements = self.placement.len();
        if let Some(p) = self
            .placement
            .iter_mut()
            .enumerate()
            .find(|(i, _)| placement_name(*i, placements) == name)
        {
            return Some(&mut p.1.process);
        }
        if let Some(r) = self
            .relays
            .iter_mut()
            .enumerate()
            .find(|(i, _)| relay_name(*i) == name)
        {
            return Some(&mut r.1.process);
        }
        self.gateways
            .iter_mut()
            .find(|g| g.node_id == name)
            .map(|g| &mut g.process)
    }
}

/// `placement`, or `placement-N` (from 1) when there are several replicas.
pub fn placement_name(index: usize, count: usize) -> String {
    if count == 1 {
        "placement".to_owned()
    } else {
        format!("placement-{}", index + 1)
    }
}

/// `relay-N`, from 1.
pub fn relay_name(index: usize) -> String {
    format!("relay-{}", index + 1)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The demo page's server, under the workspace (run with `node`).
pub const DEMO_SERVER: &str = "clients/js/tools/serve.mjs";

/// The admin UI page's server, under the workspace (run with `node`).
pub const ADMIN_UI_SERVER: &str = "clients/socketio-tools/serve-admin-ui.mjs";

/// Whether `pid` is alive and is one of ours (a Switchyard binary, redis-server, one of the two
/// page servers or the xtask), so a stale file never makes us signal an unrelated process that
/// reused the pid.
pub fn is_ours(pid: u32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some((_, rest)) = stat.rsplit_once(") ")
        && rest.starts_with('Z')
    {
        return false; // a zombie: exited, waiting to be reaped by its parent
    }
    let cmdline = String::from_utf8_lossy(&cmdline);
    [
        "switchyard",
        "syctl",
        "redis-server",
        "xtask",
        DEMO_SERVER,
        ADMIN_UI_SERVER,
    ]
    .iter()
    .any(|name| cmdline.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterFile {
        ClusterFile {
            placement: vec![PlacementEntry {
                http: "http://127.0.0.1:7000".into(),
                grpc: "http://127.0.0.1:7001".into(),
                process: ProcessInfo {
                    pid: 1,
                    ..ProcessInfo::default()
                },
            }],
            relays: vec![RelayEntry {
                http: Some("http://127.0.0.1:7100".into()),
                grpc: "http://127.0.0.1:7101".into(),
                process: ProcessInfo {
                    pid: 3,
                    ..ProcessInfo::default()
                },
            }],
            gateways: vec![GatewayEntry {
                node_id: "gw-1".into(),
                url: "http://127.0.0.1:4000".into(),
                process: ProcessInfo {
                    pid: 2,
                    restarts: 1,
                    ..ProcessInfo::default()
                },
            }],
            admin_token: "t".into(),
            ..ClusterFile::default()
        }
    }

    #[test]
    fn cluster_file_has_the_documented_shape() -> anyhow::Result<()> {
        let json = serde_json::to_value(sample())?;
        assert_eq!(json["placement"][0]["http"], "http://127.0.0.1:7000");
        assert_eq!(json["placement"][0]["pid"], 1);
        assert_eq!(json["relays"][0]["grpc"], "http://127.0.0.1:7101");
        assert_eq!(json["gateways"][0]["node_id"], "gw-1");
        assert_eq!(json["gateways"][0]["pid"], 2);
        assert_eq!(json["gateways"][0]["restarts"], 1);
        assert!(json["redis"].is_null());
        assert_eq!(json["admin_token"], "t");
        Ok(())
    }

    #[test]
    fn services_are_named_as_kill_takes_them() {
        let mut file = sample();
        let names: Vec<String> = file.services().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["placement", "relay-1", "gw-1"]);
        if let Some(p) = file.process_mut("relay-1") {
            p.pid = 42;
        }
        assert_eq!(file.relays[0].process.pid, 42);
        assert!(file.process_mut("gw-9").is_none());
    }

    #[test]
    fn writes_atomically_and_reads_back() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-state-{}", std::process::id()));
        let path = dir.join("cluster.json");
        sample().write(&path)?;
        let back = ClusterFile::read(&path)?.context("written file")?;
        assert_eq!(back.gateways[0].process.restarts, 1);
        let leftovers = fs::read_dir(&dir)?.count();
        assert_eq!(leftovers, 1, "only cluster.json, no temporary file");
        fs::remove_dir_all(&dir)?;
        assert!(ClusterFile::read(&path)?.is_none());
        Ok(())
    }
}
