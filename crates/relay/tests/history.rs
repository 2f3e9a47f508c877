//! History: idempotent stamps (a retried Stamp with the same publish id is stamped once) and
//! backend publishes to one room going through history; with Redis and without.

mod support;

use support::*;
use switchyard_proto::relay::v1::{
    Frame, PublishRequest, ReplayRequest, StampRequest, backend_event, publish_request,
};
use switchyard_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_stamp_twice_is_stamped_once_in_memory() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    stamp_twice(&relay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_stamp_twice_is_stamped_once_with_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let relay = start_relay(Some(&redis.url()), &[])?;
    stamp_twice(&relay).await?;
    // Another replica of the same Redis (the failover target) knows the id too.
    let other = start_relay(Some(&redis.url()), &[])?;
    let res = client(&other)
        .await?
        .stamp(stamp_req("gw:1:1", "first"))
        .await?
        .into_inner();
    assert_eq!(res.position.map(|p| p.offset), Some(1));
    Ok(())
}

fn stamp_req(publish_id: &str, event: &str) -> StampRequest {
    StampRequest {
        namespace: "/".into(),
        room: "r".into(),
        event: event.into(),
        msgpack: vec![0x2a].into(),
        retain: false,
        publish_id: publish_id.into(),
    }
}

fn offset(f: &Frame) -> Option<u64> {
    f.position.as_ref().map(|p| p.offset)
}

async fn stamp_twice(relay: &switchyard_testkit::process::Service) -> anyhow::Result<()> {
    let mut gw = Gw::link(relay, "g", &["/"]).await?;
    gw.wait_members("/", 1).await?;
    let mut c = client(relay).await?;
    let first = c.stamp(stamp_req("gw:1:1", "first")).await?.into_inner();
    let again = c.stamp(stamp_req("gw:1:1", "first")).await?.into_inner();
    assert_eq!(first.position, again.position);
    let pos = first
        .position
        .ok_or_else(|| anyhow::anyhow!("no position"))?;
    assert_eq!(pos.offset, 1);
    let second = c.stamp(stamp_req("gw:1:2", "second")).await?.into_inner();
    assert_eq!(second.position.map(|p| p.offset), Some(2));

    // One history entry per publish id.
    let replay = c
        .replay(ReplayRequest {
            namespace: "/".into(),
            rooms: vec!["r".into()],
            epoch: pos.epoch.clone(),
            after_offset: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(replay.recovered);
    let events: Vec<_> = replay
        .events
        .iter()
        .map(|e| (e.offset, e.event.as_str()))
        .collect();
    assert_eq!(events, [(1, "first"), (2, "second")]);

    // One delivery each: the duplicate is not forwarded (offset 2 comes right after 1).
    let f = gw.next_frame().await?;
    assert_eq!(
        (offset(&f), f.event.map(|e| e.event)),
        (Some(1), Some("first".into()))
    );
    let f = gw.next_frame().await?;
    assert_eq!(
        (offset(&f), f.event.map(|e| e.event)),
        (Some(2), Some("second".into()))
    );

    let metrics = metrics(relay).await?;
    assert!(
        metrics.contains("switchyard_relay_history_stamp_duplicates_total 1"),
        "{metrics}"
    );

    // A backend publish to one room goes through history: a position, MessagePack data.
    let mut req = tonic::Request::new(PublishRequest {
        namespace: "/".into(),
        rooms: vec!["r".into()],
        except: Vec::new(),
        event: "news".into(),
        data: Some(publish_request::Data::Json(r#"{"n":1}"#.into())),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let res = c.publish(req).await?.into_inner();
    assert_eq!(res.position.map(|p| p.offset), Some(3));
    let f = gw.next_frame().await?;
    assert_eq!(offset(&f), Some(3));
    let ev = f.event.ok_or_else(|| anyhow::anyhow!("no event"))?;
    assert_eq!(ev.rooms, vec!["r"]);
    // {"n": 1} as MessagePack: fixmap(1), fixstr "n", 1.
    assert_eq!(
        ev.data,
        Some(backend_event::Data::Msgpack(
            vec![0x81, 0xa1, b'n', 0x01].into()
        ))
    );
    // To the whole namespace it stays live-only.
    let mut req = tonic::Request::new(PublishRequest {
        namespace: "/".into(),
        event: "all".into(),
        data: Some(publish_request::Data::Json("1".into())),
        ..PublishRequest::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let res = c.publish(req).await?.into_inner();
    assert_eq!(res.position, None);
    let f = gw.next_frame().await?;
    assert_eq!(
        (offset(&f), f.event.map(|e| e.event)),
        (None, Some("all".into()))
    );
    Ok(())
}

/// `--history-namespace` limits reach stamp.lua: `/small` keeps few events (approximate
/// `MAXLEN ~` trimming drops whole stream nodes, so 300 events are enough), `/short` forgets
/// its history after 1 s idle; `/` keeps the global limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_limits_apply_in_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let relay = start_relay(
        Some(&redis.url()),
        &[
            "--history-namespace",
            "/small=max_len:2",
            "--history-namespace",
            "/short=ttl_ms:1000",
        ],
    )?;
    let mut c = client(&relay).await?;
    let mut epochs = std::collections::HashMap::new();
    for ns in ["/", "/small", "/short"] {
        for i in 0..300 {
            let req = StampRequest {
                namespace: ns.into(),
                ..stamp_req(&format!("gw:1:{ns}:{i}"), "tick")
            };
            let pos = c.stamp(req).await?.into_inner().position;
            let pos = pos.ok_or_else(|| anyhow::anyhow!("no position"))?;
            epochs.insert(ns, pos.epoch);
        }
    }
    let replay_all = |ns: &str, epoch: &str| ReplayRequest {
        namespace: ns.into(),
        rooms: vec!["r".into()],
        epoch: epoch.into(),
        after_offset: 0,
        limit: 0,
    };
    let full = c.replay(replay_all("/", &epochs["/"])).await?.into_inner();
    assert!(full.recovered);
    assert_eq!(full.events.len(), 300);
    let small = c
        .replay(replay_all("/small", &epochs["/small"]))
        .await?
        .into_inner();
    assert!(!small.recovered, "/small keeps about 2 events, not 300");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let head = |ns: &str| switchyard_proto::relay::v1::HeadRequest {
        namespace: ns.into(),
        room: String::new(),
    };
    let short = c.head(head("/short")).await?.into_inner().position;
    assert_ne!(short.map(|p| p.epoch), Some(epochs["/short"].clone()));
    let root = c.head(head("/")).await?.into_inner().position;
    assert_eq!(
        root.map(|p| (p.epoch, p.offset)),
        Some((epochs["/"].clone(), 300))
    );
    Ok(())
}
