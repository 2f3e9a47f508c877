//! Probes, polled the way the kubelet polls them.
//!
//! One worker per probe of a running container (kubelet `prober/worker.go`): it probes at once,
//! then every `periodSeconds`; nothing counts before `initialDelaySeconds` after the container
//! started; a probe that does not answer within `timeoutSeconds` failed; the result flips after
//! `successThreshold` / `failureThreshold` consecutive results (defaults 1 / 3, period 10 s,
//! timeout 1 s). While a startup probe has not succeeded, liveness and readiness do not run
//! (readiness stays false); once it succeeds the readiness probe runs at once, as the kubelet's
//! status sync triggers it. Startup or liveness failure is reported to the container, which is
//! killed and restarted; readiness goes into the pod's Ready condition.
//!
//! Actions: `httpGet` (a plain HTTP/1.1 GET with `User-Agent: kube-probe/1.30`; 200–399 is a
//! success, as for the kubelet), `tcpSocket` (the connection opens), `grpc` (the standard
//! `grpc.health.v1.Health/Check` answers SERVING; plaintext, like the kubelet's) and `exec`
//! (the command, mapped by [`super::images`], exits 0, with the container's environment).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};

use super::images::Program;
use super::model::Probe;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Startup => "startup",
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
        })
    }
}

/// What a probe does, with every address and program already resolved for one container.
#[derive(Debug, Clone)]
pub enum Action {
    Http {
        addr: SocketAddr,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        addr: SocketAddr,
    },
    Grpc {
        addr: SocketAddr,
        service: String,
    },
    Exec {
        program: Program,
        env: BTreeMap<String, String>,
        cwd: PathBuf,
    },
}

/// A probe's timing, with the API's defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Timing {
        Timing {
            initial_delay: Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0)),
            period: Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1)),
            timeout: Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        }
    }
}

/// What a worker tells its container.
#[derive(Debug)]
pub enum Report {
    /// The startup probe succeeded (or there is none): liveness and readiness may run.
    Started,
    Ready(bool),
    /// Liveness or startup failed `failureThreshold` times in a row: restart the container.
    Failed(String),
}

/// Runs one probe worker until the container stops (the caller aborts the task).
/// `started` is true once the container has started (a startup probe succeeded, or there is
/// none); `trigger` asks for an immediate probe.
pub async fn worker(
    kind: Kind,
    action: Action,
    timing: Timing,
    container_started: tokio::time::Instant,
    mut started: watch::Receiver<bool>,
    trigger: Arc<Notify>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(timing.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = trigger.notified() => {}
            changed = started.changed() => {
                if changed.is_err() {
                    return;
                }
                // Readiness runs as soon as the container counts as started.
                if !(kind == Kind::Readiness && *started.borrow()) {
                    continue;
                }
            }
        }
        if container_started.elapsed() < timing.initial_delay {
            continue;
        }
        let is_started = *started.borrow();
        if (kind == Kind::Startup) == is_started {
            // Startup probes stop once started; the others wait for it.
            if kind == Kind::Startup {
                return;
            }
            continue;
        }
        let outcome = probe(&action, timing.timeout).await;
        match outcome {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= timing.success_threshold {
                    let report = match kind {
                        Kind::Startup => Report::Started,
                        Kind::Readiness => Report::Ready(true),
                        Kind::Liveness => continue,
                    };
                    if reports.send(report).is_err() {
                        return;
                    }
                    if kind == Kind::Startup {
                        return;
                    }
                }
            }
            Err(e) => {
                successes = 0;
                failures += 1;
                if failures >= timing.failure_threshold {
                    let report = match kind {
                        Kind::Readiness => Report::Ready(false),
                        _ => Report::Failed(format!("{kind} probe failed {failures} times: {e:#}")),
                    };
                    let fatal = kind != Kind::Readiness;
                    if reports.send(report).is_err() || fatal {
                        return;
                    }
                }
            }
        }
    }
}

/// Runs one probe; `Ok` is a success.
pub async fn probe(action: &Action, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, probe_once(action)).await {
        Ok(result) => result,
        Err(_) => bail!("no answer within {timeout:?}"),
    }
}

async fn probe_once(action: &Action) -> Result<()> {
    match action {
        Action::Tcp { addr } => {
            TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            Ok(())
        }
        Action::Http {
            addr,
            path,
            headers,
        } => {
            let mut stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(2).any(|w| w == b"\r\n") {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("connection closed before a status line");
                }
                head.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&head);
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("not an HTTP status line: {line:?}"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                bail!("GET {path} answered {status}")
            }
        }
        Action::Grpc { addr, service } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus,
                health_client::HealthClient,
            };
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .with_context(|| format!("grpc.health.v1.Health/Check on {addr}"))?;
            let status = answer.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                bail!("gRPC health of {addr} is {status}, not SERVING")
            }
        }
        Action::Exec { program, env, cwd } => {
            let status = tokio::process::Command::new(&program.path)
                .args(&program.args)
                .env_clear()
                .envs(env)
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                // Its own process group, like the container (see `pods::spawn`).
                .process_group(0)
                .status()
                .await
                .with_context(|| format!("running {}", program.path.display()))?;
            if status.success() {
                Ok(())
            } else {
                bail!("{} exited with {status}", program.path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_probes_count_2xx_and_3xx_as_success() -> Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            for status in ["200 OK", "302 Found", "503 Service Unavailable"] {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let action = Action::Http {
            addr,
            path: "/readyz".into(),
            headers: vec![],
        };
        let timeout = Duration::from_secs(2);
        assert!(probe(&action, timeout).await.is_ok());
        assert!(probe(&action, timeout).await.is_ok());
        let err = probe(&action, timeout).await.err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("GET /readyz answered 503"));
        Ok(())
    }

    /// A liveness probe against a closed port reports a failure after `failureThreshold`
    /// consecutive failures (not before), and not until the container has started.
    #[tokio::test]
    async fn liveness_fails_after_the_threshold_once_started() -> Result<()> {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?
        };
        let timing = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(1000),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 2,
        };
        let (started_tx, started) = watch::channel(false);
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let worker = tokio::spawn(worker(
            Kind::Liveness,
            Action::Tcp { addr: closed },
            timing,
            tokio::time::Instant::now(),
            started,
            Arc::new(Notify::new()),
            reports_tx,
        ));
        // Not started: nothing is probed, nothing reported.
        let quiet = tokio::time::timeout(Duration::from_millis(1500), reports.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        let since = std::time::Instant::now();
        started_tx.send(true)?;
        let report = tokio::time::timeout(Duration::from_secs(5), reports.recv()).await?;
        assert!(
            matches!(report, Some(Report::Failed(ref why)) if why.contains("failed 2 times")),
            "{report:?}"
        );
        // Two failures a period apart (the first at the next tick).
        assert!(
            since.elapsed() >= Duration::from_millis(400),
            "{:?}",
            since.elapsed()
        );
        worker.abort();
        Ok(())
    }

    #[tokio::test]
    async fn exec_probes_use_the_exit_code() -> Result<()> {
        let action = |program: &str| Action::Exec {
            program: Program {
                path: PathBuf::from(program),
                args: vec![],
            },
            env: BTreeMap::new(),
            cwd: std::env::temp_dir(),
        };
        assert!(
            probe(&action("/bin/true"), Duration::from_secs(2))
                .await
                .is_ok()
        );
        assert!(
            probe(&action("/bin/false"), Duration::from_secs(2))
                .await
                .is_err()
        );
        Ok(())
    }
}
