//! `cargo xtask k8s`: the Kubernetes manifests, checked offline and run as Kubernetes runs them.
//!
//! **`cargo xtask k8s`** (also the last step of `cargo xtask test`), for each directory
//! `deploy/k8s/overlays/<name>`:
//!
//! 1. `kubectl kustomize` renders it into `target/k8s/<name>.yaml` (nothing talks to a cluster);
//! 2. `kubernetes-validate --strict` (PyPI, from the project venv) checks every object against
//!    the schemas of Kubernetes 1.30, the oldest version we support, and of the newest version
//!    the installed tool carries; unknown fields, wrong types and unknown kinds all fail;
//! 3. Switchyard's own deployment rules, which no schema knows: every container non-root,
//!    read-only, without capabilities, with requests, limits and probes; secrets only in dev
//!    overlays; every referenced ConfigMap rendered; every gateway ordinal the autoscaler may
//!    create reachable through its own Service and Ingress host; a termination grace period
//!    that covers the gateway's drain;
//! 4. every environment variable and flag given to a Switchyard binary is one that binary reads,
//!    as its own `--help` says ([`flags`]).
//!
//! Any failure stops the run with the tool's own output, so a broken manifest never passes
//! silently. One summary line per overlay is printed on success.
//!
//! **`cargo xtask k8s run <overlay> [--release]`** runs the rendered overlay as a cluster of
//! local processes, one loopback address per pod, configured from the manifests alone ([`run`]
//! and the modules it names). The overlay tests (`overlay_tests.rs`) drive the same runner with
//! the official JS client: placement spread, broadcast across gateways, resume after a killed
//! gateway, a rolling restart, killed relay and placement pods.
//!
//! Module map: [`render`] (kustomize, YAML, schema validation), [`rules`] (Switchyard's
//! deployment rules), [`flags`] (variables and flags against each binary's `--help`), and for
//! `run`: [`model`] (the API subset read), [`env`] (the kubelet's environment rules),
//! [`network`] (addresses and the few value translations), [`images`] (images as local
//! programs), [`state`] (the pods, the local API server), [`pods`] (the kubelet),
//! [`probes`], [`controllers`] (Deployments, StatefulSets, rollouts), [`services`]
//! (kube-proxy), [`ingress`] (the ingress controller), [`fixtures`] (what an overlay expects
//! from outside), [`run`] (the `Cluster` and the verb).

pub mod controllers;
pub mod env;
pub mod fixtures;
pub mod flags;
pub mod images;
pub mod ingress;
pub mod model;
pub mod network;
#[cfg(test)]
mod overlay_tests;
pub mod pods;
pub mod probes;
pub mod render;
pub mod rules;
pub mod run;
pub mod services;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use render::{find_kubectl, items, kind, load, pod_spec, render, validate, versions};
use rules::policy_violations;

/// `cargo xtask k8s [run <overlay>]`.
#[derive(Debug, Args)]
pub struct K8sArgs {
    #[command(subcommand)]
    command: Option<K8sCommand>,
}

#[derive(Debug, Subcommand)]
enum K8sCommand {
    /// Run one overlay's Deployments and StatefulSets as local processes, one loopback address
    /// (127.x.y.z) per pod, configured only from the rendered manifests; Services, the
    /// Ingress, probes, restarts and termination as Kubernetes does them. Prints the pods and
    /// how to reach placement; Ctrl-C stops.
    Run {
        /// Overlay name under deploy/k8s/overlays (dev, prod).
        overlay: String,
        /// Run release builds (default: debug).
        #[arg(long)]
        release: bool,
    },
}

/// `cargo xtask k8s`: builds the binaries (the flag check reads their `--help`), then checks
/// every overlay; `cargo xtask k8s run <overlay>`: runs one.
pub fn main(args: K8sArgs) -> Result<()> {
    match args.command {
        None => {
            crate::exec::build_bins(crate::exec::Profile::Debug)?;
            check_all()
        }
        Some(K8sCommand::Run { overlay, release }) => run::run_verb(&overlay, release),
    }
}

/// Renders and validates every overlay under `deploy/k8s/overlays`. Needs the service binaries
/// built (`target/<SWITCHYARD_PROFILE>`, default debug) for their `--help`.
pub fn check_all() -> Result<()> {
    let root = crate::exec::workspace_root();
    let overlays = overlays(&root)?;
    let venv = crate::prereqs::ensure_venv(&root)?;
    let kubectl = find_kubectl(&venv)?;
    let validator = venv.join("bin").join("kubernetes-validate");
    let python = venv.join("bin").join("python");
    if !validator.is_file() {
        bail!(
            "{} is missing: the venv should have kubernetes-validate from requirements.txt",
            validator.display()
        );
    }
    let versions = versions(&python)?;
    let out_dir = root.join("target").join("k8s");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let bin_dir = switchyard_testkit::process::profile_dir()?;
    let mut helps: BTreeMap<String, Option<flags::Accepted>> = BTreeMap::new();

    for (name, dir) in overlays {
        let rendered = render(&kubectl, &dir)?;
        let file = out_dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).with_context(|| format!("writing {}", file.display()))?;
        let validated = validate(&validator, &file, &versions)?;
        let objects = load(&python, &file)?;
        let mut violations = policy_violations(&name, &objects);
        let used = binaries(&objects);
        for binary in &used {
            if !helps.contains_key(binary) {
                let path = bin_dir.join(binary);
                let accepted = if path.is_file() {
                    Some(flags::accepted_by(&path)?)
                } else {
                    None
                };
                helps.insert(binary.clone(), accepted);
            }
        }
        let (config_maps, secrets) = key_values(&objects)?;
        violations.extend(flags::violations(
            &objects,
            &config_maps,
            &secrets,
            &|bin| helps.get(bin).cloned().flatten(),
        ));
        if !violations.is_empty() {
            bail!(
                "overlay `{name}` ({}) breaks {} deployment rule(s):\n  - {}",
                file.display(),
                violations.len(),
                violations.join("\n  - ")
            );
        }
        println!(
            "k8s {name}: {} objects -> {}; strict schema ok for Kubernetes {} ({validated} checks); deployment rules ok; every variable and flag read by its binary ({})",
            objects.len(),
            relative(&root, &file).display(),
            versions.join(" and "),
            used.into_iter().collect::<Vec<_>>().join(", "),
        );
    }
    Ok(())
}

/// The Switchyard binaries the overlay's containers run (basenames).
fn binaries(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(pod_spec)
        .flat_map(|pod| items(&pod["containers"]).iter())
        .filter_map(|c| serde_json::from_value::<model::Container>(c.clone()).ok())
        .filter_map(|c| flags::switchyard_binary(&c).and_then(Result::ok))
        .collect()
}

/// The rendered ConfigMaps and Secrets by name.
type KeyValuesByName = BTreeMap<String, model::KeyValues>;

fn key_values(objects: &[Value]) -> Result<(KeyValuesByName, KeyValuesByName)> {
    let mut config_maps = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for object in objects {
        match kind(object) {
            "ConfigMap" => {
                let map = model::KeyValues::from_config_map(object)?;
                config_maps.insert(map.name.clone(), map);
            }
            "Secret" => {
                let secret = model::KeyValues::from_secret(object)?;
                secrets.insert(secret.name.clone(), secret);
            }
            _ => {}
        }
    }
    Ok((config_maps, secrets))
}

fn relative<'a>(root: &Path, path: &'a Path) -> &'a Path {
    path.strip_prefix(root).unwrap_or(path)
}

/// Every overlay directory (one holding a `kustomization.yaml`), sorted by name.
fn overlays(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let base = root.join("deploy").join("k8s").join("overlays");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&base).with_context(|| format!("listing {}", base.display()))? {
        let path = entry?.path();
        if path.join("kustomization.yaml").is_file()
            && let Some(name) = path.file_name().and_then(OsStr::to_str)
        {
            found.push((name.to_owned(), path));
        }
    }
    found.sort();
    if found.is_empty() {
        bail!(
            "no overlay (a directory with kustomization.yaml) under {}",
            base.display()
        );
    }
    Ok(found)
}
