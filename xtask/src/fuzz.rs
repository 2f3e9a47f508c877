//! `cargo xtask fuzz <target> [--seconds N]` and the brief fuzz run of `cargo xtask test`.
//!
//! The targets live in `fuzz/` (its own package, outside the workspace), one per decoder of
//! untrusted input. cargo-fuzz needs nightly-only rustc flags (`-Zsanitizer`); the project
//! builds on stable, so they are enabled with `RUSTC_BOOTSTRAP=1` for these builds only.

use crate::exec::{cargo, run};

/// Every fuzz target, in the order `cargo xtask test` runs them.
pub const TARGETS: &[&str] = &[
    "token_verify",
    "adapter_payload",
    "relay_frame",
    "assign_query",
];

/// Seconds each target runs inside `cargo xtask test`: enough to catch a decoder that panics
/// on shallow input, short enough for CI.
pub const BRIEF_SECONDS: u64 = 10;

/// How a run is built. `Brief` (inside `cargo xtask test`) builds unoptimised and without
/// AddressSanitizer: the workspace forbids `unsafe`, so what a short run can find is a panic,
/// and the build takes minutes less on a fresh clone. `Thorough` is cargo-fuzz's default
/// (release, AddressSanitizer) for long runs by hand.
#[derive(Clone, Copy)]
pub enum Build {
    Brief,
    Thorough,
}

/// Runs `target` for `seconds` (libFuzzer's `-max_total_time`); a crash fails the command
/// and leaves the input in `fuzz/artifacts/<target>/`.
pub fn run_target(target: &str, seconds: u64, build: Build) -> anyhow::Result<()> {
    if !TARGETS.contains(&target) {
        anyhow::bail!(
            "unknown fuzz target `{target}`; targets: {}",
            TARGETS.join(", ")
        );
    }
    let flags: &[&str] = match build {
        Build::Brief => &["--dev", "--sanitizer", "none"],
        Build::Thorough => &[],
    };
    run(cargo()
        .args(["fuzz", "run"])
        .args(flags)
        .args([target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .env("RUSTC_BOOTSTRAP", "1")
        // AddressSanitizer aborts on an allocation it cannot serve, where the real allocator
        // returns null and `try_reserve` (smallvec's, sizing a MessagePack array by its
        // declared length) turns that into a decoding error: behave like the real one.
        .env("ASAN_OPTIONS", "allocator_may_return_null=1"))
}

/// Every target, [`BRIEF_SECONDS`] each.
pub fn run_all_briefly() -> anyhow::Result<()> {
    TARGETS
        .iter()
        .try_for_each(|t| run_target(t, BRIEF_SECONDS, Build::Brief))
}
