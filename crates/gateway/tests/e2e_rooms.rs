//! The built-in client events on a real gateway, through the official clients: `join`, `leave`
//! and `publish` deliver `event(data, {room, ...})` to every member (binary data intact), a
//! publisher need not be a member, and rooms outside the configured patterns are refused with
//! `{ok: false, error}` acks.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, Driver, bin};

const WAIT: Duration = Duration::from_secs(20);

/// Waits for client `id` to receive `event` whose data has `marker` as its `text`.
async fn received(
    driver: &mut Driver,
    id: &str,
    event: &str,
    marker: &str,
) -> anyhow::Result<Value> {
    driver
        .wait_event(&format!("{id} to receive {marker}"), WAIT, |e| {
            e["id"] == id
                && e["event"] == "recv"
                && e["name"] == event
                && e["args"][0]["text"] == marker
        })
        .await
}

fn assert_refused(ack: &Value) {
    assert_eq!(ack["ok"], false, "expected a refusal, got {ack}");
    assert_eq!(
        ack["error"], "forbidden",
        "a refusal names its error: {ack}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_publish_leave_between_clients_on_one_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, &["--rooms", "chat:*,public"])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let placement = cluster.placement.http_url().to_owned();
    let mut js = Driver::node().await?;
    for id in ["alice", "bob", "carol"] {
        js.connect(
            id,
            json!({"placement": placement, "transports": ["websocket"]}),
        )
        .await?;
        js.connected(id, WAIT).await?;
    }
    for id in ["alice", "bob"] {
        let ack = js.join(id, "chat:1").await?;
        assert_eq!(ack["ok"], true, "{id} joins: {ack}");
    }

    // Binary data passes through intact: every byte value, nested in JSON.
    let blob: Vec<u8> = (0..=255u8).collect();
    let data = json!({"text": "first", "blob": bin(&blob), "n": 1});
    let ack = js
        .publish("alice", "chat:1", "message", data.clone())
        .await?;
    assert_eq!(ack["ok"], true, "publish: {ack}");
    for id in ["alice", "bob"] {
        let e = received(&mut js, id, "message", "first").await?;
        assert_eq!(e["args"][0], data, "{id} got the data intact");
        assert_eq!(e["args"][1]["room"], "chat:1", "{id} is told the room");
    }

    // A publisher need not be a member, and is not sent its own event when it is not one:
    // carol's own socket would get "second" before "third" if it had been sent to her.
    let ack = js
        .publish("carol", "chat:1", "message", json!({"text": "second"}))
        .await?;
    assert_eq!(ack["ok"], true, "non-member publish: {ack}");
    received(&mut js, "bob", "message", "second").await?;
    assert_eq!(js.join("carol", "chat:1").await?["ok"], true);
    js.publish("alice", "chat:1", "message", json!({"text": "third"}))
        .await?;
    received(&mut js, "carol", "message", "third").await?;
    let carol_got_second = js
        .events_of("carol", "recv")
        .iter()
        .any(|e| e["args"][0]["text"] == "second");
    assert!(
        !carol_got_second,
        "a non-member publisher does not receive its own event"
    );

    // After leave, bob gets nothing more; alice's next event proves the order on bob's socket.
    assert_eq!(js.leave("bob", "chat:1").await?["ok"], true);
    js.publish("alice", "chat:1", "message", json!({"text": "fourth"}))
        .await?;
    received(&mut js, "carol", "message", "fourth").await?;
    assert_eq!(js.join("bob", "public").await?["ok"], true);
    js.publish("alice", "public", "message", json!({"text": "fifth"}))
        .await?;
    received(&mut js, "bob", "message", "fifth").await?;
    let bob_got_fourth = js
        .events_of("bob", "recv")
        .iter()
        .any(|e| e["args"][0]["text"] == "fourth");
    assert!(
        !bob_got_fourth,
        "a client that left gets nothing more from the room"
    );

    // Rooms outside the configured patterns are refused with {ok:false, error}.
    assert_refused(&js.join("alice", "secret").await?);
    assert_refused(
        &js.publish("alice", "secret", "message", json!({"text": "no"}))
            .await?,
    );
    js.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_clients_share_a_room_with_binary_data() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, &["--rooms", "chat:*"])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let placement = cluster.placement.http_url().to_owned();
    let mut js = Driver::node().await?;
    let mut py = Driver::python().await?;
    js.connect(
        "js",
        json!({"placement": placement, "transports": ["polling"]}),
    )
    .await?;
    js.connected("js", WAIT).await?;
    py.connect(
        "py",
        json!({"placement": placement, "transports": ["polling"]}),
    )
    .await?;
    py.connected("py", WAIT).await?;
    assert_eq!(py.join("py", "chat:py").await?["ok"], true);
    assert_eq!(js.join("js", "chat:py").await?["ok"], true);

    let blob: Vec<u8> = (0..=255u8).rev().collect();
    let data = json!({"text": "from-js", "blob": bin(&blob)});
    assert_eq!(
        js.publish("js", "chat:py", "message", data.clone()).await?["ok"],
        true
    );
    let e = received(&mut py, "py", "message", "from-js").await?;
    assert_eq!(e["args"][0], data, "python got the binary data intact");
    assert_eq!(e["args"][1]["room"], "chat:py");

    let data = json!({"text": "from-py", "blob": bin(&blob[..7])});
    assert_eq!(
        py.publish("py", "chat:py", "message", data.clone()).await?["ok"],
        true
    );
    let e = received(&mut js, "js", "message", "from-py").await?;
    assert_eq!(e["args"][0], data, "node got the binary data intact");

    assert_refused(&py.join("py", "elsewhere").await?);
    py.shutdown().await?;
    js.shutdown().await
}
