//! New connections spread evenly: every client asks placement (`GET /v1/assign`) and connects
//! straight to the gateway it was given, with the official clients, over websocket and over
//! polling only (no sticky load balancer anywhere).

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Cluster, Driver, metric_value, metrics, spread_evenly};
use switchyard_testkit::wait::eventually;

const SETTLE: Duration = Duration::from_secs(60);

/// Starts `total` clients on `driver` against a fresh 3-gateway cluster and checks that they
/// end 1/3 each (±1), from the clients' view and from placement's.
async fn clients_spread_evenly(
    mut driver: Driver,
    total: usize,
    transports: &[&str],
    use_helper: bool,
) -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let ids = cluster.node_ids();
    let nodes: Vec<&str> = ids.iter().map(String::as_str).collect();

    driver
        .connect_many(
            "c",
            total,
            json!({
                "placement": cluster.placement.http_url(),
                "transports": transports,
                "useHelper": use_helper,
            }),
        )
        .await?;
    let counts = driver
        .wait_counts("every client connected", SETTLE, |c| {
            c.connected == total || c.states.get("failed").is_some_and(|f| *f > 0)
        })
        .await?;
    anyhow::ensure!(
        counts.connected == total,
        "not every client connected: {counts:?}; errors: {:?}",
        driver
            .events()
            .iter()
            .filter(|e| e["event"] == "connect_error")
            .take(5)
            .collect::<Vec<_>>()
    );
    anyhow::ensure!(
        spread_evenly(&counts.by_node, &nodes, total),
        "clients' view is uneven: {:?}",
        counts.by_node
    );

    // Each gateway's own view: its `switchyard_gateway_connections` gauge.
    for gw in &cluster.gateways {
        let want = counts.on(gw.node_id()) as f64;
        let what = format!("{} to report {want} connections in /metrics", gw.node_id());
        eventually(what, SETTLE, async || {
            let text = metrics(gw.url()).await?;
            let got = metric_value(&text, "switchyard_gateway_connections");
            anyhow::ensure!(got == Some(want), "it reports {got:?}");
            Ok(())
        })
        .await?;
    }

    // Placement's view, from the gateways' own reports.
    let mut admin = cluster.admin().await?;
    admin
        .wait_connections("placement sees the same spread", SETTLE, |view| {
            spread_evenly(view, &nodes, total)
        })
        .await?;
    driver.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_node_clients_land_one_hundred_per_gateway() -> anyhow::Result<()> {
    clients_spread_evenly(Driver::node().await?, 300, &["websocket"], false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_clients_over_polling_only_spread_evenly() -> anyhow::Result<()> {
    clients_spread_evenly(Driver::node().await?, 60, &["polling"], false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_helper_clients_spread_evenly() -> anyhow::Result<()> {
    clients_spread_evenly(Driver::node().await?, 60, &["websocket"], true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_over_websocket_spread_evenly() -> anyhow::Result<()> {
    clients_spread_evenly(Driver::python().await?, 60, &["websocket"], false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_over_polling_only_spread_evenly() -> anyhow::Result<()> {
    clients_spread_evenly(Driver::python().await?, 60, &["polling"], false).await
}
