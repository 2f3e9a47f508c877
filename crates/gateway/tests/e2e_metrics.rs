//! What each service says on `/metrics` is valid Prometheus text and is the operations guide:
//! Redis, placement, the relay (history on) and two gateways, all real processes, after real
//! traffic (assignments, a refused connect, joins, room publishes across gateways, a resume).
//!
//! For placement, the relay and the gateways in turn, the scrape passes `promtool check
//! metrics`, and every metric the service names in its `metrics::ALL` (whether or not this
//! traffic touched it) has its row in `docs/operations.md` with the same type and HELP text, the
//! labels of every scraped series are named there, and nothing is scraped that `ALL` lacks
//! (`switchyard_testkit::metrics_check`).

mod support;

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use support::{Cluster, Driver, metrics};
use switchyard_common::telemetry::Metric;
use switchyard_testkit::{assign::assign, metrics_check};

const WAIT: Duration = Duration::from_secs(30);

/// A service's `metrics::ALL` as the checker takes it.
fn table(all: &[Metric]) -> Vec<metrics_check::Documented<'static>> {
    all.iter()
        .map(|m| (m.name, m.kind.as_str(), m.help))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_services_metrics_pass_promtool_and_match_the_operations_guide() -> anyhow::Result<()>
{
    let cluster = Cluster::with_relay(2, &[], &[])?;
    cluster.wait_linked(WAIT).await?;
    cluster.wait_registered(WAIT).await?;
    let mut js = Driver::node().await?;

    // Two clients placed by placement, one refused for a bad token.
    for id in ["a", "b"] {
        let seat = assign(cluster.placement.http_url(), "/").await?;
        js.connect_raw(
            id,
            &seat.url,
            Some(&seat.token),
            json!({"transports": ["websocket"]}),
        )
        .await?;
        js.connected(id, WAIT).await?;
    }
    let gateway = cluster
        .gateways
        .first()
        .context("the cluster has gateways")?;
    js.connect_raw(
        "x",
        gateway.url(),
        Some("not-a-token"),
        json!({"transports": ["websocket"]}),
    )
    .await?;
    js.refused("x", WAIT).await?;

    // Room traffic through the relay and its history, and a resume.
    for id in ["a", "b"] {
        let ack = js.join(id, "lobby").await?;
        anyhow::ensure!(ack["ok"] == true, "{id} joins: {ack}");
    }
    let ack = js.publish("a", "lobby", "chat", json!({"n": 1})).await?;
    anyhow::ensure!(ack["ok"] == true, "publish: {ack}");
    js.wait_event("b to receive the chat", WAIT, |e| {
        e["id"] == "b" && e["event"] == "recv" && e["name"] == "chat"
    })
    .await?;
    let resumed = js
        .request(
            json!({"cmd": "emit", "id": "b", "event": "resume", "ack": true,
                        "args": [{"epoch": "gone", "offset": 1, "rooms": ["lobby"]}]}),
        )
        .await?;
    anyhow::ensure!(resumed["ack"].is_object(), "resume answered: {resumed}");

    let scrape = metrics(cluster.placement.http_url()).await?;
    metrics_check::check(
        "placement",
        &scrape,
        &table(switchyard_placement::metrics::ALL),
    )?;
    let scrape = metrics(cluster.relay()?.http_url()).await?;
    metrics_check::check("relay", &scrape, &table(switchyard_relay::metrics::ALL))?;
    for gateway in &cluster.gateways {
        let scrape = metrics(gateway.url()).await?;
        metrics_check::check("gateway", &scrape, &table(switchyard_gateway::metrics::ALL))
            .with_context(|| format!("gateway {}", gateway.node_id()))?;
    }
    Ok(())
}
