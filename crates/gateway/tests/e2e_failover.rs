//! Losing a gateway: its clients (the JS helper in `clients/js`) re-assign through placement and
//! spread evenly over the gateways left, whether the gateway died (kill -9) or was drained
//! (admin DrainNode, or SIGTERM), and a drained gateway exits cleanly.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Cluster, Driver, spread_evenly};

/// The contract's deadline for a dead gateway's clients to be back, evenly (5 s).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(5);
/// A guard against hanging, not a measurement.
const GUARD: Duration = Duration::from_secs(60);

/// A 3-gateway cluster with `total` JS helper clients connected evenly, seen by placement too.
async fn cluster_with_clients(
    total: usize,
    gateway_args: &[&str],
) -> anyhow::Result<(Cluster, Driver, Vec<String>)> {
    let cluster = Cluster::start(3, gateway_args)?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let ids = cluster.node_ids();
    let nodes: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut driver = Driver::node().await?;
    driver
        .connect_many(
            "c",
            total,
            json!({
                "placement": cluster.placement.http_url(),
                "transports": ["websocket"],
                "useHelper": true,
            }),
        )
        .await?;
    driver
        .wait_counts("every client connected evenly", GUARD, |c| {
            spread_evenly(&c.by_node, &nodes, total)
        })
        .await?;
    // Assignments after a failure must start from placement's accurate view.
    cluster
        .admin()
        .await?
        .wait_connections("placement sees every client", GUARD, |v| {
            spread_evenly(v, &nodes, total)
        })
        .await?;
    Ok((cluster, driver, ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateways_clients_reassign_evenly_within_five_seconds() -> anyhow::Result<()> {
    let total = 150;
    let (cluster, mut driver, ids) = cluster_with_clients(total, &[]).await?;
    let dead = ids[0].clone();
    let survivors: Vec<&str> = ids[1..].iter().map(String::as_str).collect();

    // The dead gateway's clients are in a room; the helper joins it again after moving.
    let on_dead: Vec<String> = driver
        .events()
        .iter()
        .filter(|e| e["event"] == "connected" && e["node_id"] == dead.as_str())
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(on_dead.len(), total / 3);
    for id in &on_dead {
        assert_eq!(driver.join(id, "lobby").await?["ok"], true);
    }

    cluster.gateways[0].kill()?;
    let killed_at = Instant::now();
    let counts = driver
        .wait_counts(
            "clients back, evenly, on the survivors",
            FAILOVER_DEADLINE,
            |c| {
                c.connected == total
                    && c.on(&dead) == 0
                    && spread_evenly(&c.by_node, &survivors, total)
            },
        )
        .await?;
    eprintln!(
        "back on {:?} after {:?}",
        counts.by_node,
        killed_at.elapsed()
    );

    // Every client of the dead gateway saw the loss and came back through a new assignment.
    let moved = driver
        .events()
        .iter()
        .filter(|e| e["event"] == "reconnected")
        .count();
    assert_eq!(moved, total / 3, "only the dead gateway's clients move");

    // Rooms came along: a moved client is a member again on its new gateway (it receives its
    // own publish), and no re-join was refused.
    let mover = &on_dead[0];
    let ack = driver
        .publish(mover, "lobby", "after", json!({"text": "still here"}))
        .await?;
    assert_eq!(ack["ok"], true, "{ack}");
    driver
        .wait_event("the moved client's own event", GUARD, |e| {
            e["id"] == mover.as_str() && e["event"] == "recv" && e["name"] == "after"
        })
        .await?;
    let refused: Vec<_> = driver
        .events()
        .iter()
        .filter(|e| e["event"] == "rejoin_error")
        .cloned()
        .collect();
    assert!(refused.is_empty(), "re-joins refused: {refused:?}");

    // Placement agrees: the dead node holds nothing.
    cluster
        .admin()
        .await?
        .wait_connections("placement forgets the dead node", GUARD, |v| {
            v.get(&dead).copied().unwrap_or(0) == 0 && spread_evenly(v, &survivors, total)
        })
        .await?;
    driver.shutdown().await
}

/// Drains gateway 0 with `start_drain`, then checks: every client ends on the other two evenly,
/// the drained gateway's disconnects were spread over time at about `rate` per second, and it
/// exited with status 0.
async fn drain_moves_everyone_and_exits_cleanly(
    rate: u32,
    gateway_args: &[&str],
    start_drain: impl AsyncFnOnce(&Cluster, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let total = 120;
    let per_node = total / 3;
    let (cluster, mut driver, ids) = cluster_with_clients(total, gateway_args).await?;
    let drained = ids[0].clone();
    let others: Vec<&str> = ids[1..].iter().map(String::as_str).collect();

    start_drain(&cluster, &drained).await?;
    driver
        .wait_counts("drained clients moved evenly to the others", GUARD, |c| {
            c.connected == total && c.on(&drained) == 0 && spread_evenly(&c.by_node, &others, total)
        })
        .await?;

    // Bounded rate: never all at once. At `rate`/s the disconnects need about
    // (per_node - 1) / rate seconds; allow a burst of a full second's worth.
    let times: Vec<u64> = driver
        .events()
        .iter()
        .filter(|e| e["event"] == "disconnect" && e["node_id"] == drained.as_str())
        .filter_map(|e| e["t"].as_u64())
        .collect();
    assert_eq!(
        times.len(),
        per_node,
        "every client of the drained node was disconnected once"
    );
    let span_ms =
        times.iter().max().copied().unwrap_or(0) - times.iter().min().copied().unwrap_or(0);
    let floor_ms = (per_node as u64).saturating_sub(u64::from(rate)) * 1000 / u64::from(rate) / 2;
    assert!(
        span_ms >= floor_ms,
        "{per_node} disconnects at {rate}/s took only {span_ms} ms (expected at least {floor_ms} ms)"
    );

    eprintln!("{per_node} drain disconnects at {rate}/s spread over {span_ms} ms");
    let gateway = &cluster.gateways[0];
    let status = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(30)))?;
    assert!(status.success(), "drained gateway exited with {status}");
    driver.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_moves_every_client_at_the_rate_and_the_gateway_exits() -> anyhow::Result<()> {
    let rate = 10;
    drain_moves_everyone_and_exits_cleanly(rate, &[], async |cluster: &Cluster, node: &str| {
        cluster.admin().await?.drain(node, rate).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_at_the_configured_rate_and_exits_zero() -> anyhow::Result<()> {
    let rate = 10;
    let rate_arg = rate.to_string();
    drain_moves_everyone_and_exits_cleanly(
        rate,
        &["--drain-rate", &rate_arg],
        async |cluster: &Cluster, _node: &str| cluster.gateways[0].terminate(),
    )
    .await
}
