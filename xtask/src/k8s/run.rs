//! `cargo xtask k8s run <overlay>`: one rendered overlay as a running cluster of local processes.
//!
//! [`Cluster::start`] renders the overlay with `kubectl kustomize`, provides what the overlay
//! expects from outside ([`super::fixtures`]), claims a loopback subnet
//! ([`super::network`]), starts a proxy per ClusterIP Service ([`super::services`]), the
//! ingress controller ([`super::ingress`]) and a controller per Deployment and StatefulSet
//! ([`super::controllers`]), which create the pods ([`super::pods`]). The same type serves the
//! `run` verb (in the foreground until Ctrl-C) and the overlay tests, which also delete pods
//! and roll the gateway StatefulSet through it.
//!
//! Emulated: ConfigMaps, Secrets, Services (ClusterIP, headless, per-pod,
//! `publishNotReadyAddresses`), Deployments, StatefulSets, Ingresses (host and path rules,
//! TLS), HorizontalPodAutoscalers for their `minReplicas`, probes, restarts, termination.
//! Read and ignored (printed once): Namespaces, ServiceAccounts, PodDisruptionBudgets (there
//! are no voluntary evictions here), NetworkPolicies (not enforced: every process may reach
//! every address).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::controllers::{self, Rollout};
use super::fixtures::{self, Fixtures};
use super::ingress::{self, Router};
use super::model::{Ingress, KeyValues, Service, Workload};
use super::network::AddressPlan;
use super::services;
use super::state::{Grace, ServiceEntry, Shared};

/// How to start a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The overlay's directory name under `deploy/k8s/overlays`.
    pub overlay: String,
    /// Where the Switchyard binaries are (`target/debug` or `target/release`).
    pub bin_dir: PathBuf,
}

/// A running overlay (see the module docs). Dropping it kills every pod at once.
pub struct Cluster {
    pub shared: Arc<Shared>,
    router: Arc<Router>,
    ingress_http: SocketAddr,
    ingress_https: Option<SocketAddr>,
    /// Workload name -> (kind, replicas).
    workloads: BTreeMap<String, (String, u32)>,
    controllers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    fixtures: Fixtures,
    ignored: Vec<String>,
    render: PathBuf,
}

impl Cluster {
    /// Renders `options.overlay` and starts it (see the module docs). Returns once everything
    /// is started, not once it is ready: see [`Cluster::wait_ready`].
    pub async fn start(options: &Options) -> Result<Cluster> {
        let root = crate::exec::workspace_root();
        let dir = root
            .join("deploy")
            .join("k8s")
            .join("overlays")
            .join(&options.overlay);
        if !dir.join("kustomization.yaml").is_file() {
            bail!(
                "no overlay {} (expected {}/kustomization.yaml)",
                options.overlay,
                dir.display()
            );
        }
        let venv = crate::prereqs::ensure_venv(&root)?;
        let kubectl = super::render::find_kubectl(&venv)?;
        let python = venv.join("bin").join("python");
        let out_dir = root.join("target").join("k8s");
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let render = out_dir.join(format!("run-{}.yaml", options.overlay));
        std::fs::write(&render, super::render::render(&kubectl, &dir)?)
            .with_context(|| format!("writing {}", render.display()))?;
        let objects = super::render::load(&python, &render)?;
        Self::from_objects(options, objects, render).await
    }

    async fn from_objects(
        options: &Options,
        objects: Vec<Value>,
        render: PathBuf,
    ) -> Result<Cluster> {
        let mut config_maps = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        let mut services = Vec::new();
        let mut workloads = Vec::new();
        let mut ingresses = Vec::new();
        let mut autoscaled: BTreeMap<String, u32> = BTreeMap::new();
        let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
        let mut namespace = None;
        for object in &objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            let id = format!(
                "{kind}/{}",
                object["metadata"]["name"].as_str().unwrap_or("?")
            );
            if namespace.is_none() {
                namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
            }
            match kind {
                "ConfigMap" => {
                    let map = KeyValues::from_config_map(object).context(id)?;
                    config_maps.insert(map.name.clone(), map);
                }
                "Secret" => {
                    let secret = KeyValues::from_secret(object).context(id)?;
                    secrets.insert(secret.name.clone(), secret);
                }
                "Service" => {
                    services.push(serde_json::from_value::<Service>(object.clone()).context(id)?)
                }
                "Deployment" | "StatefulSet" => {
                    workloads.push(serde_json::from_value::<Workload>(object.clone()).context(id)?)
                }
                "Ingress" => {
                    ingresses.push(serde_json::from_value::<Ingress>(object.clone()).context(id)?)
                }
                "HorizontalPodAutoscaler" => {
                    let target = &object["spec"]["scaleTargetRef"];
                    if let (Some(name), Some(min)) = (
                        target["name"].as_str(),
                        object["spec"]["minReplicas"].as_u64(),
                    ) {
                        autoscaled.insert(name.to_owned(), u32::try_from(min).unwrap_or(1));
                    }
                }
                "Namespace" | "ServiceAccount" | "PodDisruptionBudget" | "NetworkPolicy" => {
                    *ignored.entry(kind.to_owned()).or_default() += 1;
                }
                other => bail!("{id}: kind {other} is not emulated by the local runner"),
            }
        }
        let namespace = namespace.unwrap_or_else(|| "default".to_owned());

        let fixtures = fixtures::provide(
            &objects,
            &secrets,
            &ingresses,
            &crate::exec::workspace_root(),
        )?;
        for secret in &fixtures.secrets {
            secrets.insert(secret.name.clone(), secret.clone());
        }

        let router = Router::new(&ingresses);
        let claim = AddressPlan::claim(router.has_tls())?;
        let mut entries = Vec::new();
        let mut next_ip = 0;
        for service in services {
            let ip = if service.headless() {
                None
            } else {
                next_ip += 1;
                Some(claim.plan.service_ip(next_ip - 1)?)
            };
            entries.push(ServiceEntry { service, ip });
        }
        let run_dir = crate::exec::workspace_root()
            .join("target")
            .join("k8s")
            .join("run")
            .join(format!("{}-{}", options.overlay, claim.plan.subnet()));
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;

        let ingress_http = claim.http.local_addr()?;
        let ingress_https = claim.https.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Arc::new(Shared::new(
            options.overlay.clone(),
            namespace,
            claim.plan,
            config_maps,
            secrets,
            entries,
            options.bin_dir.clone(),
            run_dir,
        ));
        let router = Arc::new(router);

        let mut tasks = services::start_proxies(&shared).await?;
        claim.http.set_nonblocking(true)?;
        let http = tokio::net::TcpListener::from_std(claim.http)?;
        tasks.push(tokio::spawn(ingress::serve_http(
            Arc::clone(&shared),
            Arc::clone(&router),
            http,
            ingress_https.map(|a| a.port()),
        )));
        if let Some(https) = claim.https {
            let acceptor = ingress::acceptor(&router, &shared)?;
            https.set_nonblocking(true)?;
            let https = tokio::net::TcpListener::from_std(https)?;
            tasks.push(tokio::spawn(ingress::serve_https(
                Arc::clone(&shared),
                Arc::clone(&router),
                https,
                acceptor,
            )));
        }

        let mut controllers = Vec::new();
        let mut replicas = BTreeMap::new();
        for workload in workloads {
            let name = workload.metadata.name.clone();
            let count = workload
                .spec
                .replicas
                .or_else(|| autoscaled.get(&name).copied())
                .unwrap_or(1);
            replicas.insert(name, (workload.kind.clone(), count));
            controllers.push(controllers::start(&shared, workload, count)?);
        }
        Ok(Cluster {
            shared,
            router,
            ingress_http,
            ingress_https,
            workloads: replicas,
            controllers,
            tasks,
            fixtures,
            ignored: ignored
                .into_iter()
                .map(|(kind, n)| format!("{kind} x{n}"))
                .collect(),
            render,
        })
    }

    /// Waits until every workload has its replica count of Ready pods.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let wanted = self.workloads.clone();
        self.shared
            .wait_for("every workload Ready", timeout, |pods| {
                wanted.iter().all(|(name, (_, count))| {
                    pods.iter()
                        .filter(|p| &p.owner == name && p.ready())
                        .count()
                        == *count as usize
                })
            })
            .await
    }

    /// The replica count the run uses for a workload.
    #[cfg(test)]
    pub fn replicas(&self, workload: &str) -> Option<u32> {
        self.workloads.get(workload).map(|(_, n)| *n)
    }

    /// Names of the pods of `owner` that are Ready.
    #[cfg(test)]
    pub fn ready_pods(&self, owner: &str) -> Vec<String> {
        self.shared
            .snapshot()
            .into_iter()
            .filter(|p| p.owner == owner && p.ready())
            .map(|p| p.name)
            .collect()
    }

    /// `kubectl delete pod` (with `Grace::Force`: `--grace-period=0 --force`, a SIGKILL).
    pub fn delete_pod(&self, name: &str, grace: Grace) -> Result<()> {
        self.shared.event(format!("delete pod/{name} ({grace:?})"));
        self.shared.delete_pod(name, grace)
    }

    /// `kubectl rollout restart statefulset/<name>`, waiting for it to finish.
    pub async fn rollout_restart(&self, name: &str, per_pod_timeout: Duration) -> Result<Rollout> {
        let Some((kind, replicas)) = self.workloads.get(name) else {
            bail!("no workload {name}");
        };
        if kind != "StatefulSet" {
            bail!("rollout restart is emulated for StatefulSets only ({name} is a {kind})");
        }
        controllers::rollout_restart_stateful_set(&self.shared, name, *replicas, per_pod_timeout)
            .await
    }

    /// The public base URL of a Service behind the Ingress (`https://switchyard.example.com`).
    pub fn public_url(&self, service: &str) -> Option<String> {
        let (host, tls) = self.router.host_for_service(service)?;
        Some(format!("{}://{host}", if tls { "https" } else { "http" }))
    }

    /// The ingress controller's addresses, as `{"<host>:<port>": "<ip>:<port>"}` for every
    /// Ingress host (wildcards included): what a client needs instead of DNS, the
    /// `connect_to` option of `clients/js/tools/driver.mjs` (curl's `--connect-to`).
    pub fn connect_to(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (host, _) in self.router.hosts() {
            map.insert(format!("{host}:80"), json!(self.ingress_http.to_string()));
            if let Some(https) = self.ingress_https {
                map.insert(format!("{host}:443"), json!(https.to_string()));
            }
        }
        Value::Object(map)
    }

    /// The CA a client must trust for the ingress's TLS hosts (prod), if any.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.fixtures.ca_file()
    }

    /// The test Redis standing in for the overlay's external one, if it has one.
    #[cfg(test)]
    pub fn external_redis(&self) -> Option<&switchyard_testkit::redis::RedisServer> {
        self.fixtures.redis.as_ref()
    }

    /// A key of a Secret the pods see (rendered, or provided by [`super::fixtures`]), by the
    /// name in the kustomization: a `secretGenerator` Secret is rendered as `<name>-<hash>`.
    pub fn secret(&self, name: &str, key: &str) -> Option<String> {
        let secrets = &self.shared.secrets;
        let secret = secrets.get(name).or_else(|| {
            secrets.iter().find_map(|(rendered, secret)| {
                let hash = rendered.strip_prefix(name)?.strip_prefix('-')?;
                (hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()))
                    .then_some(secret)
            })
        })?;
        secret.text(key)?.ok()
    }

    /// The cluster address of a ClusterIP Service.
    pub fn service_addr(&self, service: &str, port: &str) -> Option<SocketAddr> {
        let entry = self.shared.service(service)?;
        let ip = entry.ip?;
        let port = entry
            .service
            .spec
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port))?;
        Some(SocketAddr::from((ip, port.port)))
    }

    /// What `cargo xtask k8s run` prints once the cluster is up.
    pub fn summary(&self) -> String {
        let plan = &self.shared.plan;
        let mut out = format!(
            "k8s run {}: namespace {}, subnet 127.{}.0.0/16, render {}, logs and volumes under {}\n\npods:\n{}\n\nservices:\n",
            self.shared.overlay,
            self.shared.namespace,
            plan.subnet(),
            self.render.display(),
            self.shared.run_dir.display(),
            self.shared.describe_pods()
        );
        for entry in &self.shared.services {
            let ports: Vec<String> = entry
                .service
                .spec
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.name.as_deref().unwrap_or("-"), p.port))
                .collect();
            out.push_str(&format!(
                "  {:<34} {:<15} {}\n",
                entry.service.metadata.name,
                entry.ip.map_or("None".to_owned(), |ip| ip.to_string()),
                ports.join(" ")
            ));
        }
        out.push_str(&format!(
            "\ningress controller: http {}{}\n",
            self.ingress_http,
            self.ingress_https
                .map(|a| format!(", https {a}"))
                .unwrap_or_default()
        ));
        for (host, tls) in self.router.hosts() {
            let (port, target) = match (tls, self.ingress_https) {
                (true, Some(https)) => (443, https),
                _ => (80, self.ingress_http),
            };
            out.push_str(&format!("  {host}:{port} -> {target}\n"));
        }
        if let Some(url) = self.public_url("switchyard-placement") {
            let port = if url.starts_with("https") { 443 } else { 80 };
            let host = url.split("://").nth(1).unwrap_or_default();
            let target = if port == 443 {
                self.ingress_https.unwrap_or(self.ingress_http)
            } else {
                self.ingress_http
            };
            let cacert = self
                .ca_file()
                .map(|ca| format!("--cacert {} ", ca.display()))
                .unwrap_or_default();
            out.push_str(&format!(
                "\nplacement through the Ingress (the public names do not resolve here):\n  curl {cacert}--connect-to {host}:{port}:{target} '{url}/v1/assign?namespace=/'\n"
            ));
        }
        if let Some(addr) = self.service_addr("switchyard-placement", "http") {
            out.push_str(&format!(
                "placement through its Service:\n  curl 'http://{addr}/v1/assign?namespace=/'\n"
            ));
        }
        if let (Some(grpc), Some(token)) = (
            self.service_addr("switchyard-placement", "grpc"),
            self.secret("switchyard-secrets", "admin-token"),
        ) {
            out.push_str(&format!(
                "admin (the admin token of switchyard-secrets):\n  SWITCHYARD_ADMIN_TOKEN='{token}' cargo run -q -p switchyard-ctl -- --placement http://{grpc} nodes\n"
            ));
        }
        out.push_str(&format!(
            "JS test driver (clients/js/tools/driver.mjs) option for the Ingress hosts:\n  \"connect_to\": {}\n",
            self.connect_to()
        ));
        if let Some(redis) = &self.fixtures.redis {
            out.push_str(&format!(
                "\nexternal Redis (a test redis-server): {}\n",
                redis.url()
            ));
        }
        for secret in &self.fixtures.secrets {
            out.push_str(&format!(
                "provided Secret {} (keys {})\n",
                secret.name,
                secret.data.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(ca) = self.ca_file() {
            out.push_str(&format!(
                "test CA of the ingress certificates: {}\n",
                ca.display()
            ));
        }
        if !self.ignored.is_empty() {
            out.push_str(&format!(
                "not emulated, ignored: {}\n",
                self.ignored.join(", ")
            ));
        }
        out
    }

    /// Stops the controllers, deletes every pod as `kubectl delete` would (with `grace`), and
    /// waits until they are gone.
    pub async fn stop(&mut self, grace: Grace) -> Result<()> {
        for controller in self.controllers.drain(..) {
            controller.abort();
        }
        for pod in self.shared.snapshot() {
            let _ = self.shared.delete_pod(&pod.name, grace);
        }
        self.shared
            .wait_for("every pod gone", Duration::from_secs(120), |pods| {
                pods.is_empty()
            })
            .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in self.controllers.drain(..).chain(self.tasks.drain(..)) {
            task.abort();
        }
        for pod in self.shared.snapshot() {
            let _ = self.shared.delete_pod(&pod.name, Grace::Force);
        }
    }
}

/// The `run` verb: build, start, print, stay in the foreground until Ctrl-C.
pub fn run_verb(overlay: &str, release: bool) -> Result<()> {
    let profile = if release {
        crate::exec::Profile::Release
    } else {
        crate::exec::Profile::Debug
    };
    crate::exec::build_bins(profile)?;
    let bin_dir = profile.bin_dir()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut cluster = Cluster::start(&Options {
            overlay: overlay.to_owned(),
            bin_dir,
        })
        .await?;
        let ready = tokio::select! {
            ready = cluster.wait_ready(Duration::from_secs(180)) => ready,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        println!("{}", cluster.summary());
        if let Err(e) = ready {
            eprintln!("not every pod became Ready: {e:#}");
        }
        println!("{CONSOLE_HELP}");
        tokio::select! {
            () = console(&cluster) => {}
            signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
        }
        eprintln!("stopping: deleting every pod with its grace period");
        tokio::select! {
            stopped = cluster.stop(Grace::Default) => stopped,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("killing every pod");
                cluster.stop(Grace::Force).await
            }
        }
    })
}

const CONSOLE_HELP: &str = "\
Commands (one per line on stdin), like kubectl's:
  pods                    the pods, their addresses, readiness, restarts and logs
  delete <pod>            delete a pod gracefully (preStop, SIGTERM, grace period)
  kill <pod>              delete a pod with --grace-period=0 --force (SIGKILL)
  rollout <statefulset>   rollout restart, one pod at a time, highest ordinal first
Ctrl-C stops every pod gracefully (a second Ctrl-C kills them).";

/// Reads operator commands from stdin until it closes (then only Ctrl-C stops the run).
async fn console(cluster: &Cluster) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let outcome = match words.as_slice() {
            [] => Ok(()),
            ["pods"] => {
                println!("{}", cluster.shared.describe_pods());
                Ok(())
            }
            ["delete", pod] => cluster.delete_pod(pod, Grace::Default),
            ["kill", pod] => cluster.delete_pod(pod, Grace::Force),
            ["rollout", set] => cluster
                .rollout_restart(set, Duration::from_secs(600))
                .await
                .map(|r| {
                    let pods: Vec<String> = r
                        .per_pod
                        .iter()
                        .map(|(pod, took)| format!("{pod} {:.1} s", took.as_secs_f64()))
                        .collect();
                    println!(
                        "rollout of {set} took {:.1} s ({})",
                        r.total.as_secs_f64(),
                        pods.join(", ")
                    );
                }),
            _ => {
                println!("{CONSOLE_HELP}");
                Ok(())
            }
        };
        if let Err(e) = outcome {
            println!("error: {e:#}");
        }
    }
    std::future::pending::<()>().await;
}
