//! The gateway as a library: `examples/embedded` mounts Switchyard in its own socketioxide app
//! and adds an `echo` event. Placed through placement like any gateway, it admits only assigned
//! clients, serves the built-in events, and serves its own event next to them.

mod support;

use std::time::Duration;

use anyhow::ensure;
use serde_json::json;
use support::{Cluster, Driver, REPORT_INTERVAL_MS, bin};
use switchyard_testkit::cluster::TEST_TOKEN_SECRET;
use switchyard_testkit::process::Service;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_example_serves_its_custom_event_next_to_switchyards() -> anyhow::Result<()> {
    // Placement (and Redis) only; the one gateway is the example application.
    let cluster = Cluster::start(0, &[])?;
    let app = Service::spawn(
        "embedded",
        &[
            "--listen",
            "127.0.0.1:0",
            "--placement-url",
            cluster.placement.grpc_url(),
            "--node-id",
            "embedded-0",
            "--token-secret",
            TEST_TOKEN_SECRET,
            "--report-interval-ms",
            REPORT_INTERVAL_MS,
        ],
        &[],
    )?;
    let url = format!("http://{}", app.ready_value("http")?);
    let mut admin = cluster.admin().await?;
    eventually(
        "the embedded app to register with placement",
        WAIT,
        async || {
            let nodes = admin.nodes().await?;
            ensure!(
                nodes.contains_key("embedded-0"),
                "placement lists {nodes:?}"
            );
            Ok(())
        },
    )
    .await?;

    let mut js = Driver::node().await?;
    js.connect(
        "c",
        json!({"placement": cluster.placement.http_url(), "transports": ["websocket"]}),
    )
    .await?;
    let connected = js.connected("c", WAIT).await?;
    assert_eq!(connected["node_id"], "embedded-0");

    // The application's own event, with binary data.
    let payload = json!({"text": "hi", "blob": bin(&[0, 1, 2, 254, 255])});
    let res = js
        .request(json!({"cmd": "emit", "id": "c", "event": "echo", "args": [payload.clone()], "ack": true}))
        .await?;
    assert_eq!(res["ack"], payload, "echo acks its argument back intact");
    let echoed = js
        .wait_event("the echo event", WAIT, |e| {
            e["id"] == "c" && e["event"] == "recv" && e["name"] == "echo"
        })
        .await?;
    assert_eq!(echoed["args"][0], payload);

    // Switchyard's built-in events are there too.
    assert_eq!(js.join("c", "room").await?["ok"], true);
    let ack = js
        .publish("c", "room", "news", json!({"text": "built-in"}))
        .await?;
    assert_eq!(ack["ok"], true, "{ack}");
    js.wait_event("the published event", WAIT, |e| {
        e["id"] == "c" && e["event"] == "recv" && e["name"] == "news"
    })
    .await?;

    // And so is admission: a client without an assignment is refused.
    js.connect_raw("stranger", &url, Some("garbage"), json!({}))
        .await?;
    let refused = js.refused("stranger", WAIT).await?;
    assert_eq!(refused["reason"], "bad_token");
    js.shutdown().await
}
