//! The official Socket.IO clients as child processes, spoken to in JSON lines.
//!
//! A [`Driver`] runs `clients/js/tools/driver.mjs` (socket.io-client, through the Switchyard JS
//! helper or plain) or `tests/python/driver.py` (python-socketio): one command per line on its
//! stdin, results and client events on its stdout (the protocol is described at the top of
//! `driver.mjs`). One driver manages hundreds of clients. Every event the driver reports is kept,
//! so a test can look for one that already happened. Used by the end-to-end tests of every crate
//! and by the xtask tests that drive `cargo xtask up` and the Kubernetes overlays.
//!
//! Waiting is always "until a condition holds, or fail at a deadline": the deadlines are
//! correctness bounds (or generous guards against hanging), never performance measurements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::process::{log_dir, unique_suffix, workspace_root};
use crate::wait::eventually;

/// How long one driver command may take before the test fails (a guard against hanging).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository root.
pub fn repo_root() -> PathBuf {
    workspace_root().unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The clients a driver holds, as it counts them: `by_node` counts connected clients per node id.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Counts {
    pub clients: usize,
    pub connected: usize,
    #[serde(default)]
    pub by_node: BTreeMap<String, usize>,
    #[serde(default)]
    pub states: BTreeMap<String, usize>,
}

impl Counts {
    /// Connected clients on `node`.
    pub fn on(&self, node: &str) -> usize {
        self.by_node.get(node).copied().unwrap_or(0)
    }
}

/// True when every listed node has between `min` and `min + 1` of `total` clients, i.e. the
/// clients are spread as evenly as possible, and no other node has any.
pub fn spread_evenly(by_node: &BTreeMap<String, usize>, nodes: &[&str], total: usize) -> bool {
    if nodes.is_empty() {
        return false;
    }
    let min = total / nodes.len();
    let max = min + usize::from(!total.is_multiple_of(nodes.len()));
    let listed: usize = nodes
        .iter()
        .map(|n| by_node.get(*n).copied().unwrap_or(0))
        .sum();
    let all: usize = by_node.values().sum();
    listed == total
        && all == total
        && nodes.iter().all(|n| {
            let c = by_node.get(*n).copied().unwrap_or(0);
            (min..=max).contains(&c)
        })
}

/// A JSON-lines client driver in a child process; killed when dropped.
pub struct Driver {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every event line seen so far, in order.
    events: Vec<Value>,
    next_req: u64,
}

impl Driver {
    /// `node clients/js/tools/driver.mjs` (needs `npm ci --prefix clients/js`).
    pub async fn node() -> anyhow::Result<Driver> {
        Self::node_with_env(&[]).await
    }

    /// [`Driver::node`] with extra environment variables (`NODE_EXTRA_CA_CERTS` to trust a CA).
    pub async fn node_with_env(env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<Driver> {
        let js = repo_root().join("clients/js");
        if !js.join("node_modules/socket.io-client").is_dir() {
            bail!(
                "clients/js/node_modules is missing: run `npm ci --prefix clients/js` \
                 (cargo xtask test does it)"
            );
        }
        let mut cmd = Command::new("node");
        cmd.arg(js.join("tools/driver.mjs"));
        cmd.envs(env.iter().copied());
        Self::spawn("node", cmd).await
    }

    /// `clients/socketio-tools/emitter.mjs`: the official `@socket.io/redis-emitter` on the
    /// Redis at `redis_url`, driven with the same JSON-lines protocol (its commands are
    /// described at the top of the script). Needs `npm ci --prefix clients/socketio-tools`.
    pub async fn emitter(redis_url: &str) -> anyhow::Result<Driver> {
        let tools = repo_root().join("clients/socketio-tools");
        if !tools.join("node_modules/@socket.io/redis-emitter").is_dir() {
            bail!(
                "clients/socketio-tools/node_modules is missing: run `npm ci --prefix \
                 clients/socketio-tools` (cargo xtask test does it)"
            );
        }
        let mut cmd = Command::new("node");
        cmd.arg(tools.join("emitter.mjs")).arg(redis_url);
        Self::spawn("emitter", cmd).await
    }

    /// `tests/python/driver.py` under `$SWITCHYARD_PYTHON` (set by `cargo xtask test`), else the
    /// repo's `.venv/bin/python` (needs python-socketio from `requirements.txt`).
    pub async fn python() -> anyhow::Result<Driver> {
        let root = repo_root();
        let python = std::env::var_os("SWITCHYARD_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        if !python.exists() {
            bail!(
                "{} is missing: run `python3 -m venv .venv && .venv/bin/pip install -r \
                 requirements.txt` at the repository root (cargo xtask test does it)",
                python.display()
            );
        }
        let mut cmd = Command::new(python);
        cmd.arg(root.join("tests/python/driver.py"));
        Self::spawn("python", cmd).await
    }

    async fn spawn(name: &'static str, mut cmd: Command) -> anyhow::Result<Driver> {
        let log_path = log_dir()?.join(format!("driver-{name}-{}.log", unique_suffix()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning the {name} driver (is `{name}` installed?)"))?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("driver: not JSON: {line}"),
                }
            }
        });
        let mut driver = Driver {
            name,
            child,
            stdin,
            lines: rx,
            events: Vec::new(),
            next_req: 0,
        };
        let ready = driver
            .next_line(Duration::from_secs(20))
            .await
            .with_context(|| format!("{name} driver did not start; see {}", log_path.display()))?;
        if ready["type"] != "ready" {
            bail!("{name} driver said {ready} instead of ready");
        }
        Ok(driver)
    }

    /// The next stdout line, or an error at the deadline or when the driver exited.
    async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => bail!("{} driver exited", self.name),
            Err(_) => bail!("{} driver said nothing for {timeout:?}", self.name),
        }
    }

    /// Sends a command and waits for its result; an `ok:false` result is an error.
    pub async fn request(&mut self, cmd: Value) -> anyhow::Result<Value> {
        let res = self.try_request(cmd).await?;
        if res["ok"] != true {
            bail!("{} driver refused: {res}", self.name);
        }
        Ok(res)
    }

    /// Sends a command and waits for its result, whatever it says.
    pub async fn try_request(&mut self, mut cmd: Value) -> anyhow::Result<Value> {
        self.next_req += 1;
        let req = self.next_req;
        cmd["req"] = json!(req);
        let mut line = serde_json::to_vec(&cmd)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .next_line(left)
                .await
                .with_context(|| format!("waiting for the result of {cmd}"))?;
            if v["type"] == "result" && v["req"] == json!(req) {
                return Ok(v);
            }
            self.record(v);
        }
    }

    fn record(&mut self, v: Value) {
        if v["type"] == "event" {
            self.events.push(v);
        }
    }

    /// Takes every line the driver has written so far without waiting.
    pub fn drain_lines(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.record(v);
        }
    }

    /// Every event seen so far.
    pub fn events(&mut self) -> &[Value] {
        self.drain_lines();
        &self.events
    }

    /// Events of client `id` named `event`, seen so far.
    pub fn events_of(&mut self, id: &str, event: &str) -> Vec<Value> {
        self.drain_lines();
        self.events
            .iter()
            .filter(|e| e["id"] == id && e["event"] == event)
            .cloned()
            .collect()
    }

    /// Waits for the first event (already seen or new) matching `pred`.
    pub async fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.drain_lines();
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return Ok(e.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .next_line(left)
                .await
                .with_context(|| format!("waiting for {what}"))?;
            let hit = v["type"] == "event" && pred(&v);
            self.record(v.clone());
            if hit {
                return Ok(v);
            }
        }
    }

    /// Starts `count` clients named `<prefix>0..` (see `connect_many` in driver.mjs).
    pub async fn connect_many(
        &mut self,
        prefix: &str,
        count: usize,
        opts: Value,
    ) -> anyhow::Result<()> {
        let mut cmd = json!({"cmd": "connect_many", "prefix": prefix, "count": count});
        merge(&mut cmd, opts);
        self.request(cmd).await.map(drop)
    }

    /// Starts one client `id` (see `connect` in driver.mjs).
    pub async fn connect(&mut self, id: &str, opts: Value) -> anyhow::Result<()> {
        let mut cmd = json!({"cmd": "connect", "id": id});
        merge(&mut cmd, opts);
        self.request(cmd).await.map(drop)
    }

    /// Connects client `id` straight to `url` with `token` (`None`: no auth at all).
    pub async fn connect_raw(
        &mut self,
        id: &str,
        url: &str,
        token: Option<&str>,
        opts: Value,
    ) -> anyhow::Result<()> {
        let mut cmd = json!({"cmd": "connect_raw", "id": id, "url": url, "token": token});
        merge(&mut cmd, opts);
        self.request(cmd).await.map(drop)
    }

    /// Waits for client `id` to connect (`Ok(event)`) or be refused (`Err` naming the reason).
    pub async fn connected(&mut self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let e = self
            .wait_event(&format!("{id} to connect or fail"), timeout, |e| {
                e["id"] == id && (e["event"] == "connected" || e["event"] == "connect_error")
            })
            .await?;
        if e["event"] == "connected" {
            Ok(e)
        } else {
            Err(anyhow!("{id} was refused: {e}"))
        }
    }

    /// Waits for client `id`'s `connect_error` and returns it.
    pub async fn refused(&mut self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let e = self
            .wait_event(&format!("{id} to connect or fail"), timeout, |e| {
                e["id"] == id && (e["event"] == "connected" || e["event"] == "connect_error")
            })
            .await?;
        if e["event"] == "connect_error" {
            Ok(e)
        } else {
            Err(anyhow!("{id} connected but should have been refused: {e}"))
        }
    }

    /// `join` on client `id`; returns the ack.
    pub async fn join(&mut self, id: &str, room: &str) -> anyhow::Result<Value> {
        let res = self
            .request(json!({"cmd": "join", "id": id, "room": room}))
            .await?;
        Ok(res["ack"].clone())
    }

    /// `leave` on client `id`; returns the ack.
    pub async fn leave(&mut self, id: &str, room: &str) -> anyhow::Result<Value> {
        let res = self
            .request(json!({"cmd": "leave", "id": id, "room": room}))
            .await?;
        Ok(res["ack"].clone())
    }

    /// `publish({room, event, data})` on client `id`; returns the ack. Binary data is written
    /// `{"$bin": "<base64>"}` (see [`bin`]).
    pub async fn publish(
        &mut self,
        id: &str,
        room: &str,
        event: &str,
        data: Value,
    ) -> anyhow::Result<Value> {
        let res = self
            .request(
                json!({"cmd": "publish", "id": id, "room": room, "event": event, "data": data}),
            )
            .await?;
        Ok(res["ack"].clone())
    }

    /// The driver's counts.
    pub async fn count(&mut self) -> anyhow::Result<Counts> {
        let res = self.request(json!({"cmd": "count"})).await?;
        Ok(serde_json::from_value(res)?)
    }

    /// Polls the counts until `pred` holds; fails at the deadline with the last counts.
    pub async fn wait_counts(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Counts) -> bool,
    ) -> anyhow::Result<Counts> {
        eventually(what, timeout, async || {
            let counts = self.count().await?;
            anyhow::ensure!(pred(&counts), "last counts {counts:?}");
            Ok(counts)
        })
        .await
    }

    /// Closes every client and stops the driver.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.try_request(json!({"cmd": "exit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}

/// `{"$bin": base64(bytes)}`: how binary data is written in driver commands and events.
pub fn bin(bytes: &[u8]) -> Value {
    json!({ "$bin": base64(bytes) })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// The value of an unlabelled (or first labelled) Prometheus sample named `name` in `text`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let metric = key.split('{').next()?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0, 1, 2, 255]), "AAEC/w==");
    }
}
