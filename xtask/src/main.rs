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
//! Builds are reused, never redone: every verb builds with `cargo build [--release]
//! --workspace --bins` ([`build_bins`], the command the README gives users) in a plain shell's
//! environment ([`cargo`]) and runs the binaries from `target/<profile>/`. A `cargo run -p`
//! or a build of fewer packages would resolve another feature set, and cargo's crate variables
//! inherited from `cargo run` would rerun build scripts: either compiles the same crates again.
//! `cargo xtask` itself is `cargo run -p xtask`; its own dependency build is made once.

mod cluster;
mod fuzz;
mod k8s;
mod prereqs;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

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

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo that runs us, in the workspace root, with the environment of a plain shell, so
/// a nested build reuses what a user's own `cargo build` built and the other way round (see
/// `switchyard_testkit::cargo` for why this matters: ring's build script).
pub fn cargo() -> Command {
    let mut command = switchyard_testkit::cargo::command();
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

/// [`build_bins`] for the debug profile, also returning what it built (fresh or compiled now)
/// as `package_id target`, for [`build_tests_reusing_the_build`].
fn build_bins_listing_artifacts() -> anyhow::Result<BTreeSet<String>> {
    let mut command = cargo();
    command.args(["build", "--workspace", "--bins"]);
    let messages = run_with_messages(&mut command)?;
    Ok(artifacts(&messages).map(|(key, _)| key).collect())
}

/// `cargo test --workspace --no-run` right after `cargo build --workspace --bins`: fails when
/// it compiled again a library or binary the plain build had made (`built`), i.e. when the
/// libraries and binaries the tests use are not the ones the plain build made. Crates only
/// tests use (dev-dependencies such as proptest) are new here, not built again, and pass.
///
/// That happens when a dev-dependency turns on features of a shared dependency that normal
/// builds lack (cargo then builds that dependency and everything above it twice, with two
/// feature sets; proptest's defaults did exactly this through `regex-syntax` and `bitflags`).
/// The fix is to give normal builds the same features (see the workspace `Cargo.toml`). The
/// check costs nothing: the builds had to happen anyway, and only their JSON messages are read.
fn build_tests_reusing_the_build(built: &BTreeSet<String>) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["test", "--workspace", "--no-run"]);
    let messages = run_with_messages(&mut command)?;
    let rebuilt = rebuilt(&messages, built);
    if !rebuilt.is_empty() {
        bail!(
            "`cargo test --workspace --no-run` compiled again what `cargo build --workspace \
             --bins` had just built: {}. A dev-dependency enables features the normal build \
             lacks; enable them in the normal build too (see the note on regex-syntax in the \
             workspace Cargo.toml)",
            rebuilt.join(", ")
        );
    }
    Ok(())
}

/// Runs `command` with `--message-format=json-render-diagnostics` (diagnostics still reach the
/// terminal) and returns cargo's JSON messages.
fn run_with_messages(command: &mut Command) -> anyhow::Result<String> {
    command
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = show(command);
    eprintln!("$ {shown}");
    let output = command
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !output.status.success() {
        bail!("`{shown}` failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The compiled artifacts of cargo's JSON messages that are not test harnesses or examples:
/// (`package_id target`, compiled now rather than fresh).
fn artifacts(messages: &str) -> impl Iterator<Item = (String, bool)> + '_ {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == false)
        .filter(|m| {
            !m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"))
        })
        .map(|m| {
            let key = format!(
                "{} {}",
                m["package_id"].as_str().unwrap_or_default(),
                m["target"]["name"].as_str().unwrap_or_default()
            );
            (key, m["fresh"] == false)
        })
}

/// What of `messages` was compiled now although `built` has it: `name@version (target)`.
fn rebuilt(messages: &str, built: &BTreeSet<String>) -> Vec<String> {
    artifacts(messages)
        .filter(|(key, compiled)| *compiled && built.contains(key))
        .map(|(key, _)| {
            let (id, target) = key.rsplit_once(' ').unwrap_or((&key, ""));
            let package = id.rsplit_once('#').map_or(id, |(_, p)| p);
            format!("{package} ({target})")
        })
        .collect()
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
    let scenarios: &[&str] = if scenario == "all" {
        &["placement", "fanout", "rooms", "idle", "storm", "report"]
    } else {
        &[scenario]
    };
    let bench = release_bench_binary()?;
    for scenario in scenarios {
        run(Command::new(&bench)
            .arg(scenario)
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

/// A cargo build profile of the workspace's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// Where cargo puts this profile's binaries.
    pub fn bin_dir(self) -> anyhow::Result<PathBuf> {
        let dir = switchyard_testkit::process::target_dir()?;
        Ok(dir.join(match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }))
    }

    /// The value of `SWITCHYARD_PROFILE` that makes the testkit find these binaries.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// `cargo build [--release] --workspace --bins`: every verb builds with exactly this command,
/// the one the README gives, so what one built the others (and a user's own build) reuse.
pub fn build_bins(profile: Profile) -> anyhow::Result<()> {
    let mut command = cargo();
    command.arg("build");
    if profile == Profile::Release {
        command.arg("--release");
    }
    run(command.args(["--workspace", "--bins"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_libraries_and_binaries_the_plain_build_made_count() {
        let messages = r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#ring@0.17.14","target":{"kind":["lib"],"name":"ring"},"profile":{"test":false},"fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/common#switchyard-common@0.1.0","target":{"kind":["lib"],"name":"switchyard_common"},"profile":{"test":false},"fresh":true}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/common#switchyard-common@0.1.0","target":{"kind":["lib"],"name":"switchyard_common"},"profile":{"test":true},"fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/gateway#switchyard-gateway@0.1.0","target":{"kind":["example"],"name":"embedded"},"profile":{"test":false},"fresh":false}
{"reason":"build-finished","success":true}"#;
        let built: BTreeSet<String> = [
            "registry+https://github.com/rust-lang/crates.io-index#ring@0.17.14 ring",
            "path+file:///w/crates/common#switchyard-common@0.1.0 switchyard_common",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(rebuilt(messages, &built), ["ring@0.17.14 (ring)"]);
        // A dev-only crate compiled for the first time is not compiled "again".
        assert!(rebuilt(messages, &BTreeSet::new()).is_empty());
    }
}
