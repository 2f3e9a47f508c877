//! Running cargo from inside cargo: the xtask verbs' builds, and tests that drive
//! `cargo xtask …` as a user would.
//!
//! `cargo run` (and so `cargo xtask`) and `cargo test` hand their child the variables cargo
//! sets for a crate: `CARGO_MANIFEST_DIR=…/xtask`, `CARGO_PKG_NAME=xtask`, … A nested cargo
//! compares its own environment with what build scripts declared through
//! `cargo:rerun-if-env-changed`, and ring's build script declares exactly these
//! (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, `CARGO_PKG_VERSION_*`, …). So a nested
//! `cargo build` reran ring's build script and recompiled ring and everything above it, and
//! the next plain `cargo build` in a shell did it all again: minutes each way.
//! [`command`] removes them, so a nested cargo sees what a shell sees and reuses its builds.

use std::process::Command;

use crate::process::workspace_root;

/// `cargo` (the one running us, `$CARGO`, so the same toolchain builds everything) in the
/// workspace root, with the environment of a plain shell.
pub fn command() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if let Ok(root) = workspace_root() {
        command.current_dir(root);
    }
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && is_set_by_cargo_for_a_crate(name)
        {
            command.env_remove(name);
        }
    }
    command
}

/// Whether `name` is one of the variables cargo sets for the crate it runs (a binary under
/// `cargo run`, a test, a build script), as opposed to configuration a user sets for cargo
/// itself (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, `CARGO_PROFILE_*`, `RUSTFLAGS`…),
/// which must reach the nested cargo unchanged.
pub fn is_set_by_cargo_for_a_crate(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_MAKEFLAGS",
        "OUT_DIR",
        // Set by cargo for build scripts; a user sets RUSTFLAGS instead.
        "CARGO_ENCODED_RUSTFLAGS",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_variables_go_and_user_configuration_stays() {
        for set_by_cargo in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_xtask",
        ] {
            assert!(is_set_by_cargo_for_a_crate(set_by_cargo), "{set_by_cargo}");
        }
        for users in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_DEBUG",
            "RUSTFLAGS",
        ] {
            assert!(!is_set_by_cargo_for_a_crate(users), "{users}");
        }
    }

    #[test]
    fn a_nested_cargo_does_not_see_this_tests_crate_variables() {
        let command = command();
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        // cargo test sets both for this very test binary.
        assert!(
            removed.iter().any(|n| n == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(removed.iter().any(|n| n == "CARGO_PKG_NAME"), "{removed:?}");
    }
}
