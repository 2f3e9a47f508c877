//! Traces across processes: placement exports its spans over OTLP to a receiver inside this
//! test, continuing the trace context the caller sent (W3C `traceparent` in HTTP headers and in
//! gRPC metadata), and the ledger's Redis round trip is a child of the assignment.

use std::time::Duration;

use switchyard_proto::placement::v1::{AssignRequest, placement_client::PlacementClient};
use switchyard_testkit::{
    cluster::{Placement, PlacementOpts},
    otlp::{Collector, SpanRecord},
    redis::RedisServer,
};

const HTTP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const HTTP_PARENT: &str = "00f067aa0ba902b7";
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_PARENT: &str = "b7ad6b7169203331";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// The span named `name` of `trace`, exported by placement.
fn find<'a>(spans: &'a [SpanRecord], trace: &str, name: &str) -> Option<&'a SpanRecord> {
    spans
        .iter()
        .find(|s| s.trace_id == trace && s.name == name && s.service == "switchyard-placement")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_trace_continues_the_callers_and_covers_the_ledger() -> anyhow::Result<()> {
    let collector = Collector::start()?;
    let redis = RedisServer::start()?;
    let placement = Placement::start(PlacementOpts {
        redis_url: Some(redis.url()),
        extra_args: vec!["--otlp-endpoint".into(), collector.endpoint().to_owned()],
    })?;

    // HTTP: no gateway is registered, so the answer is 503, but the trace is the same.
    let status = switchyard_testkit::reqwest::Client::new()
        .get(format!("{}/v1/assign?namespace=/", placement.http_url()))
        .header("traceparent", traceparent(HTTP_TRACE, HTTP_PARENT))
        .send()
        .await?
        .status();
    assert_eq!(status, 503);

    // gRPC: the same through metadata.
    let mut client = PlacementClient::connect(placement.grpc_url().to_owned()).await?;
    let mut request = tonic::Request::new(AssignRequest {
        namespace: "/".into(),
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent(GRPC_TRACE, GRPC_PARENT).parse()?);
    let refused = client.assign(request).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unavailable)
    );

    // SIGTERM: placement flushes its batch exporter before it exits.
    placement.terminate()?;
    let status =
        tokio::task::spawn_blocking(move || placement.wait_exit(Duration::from_secs(20))).await??;
    assert!(status.success(), "placement exited with {status}");

    let spans = collector.wait_for(Duration::from_secs(10), |spans| {
        find(spans, HTTP_TRACE, "ledger_assign").is_some()
            && find(spans, GRPC_TRACE, "ledger_assign").is_some()
    })?;
    for (trace, parent) in [(HTTP_TRACE, HTTP_PARENT), (GRPC_TRACE, GRPC_PARENT)] {
        let assign =
            find(&spans, trace, "assign").ok_or_else(|| anyhow::anyhow!("no assign span"))?;
        assert_eq!(
            assign.parent_span_id, parent,
            "assign continues the caller's span"
        );
        assert_eq!(
            assign.attributes.get("namespace").map(String::as_str),
            Some("/")
        );
        assert_eq!(
            assign.attributes.get("outcome").map(String::as_str),
            Some("no_gateway_available")
        );
        let ledger = find(&spans, trace, "ledger_assign")
            .ok_or_else(|| anyhow::anyhow!("no ledger span"))?;
        assert_eq!(
            ledger.parent_span_id, assign.span_id,
            "ledger is a child of assign"
        );
    }
    Ok(())
}
