//! `cargo xtask up` as a user runs it, under the faults a user tries first.
//!
//! The cluster is `cargo xtask up` itself, a process started the way the README says (on free
//! ports and with its own `--state-dir`, so it never meets a developer's cluster), with its
//! redis-server, one relay and three gateways. The clients are the official JS client through
//! the Switchyard helper (`useHelper`: placed through placement's `/v1/assign`, re-assigned
//! and resumed after a loss); a publisher publishes a numbered feed to their room all along.
//!
//! - `kill -9` of a gateway, pid from `cluster.json`: `up` keeps running, placement and the
//!   relay keep their pids, the gateway comes back (new pid, `restarts: 1`) and registers with
//!   placement again, its clients are placed again within 5 s as evenly as the least-loaded
//!   pick allows, and every subscriber has every acknowledged event exactly once, in order.
//! - `cargo xtask status` shows all of it; `cargo xtask kill relay-1` loses nothing either;
//!   `cargo xtask kill placement` brings it back assigning, and connected clients stay.
//! - `cargo xtask down` stops everything.
//!
//! Missing prerequisites (redis-server, Node and clients/js's modules) fail the test with what
//! to install; nothing is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Value, json};
use switchyard_testkit::driver::{Counts, Driver};
use switchyard_testkit::feed::{
    Fence, Published, Publishing, all_acked, assert_waits_within, every_subscriber_got_exactly,
    placement_waits, resumes,
};
use switchyard_testkit::ports::free_port;
use switchyard_testkit::process::{log_dir, send_signal, tail, workspace_root};
use switchyard_testkit::redis::{MISSING_REDIS, find_on_path};
use switchyard_testkit::wait::{eventually, eventually_blocking, give_up};

/// The contract's bound on how long a client waits for a new placement (README: a client that
/// loses its gateway is placed again within 5 s).
const PLACEMENT_DEADLINE: Duration = Duration::from_secs(5);
/// A guard against hanging, not a measurement. Generous: the first `cargo xtask up` of a fresh
/// clone compiles xtask itself.
const STARTUP: Duration = Duration::from_secs(900);
/// A guard against hanging, not a measurement.
const WAIT: Duration = Duration::from_secs(60);
const SUBSCRIBERS: usize = 30;
const ROOM: &str = "feed";

/// A running `cargo xtask up`; stopped (and everything it left, if it could not) when dropped.
struct Up {
    child: Child,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Up {
    /// `cargo xtask up` with three gateways on free ports and a state directory of its own;
    /// returns once `cluster.json` lists every service.
    fn start() -> anyhow::Result<Up> {
        let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "xtask-up-{}-{}",
            std::process::id(),
            free_port()
        ));
        let state_dir = run_dir.join(".switchyard");
        fs::create_dir_all(&state_dir)?;
        let log = log_dir()?.join(format!("xtask-up-{}.log", free_port()));
        let gateway_base = consecutive_free_ports(3);
        let port = |p: u16| p.to_string();
        let mut command = switchyard_testkit::cargo::command();
        command
            .args(["xtask", "up", "--gateways", "3", "--state-dir"])
            .arg(&state_dir)
            .args(["--placement-http-port", &port(free_port())])
            .args(["--placement-grpc-port", &port(free_port())])
            .args(["--relay-http-port", &port(free_port())])
            .args(["--relay-grpc-port", &port(free_port())])
            .args(["--gateway-base-port", &port(gateway_base)])
            .args(["--demo-port", &port(free_port())])
            .args(["--admin-ui-port", &port(free_port())])
            .stdin(Stdio::null());
        // One open file for both (a shared offset), so stdout and stderr interleave as written.
        let file = fs::File::create(&log)?;
        command
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        let child = command.spawn().context("spawning `cargo xtask up`")?;
        let mut up = Up {
            child,
            state_dir,
            log,
        };
        let started = Instant::now();
        let listed = eventually_blocking("the cluster up", STARTUP, || {
            if let Some(status) = up.child.try_wait().map_err(|e| give_up(e.into()))? {
                return Err(give_up(anyhow!(
                    "`cargo xtask up` exited with {status} before the cluster was up"
                )));
            }
            let file = up.file()?;
            ensure!(
                file["gateways"].as_array().is_some_and(|g| g.len() == 3),
                "cluster.json does not list three gateways yet"
            );
            Ok(())
        });
        if let Err(e) = listed {
            bail!("{e:#}:\n{}", tail(&up.log, 40));
        }
        eprintln!("cargo xtask up: cluster up after {:?}", started.elapsed());
        Ok(up)
    }

    /// `cluster.json` as it is now.
    fn file(&self) -> anyhow::Result<Value> {
        let path = self.state_dir.join("cluster.json");
        Ok(serde_json::from_str(&fs::read_to_string(&path)?)?)
    }

    /// The pid `cluster.json` gives for gateway `node`.
    fn gateway(&self, node: &str) -> anyhow::Result<Value> {
        self.file()?["gateways"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["node_id"] == node).cloned())
            .with_context(|| format!("{node} is not in cluster.json"))
    }

    fn placement_url(&self) -> anyhow::Result<String> {
        str_of(&self.file()?["placement"][0]["http"])
    }

    /// Whether `up` itself still runs.
    fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// `cargo xtask <verb> --state-dir <ours> <args>`, as a user types it in another terminal.
    fn xtask(&self, verb: &str, args: &[&str]) -> anyhow::Result<Output> {
        let output = switchyard_testkit::cargo::command()
            .args(["xtask", verb])
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running cargo xtask {verb}"))?;
        Ok(output)
    }

    /// `syctl nodes --json` run where a user would find the cluster: the state directory's
    /// parent. Returns the node ids placement lists.
    fn listed_nodes(&self) -> anyhow::Result<Vec<String>> {
        let syctl = switchyard_testkit::process::target_dir()?
            .join("debug")
            .join("syctl");
        let out = Command::new(&syctl)
            .args(["nodes", "--json"])
            .current_dir(self.state_dir.parent().context("state dir has a parent")?)
            .output()
            .with_context(|| format!("running {}", syctl.display()))?;
        ensure!(
            out.status.success(),
            "syctl nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn wait_listed(&self, want: &[&str]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        eventually(format!("placement lists {want:?}"), WAIT, async || {
            let listed = self.listed_nodes()?;
            ensure!(
                want.iter().all(|w| listed.iter().any(|n| n == w)),
                "placement lists {listed:?}"
            );
            Ok(())
        })
        .await?;
        Ok(start.elapsed())
    }

    /// What `up` printed so far.
    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = send_signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever `up` could not stop (it was killed, or failed) goes now: its services run
        // in process groups of their own and would outlive this test.
        if let Ok(file) = self.file() {
            for pid in all_pids(&file) {
                let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("switchyard")
                        || c.contains("redis-server")
                        || c.contains("serve.mjs")
                });
                if ours {
                    let _ = send_signal(pid, "KILL");
                }
            }
        }
    }
}

fn all_pids(file: &Value) -> Vec<u32> {
    let mut pids = Vec::new();
    for list in ["placement", "relays", "gateways"] {
        for entry in file[list].as_array().into_iter().flatten() {
            pids.extend(entry["pid"].as_u64());
        }
    }
    pids.extend(file["redis_server"]["pid"].as_u64());
    pids.extend(file["demo"]["pid"].as_u64());
    pids.extend(file["admin_ui"]["process"]["pid"].as_u64());
    pids.into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect()
}

fn str_of(v: &Value) -> anyhow::Result<String> {
    v.as_str().map(str::to_owned).context("not a string")
}

fn pid_of(v: &Value) -> anyhow::Result<u32> {
    Ok(u32::try_from(v["pid"].as_u64().context("no pid")?)?)
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The first of `n` consecutive ports on 127.0.0.1 that were free a moment ago (`up` gives
/// gateway i the port base + i - 1).
fn consecutive_free_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        let free = (0..n).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
        });
        if free {
            return base;
        }
    }
}

/// Connected clients per node over both drivers.
fn merged(a: &Counts, b: &Counts) -> BTreeMap<String, usize> {
    let mut out = a.by_node.clone();
    for (node, n) in &b.by_node {
        *out.entry(node.clone()).or_default() += n;
    }
    out
}

/// As even as least-loaded placement makes it after a gateway died and came back: the
/// survivors differ by at most one, and the restarted gateway, which takes every client
/// placed after it registered, holds no more than the busiest survivor (no pile-up on it).
/// With the restart after the last client was placed, it holds none.
fn placed_evenly(by_node: &BTreeMap<String, usize>, survivors: &[&str], restarted: &str) -> bool {
    let counts: Vec<usize> = survivors
        .iter()
        .map(|n| by_node.get(*n).copied().unwrap_or(0))
        .collect();
    let (Some(&min), Some(&max)) = (counts.iter().min(), counts.iter().max()) else {
        return false;
    };
    max - min <= 1 && by_node.get(restarted).copied().unwrap_or(0) <= max
}

/// Fails with what to install when a prerequisite of this test is missing.
fn require_prerequisites() -> anyhow::Result<()> {
    if find_on_path("redis-server").is_none() {
        bail!("{MISSING_REDIS}");
    }
    if find_on_path("node").is_none() {
        bail!("Node.js is not installed: the official JS client needs it (`cargo xtask prereqs`)");
    }
    let modules = workspace_root()?.join("clients/js/node_modules/socket.io-client");
    if !modules.is_dir() {
        bail!(
            "clients/js/node_modules is missing: run `cargo xtask prereqs` (or `npm ci --prefix \
             clients/js`)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_a_killed_gateway_and_relay_while_clients_lose_nothing() -> anyhow::Result<()> {
    require_prerequisites()?;
    let mut up = Up::start()?;
    let placement = up.placement_url()?;
    let nodes = ["gw-1", "gw-2", "gw-3"];
    up.wait_listed(&nodes).await?;
    let before = up.file()?;
    let placement_pid = pid_of(&before["placement"][0])?;
    let relay_pid = pid_of(&before["relays"][0])?;

    // The publisher first, then the subscribers: all placed through /v1/assign.
    let helper = json!({"placement": placement, "transports": ["websocket"], "useHelper": true});
    let mut publisher = Driver::node().await?;
    publisher.connect("p", helper.clone()).await?;
    let on = publisher.connected("p", WAIT).await?;
    let publisher_node = str_of(&on["node_id"])?;
    let mut subs = Driver::node().await?;
    subs.connect_many("s", SUBSCRIBERS, helper.clone()).await?;
    subs.wait_counts("every subscriber connected", WAIT, |c| {
        c.connected == SUBSCRIBERS
    })
    .await?;
    let ids: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("s{i}")).collect();
    for id in &ids {
        let ack = subs.join(id, ROOM).await?;
        ensure!(ack["ok"] == true, "{id} joins {ROOM}: {ack}");
    }
    // Socket.IO's own tools, unchanged, against the cluster `up` started: the official emitter
    // on its Redis reaches every subscriber, and the admin UI's login from cluster.json works.
    let file = up.file()?;
    let mut tools = Driver::emitter(&str_of(&file["redis"])?).await?;
    tools
        .request(json!({"cmd": "emit", "to": [ROOM], "event": "from-emitter", "args": [1]}))
        .await?;
    for id in &ids {
        subs.wait_event(&format!("{id} gets the emitted event"), WAIT, |e| {
            e["id"] == id.as_str() && e["event"] == "recv" && e["name"] == "from-emitter"
        })
        .await?;
    }
    tools.shutdown().await?;
    let ui = &file["admin_ui"];
    ensure!(ui["url"].is_string(), "the dashboard is served: {ui}");
    let mut admin = Driver::node().await?;
    admin
        .connect_raw(
            "admin",
            &str_of(&ui["server_url"])?,
            None,
            json!({"namespace": ui["namespace"], "transports": ["websocket"],
                   "auth": {"username": ui["username"], "password": ui["password"]}}),
        )
        .await?;
    admin.connected("admin", WAIT).await?;
    admin
        .wait_event("the admin UI's config", WAIT, |e| {
            e["event"] == "recv" && e["name"] == "config"
        })
        .await?;
    admin.shutdown().await?;

    let spread = merged(&subs.count().await?, &publisher.count().await?);
    ensure!(
        spread.values().max().unwrap_or(&0) - spread.values().min().unwrap_or(&0) <= 1
            && spread.len() == 3,
        "clients spread evenly over the three gateways: {spread:?}"
    );

    // kill -9 of a gateway the publisher is not on, pid from cluster.json.
    let victim = nodes
        .iter()
        .copied()
        .find(|n| *n != publisher_node)
        .context("a gateway without the publisher")?;
    let survivors: Vec<&str> = nodes.iter().copied().filter(|n| *n != victim).collect();
    let on_victim = subs.count().await?.on(victim);
    let old_pid = pid_of(&up.gateway(victim)?)?;
    let publishing = Publishing::start(publisher, "p", ROOM, 0);
    publishing.advance(30).await?;
    send_signal(old_pid, "KILL")?;
    let killed = Instant::now();

    // Its clients are placed again, evenly, within the bound.
    // The bound runs from the kill.
    let (replaced, last) = eventually(
        format!("{victim}'s {on_victim} clients placed again evenly"),
        PLACEMENT_DEADLINE.saturating_sub(killed.elapsed()),
        async || {
            let counts = subs.count().await.map_err(give_up)?;
            let waits = placement_waits(&mut subs);
            ensure!(
                counts.connected == SUBSCRIBERS
                    && waits.len() == on_victim
                    && placed_evenly(&counts.by_node, &survivors, victim)
                    && subs
                        .events()
                        .iter()
                        .filter(|e| e["event"] == "reconnected")
                        .count()
                        == on_victim,
                "not placed again evenly: {:?}",
                counts.by_node
            );
            Ok((killed.elapsed(), counts.by_node))
        },
    )
    .await?;
    eprintln!(
        "re-placement after kill -9 of {victim}: every one of its {on_victim} clients back in \
         {replaced:?}, spread {last:?}"
    );
    assert_waits_within(
        &placement_waits(&mut subs),
        u64::try_from(PLACEMENT_DEADLINE.as_millis())?,
    )?;

    // The gateway comes back with a new pid, one restart, and registers with placement; the
    // rest of the cluster never stopped.
    let back = eventually(format!("{victim} back"), WAIT, || async {
        let entry = up.gateway(victim)?;
        let pid = pid_of(&entry)?;
        ensure!(
            pid != old_pid && entry["restarts"] == 1 && alive(pid),
            "{victim} not back: {entry}\n{}",
            up.output()
        );
        Ok(pid)
    })
    .await?;
    up.wait_listed(&[victim]).await?;
    eprintln!(
        "{victim} back as pid {back} (was {old_pid}) and listed by placement {:?} after the kill",
        killed.elapsed()
    );
    ensure!(up.running()?, "cargo xtask up still runs");
    let now = up.file()?;
    ensure!(
        pid_of(&now["placement"][0])? == placement_pid && pid_of(&now["relays"][0])? == relay_pid,
        "placement and relay kept their pids: {now}"
    );
    let output = up.output();
    let report = output
        .lines()
        .find(|l| l.starts_with(&format!("{victim} (pid {old_pid})")))
        .with_context(|| format!("up reported {victim}'s death:\n{output}"))?;
    ensure!(
        report.contains("killed by SIGKILL") && report.contains(".log"),
        "the report says how it died and where its log is: {report}"
    );
    ensure!(
        !output.contains("stack backtrace") && !output.contains("panicked"),
        "no backtrace:\n{output}"
    );

    publishing.advance(30).await?;
    let (mut publisher, mut published) = publishing.stop().await?;
    all_acked(&published)?;
    let fence = Fence {
        driver: &mut publisher,
        id: "p",
        room: ROOM,
    };
    every_subscriber_got_exactly(&mut subs, &ids, fence, &published).await?;
    for r in resumes(&mut subs) {
        ensure!(r["recovered"] == true, "a resume did not recover: {r}");
    }

    // `cargo xtask status` shows what runs.
    let status = up.xtask("status", &[])?;
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    eprintln!("cargo xtask status:\n{text}");
    ensure!(status.status.success(), "status exits 0: {status:?}");
    let line = text
        .lines()
        .find(|l| l.starts_with(victim))
        .with_context(|| format!("status lists {victim}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        fields.get(1) == Some(&back.to_string().as_str())
            && fields.get(2) == Some(&"running")
            && fields.get(3) == Some(&"1"),
        "status shows {victim}'s new pid, running, one restart: {line}"
    );
    for name in [
        "redis",
        "placement",
        "relay-1",
        "gw-1",
        "gw-2",
        "gw-3",
        "demo",
        "admin-ui",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("status lists {name}"))?;
        ensure!(
            line.split_whitespace().nth(2) == Some("running"),
            "status shows {name} running: {line}"
        );
    }

    // `cargo xtask kill relay-1` while the feed goes on: nothing acknowledged is lost.
    let publishing = Publishing::start(publisher, "p", ROOM, published.len() as u64);
    publishing.advance(20).await?;
    let killed = up.xtask("kill", &["relay-1"])?;
    ensure!(killed.status.success(), "kill relay-1: {killed:?}");
    eventually("relay-1 back", WAIT, || async {
        let relay = &up.file()?["relays"][0];
        ensure!(
            relay["restarts"] == 1 && pid_of(relay)? != relay_pid && alive(pid_of(relay)?),
            "relay-1 not back: {relay}"
        );
        Ok(())
    })
    .await?;
    publishing.advance(60).await?;
    subs.wait_counts(
        "every subscriber connected after the relay came back",
        WAIT,
        |c| c.connected == SUBSCRIBERS,
    )
    .await?;
    publishing.advance(30).await?;
    let (mut publisher, more) = publishing.stop().await?;
    // With the only relay down nothing can be stamped: those publishes are refused (the ack
    // says so, or the publisher's own connection was cut and it was told), never lost.
    let refused: Vec<&Published> = more.iter().filter(|p| !p.acked).collect();
    eprintln!(
        "{} of {} publishes refused while relay-1 was down: {:?}",
        refused.len(),
        more.len(),
        refused
            .iter()
            .map(|p| &p.answer)
            .take(3)
            .collect::<Vec<_>>()
    );
    ensure!(
        more.iter().rev().take(30).all(|p| p.acked),
        "publishes are acknowledged again once the relay is back"
    );
    published.extend(more);
    let fence = Fence {
        driver: &mut publisher,
        id: "p",
        room: ROOM,
    };
    every_subscriber_got_exactly(&mut subs, &ids, fence, &published).await?;
    for r in resumes(&mut subs) {
        ensure!(
            r["recovered"] == true,
            "history survived in Redis, so every resume recovers: {r}"
        );
    }
    ensure!(up.running()?, "cargo xtask up still runs");

    // `cargo xtask kill placement`: it comes back on its port, gateways report to it again and
    // it assigns; the clients already connected never notice.
    let killed = up.xtask("kill", &["placement"])?;
    ensure!(killed.status.success(), "kill placement: {killed:?}");
    let placement_killed = Instant::now();
    eventually("placement back", WAIT, || async {
        let placement = &up.file()?["placement"][0];
        ensure!(
            placement["restarts"] == 1
                && pid_of(placement)? != placement_pid
                && alive(pid_of(placement)?),
            "placement not back: {placement}"
        );
        Ok(())
    })
    .await?;
    let listed = up.wait_listed(&["gw-1", "gw-2", "gw-3"]).await?;
    let placement_url = up.placement_url()?;
    eventually("an assignment from the new placement", WAIT, || async {
        switchyard_testkit::assign::assign(&placement_url, "/").await?;
        Ok(())
    })
    .await?;
    eprintln!(
        "placement back and assigning {:?} after its kill (gateways listed after {listed:?})",
        placement_killed.elapsed()
    );
    let counts = subs.count().await?;
    ensure!(
        counts.connected == SUBSCRIBERS,
        "subscribers stay connected while placement restarts: {counts:?}"
    );
    ensure!(up.running()?, "cargo xtask up still runs");

    // `cargo xtask down` stops everything and removes the file.
    publisher.shutdown().await?;
    subs.shutdown().await?;
    let pids = all_pids(&up.file()?);
    let down = up.xtask("down", &[])?;
    ensure!(down.status.success(), "down: {down:?}");
    let status = up.child.wait()?;
    ensure!(status.success(), "up exits 0 after down: {status}");
    ensure!(
        !up.state_dir.join("cluster.json").exists(),
        "cluster.json removed"
    );
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    ensure!(left.is_empty(), "still running after down: {left:?}");
    let status = up.xtask("status", &[])?;
    ensure!(
        !status.status.success(),
        "status fails when no cluster runs"
    );
    Ok(())
}
