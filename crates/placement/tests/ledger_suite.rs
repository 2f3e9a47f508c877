//! The ledger's behavioural suite: every case in `behaviour!` runs against the in-memory
//! ledger, the Redis ledger on a real `redis-server` of its own and the Redis ledger on a real
//! three-master Redis Cluster of its own (both started by the testkit), so the implementations
//! keep the same guarantees on every backend. Redis-only behaviour (outages, the fenced lease
//! shared by replicas) follows at the end, in `redis_only!`, on a server and on a cluster.
//!
//! Timing: some cases need time to pass (liveness, reservation expiry); they use short windows
//! and generous margins, and never assert on how fast anything is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use switchyard_placement::lease::{Lease, LocalLease, RedisLease};
use switchyard_placement::ledger::{
    FencingToken, Ledger, LedgerError, LedgerSettings, LoadReport, MemoryLedger, NodeRegistration,
    NodeView, RedisLedger,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};
use switchyard_testkit::wait::eventually;

type Result<T = ()> = anyhow::Result<T>;

/// A ledger under test, its lease, and the Redis behind both (kept alive for the test).
struct Fixture {
    ledger: Arc<dyn Ledger>,
    lease: Arc<dyn Lease>,
    _redis: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Fixture {
    async fn fence(&self) -> Result<FencingToken> {
        self.lease
            .acquire()
            .await?
            .context("the only replica could not take the lease")
    }
}

trait Backend {
    async fn start(settings: LedgerSettings) -> Result<Fixture>;
}

struct Memory;

impl Backend for Memory {
    async fn start(settings: LedgerSettings) -> Result<Fixture> {
        Ok(Fixture {
            ledger: Arc::new(MemoryLedger::new(settings)),
            lease: Arc::new(LocalLease),
            _redis: None,
        })
    }
}

/// A fresh Redis (server or cluster), a ledger on it and a lease sharing the ledger's pool.
async fn redis_fixture<R: RedisDeployment>(
    settings: LedgerSettings,
) -> Result<(R, RedisLedger, RedisLease)> {
    let redis = R::start()?;
    let ledger = RedisLedger::connect(&redis.url().parse()?, settings.clone()).await?;
    let lease = RedisLease::with_pool(
        ledger.pool().clone(),
        &settings.cluster,
        "suite-holder".to_owned(),
        Duration::from_secs(30),
    );
    Ok((redis, ledger, lease))
}

impl<R: RedisDeployment> Backend for R {
    async fn start(settings: LedgerSettings) -> Result<Fixture> {
        let (redis, ledger, lease) = redis_fixture::<R>(settings).await?;
        Ok(Fixture {
            ledger: Arc::new(ledger),
            lease: Arc::new(lease),
            _redis: Some(Box::new(redis)),
        })
    }
}

fn settings(reservation_ttl_ms: u64, liveness_ms: u64) -> LedgerSettings {
    LedgerSettings {
        cluster: "suite".to_owned(),
        reservation_ttl: Duration::from_millis(reservation_ttl_ms),
        liveness: Duration::from_millis(liveness_ms),
    }
}

/// Reservations that outlive every case and a liveness window no case runs into by accident.
fn long_settings() -> LedgerSettings {
    settings(60_000, 60_000)
}

fn node_id(i: usize) -> String {
    format!("node-{i:02}")
}

fn registration(id: &str, weight: u32) -> NodeRegistration {
    NodeRegistration {
        node_id: id.to_owned(),
        url: format!("http://{id}.test:4000"),
        weight,
        capacity: 0,
        namespaces: vec!["/".to_owned()],
    }
}

fn connections(n: u64) -> LoadReport {
    LoadReport {
        connections: n,
        ..LoadReport::default()
    }
}

/// Registers `weights.len()` nodes named `node-00`, `node-01`, ... and reports each idle.
async fn register_nodes(ledger: &dyn Ledger, weights: &[u32]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (i, weight) in weights.iter().enumerate() {
        let id = node_id(i);
        ledger.register(&registration(&id, *weight)).await?;
        ledger.report(&id, &connections(0)).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// `total` assignments on `/` from `callers` concurrent tasks; fails if any finds no node.
async fn assign_concurrently(ledger: &Arc<dyn Ledger>, total: usize, callers: usize) -> Result {
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let ledger = Arc::clone(ledger);
        let share = total / callers + usize::from(caller < total % callers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                ledger
                    .assign("/")
                    .await?
                    .context("no node for an assignment while all nodes are live")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn view(ledger: &dyn Ledger, id: &str) -> Result<NodeView> {
    ledger
        .nodes()
        .await?
        .into_iter()
        .find(|v| v.registration.node_id == id)
        .with_context(|| format!("{id} is not in the ledger"))
}

/// connections + pending per node id.
async fn loads(ledger: &dyn Ledger) -> Result<BTreeMap<String, u64>> {
    Ok(ledger
        .nodes()
        .await?
        .into_iter()
        .map(|v| (v.registration.node_id, v.connections + v.pending))
        .collect())
}

async fn assign_many(ledger: &dyn Ledger, n: usize) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = ledger.assign("/").await?.context("no node")?;
        *counts.entry(r.node_id).or_insert(0) += 1;
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// Cases for both backends.

async fn equal_weights_keep_the_spread_at_most_one<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    register_nodes(&*fx.ledger, &[1; 16]).await?;
    assign_concurrently(&fx.ledger, 10_000, 64).await?;

    let loads = loads(&*fx.ledger).await?;
    ensure!(loads.len() == 16, "nodes: {loads:?}");
    ensure!(loads.values().sum::<u64>() == 10_000, "total: {loads:?}");
    let max = loads.values().max().copied().unwrap_or(0);
    let min = loads.values().min().copied().unwrap_or(0);
    ensure!(max - min <= 1, "spread {} > 1: {loads:?}", max - min);
    Ok(())
}

/// "Within 1" exactly: a node of weight w gets either floor or ceil of its exact share
/// N·w/W, i.e. |L·W − N·w| < W in integers. And the greedy rule's own guarantee, pairwise: no
/// node is more than one seat ahead of any other's weighted level, (Lᵢ − 1)·wⱼ ≤ Lⱼ·wᵢ.
async fn weights_one_two_three_get_their_shares_within_one_seat<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let weights: Vec<u32> = (0..16).map(|i| i % 3 + 1).collect();
    let ids = register_nodes(&*fx.ledger, &weights).await?;
    let total: u64 = 10_000;
    assign_concurrently(&fx.ledger, 10_000, 64).await?;

    let loads = loads(&*fx.ledger).await?;
    let big_w: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut seats = Vec::new();
    for (id, w) in ids.iter().zip(&weights) {
        let l = loads.get(id).copied().context("node missing")?;
        let w = u64::from(*w);
        let (lw, nw) = (l * big_w, total * w);
        ensure!(
            lw.abs_diff(nw) < big_w,
            "{id} (weight {w}) has {l}, exact share is {:.2}: {loads:?}",
            nw as f64 / big_w as f64
        );
        seats.push((l, w));
    }
    for &(li, wi) in &seats {
        for &(lj, wj) in &seats {
            ensure!(
                li.saturating_sub(1) * wj <= lj * wi,
                "greedy invariant broken: {li}/{wi} vs {lj}/{wj}"
            );
        }
    }
    Ok(())
}

async fn draining_node_gets_no_assignment<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1; 4]).await?;

    let drained = l.set_draining("node-00", true).await?;
    ensure!(drained.draining);
    // The gateway itself reports draining for node-01.
    l.report(
        "node-01",
        &LoadReport {
            draining: true,
            ..LoadReport::default()
        },
    )
    .await?;
    // A report saying "not draining" does not undo an operator's drain.
    l.report("node-00", &connections(0)).await?;

    let counts = assign_many(l, 200).await?;
    ensure!(
        !counts.contains_key("node-00") && !counts.contains_key("node-01"),
        "draining nodes got assignments: {counts:?}"
    );
    ensure!(view(l, "node-00").await?.draining && view(l, "node-01").await?.draining);

    // Undrained, the idle node is now the least loaded and gets the next one.
    let undrained = l.set_draining("node-00", false).await?;
    ensure!(!undrained.draining);
    let next = l.assign("/").await?.context("no node")?;
    ensure!(next.node_id == "node-00", "went to {}", next.node_id);
    Ok(())
}

/// A gateway out of file descriptors reports `full`: it gets nothing until a report clears it,
/// whatever its capacity says.
async fn full_node_gets_no_assignment_until_it_reports_room<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1, 1]).await?;
    let full = LoadReport {
        full: true,
        ..LoadReport::default()
    };
    l.report("node-00", &full).await?;
    let counts = assign_many(l, 20).await?;
    ensure!(
        !counts.contains_key("node-00"),
        "a full node got assignments: {counts:?}"
    );
    l.report("node-00", &connections(0)).await?;
    let counts = assign_many(l, 40).await?;
    ensure!(
        counts.get("node-00").copied().unwrap_or(0) > 0,
        "room again, still no assignment: {counts:?}"
    );
    Ok(())
}

async fn stale_node_gets_no_assignment_and_is_reaped<B: Backend>() -> Result {
    // A short window, but not so short that a loaded test machine makes a live node stale.
    let fx = B::start(settings(60_000, 1_000)).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1, 1]).await?;

    // node-00 stops reporting; node-01 keeps reporting (right before each step, so that only
    // node-00 is past the window).
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for _ in 0..10 {
        l.report("node-01", &connections(0)).await?;
        let r = l.assign("/").await?.context("node-01 is live")?;
        ensure!(r.node_id == "node-01", "stale node-00 got an assignment");
    }

    l.report("node-01", &connections(10)).await?;
    let reaped = l.reap(fx.fence().await?).await?;
    ensure!(reaped == vec!["node-00".to_owned()], "reaped {reaped:?}");
    let left: Vec<String> = l
        .nodes()
        .await?
        .into_iter()
        .map(|v| v.registration.node_id)
        .collect();
    ensure!(left == vec!["node-01".to_owned()], "left {left:?}");
    // The reaped node is unknown now: its gateway must register again.
    match l.report("node-00", &connections(0)).await {
        Err(LedgerError::UnknownNode(id)) if id == "node-00" => Ok(()),
        other => bail!("expected UnknownNode, got {other:?}"),
    }
}

async fn expired_reservation_stops_counting<B: Backend>() -> Result {
    let fx = B::start(settings(200, 60_000)).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1]).await?;

    let r = l.assign("/").await?.context("no node")?;
    ensure!(view(l, "node-00").await?.pending == 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(view(l, "node-00").await?.pending == 0, "still pending");

    // Consuming it late changes nothing: it no longer exists.
    l.report(
        "node-00",
        &LoadReport {
            connections: 0,
            consumed: vec![r.reservation_id],
            draining: false,
            full: false,
        },
    )
    .await?;
    let v = view(l, "node-00").await?;
    ensure!(v.pending == 0 && v.connections == 0, "{v:?}");
    Ok(())
}

async fn consumed_reservation_becomes_a_connection<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1]).await?;

    let r = l.assign("/").await?.context("no node")?;
    ensure!(r.node_id == "node-00" && r.url == "http://node-00.test:4000");
    let before = view(l, "node-00").await?;
    ensure!(before.pending == 1 && before.connections == 0, "{before:?}");

    l.report(
        "node-00",
        &LoadReport {
            connections: 1,
            consumed: vec![r.reservation_id],
            draining: false,
            full: false,
        },
    )
    .await?;
    let after = view(l, "node-00").await?;
    ensure!(after.pending == 0 && after.connections == 1, "{after:?}");
    Ok(())
}

async fn a_node_cannot_consume_another_nodes_reservation<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1, 1]).await?;

    let first = l.assign("/").await?.context("no node")?;
    ensure!(first.node_id == "node-00", "ties go to the lowest id");
    l.report(
        "node-01",
        &LoadReport {
            connections: 0,
            consumed: vec![first.reservation_id, "no-such-reservation".to_owned()],
            draining: false,
            full: false,
        },
    )
    .await?;
    ensure!(view(l, "node-00").await?.pending == 1);
    ensure!(view(l, "node-01").await?.pending == 0);
    Ok(())
}

async fn unknown_node_is_refused<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    match l.report("ghost", &connections(3)).await {
        Err(LedgerError::UnknownNode(id)) if id == "ghost" => {}
        other => bail!("report: expected UnknownNode, got {other:?}"),
    }
    ensure!(matches!(
        l.set_draining("ghost", true).await,
        Err(LedgerError::UnknownNode(_))
    ));
    ensure!(matches!(
        l.set_weight("ghost", 2).await,
        Err(LedgerError::UnknownNode(_))
    ));
    // Removing what is not there is fine (a stream may end after its node was reaped).
    l.remove("ghost").await?;
    ensure!(l.nodes().await?.is_empty());
    Ok(())
}

async fn absurd_input_is_refused_and_weight_zero_counts_as_one<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    ensure!(matches!(
        l.register(&registration("", 1)).await,
        Err(LedgerError::Invalid(_))
    ));
    ensure!(matches!(
        l.register(&NodeRegistration {
            namespaces: vec!["/a\nb".to_owned()],
            ..registration("node-00", 1)
        })
        .await,
        Err(LedgerError::Invalid(_))
    ));
    l.register(&registration("node-00", 0)).await?;
    ensure!(view(l, "node-00").await?.registration.weight == 1);
    ensure!(matches!(
        l.report("node-00", &connections(1_000_000_001)).await,
        Err(LedgerError::Invalid(_))
    ));
    ensure!(matches!(
        l.report("", &connections(1)).await,
        Err(LedgerError::Invalid(_))
    ));
    ensure!(matches!(l.assign("").await, Err(LedgerError::Invalid(_))));
    ensure!(matches!(
        l.set_weight("node-00", u32::MAX).await,
        Err(LedgerError::Invalid(_))
    ));
    // The refused report left the node as it was.
    ensure!(view(l, "node-00").await?.connections == 0);
    Ok(())
}

async fn assignment_respects_namespaces_and_capacity<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    ensure!(
        l.assign("/").await?.is_none(),
        "an empty ledger assigns nothing"
    );

    l.register(&registration("node-00", 1)).await?;
    l.register(&NodeRegistration {
        capacity: 2,
        namespaces: vec!["/".to_owned(), "/chat".to_owned()],
        ..registration("node-01", 1)
    })
    .await?;
    ensure!(l.assign("/admin").await?.is_none(), "nobody serves /admin");

    let a = l.assign("/chat").await?.context("node-01 serves /chat")?;
    let b = l.assign("/chat").await?.context("node-01 has room for 2")?;
    ensure!(a.node_id == "node-01" && b.node_id == "node-01");
    ensure!(l.assign("/chat").await?.is_none(), "node-01 is full");
    // A connection closing frees a seat.
    l.report(
        "node-01",
        &LoadReport {
            connections: 0,
            consumed: vec![a.reservation_id],
            draining: false,
            full: false,
        },
    )
    .await?;
    ensure!(l.assign("/chat").await?.is_some(), "a seat was freed");
    // The full node is skipped on "/", which node-00 also serves.
    let counts = assign_many(l, 3).await?;
    ensure!(counts.get("node-00") == Some(&3), "{counts:?}");
    Ok(())
}

async fn weight_change_and_removal_take_effect_at_once<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1, 1]).await?;
    let v = l.set_weight("node-01", 3).await?;
    ensure!(v.registration.weight == 3);
    let counts = assign_many(l, 40).await?;
    ensure!(
        counts.get("node-00") == Some(&10) && counts.get("node-01") == Some(&30),
        "{counts:?}"
    );

    l.remove("node-01").await?;
    ensure!(l.nodes().await?.len() == 1);
    let counts = assign_many(l, 5).await?;
    ensure!(counts.get("node-00") == Some(&5), "{counts:?}");
    Ok(())
}

async fn reregistration_starts_from_a_clean_slate<B: Backend>() -> Result {
    let fx = B::start(long_settings()).await?;
    let l = &*fx.ledger;
    register_nodes(l, &[1]).await?;
    l.report("node-00", &connections(7)).await?;
    l.assign("/").await?.context("no node")?;
    l.set_draining("node-00", true).await?;

    l.register(&NodeRegistration {
        url: "http://moved.test:4000".to_owned(),
        ..registration("node-00", 2)
    })
    .await?;
    let v = view(l, "node-00").await?;
    ensure!(
        v.connections == 0 && v.pending == 0 && !v.draining && v.registration.weight == 2,
        "{v:?}"
    );
    let r = l.assign("/").await?.context("no node")?;
    ensure!(r.url == "http://moved.test:4000");
    Ok(())
}

macro_rules! behaviour {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> super::Result {
                    super::$case::<super::Memory>().await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> super::Result {
                    super::$case::<super::RedisServer>().await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> super::Result {
                    super::$case::<super::RedisCluster>().await
                }
            )*
        }
    };
}

behaviour!(
    equal_weights_keep_the_spread_at_most_one,
    weights_one_two_three_get_their_shares_within_one_seat,
    draining_node_gets_no_assignment,
    full_node_gets_no_assignment_until_it_reports_room,
    stale_node_gets_no_assignment_and_is_reaped,
    expired_reservation_stops_counting,
    consumed_reservation_becomes_a_connection,
    a_node_cannot_consume_another_nodes_reservation,
    unknown_node_is_refused,
    absurd_input_is_refused_and_weight_zero_counts_as_one,
    assignment_respects_namespaces_and_capacity,
    weight_change_and_removal_take_effect_at_once,
    reregistration_starts_from_a_clean_slate,
);

// ---------------------------------------------------------------------------------------------
// Redis only: outages, and several replicas sharing one Redis.

/// Retries `f` while it answers `Unavailable` (pooled connections to the dead server are
/// discarded on first use), for at most 10 s.
async fn first_answer_after_outage<T, F, Fut>(
    mut f: F,
) -> Result<std::result::Result<T, LedgerError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, LedgerError>>,
{
    eventually(
        "an answer other than Unavailable",
        Duration::from_secs(10),
        async || match f().await {
            Err(e @ LedgerError::Unavailable(_)) => Err(anyhow::anyhow!("{e}")),
            other => Ok(other),
        },
    )
    .await
}

async fn redis_outage_is_unavailable_and_reports_rebuild_the_ledger_after_it<R: RedisDeployment>()
-> Result {
    let (redis, ledger, _lease) = redis_fixture::<R>(long_settings()).await?;
    let l: &dyn Ledger = &ledger;
    register_nodes(l, &[1, 1]).await?;
    ensure!(l.assign("/").await?.is_some());

    redis.kill()?;
    match l.assign("/").await {
        Err(LedgerError::Unavailable(_)) => {}
        other => bail!("assign with Redis down: expected Unavailable, got {other:?}"),
    }
    ensure!(matches!(
        l.report("node-00", &connections(1)).await,
        Err(LedgerError::Unavailable(_))
    ));

    // Back, but empty: the ledger recovers by itself, and the next report learns the node is
    // unknown, so the gateway registers again and the ledger is whole.
    redis.restart_empty()?;
    let one = connections(1);
    let answer = first_answer_after_outage(|| l.report("node-00", &one)).await?;
    ensure!(
        matches!(answer, Err(LedgerError::UnknownNode(_))),
        "expected UnknownNode after the restart, got {answer:?}"
    );
    ensure!(l.assign("/").await?.is_none(), "nothing is registered yet");
    for id in ["node-00", "node-01"] {
        l.register(&registration(id, 1)).await?;
        l.report(id, &connections(1)).await?;
    }
    let counts = assign_many(l, 4).await?;
    ensure!(
        counts.get("node-00") == Some(&2) && counts.get("node-01") == Some(&2),
        "{counts:?}"
    );
    Ok(())
}

async fn redis_ledger_connects_while_redis_is_down_and_works_once_it_is_up<R: RedisDeployment>()
-> Result {
    let redis = R::start()?;
    redis.kill()?;
    let ledger = RedisLedger::connect(&redis.url().parse()?, long_settings()).await?;
    ensure!(matches!(
        ledger.assign("/").await,
        Err(LedgerError::Unavailable(_))
    ));
    redis.restart_empty()?;
    let node = registration("node-00", 1);
    let answer = first_answer_after_outage(|| ledger.register(&node)).await?;
    answer?;
    ensure!(ledger.assign("/").await?.is_some());
    Ok(())
}

async fn two_replicas_on_one_redis_share_one_ledger<R: RedisDeployment>() -> Result {
    let redis = R::start()?;
    let a: Arc<dyn Ledger> =
        Arc::new(RedisLedger::connect(&redis.url().parse()?, long_settings()).await?);
    let b: Arc<dyn Ledger> =
        Arc::new(RedisLedger::connect(&redis.url().parse()?, long_settings()).await?);
    register_nodes(&*a, &[1; 16]).await?;
    let (ra, rb) = tokio::join!(
        assign_concurrently(&a, 2_000, 32),
        assign_concurrently(&b, 2_000, 32)
    );
    ra?;
    rb?;
    let loads = loads(&*b).await?;
    ensure!(loads.values().sum::<u64>() == 4_000);
    let max = loads.values().max().copied().unwrap_or(0);
    let min = loads.values().min().copied().unwrap_or(0);
    ensure!(max - min <= 1, "{loads:?}");
    Ok(())
}

/// A holder paused past its lease cannot write after the next holder took over.
async fn paused_lease_holder_is_fenced_after_the_next_holder_takes_over<R: RedisDeployment>()
-> Result {
    let redis = R::start()?;
    let ttl = Duration::from_millis(300);
    let settings = settings(60_000, 60_000);
    let ledger = RedisLedger::connect(&redis.url().parse()?, settings.clone()).await?;
    let holder_a = RedisLease::new(
        &redis.url().parse()?,
        &settings.cluster,
        "replica-a".to_owned(),
        ttl,
    )?;
    let holder_b = RedisLease::new(
        &redis.url().parse()?,
        &settings.cluster,
        "replica-b".to_owned(),
        ttl,
    )?;

    let fence_a = holder_a
        .acquire()
        .await?
        .context("A takes the free lease")?;
    ensure!(
        holder_b.acquire().await?.is_none(),
        "B must wait while A holds it"
    );
    ensure!(
        holder_a.renew(fence_a).await?,
        "A renews while it holds the lease"
    );
    ensure!(
        holder_a.acquire().await? == Some(fence_a),
        "acquire by the holder is idempotent"
    );
    ledger.reap(fence_a).await?;

    // A "pauses": it stops renewing, and the lease runs out.
    tokio::time::sleep(ttl * 2).await;
    let fence_b = holder_b
        .acquire()
        .await?
        .context("B takes the expired lease")?;
    ensure!(fence_b.0 == fence_a.0 + 1, "{fence_a:?} then {fence_b:?}");

    // A wakes up and writes with its old token: refused, inside the script.
    match ledger.reap(fence_a).await {
        Err(LedgerError::Fenced(token)) if token == fence_a => {}
        other => bail!("expected Fenced, got {other:?}"),
    }
    ensure!(!holder_a.renew(fence_a).await?, "A's renewal must fail");
    // A's release does not free B's lease.
    holder_a.release(fence_a).await?;
    ensure!(holder_b.renew(fence_b).await?, "B still holds the lease");
    ledger.reap(fence_b).await?;

    // B releases on shutdown; A may take over at once, with a newer token.
    holder_b.release(fence_b).await?;
    let fence_a2 = holder_a
        .acquire()
        .await?
        .context("A takes the released lease")?;
    ensure!(fence_a2 > fence_b);
    Ok(())
}

/// A Redis that lost its data must not hand out a token an ex-holder still has.
async fn fencing_tokens_keep_increasing_across_a_redis_restart<R: RedisDeployment>() -> Result {
    let redis = R::start()?;
    let settings = settings(60_000, 60_000);
    let ledger = RedisLedger::connect(&redis.url().parse()?, settings.clone()).await?;
    let ttl = Duration::from_secs(30);
    let holder_a = RedisLease::new(
        &redis.url().parse()?,
        &settings.cluster,
        "replica-a".to_owned(),
        ttl,
    )?;
    let holder_b = RedisLease::new(
        &redis.url().parse()?,
        &settings.cluster,
        "replica-b".to_owned(),
        ttl,
    )?;
    let fence_a = holder_a
        .acquire()
        .await?
        .context("A takes the free lease")?;

    redis.restart_empty()?;
    let renewed = first_answer_after_outage(|| holder_a.renew(fence_a)).await?;
    ensure!(!renewed?, "the lease is gone with the data");
    let fence_b = first_answer_after_outage(|| holder_b.acquire())
        .await??
        .context("B takes the lease")?;
    ensure!(fence_b > fence_a, "{fence_b:?} must be above {fence_a:?}");
    ensure!(matches!(
        first_answer_after_outage(|| ledger.reap(fence_a)).await?,
        Err(LedgerError::Fenced(_))
    ));
    ledger.reap(fence_b).await?;
    Ok(())
}

macro_rules! redis_only {
    ($($case:ident),* $(,)?) => {
        mod redis_only {
            mod redis {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() -> crate::Result {
                        crate::$case::<crate::RedisServer>().await
                    }
                )*
            }
            mod cluster {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() -> crate::Result {
                        crate::$case::<crate::RedisCluster>().await
                    }
                )*
            }
        }
    };
}

redis_only!(
    redis_outage_is_unavailable_and_reports_rebuild_the_ledger_after_it,
    redis_ledger_connects_while_redis_is_down_and_works_once_it_is_up,
    two_replicas_on_one_redis_share_one_ledger,
    paused_lease_holder_is_fenced_after_the_next_holder_takes_over,
    fencing_tokens_keep_increasing_across_a_redis_restart,
);

/// The in-memory ledger has no lease store; it refuses tokens older than the newest it saw.
#[tokio::test]
async fn memory_ledger_refuses_tokens_older_than_the_newest_seen() -> Result {
    let ledger = MemoryLedger::new(long_settings());
    ledger.reap(FencingToken(2)).await?;
    ensure!(matches!(
        ledger.reap(FencingToken(1)).await,
        Err(LedgerError::Fenced(FencingToken(1)))
    ));
    ledger.reap(FencingToken(2)).await?;
    Ok(())
}
