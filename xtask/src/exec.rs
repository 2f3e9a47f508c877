//! Running commands and cargo builds, the one way every verb does.
//!
//! Builds are reused, never redone: every verb builds with `cargo build [--release]
//! --workspace --bins` ([`build_bins`], the command the README gives users) in a plain shell's
//! environment ([`cargo`]) and runs the binaries from `target/<profile>/`. A `cargo run -p`
//! or a build of fewer packages would resolve another feature set, and cargo's crate variables
//! inherited from `cargo run` would rerun build scripts: either compiles the same crates again.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

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

/// [`build_bins`] for the debug profile, also returning what it built (fresh or compiled now)
/// as `package_id target`, for [`build_tests_reusing_the_build`].
pub fn build_bins_listing_artifacts() -> anyhow::Result<BTreeSet<String>> {
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
pub fn build_tests_reusing_the_build(built: &BTreeSet<String>) -> anyhow::Result<()> {
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
