//! What the runner knows about the emulated cluster at any moment: the objects of the render
//! (fixed for the run) and the pods (changing). The local equivalent of the API server.
//!
//! Pods live in one map behind a std `Mutex`: every critical section is a few map operations
//! and never awaits. Each change bumps a `watch` counter, so controllers and waiters wake up
//! and re-read the map instead of receiving events they could miss.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::{mpsc, watch};

use super::model::{KeyValues, PortRef, Service, ServicePort};
use super::network::{AddressPlan, cluster_name};

/// A Service of the render and the address the runner gave it (`None`: headless).
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub service: Service,
    pub ip: Option<Ipv4Addr>,
}

/// Why a pod goes away, as `kubectl delete pod` would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// The pod's `terminationGracePeriodSeconds`: preStop, SIGTERM, wait, SIGKILL.
    Default,
    /// `--grace-period=0 --force`: SIGKILL now, no preStop.
    Force,
}

/// Commands a pod's task obeys.
#[derive(Debug)]
pub enum PodCommand {
    Delete(Grace),
}

/// One container's status, as `kubectl get pod` shows it.
#[derive(Debug, Clone, Default)]
pub struct ContainerStatus {
    pub name: String,
    pub started: bool,
    pub ready: bool,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub log: Option<PathBuf>,
    /// Why the container last failed to start or was restarted.
    pub last_error: Option<String>,
}

/// A pod.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    /// The Deployment or StatefulSet that owns it.
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    /// Named container ports of every container.
    pub ports: BTreeMap<String, u16>,
    pub containers: Vec<ContainerStatus>,
    /// Set once a deletion started (`deletionTimestamp`).
    pub terminating: bool,
    pub control: mpsc::UnboundedSender<PodCommand>,
}

impl PodRecord {
    /// The Ready condition: every container ready, and not terminating.
    pub fn ready(&self) -> bool {
        !self.terminating && !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }
}

/// The cluster's state (see the module docs).
pub struct Shared {
    pub overlay: String,
    pub namespace: String,
    pub plan: AddressPlan,
    pub config_maps: BTreeMap<String, KeyValues>,
    pub secrets: BTreeMap<String, KeyValues>,
    pub services: Vec<ServiceEntry>,
    /// Where the Switchyard binaries are (`target/<profile>`).
    pub bin_dir: PathBuf,
    /// Logs and volumes of this run.
    pub run_dir: PathBuf,
    pub started: Instant,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    changed: watch::Sender<u64>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        overlay: String,
        namespace: String,
        plan: AddressPlan,
        config_maps: BTreeMap<String, KeyValues>,
        secrets: BTreeMap<String, KeyValues>,
        services: Vec<ServiceEntry>,
        bin_dir: PathBuf,
        run_dir: PathBuf,
    ) -> Shared {
        Shared {
            overlay,
            namespace,
            plan,
            config_maps,
            secrets,
            services,
            bin_dir,
            run_dir,
            started: Instant::now(),
            pods: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// Prints one line about the cluster, prefixed with the overlay and the run's age.
    pub fn event(&self, message: impl std::fmt::Display) {
        eprintln!(
            "[k8s {} {:>6.1}s] {message}",
            self.overlay,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn pods(&self) -> MutexGuard<'_, BTreeMap<String, PodRecord>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A copy of every pod.
    pub fn snapshot(&self) -> Vec<PodRecord> {
        self.pods().values().cloned().collect()
    }

    pub fn pod(&self, name: &str) -> Option<PodRecord> {
        self.pods().get(name).cloned()
    }

    /// Adds a pod; fails when one of that name exists (a StatefulSet pod must be gone first).
    pub fn insert_pod(&self, record: PodRecord) -> Result<()> {
        {
            let mut pods = self.pods();
            if pods.contains_key(&record.name) {
                bail!("pod {} already exists", record.name);
            }
            pods.insert(record.name.clone(), record);
        }
        self.notify();
        Ok(())
    }

    /// Changes the pod `name` if it is still incarnation `uid`.
    pub fn update_pod(&self, name: &str, uid: &str, change: impl FnOnce(&mut PodRecord)) {
        let changed = {
            let mut pods = self.pods();
            match pods.get_mut(name) {
                Some(pod) if pod.uid == uid => {
                    change(pod);
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.notify();
        }
    }

    /// Removes incarnation `uid` of pod `name` (its task has stopped every container).
    pub fn remove_pod(&self, name: &str, uid: &str) {
        let removed = {
            let mut pods = self.pods();
            if pods.get(name).is_some_and(|p| p.uid == uid) {
                pods.remove(name);
                true
            } else {
                false
            }
        };
        if removed {
            self.notify();
        }
    }

    /// Starts deleting a pod. Fails when there is no such pod.
    pub fn delete_pod(&self, name: &str, grace: Grace) -> Result<()> {
        let control = {
            let mut pods = self.pods();
            let Some(pod) = pods.get_mut(name) else {
                bail!("no pod {name}");
            };
            pod.terminating = true;
            pod.control.clone()
        };
        self.notify();
        if control.send(PodCommand::Delete(grace)).is_err() {
            bail!("pod {name} no longer runs");
        }
        Ok(())
    }

    /// Waits until `condition` holds over the pods, or fails at the deadline with `what` and
    /// the pods' states.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[PodRecord]) -> bool,
    ) -> Result<()> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition(&self.snapshot()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the cluster stopped while waiting for {what}"),
                Err(_) => bail!(
                    "{what}: not within {timeout:?}; pods now:\n{}",
                    self.describe_pods()
                ),
            }
        }
    }

    /// One line per pod: name, IP, ready, restarts, pids, logs.
    pub fn describe_pods(&self) -> String {
        self.snapshot()
            .iter()
            .map(|p| {
                let containers = p
                    .containers
                    .iter()
                    .map(|c| {
                        format!(
                            "{} ready={} restarts={} pid={} log={}{}",
                            c.name,
                            c.ready,
                            c.restarts,
                            c.pid.map_or("-".to_owned(), |p| p.to_string()),
                            c.log
                                .as_ref()
                                .map_or("-".to_owned(), |l| l.display().to_string()),
                            c.last_error
                                .as_ref()
                                .map(|e| format!(" last error: {e}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                format!(
                    "  {:<34} {:<15} {}{} {containers}",
                    p.name,
                    p.ip,
                    if p.ready() { "Ready" } else { "NotReady" },
                    if p.terminating { " Terminating" } else { "" },
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The Service called `name` (short name).
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services
            .iter()
            .find(|s| s.service.metadata.name == name)
    }

    /// Where a connection to `service`'s `port` may go now: each selected pod's address at the
    /// target port. Only Ready pods that are not terminating count, unless the Service
    /// publishes not-ready addresses, in which case every pod with an IP does (terminating ones
    /// included, as the endpoints controller keeps them).
    pub fn endpoints(&self, service: &Service, port: &ServicePort) -> Vec<SocketAddr> {
        let pods = self.pods();
        pods.values()
            .filter(|pod| selects(service, pod))
            .filter(|pod| service.publish_not_ready() || pod.ready())
            .filter_map(|pod| {
                let target = match &port.target_port {
                    None => port.port,
                    Some(PortRef::Number(n)) => *n,
                    Some(PortRef::Name(name)) => *pod.ports.get(name)?,
                };
                Some(SocketAddr::from((pod.ip, target)))
            })
            .collect()
    }

    /// Translation 2 of [`super::network`]: the address a cluster DNS name stands for.
    pub fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        for short in cluster_name(name, &self.namespace) {
            if let Some(entry) = self.service(short) {
                return match entry.ip {
                    Some(ip) => Some(ip),
                    None => self.headless_ips(&entry.service).into_iter().next(),
                };
            }
            // `<pod>.<headless service>`
            if let Some((pod, service)) = short.split_once('.')
                && let Some(entry) = self.service(service)
                && entry.ip.is_none()
            {
                return self
                    .pods()
                    .get(pod)
                    .filter(|p| selects(&entry.service, p))
                    .map(|p| p.ip);
            }
        }
        None
    }

    fn headless_ips(&self, service: &Service) -> Vec<Ipv4Addr> {
        self.pods()
            .values()
            .filter(|p| selects(service, p) && (service.publish_not_ready() || p.ready()))
            .map(|p| p.ip)
            .collect()
    }
}

/// Whether a Service's selector picks a pod (a Service without selector picks none).
pub fn selects(service: &Service, pod: &PodRecord) -> bool {
    !service.spec.selector.is_empty()
        && service
            .spec
            .selector
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
}
