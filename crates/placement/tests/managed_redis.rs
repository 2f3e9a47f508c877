//! Placement on managed Redis: TLS only (`--tls-port`, `--port 0`) and an ACL user created with
//! exactly `switchyard_redis::acl::rule`, on a single `rediss://` server and on a three-master
//! `rediss+cluster://` Redis Cluster (its bus over TLS too). The endpoint is built from the same
//! flags the binary takes (`RedisArgs`: URL, CA file, user, password).
//!
//! The case runs every ledger and lease script (register, report with consumed reservations,
//! assign, drain, weight, list, remove, reap under the lease, acquire / renew / release and a
//! fenced ex-holder), then a Redis that restarts empty (scripts loaded again after `NOSCRIPT`,
//! the ledger rebuilt by reports), and ends by reading every node's `ACL LOG`: anything the
//! rule did not allow fails the case and names what was refused. The binary itself: it starts
//! on managed Redis and serves assignments, and a wrong password stops it at startup with a
//! message saying what to fix.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use switchyard_placement::lease::{Lease, RedisLease};
use switchyard_placement::ledger::{
    Ledger, LedgerError, LedgerSettings, LoadReport, NodeRegistration, RedisLedger,
};
use switchyard_redis::{Endpoint, RedisArgs, acl};
use switchyard_testkit::cluster::{Placement, PlacementOpts};
use switchyard_testkit::redis::{RedisAccess, RedisOptions, RedisServer};
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};
use switchyard_testkit::tls::TestPki;
use switchyard_testkit::wait::{eventually, give_up};

/// Placement's `--cluster` (the default), which the ACL rule is written for.
const CLUSTER: &str = "switchyard";

/// The endpoint placement builds from these flags.
fn endpoint(access: &RedisAccess) -> anyhow::Result<Endpoint> {
    RedisArgs {
        url: Some(access.url.clone()),
        ca_file: access.ca_file.clone(),
        username: access.username.clone(),
        password: access.password.clone(),
        client_cert_file: access.client_cert_file.clone(),
        client_key_file: access.client_key_file.clone(),
    }
    .endpoint()?
    .context("a URL gives an endpoint")
}

fn managed<R: RedisDeployment>(name: &str) -> anyhow::Result<R> {
    let pki = Arc::new(TestPki::generate(name)?);
    R::start_with(RedisOptions::managed(
        pki,
        "switchyard",
        &acl::rule(CLUSTER),
    ))
}

fn node(id: &str, weight: u32) -> NodeRegistration {
    NodeRegistration {
        node_id: id.to_owned(),
        url: format!("http://{id}.test:4000"),
        weight,
        capacity: 0,
        namespaces: vec!["/".to_owned()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_and_the_lease_need_no_more_than_the_rule_on_a_server() -> anyhow::Result<()> {
    ledger_and_lease::<RedisServer>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_and_the_lease_need_no_more_than_the_rule_on_a_cluster() -> anyhow::Result<()> {
    ledger_and_lease::<RedisCluster>().await
}

async fn ledger_and_lease<R: RedisDeployment>() -> anyhow::Result<()> {
    let redis: R = managed(&format!("placement-{}", R::KIND))?;
    let endpoint = endpoint(&redis.access())?;
    ensure!(endpoint.is_tls() && endpoint.username() == Some("switchyard"));
    let settings = LedgerSettings {
        cluster: CLUSTER.to_owned(),
        reservation_ttl: Duration::from_secs(60),
        liveness: Duration::from_millis(1_500),
    };
    let ledger = RedisLedger::connect(&endpoint, settings).await?;
    ledger.pool().check_at_startup().await?;
    let ttl = Duration::from_millis(500);
    let holder_a = RedisLease::new(&endpoint, CLUSTER, "replica-a".to_owned(), ttl)?;
    let holder_b = RedisLease::new(&endpoint, CLUSTER, "replica-b".to_owned(), ttl)?;

    // Assignments through the ledger: equal weights spread evenly.
    for id in ["gw-0", "gw-1", "gw-2"] {
        ledger.register(&node(id, 1)).await?;
        ledger.report(id, &LoadReport::default()).await?;
    }
    let mut reservations = Vec::new();
    for _ in 0..30 {
        reservations.push(ledger.assign("/").await?.context("a live node")?);
    }
    let pending: Vec<u64> = ledger.nodes().await?.iter().map(|v| v.pending).collect();
    assert_eq!(pending, [10, 10, 10]);
    // A report turns consumed reservations into connections.
    let consumed: Vec<String> = reservations
        .iter()
        .filter(|r| r.node_id == "gw-0")
        .map(|r| r.reservation_id.clone())
        .collect();
    let report = LoadReport {
        connections: consumed.len() as u64,
        consumed,
        draining: false,
        full: false,
    };
    ledger.report("gw-0", &report).await?;
    let gw0 = ledger
        .nodes()
        .await?
        .into_iter()
        .find(|v| v.registration.node_id == "gw-0")
        .context("gw-0 listed")?;
    assert_eq!((gw0.connections, gw0.pending), (10, 0));
    // Drain, weight and removal.
    assert!(ledger.set_draining("gw-1", true).await?.draining);
    assert_eq!(ledger.set_weight("gw-2", 3).await?.registration.weight, 3);
    let next = ledger.assign("/").await?.context("a live node")?;
    ensure!(next.node_id != "gw-1", "a draining node was picked");
    ledger.remove("gw-1").await?;
    assert_eq!(ledger.nodes().await?.len(), 2);

    // The lease: one holder at a time, renewals, and the reaper's writes fenced.
    let fence_a = holder_a
        .acquire()
        .await?
        .context("A takes the free lease")?;
    ensure!(
        holder_b.acquire().await?.is_none(),
        "B waits while A holds it"
    );
    ensure!(holder_a.renew(fence_a).await?);
    // gw-2 keeps reporting, gw-0 goes silent past the liveness window and is reaped.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    ledger.report("gw-2", &LoadReport::default()).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    ledger.report("gw-2", &LoadReport::default()).await?;
    // A stopped renewing; B takes over once A's lease runs out.
    let fence_b = eventually(
        "B to take the lease over",
        Duration::from_secs(10),
        async || holder_b.acquire().await?.context("A's lease still runs"),
    )
    .await?;
    match ledger.reap(fence_a).await {
        Err(LedgerError::Fenced(token)) if token == fence_a => {}
        other => bail!("A's stale token must be fenced, got {other:?}"),
    }
    assert_eq!(ledger.reap(fence_b).await?, ["gw-0"]);
    holder_b.release(fence_b).await?;
    ensure!(holder_a.acquire().await?.is_some_and(|f| f > fence_b));

    // Redis loses everything: scripts are loaded again (NOSCRIPT, then SCRIPT LOAD) and the
    // next reports rebuild the ledger.
    redis.restart_empty()?;
    eventually(
        "the ledger to come back after the restart",
        Duration::from_secs(5),
        async || match ledger.report("gw-2", &LoadReport::default()).await {
            Err(LedgerError::UnknownNode(_)) => Ok(ledger.register(&node("gw-2", 1)).await?),
            Err(e @ LedgerError::Unavailable(_)) => Err(anyhow::anyhow!("{e}")),
            other => Err(give_up(anyhow::anyhow!(
                "a report to an empty Redis: {other:?}"
            ))),
        },
    )
    .await?;
    ledger.report("gw-2", &LoadReport::default()).await?;
    assert_eq!(
        ledger.assign("/").await?.map(|r| r.node_id).as_deref(),
        Some("gw-2")
    );

    redis.ensure_no_acl_denials()
}

/// The binary on managed Redis: it says how it reaches Redis (never the password), and serves
/// assignments once a gateway registers (placement's readiness and `/v1/assign` need the
/// ledger's scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_starts_on_managed_redis_and_a_wrong_password_stops_it_with_what_to_fix()
-> anyhow::Result<()> {
    let redis: RedisServer = managed("placement-binary")?;
    let access = redis.access();
    let password = access.password.clone().unwrap_or_default();
    let placement = Placement::start_with_redis(PlacementOpts::default(), &access)?;
    let log = placement.log_tail(100);
    ensure!(log.contains("(TLS, own CA, user switchyard)"), "{log}");
    ensure!(!log.contains(&password), "the password reached the log");
    redis.ensure_no_acl_denials()?;

    let mut wrong = access.clone();
    wrong.password = Some("not-the-password".into());
    let err = match Placement::start_with_redis(PlacementOpts::default(), &wrong) {
        Ok(p) => bail!("started with a wrong password:\n{}", p.log_tail(30)),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("Redis refused the credentials"), "{err}");
    ensure!(
        err.contains("--redis-password"),
        "the advice names the flag: {err}"
    );
    ensure!(
        !err.contains("not-the-password") && !err.contains(&password),
        "{err}"
    );

    // A CA bundle for a plain URL is a configuration error (exit 2), before any connection.
    let mut plain_with_ca = access.clone();
    plain_with_ca.url = plain_with_ca.url.replacen("rediss://", "redis://", 1);
    let err = match Placement::start_with_redis(PlacementOpts::default(), &plain_with_ca) {
        Ok(p) => bail!("started with a CA file for redis://:\n{}", p.log_tail(30)),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("invalid configuration") && err.contains("--redis-ca-file"),
        "{err}"
    );
    ensure!(err.contains("exit status: 2"), "{err}");
    Ok(())
}
