//! Prerequisites of `cargo xtask test`, installed when missing in CI.
//!
//! Policy: with `CI=true` a missing system package is installed from Debian's archive
//! (`apt-get`, through `sudo` when not root); outside CI it is a failure that says what to
//! install. A missing prerequisite is never a silent skip, because a skipped test suite looks
//! exactly like a passing one.
//!
//! The Node and Python test clients come from lockfiles (`clients/js/package-lock.json`,
//! `requirements.txt`) and are reinstalled only when the lockfile changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use switchyard_testkit::redis::find_on_path;

use crate::exec::run;

/// Whether we run in CI (`CI=true` or `CI=1`, as most CI systems set it).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true" | "1")
    )
}

/// `redis-server` on PATH, installed from Debian's `redis-server` package in CI.
pub fn ensure_redis() -> anyhow::Result<()> {
    ensure_program(&["redis-server"], "redis-server", "redis-server")
}

/// `promtool` on PATH (the metrics test checks every service's `/metrics` with `promtool check
/// metrics`), installed from Debian's `prometheus` package in CI. Only the tool is used; the
/// package's Prometheus server is not needed (where systemd starts packaged services, stop it
/// with `systemctl disable --now prometheus`).
pub fn ensure_promtool() -> anyhow::Result<()> {
    ensure_program(&["promtool"], "prometheus", "promtool")
}

/// `cargo fuzz` (cargo-fuzz), installed with `cargo install cargo-fuzz --locked` in CI.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = crate::exec::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    if !in_ci() {
        bail!(
            "cargo-fuzz is not installed (`cargo fuzz` is needed for the fuzz targets in fuzz/). \
             Install it with `cargo install cargo-fuzz --locked` (CI=true makes cargo xtask test do this)."
        );
    }
    run(crate::exec::cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// Chromium for the headless demo check, installed from Debian's `chromium` in CI.
pub fn ensure_chromium() -> anyhow::Result<()> {
    ensure_program(
        &["chromium", "chromium-browser"],
        "chromium",
        "chromium (headless browser for the demo page check)",
    )
}

/// One of `programs` on PATH, else the apt `package` in CI, else an error.
fn ensure_program(programs: &[&str], package: &str, what: &str) -> anyhow::Result<()> {
    if programs.iter().any(|p| find_on_path(p).is_some()) {
        return Ok(());
    }
    if !in_ci() {
        bail!(
            "{what} is not installed: `{}` not found on PATH. Install it with \
             `sudo apt-get install -y {package}` (CI=true makes cargo xtask test do this).",
            programs.join("` / `")
        );
    }
    apt_install(&[package])?;
    if programs.iter().any(|p| find_on_path(p).is_some()) {
        Ok(())
    } else {
        bail!(
            "installed {package}, but `{}` is still not on PATH",
            programs[0]
        )
    }
}

/// `apt-get update && apt-get install -y <packages>`, with `sudo` unless we are root.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let root = is_root();
    if !root && find_on_path("sudo").is_none() {
        bail!("need to install {packages:?} but not root and no sudo");
    }
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(&mut apt(&["update"]))?;
    run(apt(&["install", "-y", "--no-install-recommends"]).args(packages))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The Node tool directories installed from their lockfiles: the JS client (and its drivers and
/// demo check), and Socket.IO's own tools (`@socket.io/redis-emitter`, `@socket.io/admin-ui`).
pub const NODE_DIRS: &[&str] = &["clients/js", "clients/socketio-tools"];

/// `npm ci` in every one of [`NODE_DIRS`] that has a lockfile and a `node_modules` older than it.
pub fn ensure_node_deps(root: &Path) -> anyhow::Result<()> {
    for dir in NODE_DIRS {
        ensure_node_dir(&root.join(dir), dir)?;
    }
    Ok(())
}

fn ensure_node_dir(dir: &Path, name: &str) -> anyhow::Result<()> {
    let lockfile = dir.join("package-lock.json");
    if !lockfile.exists() {
        return Ok(());
    }
    if find_on_path("npm").is_none() || find_on_path("node").is_none() {
        if in_ci() {
            apt_install(&["nodejs", "npm"])?;
        } else {
            bail!(
                "Node.js is needed for the JS client tests ({name}) but `node`/`npm` are not \
                 on PATH; install them (Debian: `sudo apt-get install -y nodejs npm`)"
            );
        }
    }
    // npm rewrites node_modules/.package-lock.json on every install, so its age tells whether
    // the install postdates the lockfile.
    let installed = dir.join("node_modules").join(".package-lock.json");
    if is_newer(&installed, &lockfile) {
        eprintln!("{name}: node_modules is up to date");
        return Ok(());
    }
    run(Command::new("npm").arg("ci").current_dir(dir))
}

/// A Python virtualenv at `<root>/.venv` with `requirements.txt` installed; returns the venv
/// directory (the interpreter is `<venv>/bin/python`, installed tools are in `<venv>/bin/`).
///
/// Reinstalls only when `requirements.txt` changed since the last install (a stamp file in the
/// venv holds its hash).
pub fn ensure_venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join(".venv");
    let requirements = root.join("requirements.txt");
    let wanted = match fs::read(&requirements) {
        Ok(bytes) => format!("{:016x}", fnv1a(&bytes)),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", requirements.display()));
        }
    };
    let stamp = venv.join(".requirements-hash");
    let python = venv.join("bin").join("python");
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return Ok(venv);
    }
    if find_on_path("python3").is_none() {
        if in_ci() {
            apt_install(&["python3", "python3-venv"])?;
        } else {
            bail!(
                "python3 is not on PATH; install it (Debian: `sudo apt-get install -y python3 python3-venv`)"
            );
        }
    }
    // A venv made without Debian's python3-venv has a python but no pip: start it over.
    if !venv.join("bin").join("pip").exists() {
        if venv.exists() {
            fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
        }
        let created = run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        if let Err(e) = created {
            if !in_ci() {
                return Err(
                    e.context("creating the Python venv failed; on Debian install python3-venv")
                );
            }
            apt_install(&["python3-venv"])?;
            let _ = fs::remove_dir_all(&venv);
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}

/// Whether `a` exists and was modified after `b`.
fn is_newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(a), modified(b)) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// FNV-1a, 64 bit: a stable content hash for the stamp file (std's hasher may change between
/// Rust releases, which would only cost a reinstall, but a stable one costs nothing).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_stable() {
        // Reference values of 64-bit FNV-1a; the stamp must not change between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn missing_files_are_never_newer() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let missing = Path::new("/nonexistent/switchyard");
        assert!(!is_newer(missing, &here));
        assert!(is_newer(&here, missing));
    }
}
