//! One trace across three processes: a client's `publish` on gateway A, the relay's `stamp`,
//! and the delivery on gateway B. Every service exports its spans over OTLP to a receiver
//! inside this test; the W3C trace context travels in the `Stamp` call's gRPC metadata (A to
//! the relay) and in the stamped frame (the relay, through Redis pub/sub, to B).

mod support;

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use support::Driver;
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts,
};
use switchyard_testkit::otlp::{Collector, SpanRecord};
use switchyard_testkit::process::Service;
use switchyard_testkit::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(60);

/// The first span named `name` exported by `service` for which `pred` holds.
fn find<'a>(
    spans: &'a [SpanRecord],
    service: &str,
    name: &str,
    pred: impl Fn(&SpanRecord) -> bool,
) -> Option<&'a SpanRecord> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && pred(s))
}

fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

/// SIGTERM, then waits for a clean exit: a service flushes its batch exporter as it stops.
async fn stop(service: &Service) -> anyhow::Result<()> {
    service.terminate()?;
    let status = tokio::task::block_in_place(|| service.wait_exit(WAIT))?;
    anyhow::ensure!(status.success(), "{} exited with {status}", service.name());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_gateway_and_delivery_on_another_share_one_trace() -> anyhow::Result<()> {
    let collector = Collector::start()?;
    let otlp = || {
        vec![
            "--otlp-endpoint".to_owned(),
            collector.endpoint().to_owned(),
        ]
    };
    let redis = RedisServer::start()?;
    let placement = Placement::start(PlacementOpts {
        redis_url: Some(redis.url()),
        extra_args: Vec::new(),
    })?;
    let relay = Relay::start(RelayOpts {
        redis_url: Some(redis.url()),
        extra_args: otlp(),
    })?;
    let mut gateways = Vec::new();
    for node in ["gw-a", "gw-b"] {
        let mut opts = GatewayOpts::new(&placement, node);
        opts.relay_urls = vec![relay.grpc_url().to_owned()];
        opts.extra_args = otlp();
        opts.extra_args.push("--allow-anonymous".to_owned());
        gateways.push(Gateway::start(opts)?);
    }
    let (a, b) = (&gateways[0], &gateways[1]);

    let mut driver = Driver::node().await?;
    for (id, gw) in [("publisher", a), ("member", b)] {
        driver
            .connect_raw(id, gw.url(), None, json!({"transports": ["websocket"]}))
            .await?;
        driver.connected(id, WAIT).await?;
    }
    let joined = driver.join("member", "traced").await?;
    assert_eq!(joined["ok"], true, "join: {joined}");
    let ack = driver
        .publish("publisher", "traced", "note", json!({"n": 1}))
        .await?;
    assert_eq!(ack["ok"], true, "publish: {ack}");
    let offset = ack["offset"]
        .as_u64()
        .context("publish ack without an offset")?;
    driver
        .wait_event("the member to receive the note", WAIT, |e| {
            e["id"] == "member" && e["event"] == "recv" && e["name"] == "note"
        })
        .await?;
    driver.shutdown().await?;

    for gw in &gateways {
        stop(gw).await?;
    }
    stop(&relay).await?;

    let offset = offset.to_string();
    let delivered_on_b = |s: &SpanRecord| {
        attr(s, "node") == Some(b.node_id()) && attr(s, "offset") == Some(offset.as_str())
    };
    let spans = tokio::task::block_in_place(|| {
        collector.wait_for(WAIT, |spans| {
            find(spans, "switchyard-gateway", "deliver", delivered_on_b).is_some()
        })
    })?;

    let publish = find(&spans, "switchyard-gateway", "publish", |s| {
        attr(s, "room") == Some("traced")
    })
    .context("no publish span from gateway A")?;
    assert!(
        attr(publish, "publish_id").is_some_and(|id| id.starts_with("gw-a:")),
        "the publish span is gateway A's: {publish:?}"
    );
    assert_eq!(attr(publish, "offset"), Some(offset.as_str()));

    let stamp = find(&spans, "switchyard-relay", "stamp", |s| {
        s.trace_id == publish.trace_id
    })
    .context("no relay stamp span in the publish's trace")?;
    assert_eq!(
        stamp.parent_span_id, publish.span_id,
        "relay stamp is a child of A's publish"
    );
    assert_eq!(attr(stamp, "room"), Some("traced"));
    assert_eq!(attr(stamp, "offset"), Some(offset.as_str()));

    let deliver = find(&spans, "switchyard-gateway", "deliver", delivered_on_b)
        .context("no deliver span on gateway B")?;
    assert_eq!(
        deliver.trace_id, publish.trace_id,
        "B's delivery is in A's trace"
    );
    assert_eq!(
        deliver.parent_span_id, stamp.span_id,
        "B's delivery is a child of the stamp"
    );
    assert_eq!(attr(deliver, "room"), Some("traced"));
    assert_eq!(attr(deliver, "namespace"), Some("/"));
    assert_eq!(
        attr(deliver, "sockets"),
        Some("1"),
        "B holds the one member"
    );
    Ok(())
}
