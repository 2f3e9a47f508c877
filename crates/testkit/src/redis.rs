//! A private `redis-server` per test or suite.
//!
//! [`RedisServer::start`] runs Debian's `redis-server` on a free port of 127.0.0.1 with
//! persistence off (`--save "" --appendonly no`), and returns once it answers `PING`. It never
//! touches the Redis on 6379. The process is SIGKILLed when the handle is dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ports::free_port;
use crate::process::{log_dir, open_log, tail};

/// The error text when `redis-server` is missing, so every test says the same actionable thing.
pub const MISSING_REDIS: &str = "redis-server not found on PATH; install Debian's redis-server \
                                 (xtask test installs it in CI)";

/// How long a fresh redis-server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `redis-server` owned by a test; killed on Drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    program: PathBuf,
    child: Mutex<Option<Child>>,
    log_path: Mutex<PathBuf>,
    own_process_group: bool,
}

impl RedisServer {
    /// Starts a `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// Retries on another port when the chosen one was taken in the meantime.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(false)
    }

    /// [`RedisServer::start`], with the server (and every restart of it) in a process group of
    /// its own, so a terminal's Ctrl-C reaches only the supervisor that owns it
    /// (`cargo xtask up`, which stops the services in order and Redis last).
    pub fn start_in_own_process_group() -> anyhow::Result<RedisServer> {
        Self::start_with(true)
    }

    fn start_with(own_process_group: bool) -> anyhow::Result<RedisServer> {
        let program = find_on_path("redis-server").context(MISSING_REDIS)?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port();
            match spawn_ready(&program, port, &[], own_process_group) {
                Ok((child, log_path)) => {
                    return Ok(RedisServer {
                        port,
                        program,
                        child: Mutex::new(Some(child)),
                        log_path: Mutex::new(log_path),
                        own_process_group,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port it listens on (stays the same across [`RedisServer::restart_empty`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The current process's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pid of the running server, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The exit status if the server exited (or was killed) on its own, without waiting;
    /// `None` while it runs, and after [`RedisServer::kill`].
    pub fn exit_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child().as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGKILLs the server (an outage as clients see it: connections drop, the port refuses).
    /// Fine to call twice.
    pub fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child().take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Kills the server if it runs and starts a new, empty one on the same port; returns once
    /// it answers `PING`. Simulates a Redis that lost all its data.
    pub fn restart_empty(&self) -> anyhow::Result<()> {
        self.kill()?;
        // The old socket is gone with the process, but give the kernel a moment if the port is
        // still reported busy.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_ready(&self.program, self.port, &[], self.own_process_group) {
                Ok((child, log_path)) => {
                    *self.child() = Some(child);
                    *self.log_path.lock().unwrap_or_else(|e| e.into_inner()) = log_path;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("restarting redis on port {}", self.port)));
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends one command over a fresh connection and returns the raw RESP reply, e.g.
    /// `command(&["PING"])` gives `"+PONG\r\n"`. Meant for test assertions and setup that do not
    /// warrant a Redis client.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        raw_command(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds an executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Spawns redis-server on `port` (with `extra` arguments after the defaults, which they
/// override) and waits for PING; kills it again on failure.
pub(crate) fn spawn_ready(
    program: &Path,
    port: u16,
    extra: &[String],
    own_process_group: bool,
) -> anyhow::Result<(Child, PathBuf)> {
    let log_path = log_dir()?.join(format!("redis-server-{port}-{}.log", unique_suffix()));
    let log = open_log(&log_path)?;
    let mut command = Command::new(program);
    if own_process_group {
        command.process_group(0);
    }
    let mut child = command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no"])
        .args(["--logfile", ""])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "redis-server on port {port} exited with {status} before answering PING\n\
                 --- last lines of {} ---\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        if matches!(raw_command(port, &["PING"]), Ok(reply) if reply.starts_with("+PONG")) {
            return Ok((child, log_path));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}\n\
                 --- last lines of {} ---\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A process-unique counter for log names (a port can be reused within one test run).
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One RESP command over a new connection; returns the reply bytes as text. Reads until the
/// reply looks complete for simple replies (status, error, integer, bulk string).
pub(crate) fn raw_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply_complete(&reply) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether `reply` holds one whole simple RESP reply.
fn reply_complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let Some((first, rest)) = text.split_once("\r\n") else {
        return false;
    };
    match first.as_bytes().first() {
        Some(b'$') => match first[1..].parse::<i64>() {
            Ok(len) if len >= 0 => rest.len() >= len as usize + 2,
            _ => true,
        },
        // Arrays are not parsed; one read is taken as the whole reply.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_restarts_empty() -> anyhow::Result<()> {
        let redis = RedisServer::start()?;
        assert!(redis.url().ends_with(&format!(":{}", redis.port())));
        assert_eq!(redis.command(&["PING"])?, "+PONG\r\n");
        assert_eq!(redis.command(&["SET", "k", "v"])?, "+OK\r\n");
        assert_eq!(redis.command(&["GET", "k"])?, "$1\r\nv\r\n");

        redis.kill()?;
        assert!(redis.command(&["PING"]).is_err(), "a killed server refuses");

        redis.restart_empty()?;
        assert_eq!(redis.command(&["GET", "k"])?, "$-1\r\n");
        Ok(())
    }

    #[test]
    fn two_servers_are_independent() -> anyhow::Result<()> {
        let a = RedisServer::start()?;
        let b = RedisServer::start()?;
        assert_ne!(a.port(), b.port());
        a.command(&["SET", "only-a", "1"])?;
        assert_eq!(b.command(&["EXISTS", "only-a"])?, ":0\r\n");
        let pid = a.pid();
        drop(a);
        assert!(pid.is_some());
        Ok(())
    }
}
