//! The Deployment and StatefulSet controllers, and the rollouts an operator starts.
//!
//! Each controller re-reads the pods whenever anything changes and creates what is missing:
//!
//! - **Deployment** (through its ReplicaSet): `replicas` pods not terminating, named
//!   `<deployment>-<template hash>-<5 random>`, labelled `pod-template-hash`. A pod that starts
//!   terminating is replaced at once, while it still drains.
//! - **StatefulSet**: pods `<set>-0 .. <set>-(replicas-1)`, labelled
//!   `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`. A pod is recreated
//!   with the same name only once the old one is gone. `podManagementPolicy: Parallel` creates
//!   every missing pod at once; `OrderedReady` (the default) one at a time, each after every
//!   lower ordinal is Ready.
//!
//! The replica count is `spec.replicas`; without it (the prod overlay hands the gateway count to
//! an autoscaler) the `minReplicas` of the HorizontalPodAutoscaler that targets the workload,
//! which is where a real autoscaler settles without load; else 1. The autoscaler itself is not
//! emulated (no metrics here).
//!
//! [`rollout_restart_stateful_set`] is `kubectl rollout restart statefulset` with the
//! `RollingUpdate` strategy: from the highest ordinal down, one pod at a time, delete it
//! gracefully (preStop, SIGTERM, grace period), let the controller recreate it under the same
//! name, wait until the new pod is Ready, then the next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

use super::model::{Meta, Workload};
use super::pods::{self, PodDef};
use super::state::{Grace, Shared};

/// Starts the controller of one workload.
pub fn start(shared: &Arc<Shared>, workload: Workload, replicas: u32) -> Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    match workload.kind.as_str() {
        "Deployment" | "StatefulSet" => Ok(tokio::spawn(control(shared, workload, replicas))),
        other => bail!("{other} is not emulated"),
    }
}

async fn control(shared: Arc<Shared>, workload: Workload, replicas: u32) {
    let mut changes = shared.subscribe();
    let hash = template_hash(&workload);
    loop {
        if let Err(e) = reconcile(&shared, &workload, replicas, &hash) {
            shared.event(format!(
                "{}/{}: cannot create a pod: {e:#}; retrying in 10 s",
                workload.kind, workload.metadata.name
            ));
            tokio::time::sleep(Duration::from_secs(10)).await;
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn reconcile(shared: &Arc<Shared>, workload: &Workload, replicas: u32, hash: &str) -> Result<()> {
    let name = &workload.metadata.name;
    let pods: Vec<_> = shared
        .snapshot()
        .into_iter()
        .filter(|p| &p.owner == name)
        .collect();
    if workload.kind == "Deployment" {
        let active = pods.iter().filter(|p| !p.terminating).count();
        for _ in active..replicas as usize {
            let pod_name = format!("{name}-{hash}-{}", random_suffix()?);
            let mut meta = pod_meta(workload, &pod_name);
            meta.labels
                .insert("pod-template-hash".to_owned(), hash.to_owned());
            create(shared, workload, meta)?;
        }
        return Ok(());
    }
    let parallel = workload.spec.pod_management_policy.as_deref() == Some("Parallel");
    for ordinal in 0..replicas {
        let pod_name = format!("{name}-{ordinal}");
        match pods.iter().find(|p| p.name == pod_name) {
            Some(pod) if pod.ready() || parallel => continue,
            // OrderedReady: the next ordinal waits for this one.
            Some(_) => return Ok(()),
            None => {
                let mut meta = pod_meta(workload, &pod_name);
                meta.labels.insert(
                    "statefulset.kubernetes.io/pod-name".to_owned(),
                    pod_name.clone(),
                );
                meta.labels.insert(
                    "apps.kubernetes.io/pod-index".to_owned(),
                    ordinal.to_string(),
                );
                meta.labels.insert(
                    "controller-revision-hash".to_owned(),
                    format!("{name}-{hash}"),
                );
                create(shared, workload, meta)?;
                if !parallel {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn pod_meta(workload: &Workload, name: &str) -> Meta {
    let template = &workload.spec.template.metadata;
    Meta {
        name: name.to_owned(),
        namespace: workload.metadata.namespace.clone(),
        labels: template.labels.clone(),
        annotations: template.annotations.clone(),
    }
}

fn create(shared: &Arc<Shared>, workload: &Workload, meta: Meta) -> Result<()> {
    pods::create(
        shared,
        PodDef {
            meta,
            uid: random_hex(16)?,
            owner: workload.metadata.name.clone(),
            spec: workload.spec.template.spec.clone(),
        },
    )
}

/// What a rollout took.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub total: Duration,
    /// Per pod, from the start of its deletion to the new pod being Ready.
    pub per_pod: Vec<(String, Duration)>,
}

/// `kubectl rollout restart statefulset/<name>` (see the module docs).
pub async fn rollout_restart_stateful_set(
    shared: &Shared,
    name: &str,
    replicas: u32,
    per_pod_timeout: Duration,
) -> Result<Rollout> {
    let started = Instant::now();
    let mut per_pod = Vec::new();
    for ordinal in (0..replicas).rev() {
        let pod = format!("{name}-{ordinal}");
        let began = Instant::now();
        let old = shared
            .pod(&pod)
            .with_context(|| format!("rollout of {name}: pod {pod} does not exist"))?;
        shared.event(format!("rollout {name}: replacing {pod}"));
        shared.delete_pod(&pod, Grace::Default)?;
        shared
            .wait_for(
                &format!("rollout of {name}: new {pod} Ready"),
                per_pod_timeout,
                |pods| {
                    pods.iter()
                        .any(|p| p.name == pod && p.uid != old.uid && p.ready())
                },
            )
            .await?;
        per_pod.push((pod, began.elapsed()));
    }
    Ok(Rollout {
        total: started.elapsed(),
        per_pod,
    })
}

/// A stable short hash of the pod template (the `pod-template-hash` label's role).
fn template_hash(workload: &Workload) -> String {
    let text = format!("{:?}", workload.spec.template.spec.containers);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| char::from(ALPHABET[((hash >> (i * 6)) % ALPHABET.len() as u64) as usize]))
        .collect()
}

/// Five characters from Kubernetes' name alphabet (no vowels, no confusable digits).
fn random_suffix() -> Result<String> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Ok(random_bytes(5)?
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> Result<String> {
    Ok(random_bytes(n)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes)
}
