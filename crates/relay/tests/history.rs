//! History: idempotent stamps (a retried Stamp with the same publish id is stamped once),
//! stamps asked for on a link, and backend publishes to one room going through history; with
//! Redis and without.

mod support;

use support::*;
use switchyard_proto::relay::v1::{
    Frame, LinkMessage, PublishRequest, ReplayRequest, StampCall, StampRequest, StampResult,
    backend_event, link_message::Kind, publish_request,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_stamp_twice_is_stamped_once_in_memory() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    stamp_twice(&relay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_stamp_twice_is_stamped_once_with_redis() -> anyhow::Result<()> {
    same_stamp_twice_is_stamped_once_on::<RedisServer>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_stamp_twice_is_stamped_once_on_a_redis_cluster() -> anyhow::Result<()> {
    same_stamp_twice_is_stamped_once_on::<RedisCluster>().await
}

async fn same_stamp_twice_is_stamped_once_on<R: RedisDeployment>() -> anyhow::Result<()> {
    let redis = R::start()?;
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

/// A gateway stamps on its link: each `StampCall` is answered by a `StampResult` with its id,
/// the same as the RPC (one stamp per publish id across both), refusals as status codes that
/// leave the link up, and the stamped frame reaches the caller like every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_on_the_link_are_answered_on_the_link() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let relay = start_relay(Some(&redis.url()), &[])?;
    let mut gw = Gw::link(&relay, "g", &["/"]).await?;
    gw.wait_members("/", 1).await?;
    let call = |id: u64, request: Option<StampRequest>| LinkMessage {
        kind: Some(Kind::Stamp(StampCall {
            id,
            request,
            trace_context: Default::default(),
        })),
    };
    let mut frames = Vec::new();
    gw.send_message(call(7, Some(stamp_req("g:1:1", "first"))))
        .await?;
    let first = next_stamp_result(&mut gw, &mut frames).await?;
    assert_eq!((first.id, first.code), (7, 0), "{first:?}");
    let pos = first
        .position
        .ok_or_else(|| anyhow::anyhow!("no position"))?;
    assert_eq!(pos.offset, 1);
    let f = next_frame_after(&mut gw, &mut frames).await?;
    assert_eq!(
        (offset(&f), f.event.map(|e| e.event)),
        (Some(1), Some("first".into()))
    );

    // The same publish id through the RPC (a gateway retrying after its link ended): the same
    // position, nothing stamped or forwarded again.
    let again = client(&relay)
        .await?
        .stamp(stamp_req("g:1:1", "first"))
        .await?
        .into_inner();
    assert_eq!(again.position, Some(pos));

    // Refusals are answers, not a cut link.
    let mut empty_room = stamp_req("g:1:2", "second");
    empty_room.room.clear();
    gw.send_message(call(8, Some(empty_room))).await?;
    gw.send_message(call(9, None)).await?;
    // Each call is answered when it is done, not in the order sent.
    let mut refused = Vec::new();
    for _ in 0..2 {
        let r = next_stamp_result(&mut gw, &mut frames).await?;
        refused.push((r.id, r.code, r.position));
    }
    refused.sort_by_key(|r| r.0);
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(refused, [(8, invalid, None), (9, invalid, None)]);
    gw.send_message(call(10, Some(stamp_req("g:1:3", "third"))))
        .await?;
    let third = next_stamp_result(&mut gw, &mut frames).await?;
    assert_eq!((third.id, third.position.map(|p| p.offset)), (10, Some(2)));
    // Nothing was forwarded for the duplicate or the refusals: the next frame is offset 2.
    let f = next_frame_after(&mut gw, &mut frames).await?;
    assert_eq!(
        (offset(&f), f.event.map(|e| e.event)),
        (Some(2), Some("third".into()))
    );
    let metrics = metrics(&relay).await?;
    assert!(
        metrics.contains(r#"switchyard_relay_link_stamps_total{outcome="ok"} 2"#),
        "{metrics}"
    );
    Ok(())
}

/// The next `StampResult` on the link; frames met on the way (the stamped frame may overtake
/// the answer: it comes through the bus) go to `frames`.
async fn next_stamp_result(gw: &mut Gw, frames: &mut Vec<Frame>) -> anyhow::Result<StampResult> {
    loop {
        match gw.next_message().await?.kind {
            Some(Kind::Stamped(r)) => return Ok(r),
            Some(Kind::Frame(f)) => frames.push(f),
            _ => {}
        }
    }
}

/// The next frame, from `frames` first.
async fn next_frame_after(gw: &mut Gw, frames: &mut Vec<Frame>) -> anyhow::Result<Frame> {
    if frames.is_empty() {
        gw.next_frame().await
    } else {
        Ok(frames.remove(0))
    }
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
    per_namespace_limits_apply_on::<RedisServer>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_limits_apply_on_a_redis_cluster() -> anyhow::Result<()> {
    per_namespace_limits_apply_on::<RedisCluster>().await
}

async fn per_namespace_limits_apply_on<R: RedisDeployment>() -> anyhow::Result<()> {
    let redis = R::start()?;
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
        rooms: Vec::new(),
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

/// A burst of concurrent publishes from several gateways, on two replicas of one Redis (so
/// stamps of one namespace are batched on each replica and race between them): every publish
/// gets a unique offset, the offsets are exactly 1..=N, each publisher's events keep their
/// order, a retried publish id keeps its first offset, the history holds every event exactly
/// once, and a linked gateway receives every offset once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stamps_from_several_gateways_get_contiguous_offsets_once_each()
-> anyhow::Result<()> {
    const GATEWAYS: usize = 4;
    const SOCKETS: usize = 8;
    const EVENTS: usize = 25;
    const TOTAL: u64 = (GATEWAYS * SOCKETS * EVENTS) as u64;
    let redis = RedisServer::start()?;
    let replicas = [
        start_relay(Some(&redis.url()), &[])?,
        start_relay(Some(&redis.url()), &[])?,
    ];
    let mut watcher = Gw::link(&replicas[0], "watcher", &["/"]).await?;
    watcher.wait_members("/", 1).await?;

    // Each (gateway, socket) publishes its events one after the other (waiting for each
    // answer, like a client waiting for its ack); every fifth one is sent twice at once, to
    // both replicas (a gateway retrying on another relay), with the same publish id.
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..GATEWAYS {
        let own = client(&replicas[g % 2]).await?;
        let other = client(&replicas[(g + 1) % 2]).await?;
        for s in 0..SOCKETS {
            let (mut own, mut other) = (own.clone(), other.clone());
            tasks.spawn(async move {
                let mut offsets = Vec::new();
                for i in 0..EVENTS {
                    let id = format!("gw{g}:1:{s}:{i}");
                    let req = stamp_req(&id, &id);
                    let position = if i % 5 == 0 {
                        let (a, b) = tokio::join!(own.stamp(req.clone()), other.stamp(req));
                        let (a, b) = (a?.into_inner().position, b?.into_inner().position);
                        anyhow::ensure!(a == b, "{id}: a retry got another position: {a:?} {b:?}");
                        a
                    } else {
                        own.stamp(req).await?.into_inner().position
                    };
                    let position = position.ok_or_else(|| anyhow::anyhow!("{id}: no position"))?;
                    offsets.push((id, position));
                }
                anyhow::Ok(offsets)
            });
        }
    }
    let mut by_offset = std::collections::BTreeMap::new();
    let mut epochs = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let offsets = done??;
        assert!(
            offsets.windows(2).all(|w| w[0].1.offset < w[1].1.offset),
            "one publisher's events keep their order: {offsets:?}"
        );
        for (id, position) in offsets {
            epochs.insert(position.epoch.clone());
            if let Some(first) = by_offset.insert(position.offset, id.clone()) {
                anyhow::bail!("offset {} given to both {first} and {id}", position.offset);
            }
        }
    }
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>(),
        "offsets are exactly 1..=N"
    );

    // The history holds every event once, at the offset its publisher was given.
    let epoch = epochs.into_iter().next().unwrap_or_default();
    let replay = client(&replicas[1])
        .await?
        .replay(ReplayRequest {
            namespace: "/".into(),
            rooms: vec!["r".into()],
            epoch,
            after_offset: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(replay.recovered);
    let history: Vec<(u64, String)> = replay
        .events
        .into_iter()
        .map(|e| (e.offset, e.event))
        .collect();
    let published: Vec<(u64, String)> = by_offset.into_iter().collect();
    assert_eq!(history, published);

    // A gateway receives every offset once, in order.
    let mut received = Vec::new();
    while received.len() < published.len() {
        let f = watcher.next_frame().await?;
        received.push((
            offset(&f).unwrap_or(0),
            f.event.map(|e| e.event).unwrap_or_default(),
        ));
    }
    assert_eq!(received, published);
    Ok(())
}
