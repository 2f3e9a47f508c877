//! Project chores as Rust code, run with `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! - `test`: install what is missing, build everything, run every test, validate the manifests.
//! - `up` / `down`: a local cluster in the foreground / stop one left running.
//! - `bench <scenario>`: the benchmarks, in release mode.
//! - `soak --minutes N`: long moderate load with churn; memory slope, errors, lost events.
//! - `fuzz <target> [--seconds N]`: one cargo-fuzz target of `fuzz/`, longer than `test` runs it.
//! - `k8s`: render and validate the Kubernetes manifests offline.

mod cluster;
mod fuzz;
mod k8s;
mod prereqs;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Switchyard project chores",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install missing prerequisites (redis-server, cargo-fuzz, Node and Python test clients,
    /// chromium), build every binary and example, run every test, fuzz each target briefly,
    /// then `k8s`. What CI runs.
    Test,
    /// Only install or check the prerequisites of `test` (redis-server, Node and Python test
    /// clients, chromium).
    Prereqs,
    /// Start a local cluster in the foreground: redis-server, placement, N gateways.
    /// Ctrl-C or SIGTERM stops everything.
    Up(cluster::UpArgs),
    /// Stop a cluster started by `up` (reads .switchyard/cluster.json).
    Down,
    /// Run a benchmark scenario in release mode (`cargo xtask bench placement`); `all` runs
    /// every scenario, then regenerates docs/BENCHMARKS.md.
    Bench {
        /// Scenario name, for example `placement`.
        scenario: String,
        /// Further arguments for the benchmark binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Moderate load with connection churn on a local cluster (release builds) for N minutes:
    /// resident memory of every service over time (slope), errors and lost events. Writes
    /// target/soak.json, prints a table, fails on any loss or error.
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Further arguments for `switchyard-bench soak` (see its --help).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Render every Kubernetes overlay and validate it offline.
    K8s,
    /// Run one cargo-fuzz target of fuzz/ (token_verify, adapter_payload, relay_frame,
    /// assign_query) for longer than `test` does.
    Fuzz {
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Test => test(),
        Cmd::Prereqs => prereqs().map(|_| ()),
        Cmd::Up(args) => cluster::up(args),
        Cmd::Down => cluster::down(),
        Cmd::Bench { scenario, args } => bench(&scenario, &args),
        Cmd::Soak { minutes, args } => soak(minutes, &args),
        Cmd::K8s => k8s::run(),
        Cmd::Fuzz { target, seconds } => {
            prereqs::ensure_cargo_fuzz()?;
            fuzz::run_target(&target, seconds, fuzz::Build::Thorough)
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo that runs us (`$CARGO`), so the same toolchain builds everything.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs `command`, echoing it first; a non-zero exit is an error naming the command.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = show(command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed with {status}");
    }
    Ok(())
}

/// A command line as text, for messages.
pub fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo xtask test`: prerequisites, build, tests, manifests. Every test binary runs even
/// after one failed (so one CI run shows every failure); any failure fails the command.
fn test() -> anyhow::Result<()> {
    let venv = prereqs()?;
    run(cargo().args(["build", "--workspace", "--bins", "--examples"]))?;
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("SWITCHYARD_PROFILE", "debug")
        .env("SWITCHYARD_PYTHON", venv.join("bin").join("python")))?;
    fuzz::run_all_briefly()?;
    k8s::run()?;
    eprintln!("cargo xtask test: all green");
    Ok(())
}

/// Every prerequisite of the test suite; returns the Python venv directory.
fn prereqs() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    prereqs::ensure_redis()?;
    prereqs::ensure_promtool()?;
    prereqs::ensure_cargo_fuzz()?;
    prereqs::ensure_node_deps(&root)?;
    let venv = prereqs::ensure_venv(&root)?;
    if root.join("clients").join("js").join("demo").exists() {
        prereqs::ensure_chromium()?;
    }
    Ok(venv)
}

/// `cargo xtask bench <scenario>`: the bench crate in release mode.
/// Builds every service binary in release mode first: the scenarios spawn them as processes,
/// and a stale or debug binary would make the figures meaningless.
fn bench(scenario: &str, args: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    let scenarios: &[&str] = if scenario == "all" {
        &["placement", "fanout", "rooms", "idle", "storm", "report"]
    } else {
        &[scenario]
    };
    for scenario in scenarios {
        run(cargo()
            .args(["run", "--release", "-p", "switchyard-bench", "--", scenario])
            .args(args)
            .env("SWITCHYARD_PROFILE", "release"))?;
    }
    Ok(())
}

/// `cargo xtask soak --minutes N`: the bench crate's `soak` scenario on release builds.
fn soak(minutes: f64, args: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    run(cargo()
        .args(["run", "--release", "-p", "switchyard-bench", "--", "soak"])
        .arg(format!("--minutes={minutes}"))
        .args(args)
        .env("SWITCHYARD_PROFILE", "release"))
}
