//! The history's behavioural suite: every case in `behaviour!` runs against the in-memory
//! history, the Redis history on a real `redis-server` of its own and the Redis history on a
//! real three-master Redis Cluster of its own (both started by the testkit), so the two
//! implementations keep the same guarantees on every backend. Redis-only behaviour (outages, a
//! Redis that comes back empty) follows at the end, in `redis_only!`, on a server and on a
//! cluster.
//!
//! Each fixture links one pretend gateway to the hub, so a case sees the stamped frames a
//! gateway would receive (with Redis: through the replica's own pub/sub subscription).
//!
//! Redis trims the log approximately (`MAXLEN ~`), the memory history exactly: cases that
//! need events to fall out of the window publish enough of them for both to drop some.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail, ensure};
use prost::bytes::Bytes;
use switchyard_proto::relay::v1::{
    Frame, LinkMessage, Position, ReplayRequest, StampRequest, link_message::Kind,
};
use switchyard_relay::{
    bus::{Bus, PubSubMode, RedisBus},
    history::{History, HistoryError, HistorySettings, MemoryHistory, NsLimits, RedisHistory},
    hub::Hub,
    origin::Origin,
    validate::RoomEvent,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};
use switchyard_testkit::wait::eventually;
use tokio::sync::{mpsc, oneshot, watch};

type Result<T = ()> = anyhow::Result<T>;

/// How long a case waits for something that should happen (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

/// Namespaces the pretend gateway is linked for.
const NAMESPACES: [&str; 3] = ["/", "/small", "/short"];

/// Default limits, and the overrides the cases rely on: `/small` keeps about 2 events, `/short`
/// forgets its history after 300 ms without a publish.
fn settings() -> HistorySettings {
    let mut settings = HistorySettings::new(1_000, Duration::from_secs(60));
    settings.namespaces.insert(
        "/small".into(),
        NsLimits {
            max_len: 2,
            ttl: Duration::from_secs(60),
        },
    );
    settings.namespaces.insert(
        "/short".into(),
        NsLimits {
            max_len: 1_000,
            ttl: Duration::from_millis(300),
        },
    );
    settings
}

/// A history under test, and the frames a gateway linked for [`NAMESPACES`] receives.
struct Fixture {
    history: Arc<dyn History>,
    frames: mpsc::Receiver<LinkMessage>,
    keep: Keep,
}

/// What must outlive the fixture's history: the link's handles, and with Redis the server,
/// the bus and its subscriber task.
struct Keep {
    _cut: oneshot::Receiver<tonic::Status>,
    _cut_seen: watch::Receiver<bool>,
    redis: Option<(Box<dyn std::any::Any + Send + Sync>, watch::Sender<bool>)>,
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Some((_, shutdown)) = &self.redis {
            let _ = shutdown.send(true);
        }
    }
}

/// A hub with one pretend gateway linked for [`NAMESPACES`].
fn linked_hub() -> (Arc<Hub>, mpsc::Receiver<LinkMessage>, Keep) {
    let hub = Arc::new(Hub::default());
    let (queue, frames) = mpsc::channel(100_000);
    let (cut, cut_rx) = oneshot::channel();
    let (cut_flag, cut_seen) = watch::channel(false);
    let namespaces = NAMESPACES.iter().map(|ns| ns.to_string()).collect();
    hub.register(
        "gw",
        namespaces,
        queue,
        cut,
        cut_flag,
        1,
        switchyard_relay::interest::LinkInterest::everything(),
    );
    let keep = Keep {
        _cut: cut_rx,
        _cut_seen: cut_seen,
        redis: None,
    };
    (hub, frames, keep)
}

fn origin() -> Arc<Origin> {
    Arc::new(Origin::new("suite", 1))
}

trait Backend {
    async fn start() -> Result<Fixture>;
}

struct Memory;

impl Backend for Memory {
    async fn start() -> Result<Fixture> {
        let (hub, frames, keep) = linked_hub();
        Ok(Fixture {
            history: Arc::new(MemoryHistory::new(settings(), hub, origin())),
            frames,
            keep,
        })
    }
}

impl<R: RedisDeployment> Backend for R {
    async fn start() -> Result<Fixture> {
        let redis = <R as RedisDeployment>::start()?;
        let (hub, frames, mut keep) = linked_hub();
        let endpoint = switchyard_redis::Endpoint::parse(&redis.url())?;
        let bus = RedisBus::new(&endpoint, "suite", PubSubMode::Auto, hub)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(Arc::clone(&bus).run_subscriber(shutdown_rx));
        let mut subscribed = bus.subscribed.subscribe();
        tokio::time::timeout(WAIT, subscribed.wait_for(|s| *s))
            .await
            .context("the bus did not subscribe")??;
        let namespaces: Vec<String> = NAMESPACES.iter().map(|ns| ns.to_string()).collect();
        Bus::Redis(Arc::clone(&bus))
            .ensure_subscribed(&namespaces)
            .await?;
        keep.redis = Some((Box::new(redis), shutdown));
        Ok(Fixture {
            history: Arc::new(RedisHistory::new(settings(), bus, origin())),
            frames,
            keep,
        })
    }
}

impl Fixture {
    /// The redis deployment behind the history (Redis-only cases).
    fn redis<R: RedisDeployment>(&self) -> Result<&R> {
        self.keep
            .redis
            .as_ref()
            .and_then(|(r, _)| r.downcast_ref::<R>())
            .context("not a Redis fixture")
    }

    /// The next stamped frame a gateway receives.
    async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.frames.recv())
                .await
                .context("no frame within the wait")?
                .context("the link's queue closed")?;
            if let Some(Kind::Frame(frame)) = msg.kind {
                return Ok(frame);
            }
        }
    }

    /// Nothing more is delivered for a moment.
    async fn no_more_frames(&mut self) -> Result {
        let more = tokio::time::timeout(Duration::from_millis(300), self.next_frame()).await;
        ensure!(more.is_err(), "an unexpected frame: {more:?}");
        Ok(())
    }
}

/// One room event; `data` is the MessagePack fixint `n`.
fn event(namespace: &str, room: &str, n: u8, retain: bool, publish_id: &str) -> Result<RoomEvent> {
    let req = StampRequest {
        namespace: namespace.into(),
        room: room.into(),
        event: format!("e{n}"),
        msgpack: Bytes::copy_from_slice(&[n & 0x7f]),
        retain,
        publish_id: publish_id.into(),
    };
    Ok(RoomEvent::new(req, 1024)?)
}

async fn stamp(history: &dyn History, namespace: &str, room: &str, n: u8) -> Result<Position> {
    Ok(history.stamp(event(namespace, room, n, false, "")?).await?)
}

fn offsets(events: &[switchyard_proto::relay::v1::HistoryEvent]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

/// What a client resuming `rooms` of `namespace` from `(epoch, after)` asks for.
fn since(namespace: &str, rooms: &[String], epoch: &str, after: u64, limit: u32) -> ReplayRequest {
    ReplayRequest {
        namespace: namespace.into(),
        rooms: rooms.to_vec(),
        epoch: epoch.into(),
        after_offset: after,
        limit,
    }
}

fn rooms(names: &[&str]) -> Vec<String> {
    names.iter().map(|r| r.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Behaviour of every implementation

async fn offsets_count_from_one_without_gaps_in_one_epoch<B: Backend>() -> Result {
    let f = B::start().await?;
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(stamp(&*f.history, "/", "a", n).await?);
    }
    let epoch = positions[0].epoch.clone();
    ensure!(!epoch.is_empty(), "an epoch is created");
    ensure!(positions.iter().all(|p| p.epoch == epoch), "{positions:?}");
    let got: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);
    let head = f.history.head("/", &[]).await?;
    assert_eq!(head.position, Position { epoch, offset: 5 });
    assert_eq!(head.retained, []);
    // Namespaces count apart.
    assert_eq!(stamp(&*f.history, "/small", "a", 1).await?.offset, 1);
    Ok(())
}

async fn every_stamped_event_reaches_the_gateways_once_in_offset_order<B: Backend>() -> Result {
    let mut f = B::start().await?;
    let mut sent = Vec::new();
    for (n, room) in [(1, "a"), (2, "b"), (3, "a")] {
        let position = stamp(&*f.history, "/", room, n).await?;
        sent.push((position, room));
    }
    for (position, room) in sent {
        let frame = f.next_frame().await?;
        assert_eq!(frame.position.as_ref(), Some(&position));
        assert_eq!(frame.origin, "relay:suite");
        let event = frame.event.context("a stamped frame carries its event")?;
        assert_eq!(event.rooms, [room]);
        assert_eq!(event.event, format!("e{}", position.offset));
    }
    f.no_more_frames().await
}

async fn a_repeated_publish_id_is_stamped_once<B: Backend>() -> Result {
    let mut f = B::start().await?;
    let first = f.history.stamp(event("/", "a", 1, false, "g:1:1")?).await?;
    let again = f.history.stamp(event("/", "a", 1, false, "g:1:1")?).await?;
    assert_eq!(first, again);
    let second = f.history.stamp(event("/", "a", 2, false, "g:1:2")?).await?;
    assert_eq!(second.offset, 2);
    // Recorded once, delivered once.
    let replay = f
        .history
        .replay(&since("/", &rooms(&["a"]), &first.epoch, 0, 100))
        .await?;
    assert!(replay.recovered);
    assert_eq!(offsets(&replay.events), [1, 2]);
    assert_eq!(f.next_frame().await?.position, Some(first));
    assert_eq!(f.next_frame().await?.position, Some(second));
    f.no_more_frames().await
}

async fn publish_ids_are_remembered_for_at_least_max_len_stamps<B: Backend>() -> Result {
    let f = B::start().await?;
    let h = &*f.history;
    let with_id = |n: u8, id: &str| event("/small", "a", n, false, id);
    let first = h.stamp(with_id(1, "g:1:1")?).await?;
    assert_eq!(h.stamp(with_id(1, "g:1:1")?).await?, first);
    assert_eq!(h.stamp(with_id(2, "g:1:2")?).await?.offset, 2);
    // Three ids with max_len 2: the first generation rotates, the last two are kept.
    assert_eq!(h.stamp(with_id(3, "g:1:3")?).await?.offset, 3);
    assert_eq!(h.stamp(with_id(2, "g:1:2")?).await?.offset, 2);
    assert_eq!(h.stamp(with_id(3, "g:1:3")?).await?.offset, 3);
    // Without an id every stamp is new.
    assert_eq!(stamp(h, "/small", "a", 4).await?.offset, 4);
    assert_eq!(stamp(h, "/small", "a", 5).await?.offset, 5);
    let replay = h
        .replay(&since("/small", &rooms(&["a"]), &first.epoch, 3, 100))
        .await?;
    assert!(replay.recovered);
    assert_eq!(offsets(&replay.events), [4, 5]);
    Ok(())
}

async fn replay_is_all_or_nothing<B: Backend>() -> Result {
    let f = B::start().await?;
    let h = &*f.history;
    let first = stamp(h, "/", "a", 1).await?;
    stamp(h, "/", "b", 2).await?;
    stamp(h, "/", "a", 3).await?;
    let epoch = first.epoch.as_str();
    // Only the rooms asked for, in offset order, with what was stamped.
    let replay = h.replay(&since("/", &rooms(&["a"]), epoch, 0, 100)).await?;
    assert!(replay.recovered);
    assert_eq!(offsets(&replay.events), [1, 3]);
    assert_eq!(replay.events[1].event, "e3");
    assert_eq!(replay.events[1].msgpack.as_ref(), [3]);
    assert_eq!(
        replay.head,
        Some(Position {
            epoch: epoch.into(),
            offset: 3
        })
    );
    // Up to date: recovered, nothing to send.
    let replay = h.replay(&since("/", &rooms(&["a"]), epoch, 3, 100)).await?;
    assert!(replay.recovered && replay.events.is_empty(), "{replay:?}");
    // Another epoch, an offset ahead of the head, more missed than the limit: lost.
    for (epoch, after, limit) in [("other", 0, 100), (epoch, 4, 100), (epoch, 0, 2)] {
        let replay = h
            .replay(&since("/", &rooms(&["a"]), epoch, after, limit))
            .await?;
        ensure!(
            !replay.recovered && replay.events.is_empty(),
            "{epoch} {after} {limit}: {replay:?}"
        );
    }
    // Events that fell out of the window: lost; the latest ones are still there.
    for n in 0..300 {
        stamp(h, "/small", "a", (n % 100) as u8).await?;
    }
    let small = h.head("/small", &[]).await?.position;
    let replay = h
        .replay(&since("/small", &rooms(&["a"]), &small.epoch, 0, 1000))
        .await?;
    ensure!(!replay.recovered, "/small keeps about 2 events, not 300");
    let replay = h
        .replay(&since(
            "/small",
            &rooms(&["a"]),
            &small.epoch,
            small.offset - 1,
            1000,
        ))
        .await?;
    assert!(replay.recovered);
    assert_eq!(offsets(&replay.events), [small.offset]);
    Ok(())
}

async fn a_retained_event_is_the_rooms_state_at_the_head<B: Backend>() -> Result {
    let f = B::start().await?;
    let h = &*f.history;
    h.stamp(event("/", "a", 1, true, "")?).await?;
    stamp(h, "/", "a", 2).await?;
    stamp(h, "/", "b", 3).await?;
    let head = h.head("/", &rooms(&["a"])).await?;
    assert_eq!(head.position.offset, 3);
    let [retained] = &head.retained[..] else {
        bail!("room a has one retained event: {head:?}");
    };
    assert_eq!(
        (
            retained.offset,
            retained.room.as_str(),
            retained.event.as_str()
        ),
        (1, "a", "e1")
    );
    assert_eq!(retained.msgpack.as_ref(), [1]);
    assert_eq!(h.head("/", &rooms(&["b"])).await?.retained, []);
    h.stamp(event("/", "a", 4, true, "")?).await?;
    stamp(h, "/", "b", 5).await?;
    h.stamp(event("/", "c", 6, true, "")?).await?;
    // One read answers for several rooms: each that has a retained event, once.
    let head = h.head("/", &rooms(&["a", "b", "c", "d"])).await?;
    assert_eq!(head.position.offset, 6);
    let got: Vec<(&str, u64)> = head
        .retained
        .iter()
        .map(|r| (r.room.as_str(), r.offset))
        .collect();
    assert_eq!(got, [("a", 4), ("c", 6)]);
    Ok(())
}

async fn an_idle_namespace_loses_its_history_and_gets_a_new_epoch<B: Backend>() -> Result {
    let f = B::start().await?;
    let h = &*f.history;
    let before = stamp(h, "/short", "a", 1).await?;
    let other = stamp(h, "/", "a", 1).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let head = h.head("/short", &[]).await?.position;
    ensure!(head.epoch != before.epoch, "a new epoch: {head:?}");
    assert_eq!(head.offset, 0);
    let replay = h
        .replay(&since("/short", &rooms(&["a"]), &before.epoch, 1, 100))
        .await?;
    ensure!(!replay.recovered, "an old epoch's offset is never resumed");
    assert_eq!(stamp(h, "/short", "a", 2).await?.offset, 1);
    // The other namespace's limits are its own.
    assert_eq!(h.head("/", &[]).await?.position, other);
    Ok(())
}

async fn figures_describe_each_history_without_creating_one<B: Backend>() -> Result {
    let f = B::start().await?;
    let h = &*f.history;
    for n in 1..=3 {
        stamp(h, "/", "a", n).await?;
    }
    let figures = h.stats(&rooms(&["/", "/nothing"])).await?;
    let [root, nothing] = figures.as_slice() else {
        bail!("two namespaces asked, got {figures:?}");
    };
    assert_eq!(root.namespace, "/");
    ensure!(!root.epoch.is_empty(), "{root:?}");
    assert_eq!(
        (root.length, root.head_offset, root.oldest_offset),
        (3, 3, 1)
    );
    assert_eq!((root.max_len, root.ttl_ms), (1_000, 60_000));
    assert_eq!(nothing.namespace, "/nothing");
    assert_eq!(
        (nothing.epoch.as_str(), nothing.length, nothing.head_offset),
        ("", 0, 0)
    );
    // Looking created nothing: only "/" has a history.
    let all = h.stats(&[]).await?;
    let names: Vec<&str> = all.iter().map(|n| n.namespace.as_str()).collect();
    assert_eq!(names, ["/"]);
    Ok(())
}

async fn concurrent_stamps_get_every_offset_once_in_each_callers_order<B: Backend>() -> Result {
    const CALLERS: u64 = 8;
    const EACH: u64 = 25;
    let mut f = B::start().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let history = Arc::clone(&f.history);
        tasks.spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..EACH {
                let id = format!("c{caller}:{i}");
                let e = event("/", "a", (i % 100) as u8, false, &id)?;
                offsets.push(history.stamp(e).await?.offset);
            }
            anyhow::Ok(offsets)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let offsets = done??;
        ensure!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one caller's events keep their order: {offsets:?}"
        );
        all.extend(offsets);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=CALLERS * EACH).collect::<Vec<_>>());
    for offset in 1..=CALLERS * EACH {
        let got = f.next_frame().await?.position.map(|p| p.offset);
        assert_eq!(got, Some(offset), "gateways receive offsets in order");
    }
    f.no_more_frames().await
}

macro_rules! behaviour {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> super::Result {
                    super::$case::<super::Memory>().await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> super::Result {
                    super::$case::<super::RedisServer>().await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> super::Result {
                    super::$case::<super::RedisCluster>().await
                }
            )*
        }
    };
}

behaviour!(
    offsets_count_from_one_without_gaps_in_one_epoch,
    every_stamped_event_reaches_the_gateways_once_in_offset_order,
    a_repeated_publish_id_is_stamped_once,
    publish_ids_are_remembered_for_at_least_max_len_stamps,
    replay_is_all_or_nothing,
    a_retained_event_is_the_rooms_state_at_the_head,
    an_idle_namespace_loses_its_history_and_gets_a_new_epoch,
    figures_describe_each_history_without_creating_one,
    concurrent_stamps_get_every_offset_once_in_each_callers_order,
);

// ---------------------------------------------------------------------------------------------
// Redis only

async fn an_outage_is_unavailable_and_a_history_lost_with_redis_gets_a_new_epoch<
    R: RedisDeployment,
>() -> Result {
    let f = <R as Backend>::start().await?;
    let h = &*f.history;
    let before = stamp(h, "/", "a", 1).await?;
    f.redis::<R>()?.kill()?;
    match h.stamp(event("/", "a", 2, false, "")?).await {
        Err(HistoryError::Unavailable(_)) => {}
        other => bail!("a stamp while Redis is down: {other:?}"),
    }
    f.redis::<R>()?.restart_empty()?;
    // The first calls after the restart may still meet broken connections.
    let after = eventually("the history to come back with Redis", WAIT, async || {
        stamp(h, "/", "a", 3).await
    })
    .await?;
    ensure!(after.epoch != before.epoch, "a new epoch: {after:?}");
    assert_eq!(after.offset, 1);
    let replay = h
        .replay(&since("/", &rooms(&["a"]), &before.epoch, 1, 100))
        .await?;
    ensure!(!replay.recovered, "the old epoch cannot be resumed");
    Ok(())
}

macro_rules! redis_only {
    ($($case:ident),* $(,)?) => {
        mod redis_only {
            mod server {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() -> crate::Result {
                        crate::$case::<crate::RedisServer>().await
                    }
                )*
            }
            mod cluster {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() -> crate::Result {
                        crate::$case::<crate::RedisCluster>().await
                    }
                )*
            }
        }
    };
}

redis_only!(an_outage_is_unavailable_and_a_history_lost_with_redis_gets_a_new_epoch);
