//! Project chores as Rust code, run with `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! - `test`: install what is missing, build everything, run every test, validate the manifests.
//! - `up` / `down`: a local cluster in the foreground, supervised (a service that dies is
//!   restarted) / stop one running elsewhere. `status` and `kill <service>` for the failover
//!   story. `--release` runs release builds.
//! - `bench <scenario>`: the benchmarks, in release mode.
//! - `soak --minutes N`: long moderate load with churn; memory slope, errors, lost events.
//! - `fuzz <target> [--seconds N]`: one cargo-fuzz target of `fuzz/`, longer than `test` runs it.
//! - `k8s`: render and validate the Kubernetes manifests offline; `k8s run <overlay>`: run one
//!   overlay's pods as local processes.
//!
//! Builds are reused, never redone ([`exec`]). `cargo xtask` itself is `cargo run -p xtask`;
//! its own dependency build is made once.
//!
//! Reading order, which is also the import order (a module uses only modules after it):
//! `main.rs` (the verbs) → [`cluster`] (`up` and the verbs of a running cluster), [`k8s`]
//! (render, check and run the manifests) → [`fuzz`], [`prereqs`] → [`exec`] (commands and
//! builds).

mod cluster;
mod exec;
mod fuzz;
mod k8s;
mod prereqs;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::exec::{
    Profile, build_bins, build_bins_listing_artifacts, build_tests_reusing_the_build, cargo, run,
    workspace_root,
};

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
    /// Start a local cluster in the foreground: redis-server, placement, relays, N gateways,
    /// the demo page. A service that dies is restarted; Ctrl-C or SIGTERM stops everything.
    Up(cluster::UpArgs),
    /// Stop a cluster started by `up` (reads .switchyard/cluster.json).
    Down(cluster::StateArgs),
    /// What the cluster started by `up` runs: name, pid, restarts, up since, addresses. Exits
    /// non-zero when no cluster runs.
    Status(cluster::StateArgs),
    /// SIGKILL one service of the cluster started by `up` (gw-2, placement, relay-1, redis …);
    /// `up` restarts it.
    Kill(cluster::KillArgs),
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
    /// Render every Kubernetes overlay and validate it offline (schemas, deployment rules,
    /// every variable and flag known to its binary); `k8s run <overlay>` runs one overlay's
    /// pods as local processes.
    K8s(k8s::K8sArgs),
    /// Run one cargo-fuzz target of fuzz/ (token_verify, adapter_payload, relay_frame,
    /// assign_query) for longer than `test` does.
    Fuzz {
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

/// Errors are expected outcomes here (a port taken, no cluster running, a failed test): they
/// are printed with their causes on one line each, never with a backtrace (returning the error
/// from `main` would print one whenever RUST_BACKTRACE is set), and exit with code 1.
fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Test => test(),
        Cmd::Prereqs => prereqs().map(|_| ()),
        Cmd::Up(args) => cluster::up(args),
        Cmd::Down(state) => cluster::down(state),
        Cmd::Status(state) => cluster::status(state),
        Cmd::Kill(args) => cluster::kill(args),
        Cmd::Bench { scenario, args } => bench(&scenario, &args),
        Cmd::Soak { minutes, args } => soak(minutes, &args),
        Cmd::K8s(args) => k8s::main(args),
        Cmd::Fuzz { target, seconds } => {
            prereqs::ensure_cargo_fuzz()?;
            fuzz::run_target(&target, seconds, fuzz::Build::Thorough)
        }
    }
}

/// `cargo xtask test`: prerequisites, build, tests, manifests. Every test binary runs even
/// after one failed (so one CI run shows every failure); any failure fails the command.
fn test() -> anyhow::Result<()> {
    let venv = prereqs()?;
    let built = build_bins_listing_artifacts()?;
    build_tests_reusing_the_build(&built)?;
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("SWITCHYARD_PROFILE", "debug")
        .env("SWITCHYARD_PYTHON", venv.join("bin").join("python")))?;
    fuzz::run_all_briefly()?;
    k8s::check_all()?;
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
    // Once, before the tests: the overlay tests run side by side, and two of them installing
    // kubectl into one venv at once could each see the other's half-written file.
    k8s::render::find_kubectl(&venv)?;
    Ok(venv)
}

/// `cargo xtask bench <scenario>`: the bench crate in release mode.
/// Builds every service binary in release mode first: the scenarios spawn them as processes,
/// and a stale or debug binary would make the figures meaningless.
fn bench(scenario: &str, args: &[String]) -> anyhow::Result<()> {
    // `fanout` and `scale` a second time with the official client as receivers; fanout at the
    // rate where every delivery is its own write (3,000 members × 15 msg/s = 45,000
    // deliveries/s).
    const OFFICIAL: &[&str] = &["--client", "official", "--rate", "15", "--skip-saturation"];
    let scenarios: &[(&str, &[&str])] = if scenario == "all" {
        &[
            ("placement", &[]),
            ("fanout", &[]),
            ("fanout", OFFICIAL),
            ("rooms", &[]),
            ("scale", &[]),
            ("scale", &["--client", "official"]),
            ("idle", &[]),
            ("storm", &[]),
            ("report", &[]),
        ]
    } else {
        &[(scenario, &[])]
    };
    let bench = release_bench_binary()?;
    for (scenario, own) in scenarios {
        run(Command::new(&bench)
            .arg(scenario)
            .args(*own)
            .args(args)
            .current_dir(workspace_root())
            .env("SWITCHYARD_PROFILE", "release"))?;
    }
    Ok(())
}

/// `cargo xtask soak --minutes N`: the bench crate's `soak` scenario on release builds.
fn soak(minutes: f64, args: &[String]) -> anyhow::Result<()> {
    run(Command::new(release_bench_binary()?)
        .arg("soak")
        .arg(format!("--minutes={minutes}"))
        .args(args)
        .current_dir(workspace_root())
        .env("SWITCHYARD_PROFILE", "release"))
}

/// Builds every binary in release mode with the documented command and returns the path of
/// `switchyard-bench`. The binary is run from `target/release/` rather than with
/// `cargo run -p switchyard-bench`: `-p` resolves features for that one package, which
/// compiles switchyard-common, placement and the bench a second time with another feature set.
fn release_bench_binary() -> anyhow::Result<PathBuf> {
    build_bins(Profile::Release)?;
    let path = Profile::Release.bin_dir()?.join("switchyard-bench");
    if !path.is_file() {
        bail!("{} is missing after the release build", path.display());
    }
    Ok(path)
}
