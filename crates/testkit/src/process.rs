//! Switchyard services as child processes.
//!
//! [`Service::spawn`] runs a binary from `target/<profile>/` (the profile comes from
//! `SWITCHYARD_PROFILE`, default `debug`), sends its stdout and stderr to
//! `target/testkit-logs/<bin>-<pid>.log`, and waits until the process prints its readiness line:
//!
//! ```text
//! SWITCHYARD_READY http=127.0.0.1:40123 grpc=127.0.0.1:40124
//! ```
//!
//! The `key=value` pairs become [`Service::ready`]. If the process exits first, or does not get
//! ready within the timeout, spawning fails with an error that quotes the end of its log.
//!
//! Signals are sent with the `kill` command rather than `libc::kill`, because the workspace
//! forbids `unsafe`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::wait::eventually_blocking;

/// The line prefix a service prints on stdout once it serves.
pub const READY_PREFIX: &str = "SWITCHYARD_READY";

/// How long [`Service::spawn`] waits for the readiness line. Debug builds on a busy machine
/// can be slow to start; override with `SWITCHYARD_TESTKIT_READY_TIMEOUT_SECS`.
pub fn default_ready_timeout() -> Duration {
    let secs = std::env::var("SWITCHYARD_TESTKIT_READY_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// The workspace root: the nearest directory holding a `Cargo.toml` with a `[workspace]` table,
/// searched upwards from `CARGO_MANIFEST_DIR` (set by cargo for tests and `cargo run`), then from
/// the current directory, then from where this crate was compiled.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let mut starts = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        for dir in start.ancestors() {
            let manifest = dir.join("Cargo.toml");
            if let Ok(text) = fs::read_to_string(&manifest)
                && text.lines().any(|l| l.trim() == "[workspace]")
            {
                return Ok(dir.to_path_buf());
            }
        }
    }
    bail!("no Cargo.toml with a [workspace] table above any of {starts:?}")
}

/// The cargo target directory: `CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    })
}

/// The directory cargo puts binaries of `SWITCHYARD_PROFILE` in (`dev` and unset mean `debug`).
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let profile = std::env::var("SWITCHYARD_PROFILE").unwrap_or_default();
    let profile = match profile.as_str() {
        "" | "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    };
    Ok(target_dir()?.join(profile))
}

/// Where process logs go: `target/testkit-logs/`, created on demand.
pub fn log_dir() -> anyhow::Result<PathBuf> {
    let dir = target_dir()?.join("testkit-logs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `<pid>-<counter>`, unique within this process, for the names of log files and scratch
/// directories (a port, or a driver's name, can be reused within one test run).
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of a built binary or example called `bin` in the current profile.
///
/// Binaries are looked up first, then `examples/`. A missing file is an error that says how to
/// build it, because the usual cause is running one test without building the workspace first.
/// The variable that runs `bin` under another program: `SWITCHYARD_WRAP_` and the binary's name
/// upper-cased with `-` as `_` (`SWITCHYARD_WRAP_SWITCHYARD_GATEWAY`). Its value is the command
/// put before the binary, split on whitespace, e.g. `valgrind --tool=callgrind
/// --callgrind-out-file=/tmp/cg.%p`: how a benchmark's servers are profiled in place
/// (`docs/BENCHMARKS.md`, "Profiles"). The wrapper must keep the pid (valgrind does), since
/// signals and CPU sampling go to it.
fn wrap_var(bin: &str) -> String {
    format!(
        "SWITCHYARD_WRAP_{}",
        bin.to_ascii_uppercase().replace('-', "_")
    )
}

fn wrapper_for(bin: &str) -> Option<String> {
    std::env::var(wrap_var(bin)).ok()
}

pub fn bin_path(bin: &str) -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?;
    let candidates = [dir.join(bin), dir.join("examples").join(bin)];
    for path in &candidates {
        if path.is_file() {
            return Ok(path.clone());
        }
    }
    bail!(
        "binary `{bin}` not found at {} (nor in examples/); build it first with \
         `cargo build --workspace --bins --examples` (cargo xtask test does this), \
         or set SWITCHYARD_PROFILE to the profile you built",
        candidates[0].display()
    )
}

/// The last `lines` lines of a file, for error messages. Never fails: an unreadable file yields
/// a note saying so.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut last: VecDeque<&str> = VecDeque::with_capacity(lines);
            for line in text.lines() {
                if last.len() == lines {
                    last.pop_front();
                }
                last.push_back(line);
            }
            last.into_iter().collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Parses `SWITCHYARD_READY k=v k=v` into a map; `None` when the line is not a readiness line.
pub fn parse_ready_line(line: &str) -> Option<HashMap<String, String>> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// What the stdout reader thread tells the spawning thread.
enum ReaderEvent {
    Ready(HashMap<String, String>),
    /// stdout closed before a readiness line: the process exited (or closed stdout).
    Eof,
}

/// A running child process; SIGKILLed and reaped when dropped.
///
/// All methods take `&self` (the child sits behind a mutex), so a handle can be shared by the
/// tasks of one test.
pub struct Service {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    ready: HashMap<String, String>,
    log_path: PathBuf,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("ready", &self.ready)
            .field("log", &self.log_path)
            .finish()
    }
}

impl Service {
    /// Spawns `target/<profile>/<bin>` with `args` and extra `env`, and waits (up to
    /// [`default_ready_timeout`]) for its `SWITCHYARD_READY` line.
    pub fn spawn<S: AsRef<OsStr>>(
        bin: &str,
        args: &[S],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        Self::spawn_with_timeout(bin, args, env, default_ready_timeout())
    }

    /// [`Service::spawn`] with an explicit readiness timeout.
    pub fn spawn_with_timeout<S: AsRef<OsStr>>(
        bin: &str,
        args: &[S],
        env: &[(&str, &str)],
        ready_timeout: Duration,
    ) -> anyhow::Result<Service> {
        let path = bin_path(bin)?;
        let Some(wrapper) = wrapper_for(bin) else {
            return Self::spawn_program(&path, args, env, ready_timeout);
        };
        let mut words = wrapper.split_whitespace();
        let program = words
            .next()
            .with_context(|| format!("{} is set but empty", wrap_var(bin)))?;
        let mut command = Command::new(program);
        command.args(words).arg(&path).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn_command(command, ready_timeout)
    }

    /// Spawns any program (by path, or by name on `PATH`) under the same rules: logs to
    /// `target/testkit-logs/<name>-<pid>.log`, waits for `SWITCHYARD_READY`.
    pub fn spawn_program<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        ready_timeout: Duration,
    ) -> anyhow::Result<Service> {
        let mut command = Command::new(program);
        command.args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn_command(command, ready_timeout)
    }

    /// Spawns a prepared `command` (program, arguments, environment, and whatever else the
    /// caller set, such as its own process group) under the same rules as
    /// [`Service::spawn_program`]; stdin, stdout and stderr are set here.
    pub fn spawn_command(mut command: Command, ready_timeout: Duration) -> anyhow::Result<Service> {
        let program = PathBuf::from(command.get_program());
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_owned());
        command
            // Logs are read by people in files, not terminals.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let pid = child.id();
        let log_path = log_dir()?.join(format!("{name}-{pid}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()));
        let log = match log {
            Ok(file) => Arc::new(Mutex::new(file)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name}: child has no stdout/stderr pipe");
        };

        let (tx, rx) = mpsc::channel();
        let stdout_log = Arc::clone(&log);
        let stdout_reader = thread::Builder::new()
            .name(format!("{name}-{pid}-stdout"))
            .spawn(move || copy_lines(stdout, &stdout_log, Some(tx)))?;
        let stderr_reader = thread::Builder::new()
            .name(format!("{name}-{pid}-stderr"))
            .spawn(move || copy_lines(stderr, &log, None))?;

        let outcome = rx.recv_timeout(ready_timeout);
        let ready = match outcome {
            Ok(ReaderEvent::Ready(map)) => map,
            Ok(ReaderEvent::Eof) | Err(_) => {
                let timed_out = outcome.is_err();
                let status = if timed_out {
                    let _ = child.kill();
                    child.wait().ok()
                } else {
                    wait_with_deadline(&mut child, Duration::from_secs(5))
                };
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // Both pipes are closed now, so the readers finish and the log is complete.
                let _ = stdout_reader.join();
                let _ = stderr_reader.join();
                let why = if timed_out {
                    format!("did not print {READY_PREFIX} within {ready_timeout:?}; killed it")
                } else {
                    match status {
                        Some(s) => format!("exited with {s} before printing {READY_PREFIX}"),
                        None => format!("closed stdout before printing {READY_PREFIX}"),
                    }
                };
                bail!(
                    "{name} (pid {pid}) {why}\n--- last lines of {} ---\n{}",
                    log_path.display(),
                    tail(&log_path, 40)
                );
            }
        };
        Ok(Service {
            name,
            pid,
            child: Mutex::new(child),
            ready,
            log_path,
        })
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The `key=value` pairs of the readiness line.
    pub fn ready(&self) -> &HashMap<String, String> {
        &self.ready
    }

    /// One value of the readiness line, or an error naming the missing key.
    pub fn ready_value(&self, key: &str) -> anyhow::Result<&str> {
        self.ready.get(key).map(String::as_str).with_context(|| {
            format!(
                "{} readiness line has no `{key}=`; it has {:?}",
                self.name, self.ready
            )
        })
    }

    /// Where this process's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of this process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child().try_wait()?)
    }

    /// SIGKILL, then reap. Fine to call on a process that already exited.
    pub fn kill(&self) -> anyhow::Result<()> {
        let mut child = self.child();
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM: ask for a graceful stop (drain, then exit 0). Use [`Service::wait_exit`] next.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// SIGSTOP: freeze the process (it holds its sockets but does nothing), e.g. to let a lease
    /// expire under it.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT: resume a paused process.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// Sends a signal by name (`TERM`, `STOP`, ...) with the `kill` command. Refuses if the
    /// process was already reaped, since its pid may belong to someone else by now.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let mut child = self.child();
        if let Some(status) = child.try_wait()? {
            bail!(
                "cannot send SIG{name} to {} (pid {}): it already exited with {status}",
                self.name,
                self.pid
            );
        }
        send_signal(self.pid, name)
    }

    /// Waits up to `timeout` for the process to exit and returns its status; an error if it is
    /// still running at the deadline (it is left running).
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.name, self.pid);
        eventually_blocking(what, timeout, || {
            self.child().try_wait()?.context("still running")
        })
        .with_context(|| {
            format!(
                "--- last lines of {} ---\n{}",
                self.log_path.display(),
                self.log_tail(20)
            )
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // SIGKILL works on a stopped process too, so a paused service never outlives its test.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends signal `name` (without the `SIG` prefix) to `pid` with the `kill` command.
pub fn send_signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let out = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the `kill` command (procps or util-linux must be installed)")?;
    if !out.status.success() {
        bail!(
            "kill -s {name} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    eventually_blocking("the process to exit", timeout, || {
        child.try_wait()?.context("still running")
    })
    .ok()
}

/// Copies `from` into the log line by line until EOF. With `ready` set (stdout), reports the
/// first readiness line, or EOF if none came, and keeps draining afterwards so the child never
/// blocks on a full pipe.
fn copy_lines(from: impl Read, log: &Mutex<File>, mut ready: Option<mpsc::Sender<ReaderEvent>>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        {
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.write_all(&buf);
            if !buf.ends_with(b"\n") {
                let _ = file.write_all(b"\n");
            }
        }
        if ready.is_some() {
            let line = String::from_utf8_lossy(&buf);
            if let Some(map) = parse_ready_line(&line)
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(ReaderEvent::Ready(map));
            }
        }
    }
    if let Some(tx) = ready {
        let _ = tx.send(ReaderEvent::Eof);
    }
}

/// Appends to a log file, creating it; shared by helpers that redirect a child straight to a file.
pub(crate) fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> anyhow::Result<Service> {
        Service::spawn_program(Path::new("sh"), &["-c", script], &[], timeout)
    }

    #[test]
    fn parses_ready_line() {
        let map = parse_ready_line("SWITCHYARD_READY http=127.0.0.1:1 node=gw-1\n");
        let map = map.unwrap_or_default();
        assert_eq!(map.get("http").map(String::as_str), Some("127.0.0.1:1"));
        assert_eq!(map.get("node").map(String::as_str), Some("gw-1"));
        assert!(parse_ready_line("SWITCHYARD_READYX a=b").is_none());
        assert!(parse_ready_line("INFO listening").is_none());
    }

    #[test]
    fn ready_service_reports_its_map_and_stops_on_sigterm() -> anyhow::Result<()> {
        let svc = sh(
            "echo starting; echo SWITCHYARD_READY http=127.0.0.1:9 node=n1; exec sleep 30",
            Duration::from_secs(10),
        )?;
        assert_eq!(svc.ready_value("http")?, "127.0.0.1:9");
        assert_eq!(svc.ready_value("node")?, "n1");
        assert!(svc.ready_value("grpc").is_err());
        svc.pause()?;
        svc.resume()?;
        svc.terminate()?;
        let status = svc.wait_exit(Duration::from_secs(5))?;
        assert!(!status.success());
        assert!(svc.log_tail(10).contains("starting"));
        assert!(
            svc.terminate().is_err(),
            "signalling a reaped process is refused"
        );
        Ok(())
    }

    #[test]
    fn early_exit_is_an_error_with_the_log_tail() {
        let err = sh(
            "echo to-stdout; echo boom-on-stderr >&2; exit 3",
            Duration::from_secs(10),
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("exited with"), "{err}");
        assert!(err.contains("boom-on-stderr"), "{err}");
        assert!(err.contains("to-stdout"), "{err}");
    }

    #[test]
    fn never_ready_is_a_timeout_error() {
        let started = std::time::Instant::now();
        let err = sh(
            "echo waiting-forever; exec sleep 30",
            Duration::from_millis(500),
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("did not print SWITCHYARD_READY"), "{err}");
        assert!(err.contains("waiting-forever"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let err = Service::spawn::<&str>("switchyard-no-such-binary", &[], &[])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("cargo build"), "{err}");
    }

    #[test]
    fn finds_the_workspace_root() -> anyhow::Result<()> {
        let root = workspace_root()?;
        assert!(root.join("crates").join("testkit").is_dir());
        Ok(())
    }
}
