//! `cargo xtask status | kill | down`: working on a cluster whose `up` runs in another
//! terminal, through its `cluster.json`.
//!
//! Every pid from the file is checked with [`is_ours`] before it is signalled, so a stale file
//! never makes us signal an unrelated process that reused the pid.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use switchyard_testkit::process::send_signal;

use super::state::{ClusterFile, StateArgs, is_ours, now_ms};

/// Options of `cargo xtask kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The service as `cargo xtask status` names it: gw-1, gw-2 …, placement, relay-1 …,
    /// redis, demo.
    service: String,
    #[command(flatten)]
    state: StateArgs,
}

/// Reads the cluster file, or says that no cluster runs.
fn running_cluster(state: &StateArgs) -> anyhow::Result<ClusterFile> {
    let path = state.cluster_file();
    let file = ClusterFile::read(&path)?.with_context(|| {
        format!(
            "no cluster is running: {} does not exist (start one with `cargo xtask up`)",
            path.display()
        )
    })?;
    match file.xtask_pid {
        Some(pid) if is_ours(pid) => Ok(file),
        Some(pid) => bail!(
            "no cluster is running: the `cargo xtask up` of {} (pid {pid}) is gone; \
             `cargo xtask down` stops what it left behind",
            path.display()
        ),
        None => bail!("{} names no `cargo xtask up` process", path.display()),
    }
}

/// `cargo xtask status`: every service with its pid, restarts, start time and addresses.
/// Fails when no cluster runs, so scripts can ask.
pub fn status(state: StateArgs) -> anyhow::Result<()> {
    let file = running_cluster(&state)?;
    println!(
        "Switchyard cluster ({} build), supervised by `cargo xtask up` (pid {}); {}",
        file.profile.as_deref().unwrap_or("debug"),
        file.xtask_pid.unwrap_or_default(),
        state.cluster_file().display()
    );
    println!(
        "{:<11} {:>8} {:<10} {:>8}  {:<26} ADDRESSES",
        "NAME", "PID", "STATE", "RESTARTS", "UP SINCE (UTC)"
    );
    let now = now_ms();
    for service in file.services() {
        let p = service.process;
        let running = is_ours(p.pid);
        let since = if running && p.started_at_ms > 0 {
            format!(
                "{} ({} ago)",
                clock(p.started_at_ms),
                elapsed(now.saturating_sub(p.started_at_ms))
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<11} {:>8} {:<10} {:>8}  {:<26} {}",
            service.name,
            p.pid,
            if running { "running" } else { "restarting" },
            p.restarts,
            since,
            service.addresses
        );
    }
    if let Some(url) = &file.redis
        && file.redis_server.is_none()
    {
        println!("(Redis at {url} is not started or supervised by `up`)");
    }
    Ok(())
}

/// `cargo xtask kill <service>`: SIGKILL, as a crash or the OOM killer would; the supervisor
/// in `up` reports it and starts the service again.
pub fn kill(args: KillArgs) -> anyhow::Result<()> {
    let file = running_cluster(&args.state)?;
    let services = file.services();
    let Some(service) = services.iter().find(|s| s.name == args.service) else {
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no service `{}` in this cluster; there are: {}",
            args.service,
            names.join(", ")
        );
    };
    let pid = service.process.pid;
    if !is_ours(pid) {
        bail!(
            "{} (pid {pid}) is not running right now (being restarted?); see `cargo xtask status`",
            service.name
        );
    }
    send_signal(pid, "KILL").with_context(|| format!("killing {}", service.name))?;
    println!(
        "sent SIGKILL to {} (pid {pid}); `cargo xtask up` (pid {}) restarts it, `cargo xtask \
         status` shows it back",
        service.name,
        file.xtask_pid.unwrap_or_default()
    );
    Ok(())
}

/// `cargo xtask down`: asks `up` to stop (SIGTERM), which stops everything in order and
/// removes the file. Only when `up` is gone, or does not finish in time, are the services
/// signalled directly; signalling them while `up` supervises would look like crashes to it.
pub fn down(state: StateArgs) -> anyhow::Result<()> {
    let path = state.cluster_file();
    let Some(file) = ClusterFile::read(&path)? else {
        eprintln!("no cluster running ({} does not exist)", path.display());
        return Ok(());
    };
    if let Some(pid) = file.xtask_pid
        && is_ours(pid)
    {
        eprintln!("SIGTERM `cargo xtask up` (pid {pid})");
        send_signal(pid, "TERM")?;
        if wait_gone(&[pid], Duration::from_secs(30)) {
            eprintln!("cluster stopped");
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        eprintln!("`cargo xtask up` did not stop within 30 s; signalling the services");
    }
    let pids: Vec<u32> = file
        .xtask_pid
        .into_iter()
        .chain(file.services().iter().rev().map(|s| s.process.pid))
        .filter(|&pid| is_ours(pid))
        .collect();
    for &pid in &pids {
        eprintln!("SIGTERM {pid}");
        if let Err(e) = send_signal(pid, "TERM") {
            eprintln!("  {e:#}");
        }
    }
    let stopped = wait_gone(&pids, Duration::from_secs(15));
    let _ = std::fs::remove_file(&path);
    if !stopped {
        let left: Vec<u32> = pids.into_iter().filter(|&pid| is_ours(pid)).collect();
        bail!("still running after 15 s: pids {left:?} (kill -9 them if they are stuck)");
    }
    eprintln!("cluster stopped");
    Ok(())
}

/// Waits until none of `pids` runs; `false` at the deadline.
fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&pid| is_ours(pid)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
fn clock(ms: u64) -> String {
    let secs = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `3h 2m`, `5m 3s`, `12s`.
fn elapsed(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(
            clock(((7 * 3600 + 31 * 60 + 2) * 1000) + 86_400_000),
            "07:31:02"
        );
        assert_eq!(elapsed(12_500), "12s");
        assert_eq!(elapsed(303_000), "5m 3s");
        assert_eq!(elapsed(3 * 3_600_000 + 120_000), "3h 2m");
    }
}
