//! The dev and prod overlays, run as Kubernetes runs them, driven by the official JS client.
//!
//! Each test renders its overlay, runs it with [`Cluster`] (the `cargo xtask k8s run` runner:
//! every pod a process on its own loopback address, configured from the manifests alone, with
//! the manifests' own probes, grace periods and drain deadlines), and checks what a user of that
//! deployment would see, through the Ingress hosts the manifests declare:
//!
//! 1. clients placed through placement's `/v1/assign` spread evenly over the gateways;
//! 2. a room publish on every gateway reaches the members on every gateway;
//! 3. with events published continuously from then on: a gateway pod SIGKILLed (the StatefulSet
//!    recreates it under the same name) costs its clients nothing: they are placed again and
//!    resume; a rolling restart of the gateway StatefulSet, done as Kubernetes does it; a relay
//!    pod and a placement pod SIGKILLed;
//! 4. in the end every subscriber holds every acknowledged event exactly once.
//!
//! It prints the figures docs/deploy.md quotes: the longest wait for a new placement, the events
//! replayed, the rollout time. A missing prerequisite (kubectl, `npm ci` in clients/js,
//! redis-server, built binaries) fails the test with what to install; nothing is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use switchyard_testkit::driver::{Driver, spread_evenly};
use switchyard_testkit::wait::eventually;

use super::run::{Cluster, Options};
use super::state::Grace;

const GATEWAY: &str = "switchyard-gateway";
const PLACEMENT: &str = "switchyard-placement";
const RELAY: &str = "switchyard-relay";
const ROOM: &str = "k8s";
/// Subscribers per gateway: enough to see the spread, few enough for two cores.
const CLIENTS_PER_GATEWAY: usize = 10;
/// Between two publishes of the continuous publisher.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Guards against hanging, not performance bounds.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_overlay_runs_as_kubernetes_runs_it() -> Result<()> {
    exercise("dev").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_overlay_runs_as_kubernetes_runs_it() -> Result<()> {
    exercise("prod").await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a user of one overlay sees (see the module docs).
async fn exercise(overlay: &str) -> Result<()> {
    let started = Instant::now();
    prerequisites()?;
    let bin_dir = switchyard_testkit::process::profile_dir()?;
    let cluster = Cluster::start(&Options {
        overlay: overlay.to_owned(),
        bin_dir,
    })
    .await
    .with_context(|| format!("starting the {overlay} overlay"))?;
    cluster.wait_ready(READY_TIMEOUT).await?;
    let boot = started.elapsed();
    eprintln!("{}", cluster.summary());

    let mut gateways = cluster.ready_pods(GATEWAY);
    gateways.sort();
    let replicas = cluster
        .replicas(GATEWAY)
        .context("no gateway StatefulSet")?;
    wait_for_ledger(&cluster, &gateways).await?;

    let placement = cluster
        .public_url(PLACEMENT)
        .context("no Ingress routes to placement")?;
    let opts = json!({
        "placement": placement,
        "connect_to": cluster.connect_to(),
        "transports": ["websocket"],
    });
    let ca = cluster.ca_file();
    let env: Vec<(&str, &OsStr)> = ca
        .iter()
        .map(|ca| ("NODE_EXTRA_CA_CERTS", ca.as_os_str()))
        .collect();

    // 1. Placement spreads new clients evenly.
    let clients = CLIENTS_PER_GATEWAY * gateways.len();
    let mut subs = Driver::node_with_env(&env).await?;
    subs.connect_many("s", clients, opts.clone()).await?;
    let counts = subs
        .wait_counts("every subscriber connected", SETTLE_TIMEOUT, |c| {
            c.connected == clients
        })
        .await?;
    let names: Vec<&str> = gateways.iter().map(String::as_str).collect();
    if !spread_evenly(&counts.by_node, &names, clients) {
        bail!(
            "{overlay}: {clients} clients not spread evenly over {gateways:?}: {:?}",
            counts.by_node
        );
    }
    for i in 0..clients {
        let ack = subs.join(&format!("s{i}"), ROOM).await?;
        if ack["ok"] != true {
            bail!("s{i} could not join {ROOM}: {ack}");
        }
    }

    // 2. A publish on every gateway reaches every member on every gateway.
    let mut publishers = BTreeMap::new();
    for i in 0..clients {
        let id = format!("s{i}");
        let info = subs.request(json!({"cmd": "info", "id": id})).await?;
        if let Some(node) = info["node_id"].as_str() {
            publishers.entry(node.to_owned()).or_insert(id);
        }
    }
    for (node, id) in &publishers {
        let ack = subs
            .publish(id, ROOM, "hello", json!({"from": node}))
            .await?;
        if ack["ok"] != true {
            bail!("publish on {node} refused: {ack}");
        }
    }
    let everyone: Vec<String> = (0..clients).map(|i| format!("s{i}")).collect();
    let hellos = |subs: &mut Driver, id: &str| -> BTreeSet<String> {
        subs.events_of(id, "recv")
            .iter()
            .filter(|e| e["name"] == "hello")
            .filter_map(|e| e["args"][0]["from"].as_str().map(str::to_owned))
            .collect()
    };
    let reached = wait_all(
        &mut subs,
        "every hello everywhere",
        SETTLE_TIMEOUT,
        |subs| {
            everyone
                .iter()
                .all(|id| hellos(subs, id).len() == publishers.len())
        },
    )
    .await;
    if let Err(e) = reached {
        let missing: Vec<String> = everyone
            .iter()
            .map(|id| (id, hellos(&mut subs, id)))
            .filter(|(_, got)| got.len() != publishers.len())
            .map(|(id, got)| format!("{id} got hellos from {got:?} only"))
            .collect();
        bail!(
            "{overlay}: a publish on one gateway did not reach every gateway ({e:#}): {}",
            missing.join("; ")
        );
    }

    // 3. Faults and a rollout while one client publishes continuously.
    let mut pubs = Driver::node_with_env(&env).await?;
    pubs.connect("p", opts.clone()).await?;
    pubs.connected("p", SETTLE_TIMEOUT).await?;
    let publisher_node = pubs.request(json!({"cmd": "info", "id": "p"})).await?["node_id"]
        .as_str()
        .map(str::to_owned);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(pubs, Arc::clone(&stop)));

    // 3a. SIGKILL a gateway pod (not the publisher's, so its subscribers are the ones that
    // move); the StatefulSet recreates it.
    let victim = gateways
        .iter()
        .rev()
        .find(|g| Some(g.as_str()) != publisher_node.as_deref())
        .unwrap_or(&gateways[0])
        .clone();
    let victim_uid = cluster
        .shared
        .pod(&victim)
        .map(|p| p.uid)
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_victim = clients_on(&mut subs, &victim);
    if on_victim.is_empty() {
        bail!("{overlay}: no subscriber on {victim} to move");
    }
    let kill_at = now_ms();
    cluster.delete_pod(&victim, Grace::Force)?;
    cluster
        .shared
        .wait_for(
            &format!("{victim} recreated and Ready"),
            READY_TIMEOUT,
            |pods| {
                pods.iter()
                    .any(|p| p.name == victim && p.uid != victim_uid && p.ready())
            },
        )
        .await?;
    wait_all(
        &mut subs,
        &format!("the subscribers of {victim} placed again and resumed"),
        SETTLE_TIMEOUT,
        |subs| moved_and_back(subs, kill_at, &on_victim),
    )
    .await?;
    let after_kill = now_ms();
    let kill_waits = reconnect_waits(&mut subs, kill_at, after_kill);

    // 3b. Rolling restart of the gateway StatefulSet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rollout_at = now_ms();
    let grace = Duration::from_secs(120);
    let rollout = cluster.rollout_restart(GATEWAY, grace).await?;
    // Every gateway drained, so every subscriber moved at least once.
    wait_all(
        &mut subs,
        "every subscriber moved by the rollout and back",
        SETTLE_TIMEOUT,
        |subs| moved_and_back(subs, rollout_at, &everyone),
    )
    .await?;
    let rollout_waits = reconnect_waits(&mut subs, rollout_at, now_ms());

    // 3c. SIGKILL a relay pod, then a placement pod; the Deployments replace them.
    for owner in [RELAY, PLACEMENT] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pods = cluster.ready_pods(owner);
        let victim = pods.first().context("no ready pod")?.clone();
        cluster.delete_pod(&victim, Grace::Force)?;
        let wanted = cluster.replicas(owner).unwrap_or(1) as usize;
        cluster
            .shared
            .wait_for(&format!("{owner} replaced"), READY_TIMEOUT, |pods| {
                pods.iter()
                    .filter(|p| p.owner == owner && p.ready() && p.name != victim)
                    .count()
                    == wanted
            })
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.context("the publisher task")??;
    subs.wait_counts(
        "every subscriber connected at the end",
        SETTLE_TIMEOUT,
        |c| c.connected == clients,
    )
    .await?;

    // 4. Every subscriber holds every acknowledged event, exactly once.
    let acked: BTreeSet<u64> = published.acked.iter().copied().collect();
    let result = wait_all(
        &mut subs,
        "every acknowledged event everywhere",
        SETTLE_TIMEOUT,
        |subs| {
            everyone
                .iter()
                .all(|id| acked.is_subset(&ticks(subs, id).into_iter().collect()))
        },
    )
    .await;
    let mut problems = Vec::new();
    if let Err(e) = result {
        problems.push(format!("{e:#}"));
    }
    for id in &everyone {
        let got = ticks(&mut subs, id);
        let unique: BTreeSet<u64> = got.iter().copied().collect();
        if unique.len() != got.len() {
            problems.push(format!(
                "{id} got {} duplicate event(s)",
                got.len() - unique.len()
            ));
        }
        let missing: Vec<&u64> = acked.difference(&unique).collect();
        if !missing.is_empty() {
            problems.push(format!("{id} misses acknowledged events {missing:?}"));
        }
        if let Some(stray) = unique.iter().find(|s| **s >= published.attempted) {
            problems.push(format!("{id} got event {stray}, which was never published"));
        }
    }
    let resumes: Vec<Value> = subs
        .events()
        .iter()
        .filter(|e| e["event"] == "resumed" || e["event"] == "resync")
        .cloned()
        .collect();
    let unrecovered: Vec<&Value> = resumes.iter().filter(|e| e["recovered"] != true).collect();
    if !unrecovered.is_empty() {
        problems.push(format!("resumes that could not recover: {unrecovered:?}"));
    }
    let replayed: u64 = resumes.iter().filter_map(|e| e["replayed"].as_u64()).sum();

    let max = |waits: &[u64]| waits.iter().max().copied().unwrap_or(0);
    eprintln!(
        "k8s {overlay} figures: {clients} clients over {} gateways (replicas {replicas}), ready \
         after {:.1} s; longest wait for a new placement after SIGKILL of {victim}: {} ms ({} \
         clients moved); rollout of {} gateways: {:.1} s ({}), longest wait for a new placement \
         during it: {} ms ({} reconnects); resumes: {} (events replayed: {replayed}); published \
         {}, acknowledged {}; test time {:.0} s",
        gateways.len(),
        boot.as_secs_f64(),
        max(&kill_waits),
        kill_waits.len(),
        rollout.per_pod.len(),
        rollout.total.as_secs_f64(),
        rollout
            .per_pod
            .iter()
            .map(|(pod, d)| format!("{pod} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        max(&rollout_waits),
        rollout_waits.len(),
        resumes.len(),
        published.attempted,
        acked.len(),
        started.elapsed().as_secs_f64(),
    );
    // The external Redis of an overlay with an ACL user runs with exactly the documented rule:
    // nothing the services did may have been refused.
    if let Some(redis) = cluster.external_redis()
        && let Err(e) = redis.ensure_no_acl_denials()
    {
        problems.push(format!("the Redis ACL user was refused something: {e:#}"));
    }
    if acked.is_empty() || resumes.is_empty() {
        problems.push(format!(
            "nothing to check: {} acknowledged events, {} resumes",
            acked.len(),
            resumes.len()
        ));
    }
    if !problems.is_empty() {
        bail!(
            "k8s {overlay}: {} problem(s):\n  - {}\npods:\n{}",
            problems.len(),
            problems.join("\n  - "),
            cluster.shared.describe_pods()
        );
    }
    subs.shutdown().await?;
    Ok(())
}

/// Fails at once, saying what to install, when something the run needs is missing (kubectl
/// and the venv are checked by [`Cluster::start`] with their own messages).
fn prerequisites() -> Result<()> {
    let mut missing = Vec::new();
    if switchyard_testkit::redis::find_on_path("redis-server").is_none() {
        missing.push(switchyard_testkit::redis::MISSING_REDIS.to_owned());
    }
    if switchyard_testkit::redis::find_on_path("node").is_none() {
        missing.push("node is not on PATH (Debian: apt-get install nodejs npm)".to_owned());
    }
    let js = crate::exec::workspace_root().join("clients/js/node_modules/socket.io-client");
    if !js.is_dir() {
        missing.push(
            "clients/js/node_modules is missing: run `npm ci --prefix clients/js` (cargo xtask \
             test does it)"
                .to_owned(),
        );
    }
    for bin in [
        "switchyard-placement",
        "switchyard-relay",
        "switchyard-gateway",
        "syctl",
    ] {
        if let Err(e) = switchyard_testkit::process::bin_path(bin) {
            missing.push(format!("{e:#}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the Kubernetes overlay tests cannot run:\n  - {}",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

/// Waits until placement's ledger (asked with syctl through the placement Service, with the
/// admin token of the Secret, as an operator would) lists every gateway: only then can a
/// spread over all of them be expected.
async fn wait_for_ledger(cluster: &Cluster, gateways: &[String]) -> Result<()> {
    let syctl = switchyard_testkit::process::bin_path("syctl")?;
    let grpc = cluster
        .service_addr(PLACEMENT, "grpc")
        .context("no placement Service")?;
    let token = cluster
        .secret("switchyard-secrets", "admin-token")
        .context("no admin-token in switchyard-secrets")?;
    eventually(
        "placement's ledger to list every gateway",
        SETTLE_TIMEOUT,
        || async {
            let output = tokio::process::Command::new(&syctl)
                .args(["--placement", &format!("http://{grpc}"), "--json", "nodes"])
                .env("SWITCHYARD_ADMIN_TOKEN", &token)
                .output()
                .await
                .context("running syctl nodes")?;
            let listed = String::from_utf8_lossy(&output.stdout).into_owned();
            ensure!(
                output.status.success()
                    && gateways
                        .iter()
                        .all(|g| listed.contains(&format!("\"{g}\""))),
                "the ledger does not list every gateway {gateways:?}: {listed}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(())
        },
    )
    .await
}

/// The continuous publisher's record.
struct Published {
    /// Sequence numbers published so far (0..attempted).
    attempted: u64,
    acked: Vec<u64>,
}

/// Publishes `tick {seq}` to the room every [`PUBLISH_EVERY`] until `stop`; an event counts as
/// acknowledged only when its ack said `ok`.
async fn publish_until(mut driver: Driver, stop: Arc<AtomicBool>) -> Result<Published> {
    let mut published = Published {
        attempted: 0,
        acked: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        let seq = published.attempted;
        published.attempted += 1;
        let outcome = driver.publish("p", ROOM, "tick", json!({"seq": seq})).await;
        if matches!(&outcome, Ok(ack) if ack["ok"] == true) {
            published.acked.push(seq);
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    driver.shutdown().await?;
    Ok(published)
}

/// The `seq` of every `tick` client `id` received, in arrival order.
fn ticks(driver: &mut Driver, id: &str) -> Vec<u64> {
    driver
        .events_of(id, "recv")
        .iter()
        .filter(|e| e["name"] == "tick")
        .filter_map(|e| e["args"][0]["seq"].as_u64())
        .collect()
}

/// The clients whose latest connection (by their events) is to `node`.
fn clients_on(driver: &mut Driver, node: &str) -> Vec<String> {
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for e in driver.events() {
        if (e["event"] == "connected" || e["event"] == "reconnected")
            && let (Some(id), Some(on)) = (e["id"].as_str(), e["node_id"].as_str())
        {
            latest.insert(id.to_owned(), on.to_owned());
        }
    }
    latest
        .into_iter()
        .filter(|(_, on)| on == node)
        .map(|(id, _)| id)
        .collect()
}

/// Whether every client in `ids` lost its connection after `since` (ms since the epoch), and
/// every client that did is connected again (placed, connected, resumed) after its last loss.
fn moved_and_back(driver: &mut Driver, since: u64, ids: &[String]) -> bool {
    let mut last_loss: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_back: BTreeMap<String, u64> = BTreeMap::new();
    for e in driver.events() {
        let t = e["t"].as_u64().unwrap_or(0);
        let Some(id) = e["id"].as_str() else {
            continue;
        };
        if t < since {
            continue;
        }
        match e["event"].as_str() {
            Some("disconnect") => {
                last_loss.insert(id.to_owned(), t);
            }
            Some("reconnected") => {
                last_back.insert(id.to_owned(), t);
            }
            _ => {}
        }
    }
    ids.iter().all(|id| last_loss.contains_key(id))
        && last_loss
            .iter()
            .all(|(id, lost)| last_back.get(id).is_some_and(|back| back >= lost))
}

/// For every subscriber that lost its connection between `from` and `to` (ms since the epoch):
/// the time from the disconnect to being connected (placed, connected, resumed) again.
fn reconnect_waits(driver: &mut Driver, from: u64, to: u64) -> Vec<u64> {
    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    let mut waits = Vec::new();
    for e in driver.events() {
        let t = e["t"].as_u64().unwrap_or(0);
        if t < from || t > to {
            continue;
        }
        let Some(id) = e["id"].as_str() else {
            continue;
        };
        match e["event"].as_str() {
            Some("disconnect") => {
                lost.entry(id.to_owned()).or_insert(t);
            }
            Some("reconnected") => {
                if let Some(since) = lost.remove(id) {
                    waits.push(t.saturating_sub(since));
                }
            }
            _ => {}
        }
    }
    waits
}

/// Polls `condition` over the driver's events until it holds or `timeout` passes.
async fn wait_all(
    driver: &mut Driver,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&mut Driver) -> bool,
) -> Result<()> {
    let driver = tokio::sync::Mutex::new(driver);
    eventually(what, timeout, || async {
        let mut driver = driver.lock().await;
        ensure!(condition(&mut driver), "not yet");
        Ok(())
    })
    .await
}
