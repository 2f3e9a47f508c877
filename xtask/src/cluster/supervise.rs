//! Supervision of the local cluster's processes, the way a kubelet restarts a container.
//!
//! Each service runs under a [`Unit`] watched by a thread of its own. When its process exits
//! without being asked to, the watcher prints one line (which service, how it ended — exit
//! code or signal —, where its log is), waits a backoff and starts it again with the same
//! program, arguments, node id and ports; everything else keeps running. The delay is the
//! project's one policy, `switchyard_common::backoff::Backoff` (full jitter), from
//! [`RESTART_BASE`] doubling to [`RESTART_MAX`]; it starts over once a process stayed up for
//! [`STABLE_AFTER`], so only a crash loop backs off further, and the line says so. Every start
//! rewrites `cluster.json` with the new pid and restart count.
//!
//! Stopping is the owner's job: it sets the shared stop flag, joins the watchers (each returns
//! its unit within one poll, one backoff step or one readiness wait) and stops the units in
//! the order it wants. A process that exits after the flag is set is not restarted.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use switchyard_common::backoff::Backoff;
use switchyard_testkit::process::Service;
use switchyard_testkit::redis::RedisServer;

use super::state::{ClusterFile, ProcessInfo, now_ms};

/// The ceiling of the first restart delay; it doubles with each quick exit in a row.
pub const RESTART_BASE: Duration = Duration::from_millis(500);
/// The longest delay between two restarts of a crash-looping service.
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting was not crash-looping: the backoff starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often a watcher looks at its process, and how soon it notices the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// How a service is started again: its program and arguments, or the redis-server handle
/// that restarts on its own port.
pub enum Launcher {
    /// A service binary (or the demo page's node): spawned again with the same arguments.
    Program {
        program: PathBuf,
        args: Vec<String>,
        ready_timeout: Duration,
        current: Option<Service>,
    },
    /// The redis-server `up` started: started again, empty, on the same port.
    Redis(RedisServer),
}

/// One supervised service.
pub struct Unit {
    /// The name `status` and `kill` use: `gw-2`, `placement`, `relay-1`, `redis`, `demo`.
    pub name: String,
    launcher: Launcher,
    started: Instant,
}

impl Unit {
    /// Starts `program` with `args` in a process group of its own (a terminal's Ctrl-C then
    /// reaches only `up`, which stops everything in order) and waits for its readiness line.
    pub fn program(
        name: &str,
        program: &Path,
        args: Vec<String>,
        ready_timeout: Duration,
    ) -> anyhow::Result<Unit> {
        let current = spawn(program, &args, ready_timeout)?;
        Ok(Unit {
            name: name.to_owned(),
            launcher: Launcher::Program {
                program: program.to_owned(),
                args,
                ready_timeout,
                current: Some(current),
            },
            started: Instant::now(),
        })
    }

    /// Supervises a redis-server started with `RedisServer::start_in_own_process_group`.
    pub fn redis(redis: RedisServer) -> Unit {
        Unit {
            name: "redis".to_owned(),
            launcher: Launcher::Redis(redis),
            started: Instant::now(),
        }
    }

    /// The running process's id; `None` between an exit and the next start.
    pub fn pid(&self) -> Option<u32> {
        match &self.launcher {
            Launcher::Program { current, .. } => current.as_ref().map(Service::pid),
            Launcher::Redis(redis) => redis.pid(),
        }
    }

    /// The running service's readiness line (empty for Redis).
    pub fn service(&self) -> Option<&Service> {
        match &self.launcher {
            Launcher::Program { current, .. } => current.as_ref(),
            Launcher::Redis(_) => None,
        }
    }

    /// The redis-server, for a Redis unit.
    pub fn redis_server(&self) -> Option<&RedisServer> {
        match &self.launcher {
            Launcher::Redis(redis) => Some(redis),
            Launcher::Program { .. } => None,
        }
    }

    /// The current (or last) process's log file.
    pub fn log_path(&self) -> Option<PathBuf> {
        match &self.launcher {
            Launcher::Program { current, .. } => {
                current.as_ref().map(|s| s.log_path().to_path_buf())
            }
            Launcher::Redis(redis) => Some(redis.log_path()),
        }
    }

    /// `Some(status)` once the process exited; `None` while it runs.
    fn exit_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        match &self.launcher {
            Launcher::Program { current, .. } => match current {
                Some(service) => service.try_status(),
                None => Ok(None),
            },
            Launcher::Redis(redis) => redis.exit_status(),
        }
    }

    /// Starts the service again with the same settings; waits until it is ready.
    fn restart(&mut self) -> anyhow::Result<()> {
        // From the attempt: a start that fails counts as a quick exit.
        self.started = Instant::now();
        match &mut self.launcher {
            Launcher::Program {
                program,
                args,
                ready_timeout,
                current,
            } => {
                // Drop reaps the old process (it has exited already).
                *current = None;
                *current = Some(spawn(program, args, *ready_timeout)?);
            }
            Launcher::Redis(redis) => redis.restart_empty()?,
        }
        self.started = Instant::now();
        Ok(())
    }

    /// SIGTERM without waiting, so that a group of units drains in parallel; already gone is
    /// fine. Redis is not asked: [`Unit::wait_stopped`] kills it, last.
    pub fn terminate(&self) {
        if let Launcher::Program {
            current: Some(service),
            ..
        } = &self.launcher
        {
            let _ = service.terminate();
        }
    }

    /// Waits up to `grace` for a terminated process to exit, then SIGKILLs it; says what was
    /// unusual.
    pub fn wait_stopped(&self, grace: Duration) {
        match &self.launcher {
            Launcher::Program {
                current: Some(service),
                ..
            } => match service.wait_exit(grace) {
                // Exit 0 after draining, or killed by the SIGTERM itself (the demo server).
                Ok(status) if status.success() || status.signal() == Some(15) => {}
                Ok(status) => eprintln!("{} exited with {status}", self.name),
                Err(_) => {
                    eprintln!("{} did not stop within {grace:?}; killing it", self.name);
                    let _ = service.kill();
                }
            },
            Launcher::Program { current: None, .. } => {}
            Launcher::Redis(redis) => {
                let _ = redis.kill();
            }
        }
    }
}

/// One value of a unit's readiness line.
pub fn ready<'a>(unit: &'a Unit, key: &str) -> anyhow::Result<&'a str> {
    unit.service()
        .with_context(|| format!("{} is not running", unit.name))?
        .ready_value(key)
}

/// What `cluster.json` says about a unit's process when the cluster starts.
pub fn process_info(unit: &Unit) -> ProcessInfo {
    ProcessInfo {
        pid: unit.pid().unwrap_or_default(),
        restarts: 0,
        started_at_ms: now_ms(),
        log: unit.log_path(),
    }
}

fn spawn(program: &Path, args: &[String], ready_timeout: Duration) -> anyhow::Result<Service> {
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    Service::spawn_command(command, ready_timeout)
        .with_context(|| format!("starting {} (is a port already taken?)", program.display()))
}

/// `cluster.json` shared by the watchers: each restart updates its own entry and rewrites the
/// file.
pub struct StateFile {
    pub path: PathBuf,
    pub file: Mutex<ClusterFile>,
}

impl StateFile {
    /// Records that `name` now runs as `pid` (after `restarts` restarts), and writes the file.
    fn record_start(&self, name: &str, pid: u32, restarts: u32, log: Option<PathBuf>) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(process) = file.process_mut(name) {
            process.pid = pid;
            process.restarts = restarts;
            process.started_at_ms = now_ms();
            process.log = log;
        }
        if let Err(e) = file.write(&self.path) {
            eprintln!("cannot update {}: {e:#}", self.path.display());
        }
    }
}

/// Watches `unit` on a thread of its own until `stop` is set; returns the unit then.
pub fn watch(
    mut unit: Unit,
    state: Arc<StateFile>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Unit> {
    thread::spawn(move || {
        let mut backoff = Backoff::new(RESTART_BASE, RESTART_MAX);
        let mut restarts = 0u32;
        let mut quick_exits = 0u32;
        let mut last_log = unit.log_path();
        let mut last_pid = unit.pid();
        loop {
            if stop.load(Ordering::SeqCst) {
                return unit;
            }
            let exited = match unit.exit_status() {
                Ok(None) if unit.pid().is_some() => {
                    thread::sleep(POLL);
                    continue;
                }
                Ok(status) => status,
                Err(e) => {
                    eprintln!("{}: cannot read its state: {e:#}", unit.name);
                    thread::sleep(POLL);
                    continue;
                }
            };
            // Asked to stop while it was exiting: the owner's stop, not a failure.
            if stop.load(Ordering::SeqCst) {
                return unit;
            }
            let up_for = unit.started.elapsed();
            if up_for >= STABLE_AFTER {
                backoff.reset();
                quick_exits = 0;
            } else {
                quick_exits += 1;
            }
            let delay = backoff.next_delay();
            let how = match exited {
                Some(status) => describe_exit(status),
                None => "did not start".to_owned(),
            };
            println!(
                "{}",
                exit_report(&ExitReport {
                    name: &unit.name,
                    pid: last_pid,
                    how: &how,
                    up_for,
                    log: last_log.as_deref(),
                    quick_exits,
                    delay,
                })
            );
            if !sleep_unless_stopped(delay, &stop) {
                return unit;
            }
            restarts += 1;
            match unit.restart() {
                Ok(()) => {
                    let pid = unit.pid().unwrap_or_default();
                    println!(
                        "{} is back: pid {pid}, restart {restarts}, same arguments and ports",
                        unit.name
                    );
                    last_pid = Some(pid);
                    last_log = unit.log_path();
                    state.record_start(&unit.name, pid, restarts, last_log.clone());
                }
                Err(e) => {
                    println!("{} did not start again: {e:#}", unit.name);
                    last_pid = None;
                }
            }
        }
    })
}

/// What the one line about an exit says.
struct ExitReport<'a> {
    name: &'a str,
    pid: Option<u32>,
    how: &'a str,
    up_for: Duration,
    log: Option<&'a Path>,
    /// Exits in a row, each within [`STABLE_AFTER`] of its start.
    quick_exits: u32,
    delay: Duration,
}

/// `gw-2 (pid 123) was killed by SIGKILL (signal 9) after 42.0 s up; log …; restarting in
/// 0.31 s`, with the crash loop named from the second quick exit in a row on.
fn exit_report(r: &ExitReport<'_>) -> String {
    let pid = r.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let log = r
        .log
        .map(|l| format!("; log {}", l.display()))
        .unwrap_or_default();
    let looping = if r.quick_exits >= 2 {
        format!(
            "; crash loop ({} exits in a row, each within {} s of starting), backing off",
            r.quick_exits,
            STABLE_AFTER.as_secs()
        )
    } else {
        String::new()
    };
    format!(
        "{}{pid} {} after {:.1} s up{log}{looping}; restarting in {:.2} s",
        r.name,
        r.how,
        r.up_for.as_secs_f64(),
        r.delay.as_secs_f64()
    )
}

/// Sleeps `delay` in short steps; `false` when `stop` was set meanwhile.
fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::SeqCst)
}

/// "exited with code 1", "was killed by SIGKILL (signal 9)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!("was killed by {} (signal {signal})", signal_name(signal)),
        None => format!("exited ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use switchyard_testkit::wait::{eventually_blocking, give_up};

    use super::*;

    #[test]
    fn exits_are_described_by_code_or_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by SIGKILL (signal 9)"
        );
    }

    #[test]
    fn one_line_says_which_how_where_and_when_and_names_a_crash_loop() {
        let mut report = ExitReport {
            name: "gw-2",
            pid: Some(123),
            how: "was killed by SIGKILL (signal 9)",
            up_for: Duration::from_secs(42),
            log: Some(Path::new("/t/switchyard-gateway-123.log")),
            quick_exits: 0,
            delay: Duration::from_millis(310),
        };
        assert_eq!(
            exit_report(&report),
            "gw-2 (pid 123) was killed by SIGKILL (signal 9) after 42.0 s up; log \
             /t/switchyard-gateway-123.log; restarting in 0.31 s"
        );
        report.quick_exits = 3;
        report.delay = Duration::from_secs(3);
        assert!(
            exit_report(&report).contains(
                "; crash loop (3 exits in a row, each within 10 s of starting), backing off; \
                 restarting in 3.00 s"
            ),
            "{}",
            exit_report(&report)
        );
    }

    /// A process that exits on its own comes back with a new pid and the restart recorded in
    /// the cluster file; once stopped, the watcher returns the unit without restarting it.
    #[test]
    fn an_exited_process_is_restarted_and_recorded() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-supervise-{}", std::process::id()));
        let unit = Unit::program(
            "gw-1",
            Path::new("sh"),
            vec![
                "-c".into(),
                "echo SWITCHYARD_READY node=gw-1; exec sleep 30".into(),
            ],
            Duration::from_secs(10),
        )?;
        let first = unit.pid().context("running")?;
        let mut file = ClusterFile::default();
        file.gateways.push(super::super::state::GatewayEntry {
            node_id: "gw-1".into(),
            url: "http://127.0.0.1:1".into(),
            process: super::super::state::ProcessInfo {
                pid: first,
                ..Default::default()
            },
        });
        let state = Arc::new(StateFile {
            path: dir.join("cluster.json"),
            file: Mutex::new(file),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch(unit, state.clone(), stop.clone());
        switchyard_testkit::process::send_signal(first, "KILL")?;
        let restarted = eventually_blocking("gw-1 restarted", Duration::from_secs(10), || {
            let on_disk = ClusterFile::read(&state.path).map_err(give_up)?;
            match on_disk.as_ref().and_then(|f| f.gateways.first()) {
                Some(g) if g.process.restarts == 1 => Ok(g.process.pid),
                g => anyhow::bail!("cluster.json says {:?}", g.map(|g| &g.process)),
            }
        })?;
        assert_ne!(restarted, first);
        stop.store(true, Ordering::SeqCst);
        let unit = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
        assert_eq!(unit.pid(), Some(restarted));
        unit.terminate();
        unit.wait_stopped(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
