//! A real gateway under bad input from raw websockets and raw HTTP, while a well-behaved client
//! of the official Node driver stays connected: garbage Engine.IO and Socket.IO frames, broken
//! JSON, lying binary attachment counts, huge numbers, oversized payloads and floods of joins.
//! Every refusal is clear (the connection closes, a `connect_error`, or an `{ok: false, error}`
//! ack), the gateway process keeps running and the good client keeps receiving publishes.

mod support;

use std::time::Duration;

use anyhow::ensure;
use futures::SinkExt;
use serde_json::json;
use support::{Cluster, Driver};
use switchyard_testkit::assign::assign;
use switchyard_testkit::raw::{Outcome, RawSocket, http_exchange};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);
const MAX_PAYLOAD: usize = 65_536;
const MAX_ROOMS: usize = 16;

/// The good client, `good`, still connected and receiving publishes to `news`.
async fn good_still_served(js: &mut Driver, cluster: &Cluster, after: &str) -> anyhow::Result<()> {
    let gw = &cluster.gateways[0];
    ensure!(
        gw.service().try_status()?.is_none(),
        "the gateway exited after {after}: {}",
        gw.service().log_tail(40)
    );
    let ack = js
        .publish("publisher", "news", "update", json!({"text": after}))
        .await?;
    ensure!(ack["ok"] == true, "publish after {after}: {ack}");
    js.wait_event(
        &format!("good to receive the publish after {after}"),
        WAIT,
        |e| e["id"] == "good" && e["event"] == "recv" && e["args"][0]["text"] == after,
    )
    .await?;
    let disconnected = js
        .events_of("good", "disconnect")
        .into_iter()
        .chain(js.events_of("good", "connect_error"))
        .next();
    ensure!(
        disconnected.is_none(),
        "the good client was disturbed: {disconnected:?}"
    );
    Ok(())
}

async fn setup() -> anyhow::Result<(Cluster, Driver)> {
    let cluster = Cluster::start(
        1,
        &[
            "--max-payload-bytes",
            &MAX_PAYLOAD.to_string(),
            "--max-rooms-per-socket",
            &MAX_ROOMS.to_string(),
        ],
    )?;
    cluster.wait_registered(WAIT).await?;
    let placement = cluster.placement.http_url().to_owned();
    let mut js = Driver::node().await?;
    for id in ["good", "publisher"] {
        js.connect(
            id,
            json!({"placement": placement, "transports": ["websocket"]}),
        )
        .await?;
        js.connected(id, WAIT).await?;
    }
    let ack = js.join("good", "news").await?;
    ensure!(ack["ok"] == true, "{ack}");
    good_still_served(&mut js, &cluster, "setup").await?;
    Ok((cluster, js))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_refused_and_a_good_client_is_unaffected() -> anyhow::Result<()> {
    let (cluster, mut js) = setup().await?;
    let url = cluster.gateways[0].url().to_owned();

    // Engine.IO garbage before any Socket.IO CONNECT: unknown packet types, empty and binary
    // frames. The gateway closes such a connection (or ignores a frame that means nothing).
    for (what, msg) in [
        ("packet type 9", Message::text("9garbage")),
        ("an empty text frame", Message::text("")),
        ("a non-digit packet type", Message::text("x{}")),
        (
            "binary garbage",
            Message::binary(vec![0xff, 0x00, 0x13, 0x37]),
        ),
        ("an upgrade probe mid-session", Message::text("5")),
    ] {
        let mut raw = RawSocket::open(&url).await?;
        raw.ws.send(msg).await?;
        // A CONNECT after the garbage: refused by a closed connection, or served normally.
        let token = assign(cluster.placement.http_url(), "/").await?.token;
        let _ = raw.send(&format!("40{}", json!({ "token": token }))).await;
        match raw.next_text().await? {
            None => {}
            Some(t) => ensure!(t.starts_with("40"), "{what}: unexpected answer {t}"),
        }
        good_still_served(&mut js, &cluster, what).await?;
    }

    // Bad CONNECTs: refused with a connect_error naming the reason, or a closed connection.
    for (what, frame) in [
        ("a numeric token", "40{\"token\":123}".to_owned()),
        ("broken auth JSON", "40{\"token\":".to_owned()),
        (
            "a huge token",
            format!("40{}", json!({"token": "t".repeat(60_000)})),
        ),
        (
            "an unknown namespace",
            "40/nope,{\"token\":\"x\"}".to_owned(),
        ),
    ] {
        let mut raw = RawSocket::open(&url).await?;
        raw.send(&frame).await?;
        match raw.next_text().await? {
            None => {}
            Some(t) => ensure!(
                t.starts_with("44"),
                "{what}: expected a connect_error, got {t}"
            ),
        }
        good_still_served(&mut js, &cluster, what).await?;
    }

    // Socket.IO garbage on an admitted connection.
    let huge = "9".repeat(400);
    let cases: Vec<(&str, String)> = vec![
        ("Socket.IO packet type 9", "49[]".into()),
        ("broken event JSON", "42[\"join\",".into()),
        ("an event that is not an array", "42{\"join\":1}".into()),
        ("an event with no name", "42[]".into()),
        ("a numeric event name", "42[42,\"x\"]".into()),
        ("a huge ack id", format!("42{huge}[\"join\",\"x\"]")),
        ("a huge attachment count", format!("45{huge}-[\"publish\",{{\"_placeholder\":true,\"num\":0}}]")),
        (
            "a placeholder pointing past the attachments",
            "451-[\"publish\",{\"room\":\"news\",\"event\":\"e\",\"data\":{\"_placeholder\":true,\"num\":7}}]"
                .into(),
        ),
        ("a binary event with no attachment count", "45[\"x\"]".into()),
        ("a huge number in data", format!("42500[\"publish\",{{\"room\":\"news\",\"event\":\"e\",\"data\":1{}}}]", "0".repeat(5000))),
        ("an ack for nothing", "43999[\"x\"]".into()),
    ];
    for (what, frame) in cases {
        let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
        raw.send(&frame).await?;
        let outcome = raw.outcome().await?;
        match &outcome {
            Outcome::Closed => {}
            Outcome::Acked(ack) => ensure!(
                ack["ok"] == true,
                "{what}: the connection lived on but the probe join failed: {ack}"
            ),
        }
        good_still_served(&mut js, &cluster, what).await?;
    }

    // Binary attachments that never come, then a text frame: no event is applied half-built.
    let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
    raw.send("452-[\"publish\",{\"room\":\"news\",\"event\":\"e\",\"data\":[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]}]")
        .await?;
    raw.ws.send(Message::binary(vec![1u8, 2, 3])).await?;
    let _ = raw.outcome().await?;
    good_still_served(&mut js, &cluster, "missing attachments").await?;
    js.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_and_join_floods_are_refused_and_a_good_client_is_unaffected()
-> anyhow::Result<()> {
    let (cluster, mut js) = setup().await?;

    // Just over --max-payload-bytes: an ack naming the limit, and the connection lives on.
    let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
    let over = "p".repeat(MAX_PAYLOAD + 1);
    let ack = raw
        .call(
            "publish",
            &[json!({"room": "news", "event": "big", "data": over})],
        )
        .await?;
    ensure!(
        ack["ok"] == false && ack["error"] == "payload_too_large",
        "{ack}"
    );
    ensure!(raw.call("join", &[json!("still-here")]).await?["ok"] == true);
    good_still_served(&mut js, &cluster, "a payload over the limit").await?;
    ensure!(
        js.events_of("good", "recv")
            .iter()
            .all(|e| e["name"] != "big"),
        "the oversized publish reached nobody"
    );

    // Far beyond the transport limit (limit + envelope headroom): the connection is closed.
    let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
    let huge = "h".repeat(4 * 1024 * 1024);
    let sent = raw
        .emit(
            "publish",
            &[json!({"room": "news", "event": "huge", "data": huge})],
        )
        .await;
    if let Ok(id) = sent {
        ensure!(
            raw.ack(id).await?.is_none(),
            "a 4 MiB packet must close the connection"
        );
    }
    good_still_served(&mut js, &cluster, "a 4 MiB packet").await?;

    // A flood of joins: every one acked, the first MAX_ROOMS ok, then too_many_rooms.
    let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
    let flood = 500;
    let mut ids = Vec::with_capacity(flood);
    for i in 0..flood {
        ids.push(raw.emit("join", &[json!(format!("flood-{i}"))]).await?);
    }
    let acks = raw.acks(&ids).await?;
    let ok = ids.iter().filter(|id| acks[id]["ok"] == true).count();
    let refused = ids
        .iter()
        .filter(|id| acks[id]["ok"] == false && acks[id]["error"] == "too_many_rooms")
        .count();
    ensure!(
        ok == MAX_ROOMS && refused == flood - MAX_ROOMS,
        "{ok} joins ok and {refused} refused too_many_rooms out of {flood}"
    );
    // Bad room names are refused one by one.
    for room in [
        json!(123),
        json!(""),
        json!("r".repeat(1_000)),
        json!(null),
        json!({"a": 1}),
    ] {
        let ack = raw.call("leave", &[json!("flood-0")]).await?;
        ensure!(ack["ok"] == true, "{ack}");
        let ack = raw.call("join", std::slice::from_ref(&room)).await?;
        ensure!(
            ack["ok"] == false && ack["error"] == "bad_request",
            "join {}: {ack}",
            &room.to_string()[..room.to_string().len().min(20)]
        );
        let ack = raw.call("join", &[json!("flood-0")]).await?;
        ensure!(
            ack["ok"] == true,
            "joining flood-0 again after leaving it: {ack}"
        );
    }
    good_still_served(&mut js, &cluster, "a join flood").await?;

    // Many connections flooding joins at once.
    let mut floods = Vec::new();
    for _ in 0..10 {
        let mut raw = RawSocket::connected(cluster.placement.http_url()).await?;
        floods.push(tokio::spawn(async move {
            for i in 0..200 {
                raw.emit("join", &[json!(format!("many-{i}"))]).await?;
            }
            anyhow::Ok(raw)
        }));
    }
    for f in floods {
        f.await??;
    }
    good_still_served(&mut js, &cluster, "ten sockets flooding joins").await?;
    js.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_huge_http_requests_get_a_4xx_and_the_gateway_keeps_serving()
-> anyhow::Result<()> {
    let (cluster, mut js) = setup().await?;
    let addr = cluster.gateways[0]
        .url()
        .trim_start_matches("http://")
        .to_owned();
    let get = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("an unknown Engine.IO version", get("/socket.io/?EIO=99&transport=polling", "")),
        ("an unknown transport", get("/socket.io/?EIO=4&transport=carrier-pigeon", "")),
        ("an unknown session id", get("/socket.io/?EIO=4&transport=polling&sid=nope", "")),
        ("no query at all", get("/socket.io/", "")),
        (
            "a huge query",
            get(&format!("/socket.io/?EIO=4&transport=polling&x={}", "q".repeat(70_000)), ""),
        ),
        (
            "five hundred headers",
            get("/socket.io/?EIO=4&transport=polling", &(0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()),
        ),
        ("a broken request line", b"GET /socket.io/ HTTP/7\x00\r\n\r\n".to_vec()),
        (
            "a polling POST to an unknown session",
            b"POST /socket.io/?EIO=4&transport=polling&sid=nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\n42[1]"
                .to_vec(),
        ),
    ];
    for (what, req) in &requests {
        let res = http_exchange(&addr, req, WAIT).await?;
        ensure!(
            res.status.is_some_and(|s| (400..500).contains(&s)),
            "{what}: expected a 4xx, got {:?} {}",
            res.status,
            res.head
        );
        good_still_served(&mut js, &cluster, what).await?;
    }
    js.shutdown().await
}
