//! Pods as local processes: the kubelet's part.
//!
//! [`create`] gives a pod a fresh IP and a directory (`<run dir>/pods/<name>-<uid>/`) holding its
//! volumes (`emptyDir` as a directory; `configMap` and `secret` materialized as files, every key
//! or the listed `items`) and its logs (`logs/<container>-<restart>.log`, stdout and stderr),
//! then runs one task per container:
//!
//! - **Start.** The environment is computed at every start ([`super::env`]), the network
//!   translations applied ([`super::network`]), the image mapped to a program
//!   ([`super::images`]); the process starts with that environment only (plus the image's
//!   `PATH`, `HOME=/` and `HOSTNAME=<pod name>`, which the container runtime sets), in the
//!   image's working directory mapped to the pod's directory.
//! - **Probes** ([`super::probes`]) decide `started` and `ready`; the pod is Ready when every
//!   container is.
//! - **Restarts** (`restartPolicy: Always`, the only policy of Deployments and StatefulSets):
//!   a container that exits, or fails its startup or liveness probe (killed with the pod's grace
//!   period, preStop first), starts again in the same pod (same IP), after the kubelet's
//!   back-off: at once the first time, then 10 s doubling up to 5 min, reset after 10 min of
//!   running.
//! - **Termination** ([`Grace::Default`]): the pod leaves its Services' endpoints at once (it
//!   is terminating), each container runs its `preStop` hook (`exec`, or the built-in `sleep`),
//!   then gets SIGTERM, and SIGKILL when `terminationGracePeriodSeconds` (counted from the
//!   deletion, preStop included, at least 2 s after SIGTERM) has passed. [`Grace::Force`] is
//!   `kubectl delete --grace-period=0 --force`: SIGKILL, no hook.
//!
//! Not emulated: init containers and `postStart` hooks (refused by name), resource limits,
//! security contexts (processes run as the invoking user), image pulls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::env::{EnvSources, PodFields, command_and_args, container_env, service_links};
use super::images::{IMAGE_PATH, Image, Program};
use super::model::{Container, Handler, KeyToPath, Meta, PodSpec, PortRef, Volume};
use super::network::Translator;
use super::probes::{self, Action, Kind, Report, Timing};
use super::state::{ContainerStatus, Grace, PodCommand, PodRecord, Shared};

/// The kubelet's floor for the time between SIGTERM and SIGKILL.
const MIN_GRACE_AFTER_TERM: Duration = Duration::from_secs(2);
/// Default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Container restart back-off (kubelet): 10 s doubling up to 5 min, reset after 10 min up.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A pod to create, as a controller builds it from its template.
#[derive(Debug, Clone)]
pub struct PodDef {
    pub meta: Meta,
    pub uid: String,
    pub owner: String,
    pub spec: PodSpec,
}

/// What every container task of one pod shares.
struct PodContext {
    def: PodDef,
    ip: std::net::Ipv4Addr,
    dir: PathBuf,
    /// Volume name -> local directory.
    volumes: BTreeMap<String, PathBuf>,
    ports: BTreeMap<String, u16>,
}

/// Creates a pod and starts its containers (see the module docs).
pub fn create(shared: &Arc<Shared>, def: PodDef) -> Result<()> {
    if !def.spec.init_containers.is_empty() {
        bail!("pod {}: init containers are not emulated", def.meta.name);
    }
    if let Some(policy) = &def.spec.restart_policy
        && policy != "Always"
    {
        bail!(
            "pod {}: restartPolicy {policy} is not emulated",
            def.meta.name
        );
    }
    let ip = shared.plan.next_pod_ip()?;
    let short_uid: String = def.uid.chars().take(8).collect();
    let dir = shared
        .run_dir
        .join("pods")
        .join(format!("{}-{short_uid}", def.meta.name));
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut volumes = BTreeMap::new();
    for volume in &def.spec.volumes {
        let local = dir.join("volumes").join(&volume.name);
        materialize(shared, volume, &local)
            .with_context(|| format!("pod {}: volume {}", def.meta.name, volume.name))?;
        volumes.insert(volume.name.clone(), local);
    }
    let mut ports = BTreeMap::new();
    for container in &def.spec.containers {
        if container
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.post_start.is_some())
        {
            bail!(
                "pod {} container {}: postStart hooks are not emulated",
                def.meta.name,
                container.name
            );
        }
        for port in &container.ports {
            if let Some(name) = &port.name {
                ports.insert(name.clone(), port.container_port);
            }
        }
    }
    let (control, commands) = mpsc::unbounded_channel();
    shared.insert_pod(PodRecord {
        name: def.meta.name.clone(),
        uid: def.uid.clone(),
        ip,
        owner: def.owner.clone(),
        labels: def.meta.labels.clone(),
        ports: ports.clone(),
        containers: def
            .spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                ..ContainerStatus::default()
            })
            .collect(),
        terminating: false,
        control,
    })?;
    shared.event(format!("pod/{} created ({ip})", def.meta.name));
    let context = Arc::new(PodContext {
        def,
        ip,
        dir,
        volumes,
        ports,
    });
    tokio::spawn(run_pod(Arc::clone(shared), context, commands));
    Ok(())
}

/// Writes a volume's contents under `local`.
fn materialize(shared: &Shared, volume: &Volume, local: &Path) -> Result<()> {
    std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
    let (what, name, items, optional, store) = if volume.empty_dir.is_some() {
        return Ok(());
    } else if let Some(cm) = &volume.config_map {
        (
            "ConfigMap",
            &cm.name,
            &cm.items,
            cm.optional,
            &shared.config_maps,
        )
    } else if let Some(secret) = &volume.secret {
        (
            "Secret",
            &secret.secret_name,
            &secret.items,
            secret.optional,
            &shared.secrets,
        )
    } else {
        bail!("only emptyDir, configMap and secret volumes are emulated");
    };
    let Some(source) = store.get(name) else {
        if optional == Some(true) {
            return Ok(());
        }
        bail!("{what} {name} does not exist");
    };
    let files: Vec<KeyToPath> = if items.is_empty() {
        source
            .data
            .keys()
            .map(|k| KeyToPath {
                key: k.clone(),
                path: k.clone(),
            })
            .collect()
    } else {
        items.clone()
    };
    for item in files {
        let bytes = source
            .data
            .get(&item.key)
            .with_context(|| format!("{what} {name} has no key {}", item.key))?;
        if item.path.split('/').any(|part| part == "..") || item.path.starts_with('/') {
            bail!("volume path {} must be relative, without `..`", item.path);
        }
        let path = local.join(&item.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_pod(
    shared: Arc<Shared>,
    pod: Arc<PodContext>,
    mut commands: mpsc::UnboundedReceiver<PodCommand>,
) {
    let (stop, stopped) = watch::channel(None::<Grace>);
    let containers: Vec<JoinHandle<()>> = (0..pod.def.spec.containers.len())
        .map(|index| {
            tokio::spawn(run_container(
                Arc::clone(&shared),
                Arc::clone(&pod),
                index,
                stopped.clone(),
            ))
        })
        .collect();
    let grace = match commands.recv().await {
        Some(PodCommand::Delete(grace)) => grace,
        // The cluster is going away: the containers' processes die with their tasks.
        None => Grace::Force,
    };
    let _ = stop.send(Some(grace));
    for container in containers {
        let _ = container.await;
    }
    shared.remove_pod(&pod.def.meta.name, &pod.def.uid);
    shared.event(format!("pod/{} deleted", pod.def.meta.name));
}

/// A container ready to start: everything resolved.
struct Prepared {
    program: Program,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    probes: Vec<(Kind, Action, Timing)>,
    pre_stop: Option<Hook>,
}

/// A lifecycle hook as it will run.
enum Hook {
    Exec {
        program: Program,
        env: BTreeMap<String, String>,
        cwd: PathBuf,
    },
    Sleep(Duration),
}

fn prepare(shared: &Shared, pod: &PodContext, container: &Container) -> Result<Prepared> {
    let image = Image::of(&container.image, &shared.bin_dir)?;
    let links = if pod.def.spec.enable_service_links == Some(false) {
        BTreeMap::new()
    } else {
        let with_ip: Vec<_> = shared
            .services
            .iter()
            .filter_map(|s| s.ip.map(|ip| (&s.service, ip)))
            .collect();
        service_links(&with_ip)
    };
    let fields = PodFields {
        name: &pod.def.meta.name,
        namespace: &shared.namespace,
        uid: &pod.def.uid,
        labels: &pod.def.meta.labels,
        annotations: &pod.def.meta.annotations,
        service_account: pod
            .def
            .spec
            .service_account_name
            .as_deref()
            .unwrap_or("default"),
        ip: pod.ip,
    };
    let declared = container_env(
        container,
        &fields,
        &EnvSources {
            config_maps: &shared.config_maps,
            secrets: &shared.secrets,
            service_links: &links,
        },
    )?;
    let (command, args) = command_and_args(container, &declared);

    let resolve = |name: &str| shared.resolve(name);
    let mut mounts = Vec::new();
    for mount in &container.volume_mounts {
        let local = pod
            .volumes
            .get(&mount.name)
            .with_context(|| format!("volumeMount {} names no volume of the pod", mount.name))?;
        let local = match &mount.sub_path {
            Some(sub) if !sub.is_empty() => local.join(sub),
            _ => local.clone(),
        };
        mounts.push((mount.mount_path.clone(), local));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let translator = Translator {
        pod_ip: pod.ip,
        resolve: &resolve,
        mounts,
    };

    let mut env: BTreeMap<String, String> = BTreeMap::from([
        ("PATH".to_owned(), IMAGE_PATH.to_owned()),
        ("HOME".to_owned(), "/".to_owned()),
        ("HOSTNAME".to_owned(), pod.def.meta.name.clone()),
    ]);
    env.extend(
        declared
            .iter()
            .map(|(k, v)| (k.clone(), translator.value(v))),
    );
    let command: Vec<String> = command.iter().map(|c| translator.value(c)).collect();
    let args: Vec<String> = args.iter().map(|a| translator.value(a)).collect();
    let program = image.entrypoint(&command, &args, pod.ip)?;

    let workdir = container
        .working_dir
        .clone()
        .unwrap_or_else(|| image.workdir().to_owned());
    let cwd = match translator.path(&workdir) {
        Some(local) => local,
        None => pod.dir.join("rootfs").join(workdir.trim_start_matches('/')),
    };
    std::fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;

    let exec = |command: &[String]| -> Result<Program> {
        let translated: Vec<String> = command.iter().map(|c| translator.value(c)).collect();
        image.exec(&translated, pod.ip)
    };
    let port_of = |port: &PortRef| -> Result<u16> {
        match port {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(name) => pod
                .ports
                .get(name)
                .copied()
                .with_context(|| format!("no container port named {name}")),
        }
    };
    let mut probes = Vec::new();
    for (kind, probe) in [
        (Kind::Startup, &container.startup_probe),
        (Kind::Liveness, &container.liveness_probe),
        (Kind::Readiness, &container.readiness_probe),
    ] {
        let Some(probe) = probe else {
            continue;
        };
        let action = if let Some(http) = &probe.http_get {
            if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                bail!(
                    "{kind} probe: httpGet scheme {:?} is not emulated",
                    http.scheme
                );
            }
            if http.host.is_some() {
                bail!("{kind} probe: httpGet host is not emulated");
            }
            Action::Http {
                addr: (pod.ip, port_of(&http.port)?).into(),
                path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
                headers: http
                    .http_headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            if tcp.host.is_some() {
                bail!("{kind} probe: tcpSocket host is not emulated");
            }
            Action::Tcp {
                addr: (pod.ip, port_of(&tcp.port)?).into(),
            }
        } else if let Some(grpc) = &probe.grpc {
            Action::Grpc {
                addr: (pod.ip, grpc.port).into(),
                service: grpc.service.clone().unwrap_or_default(),
            }
        } else if let Some(exec_action) = &probe.exec {
            Action::Exec {
                program: exec(&exec_action.command)?,
                env: env.clone(),
                cwd: cwd.clone(),
            }
        } else {
            bail!("{kind} probe has no action");
        };
        probes.push((kind, action, Timing::of(probe)));
    }

    let pre_stop = match container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        None => None,
        Some(Handler {
            exec: Some(action), ..
        }) => Some(Hook::Exec {
            program: exec(&action.command)?,
            env: env.clone(),
            cwd: cwd.clone(),
        }),
        Some(Handler {
            sleep: Some(sleep), ..
        }) => Some(Hook::Sleep(Duration::from_secs(sleep.seconds))),
        Some(_) => bail!("preStop: only exec and sleep hooks are emulated"),
    };
    Ok(Prepared {
        program,
        env,
        cwd,
        probes,
        pre_stop,
    })
}

/// Why a container's run ended.
enum Ended {
    /// The pod is being deleted: do not restart.
    Stopped,
    /// Exited or killed after a failed probe: restart after the back-off.
    Restart(String),
}

async fn run_container(
    shared: Arc<Shared>,
    pod: Arc<PodContext>,
    index: usize,
    mut stop: watch::Receiver<Option<Grace>>,
) {
    let container = &pod.def.spec.containers[index];
    let id = format!("pod/{} container {}", pod.def.meta.name, container.name);
    let grace = pod
        .def
        .spec
        .termination_grace_period_seconds
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    let mut restarts: u32 = 0;
    let mut backoff = Duration::ZERO;
    loop {
        if stop.borrow().is_some() {
            return;
        }
        let started_at = tokio::time::Instant::now();
        let ended = match prepare(&shared, &pod, container) {
            Ok(prepared) => {
                run_once(
                    &shared, &pod, index, &id, &prepared, restarts, grace, &mut stop,
                )
                .await
            }
            Err(e) => Ended::Restart(format!("cannot start: {e:#}")),
        };
        update(&shared, &pod, index, |c| {
            c.ready = false;
            c.started = false;
            c.pid = None;
        });
        let why = match ended {
            Ended::Stopped => return,
            Ended::Restart(why) => why,
        };
        restarts += 1;
        if started_at.elapsed() >= BACKOFF_RESET {
            backoff = Duration::ZERO;
        }
        shared.event(format!("{id}: {why}; restart {restarts} in {backoff:?}"));
        update(&shared, &pod, index, |c| {
            c.restarts = restarts;
            c.last_error = Some(why.clone());
        });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = if backoff.is_zero() {
            BACKOFF_BASE
        } else {
            (backoff * 2).min(BACKOFF_CAP)
        };
    }
}

fn update(
    shared: &Shared,
    pod: &PodContext,
    index: usize,
    change: impl FnOnce(&mut ContainerStatus),
) {
    shared.update_pod(&pod.def.meta.name, &pod.def.uid, |record| {
        if let Some(c) = record.containers.get_mut(index) {
            change(c);
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    shared: &Arc<Shared>,
    pod: &PodContext,
    index: usize,
    id: &str,
    prepared: &Prepared,
    restarts: u32,
    grace: Duration,
    stop: &mut watch::Receiver<Option<Grace>>,
) -> Ended {
    let container = &pod.def.spec.containers[index];
    let log = pod
        .dir
        .join("logs")
        .join(format!("{}-{restarts}.log", container.name));
    let mut child = match spawn(prepared, &log) {
        Ok(child) => child,
        Err(e) => return Ended::Restart(format!("cannot start: {e:#}")),
    };
    let pid = child.id();
    shared.event(format!(
        "{id}: started {} (pid {}), log {}",
        prepared.program.path.display(),
        pid.map_or("?".to_owned(), |p| p.to_string()),
        log.display()
    ));
    update(shared, pod, index, |c| {
        c.pid = pid;
        c.log = Some(log.clone());
    });

    let has_startup = prepared.probes.iter().any(|(k, _, _)| *k == Kind::Startup);
    let has_readiness = prepared
        .probes
        .iter()
        .any(|(k, _, _)| *k == Kind::Readiness);
    let (started_tx, started_rx) = watch::channel(!has_startup);
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let trigger = Arc::new(Notify::new());
    let now = tokio::time::Instant::now();
    let workers: Vec<JoinHandle<()>> = prepared
        .probes
        .iter()
        .map(|(kind, action, timing)| {
            tokio::spawn(probes::worker(
                *kind,
                action.clone(),
                *timing,
                now,
                started_rx.clone(),
                Arc::clone(&trigger),
                reports_tx.clone(),
            ))
        })
        .collect();
    let set_started = |shared: &Shared| {
        update(shared, pod, index, |c| {
            c.started = true;
            if !has_readiness {
                c.ready = true;
            }
        });
    };
    if !has_startup {
        set_started(shared);
    }

    let ended = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                break Ended::Restart(format!("exited ({status})"));
            }
            report = reports.recv() => match report {
                Some(Report::Started) => {
                    let _ = started_tx.send(true);
                    set_started(shared);
                    trigger.notify_waiters();
                }
                Some(Report::Ready(ready)) => {
                    let was = shared
                        .pod(&pod.def.meta.name)
                        .and_then(|p| p.containers.get(index).map(|c| c.ready));
                    if was != Some(ready) {
                        shared.event(format!("{id}: {}", if ready { "ready" } else { "not ready" }));
                    }
                    update(shared, pod, index, |c| c.ready = ready);
                }
                Some(Report::Failed(why)) => {
                    shared.event(format!("{id}: {why}; killing it"));
                    terminate(&mut child, prepared, grace, false).await;
                    break Ended::Restart(why);
                }
                None => {}
            },
            changed = stop.changed() => {
                let grace_kind = if changed.is_ok() { *stop.borrow() } else { Some(Grace::Force) };
                let force = grace_kind != Some(Grace::Default);
                update(shared, pod, index, |c| c.ready = false);
                terminate(&mut child, prepared, grace, force).await;
                break Ended::Stopped;
            }
        }
    };
    for worker in workers {
        worker.abort();
    }
    ended
}

fn spawn(prepared: &Prepared, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(&prepared.program.path)
        .args(&prepared.program.args)
        .env_clear()
        .envs(&prepared.env)
        .current_dir(&prepared.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        // Its own process group, as a container has its own PID namespace: a Ctrl-C in
        // the terminal of `cargo xtask k8s run` reaches the runner, which stops pods
        // the Kubernetes way, not every process at once.
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning {}", prepared.program.path.display()))
}

/// Stops a container: preStop, SIGTERM, SIGKILL at the end of the grace period; or SIGKILL at
/// once when `force`.
async fn terminate(child: &mut Child, prepared: &Prepared, grace: Duration, force: bool) {
    if force || grace.is_zero() {
        let _ = child.kill().await;
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    match &prepared.pre_stop {
        Some(Hook::Sleep(pause)) => {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + *pause)).await;
        }
        Some(Hook::Exec { program, env, cwd }) => {
            let hook = Command::new(&program.path)
                .args(&program.args)
                .env_clear()
                .envs(env)
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                // Its own process group, like the container (see `pods::spawn`).
                .process_group(0)
                .status();
            let _ = tokio::time::timeout_at(deadline, hook).await;
        }
        None => {}
    }
    if let Some(pid) = child.id() {
        let _ = switchyard_testkit::process::send_signal(pid, "TERM");
    }
    let kill_at = deadline.max(tokio::time::Instant::now() + MIN_GRACE_AFTER_TERM);
    if tokio::time::timeout_at(kill_at, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
