//! History: offsets, epochs, the bounded per-namespace event log, retained state and replay.
//!
//! A gateway's room publish goes to [`History::stamp`] (the `Stamp` RPC). In ONE atomic step
//! the relay gives the event the namespace's next offset (one sequence per namespace, shared
//! by every replica), appends it to the namespace's history, keeps it as the room's retained
//! event when asked, and publishes it as a frame with `position` and `event` set to every
//! gateway of the namespace, the caller included. So:
//!
//! - **Offset order everywhere.** A namespace's stamped frames enter the bus in offset order
//!   (Redis runs the script alone and the channel keeps publish order; without Redis the
//!   stamp and the local delivery happen under one lock), so every gateway receives them in
//!   offset order and every member of a room sees one order.
//! - **Epochs.** The epoch is a random id stored next to the history. When it is missing
//!   (Redis flushed or restarted empty, or the namespace idle past `--history-ttl-ms`) the
//!   scripts create a new one and start from an empty history at offset 1: offsets of two
//!   epochs are never compared, so a lost history is always detected.
//! - **Bounded.** Redis: a stream per namespace, `XADD MAXLEN ~ --history-max-len`, and every
//!   key of the namespace expires after `--history-ttl-ms` without a publish (like
//!   Centrifugo's history TTL). Without Redis: an exact ring buffer with the same rules.
//! - **Idempotent stamps.** A `Stamp` carrying a `publish_id` the namespace already stamped
//!   (in the current epoch, among at least its last `max_len` ids, within the TTL) returns the
//!   first position and appends, retains and forwards nothing. So a gateway that retries a
//!   Stamp on another relay (the first died after stamping, before answering) with the same
//!   id gets the event once in history and once per gateway: no client sees it twice.
//! - **Per-namespace limits.** `--history-namespace` overrides max_len/TTL per namespace
//!   (see [`HistorySettings`]).
//! - **Replay is all or nothing.** [`History::replay`] returns events only if it holds every
//!   offset after the client's one (offsets have no gaps), else `recovered = false`.
//!
//! Join: the gateway joins the socket locally, THEN asks [`History::head`]. Every event with an
//! offset above the head is stamped after the head was read, hence delivered to the gateway
//! after the socket joined: it reaches the socket. Events at or below the head may still be
//! in flight to the gateway; the gateway drops them for that socket (its per-socket floor), so
//! the client gets "the state at offset N, then every event after N", nothing twice.
//!
//! - **Batched round trips.** With Redis, the stamps of a namespace that arrive while its
//!   previous stamp call is in flight go together in the next call (see [`batch`]), so the
//!   history does not limit the fan-out path to one event per Redis round trip.
//!
//! Redis keys (hash tag `{sy:<cluster>}` so they live on one Cluster slot with the channel):
//! `…:history:<ns>:seq`, `:stream`, `:epoch`, `:retained`, `:ids`, `:ids-old`. Scripts: `history/*.lua`.

mod batch;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost::{Message, bytes::Bytes};
use redis::Script;
use switchyard_proto::relay::v1::{
    BackendEvent, Frame, FrameKind, HeadResponse, HistoryEvent, Position, ReplayResponse,
    backend_event,
};

use crate::{
    bus::{BusError, RedisBus},
    hub::Hub,
};

mod stats;
use batch::StampBatcher;

/// Stamp script; see its header.
pub const STAMP_SCRIPT: &str = include_str!("history/stamp.lua");
/// Head script; see its header.
pub const HEAD_SCRIPT: &str = include_str!("history/head.lua");
/// Replay script; see its header.
pub const REPLAY_SCRIPT: &str = include_str!("history/replay.lua");

/// Most namespace events one replay may cover when the request names no limit.
pub const DEFAULT_REPLAY_LIMIT: u64 = 100_000;

/// Origin of stamped frames. Gateways do not deduplicate them by origin mark but by offset.
pub const HISTORY_ORIGIN: &str = "relay:history";

/// Limits of one namespace's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsLimits {
    /// Events kept (approximately with Redis, exactly in memory); also the least number of
    /// recent publish ids remembered for idempotent stamps.
    pub max_len: u64,
    /// Idle time after which the namespace's history (and epoch) is dropped.
    pub ttl: Duration,
}

/// History settings: `--history-max-len` / `--history-ttl-ms` for every namespace, and
/// `--history-namespace` overrides for some.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    pub max_len: u64,
    pub ttl: Duration,
    /// Per-namespace overrides (a field left unset there falls back to the defaults above).
    pub namespaces: HashMap<String, NsLimits>,
    /// Most events of one namespace stamped in one Redis call (`--history-batch-max`).
    pub batch_max: usize,
}

/// Default of [`HistorySettings::batch_max`].
pub const DEFAULT_BATCH_MAX: usize = 256;

impl HistorySettings {
    /// The defaults for every namespace, no override.
    pub fn new(max_len: u64, ttl: Duration) -> Self {
        Self {
            max_len,
            ttl,
            namespaces: HashMap::new(),
            batch_max: DEFAULT_BATCH_MAX,
        }
    }

    /// The limits that apply to `namespace`.
    pub fn limits(&self, namespace: &str) -> NsLimits {
        self.namespaces.get(namespace).copied().unwrap_or(NsLimits {
            max_len: self.max_len,
            ttl: self.ttl,
        })
    }
}

/// One event to stamp.
#[derive(Debug, Clone)]
pub struct StampInput {
    pub namespace: String,
    pub room: String,
    pub event: String,
    pub msgpack: Bytes,
    pub retain: bool,
    /// Idempotency key (empty: none); see the module docs.
    pub publish_id: String,
    /// W3C trace context of the span that stamps it (`trace_context::to_map`), carried in the
    /// frame so each gateway's delivery continues the publisher's trace; empty: none.
    pub trace_context: HashMap<String, String>,
}

/// The history of every namespace: in Redis, or in this process.
pub enum History {
    Memory(MemoryHistory),
    Redis(RedisHistory),
}

impl History {
    pub fn memory(settings: HistorySettings, hub: Arc<Hub>) -> Self {
        History::Memory(MemoryHistory {
            settings,
            hub,
            namespaces: Mutex::new(HashMap::new()),
        })
    }

    pub fn redis(settings: HistorySettings, bus: Arc<RedisBus>) -> Self {
        History::Redis(RedisHistory {
            stamper: StampBatcher::new(settings.clone(), Arc::clone(&bus)),
            settings,
            bus,
            head: Script::new(HEAD_SCRIPT),
            replay: Script::new(REPLAY_SCRIPT),
        })
    }

    /// Stamps, records and forwards one event (see the module docs); returns its position.
    pub async fn stamp(&self, input: StampInput) -> Result<Position, BusError> {
        let started = Instant::now();
        let stamped = match self {
            History::Memory(m) => Ok(m.stamp(input)),
            History::Redis(r) => r.stamp(input).await,
        };
        metrics::histogram!("switchyard_relay_history_stamp_seconds").record(started.elapsed());
        match &stamped {
            Ok((_, true)) => {
                metrics::counter!("switchyard_relay_history_stamp_duplicates_total").increment(1)
            }
            Ok((_, false)) => {
                metrics::counter!("switchyard_relay_history_stamped_total").increment(1)
            }
            Err(_) => {}
        }
        stamped.map(|(position, _)| position)
    }

    /// The namespace's position and `room`'s retained event.
    pub async fn head(&self, namespace: &str, room: &str) -> Result<HeadResponse, BusError> {
        match self {
            History::Memory(m) => Ok(m.head(namespace, room)),
            History::Redis(r) => r.head(namespace, room).await,
        }
    }

    /// The events of `rooms` after `after` in `epoch`, all or nothing.
    pub async fn replay(
        &self,
        namespace: &str,
        rooms: &[String],
        epoch: &str,
        after: u64,
        limit: u64,
    ) -> Result<ReplayResponse, BusError> {
        let limit = if limit == 0 {
            DEFAULT_REPLAY_LIMIT
        } else {
            limit
        };
        let res = match self {
            History::Memory(m) => Ok(m.replay(namespace, rooms, epoch, after, limit)),
            History::Redis(r) => r.replay(namespace, rooms, epoch, after, limit).await,
        }?;
        let outcome = if res.recovered { "recovered" } else { "lost" };
        metrics::counter!("switchyard_relay_history_replays_total", "outcome" => outcome)
            .increment(1);
        Ok(res)
    }
}

/// A fresh random epoch.
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Sequence of stamped frames (the gateways do not use it to deduplicate; see [`HISTORY_ORIGIN`]).
static FRAME_SEQ: AtomicU64 = AtomicU64::new(1);

/// The frame a stamped event travels in (position set by the caller).
fn stamped_frame(input: &StampInput) -> Frame {
    Frame {
        namespace: input.namespace.clone(),
        origin: HISTORY_ORIGIN.to_owned(),
        seq: FRAME_SEQ.fetch_add(1, Ordering::Relaxed),
        kind: FrameKind::Broadcast as i32,
        event: Some(BackendEvent {
            rooms: vec![input.room.clone()],
            except: Vec::new(),
            event: input.event.clone(),
            data: Some(backend_event::Data::Msgpack(input.msgpack.clone())),
        }),
        trace_context: input.trace_context.clone(),
        ..Frame::default()
    }
}

/// Decodes what stamp.lua publishes: `\0<offset>\n<epoch>\n<frame>`; `None` if it is not that.
pub fn decode_published(payload: &[u8]) -> Option<Frame> {
    let rest = payload.strip_prefix(&[0u8])?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let offset: u64 = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let rest = &rest[nl + 1..];
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let epoch = std::str::from_utf8(&rest[..nl]).ok()?.to_owned();
    let mut frame = Frame::decode(&rest[nl + 1..]).ok()?;
    frame.position = Some(Position { epoch, offset });
    Some(frame)
}

// ---------------------------------------------------------------------------------------------
// Redis

/// History in Redis, shared by every replica of the cluster.
pub struct RedisHistory {
    settings: HistorySettings,
    bus: Arc<RedisBus>,
    stamper: Arc<StampBatcher>,
    head: Script,
    replay: Script,
}

impl RedisHistory {
    fn key(&self, namespace: &str, what: &str) -> String {
        format!("{}:history:{namespace}:{what}", self.bus.prefix)
    }

    /// The position, and whether the publish id was already stamped.
    async fn stamp(&self, input: StampInput) -> Result<(Position, bool), BusError> {
        self.stamper.stamp(input).await
    }

    async fn head(&self, namespace: &str, room: &str) -> Result<HeadResponse, BusError> {
        let mut conn = self.bus.pool.get().await?;
        let (epoch, head, r_off, r_event, r_data): (String, u64, String, String, Vec<u8>) = self
            .head
            .key(self.key(namespace, "seq"))
            .key(self.key(namespace, "stream"))
            .key(self.key(namespace, "epoch"))
            .key(self.key(namespace, "retained"))
            .arg(new_epoch())
            .arg(room)
            .arg(self.settings.limits(namespace).ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let retained = r_off.parse::<u64>().ok().map(|offset| HistoryEvent {
            offset,
            room: room.to_owned(),
            event: r_event,
            msgpack: r_data.into(),
        });
        Ok(HeadResponse {
            position: Some(Position {
                epoch,
                offset: head,
            }),
            retained,
        })
    }

    async fn replay(
        &self,
        namespace: &str,
        rooms: &[String],
        epoch: &str,
        after: u64,
        limit: u64,
    ) -> Result<ReplayResponse, BusError> {
        let mut conn = self.bus.pool.get().await?;
        let (ok, cur_epoch, head, flat): (i64, String, u64, Vec<Vec<u8>>) = self
            .replay
            .key(self.key(namespace, "seq"))
            .key(self.key(namespace, "stream"))
            .key(self.key(namespace, "epoch"))
            .key(self.key(namespace, "retained"))
            .arg(epoch)
            .arg(after)
            .arg(limit)
            .arg(new_epoch())
            .arg(self.settings.limits(namespace).ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let mut events = Vec::new();
        if ok == 1 {
            for entry in flat.chunks_exact(4) {
                let id = String::from_utf8_lossy(&entry[0]);
                let Some(offset) = id.split('-').next().and_then(|o| o.parse::<u64>().ok()) else {
                    return Err(BusError::Invalid(format!("bad history entry id `{id}`")));
                };
                let room = String::from_utf8_lossy(&entry[1]).into_owned();
                if rooms.contains(&room) {
                    events.push(HistoryEvent {
                        offset,
                        room,
                        event: String::from_utf8_lossy(&entry[2]).into_owned(),
                        msgpack: Bytes::copy_from_slice(&entry[3]),
                    });
                }
            }
        }
        Ok(ReplayResponse {
            recovered: ok == 1,
            events,
            head: Some(Position {
                epoch: cur_epoch,
                offset: head,
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// In memory

/// History of a relay without Redis (which is then the whole cluster). A `std` mutex: no
/// critical section awaits; stamping and local delivery share it so delivery is in offset order.
pub struct MemoryHistory {
    settings: HistorySettings,
    hub: Arc<Hub>,
    namespaces: Mutex<HashMap<String, NsHistory>>,
}

struct NsHistory {
    epoch: String,
    head: u64,
    ring: VecDeque<HistoryEvent>,
    retained: HashMap<String, HistoryEvent>,
    /// Publish ids stamped in this epoch -> offset, two generations (like stamp.lua).
    ids: HashMap<String, u64>,
    ids_old: HashMap<String, u64>,
    touched: Instant,
}

impl NsHistory {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            head: 0,
            ring: VecDeque::new(),
            retained: HashMap::new(),
            ids: HashMap::new(),
            ids_old: HashMap::new(),
            touched: Instant::now(),
        }
    }
}

impl MemoryHistory {
    /// The namespace's history, replaced by a new epoch if it idled past the TTL.
    fn with_ns<T>(&self, namespace: &str, f: impl FnOnce(&mut NsHistory) -> T) -> T {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.settings.limits(namespace).ttl;
        let ns = all
            .entry(namespace.to_owned())
            .or_insert_with(NsHistory::new);
        if ns.touched.elapsed() > ttl {
            *ns = NsHistory::new();
        }
        f(ns)
    }

    /// The position, and whether the publish id was already stamped.
    fn stamp(&self, input: StampInput) -> (Position, bool) {
        let max_len =
            usize::try_from(self.settings.limits(&input.namespace).max_len).unwrap_or(usize::MAX);
        let mut frame = stamped_frame(&input);
        self.with_ns(&input.namespace, |ns| {
            if !input.publish_id.is_empty()
                && let Some(offset) = ns
                    .ids
                    .get(&input.publish_id)
                    .or_else(|| ns.ids_old.get(&input.publish_id))
            {
                let position = Position {
                    epoch: ns.epoch.clone(),
                    offset: *offset,
                };
                return (position, true);
            }
            ns.head += 1;
            if !input.publish_id.is_empty() {
                ns.ids.insert(input.publish_id.clone(), ns.head);
                if ns.ids.len() > max_len {
                    ns.ids_old = std::mem::take(&mut ns.ids);
                }
            }
            ns.touched = Instant::now();
            let event = HistoryEvent {
                offset: ns.head,
                room: input.room.clone(),
                event: input.event.clone(),
                msgpack: input.msgpack.clone(),
            };
            if input.retain {
                ns.retained.insert(input.room.clone(), event.clone());
            }
            ns.ring.push_back(event);
            while ns.ring.len() > max_len {
                ns.ring.pop_front();
            }
            let position = Position {
                epoch: ns.epoch.clone(),
                offset: ns.head,
            };
            frame.position = Some(position.clone());
            // Under the lock: frames leave in offset order.
            self.hub.deliver(&frame);
            (position, false)
        })
    }

    fn head(&self, namespace: &str, room: &str) -> HeadResponse {
        self.with_ns(namespace, |ns| HeadResponse {
            position: Some(Position {
                epoch: ns.epoch.clone(),
                offset: ns.head,
            }),
            retained: ns.retained.get(room).cloned(),
        })
    }

    fn replay(
        &self,
        namespace: &str,
        rooms: &[String],
        epoch: &str,
        after: u64,
        limit: u64,
    ) -> ReplayResponse {
        self.with_ns(namespace, |ns| {
            let head = Some(Position {
                epoch: ns.epoch.clone(),
                offset: ns.head,
            });
            let oldest = ns.ring.front().map_or(ns.head + 1, |e| e.offset);
            let recovered = epoch == ns.epoch
                && after <= ns.head
                && (after == ns.head || (oldest <= after + 1 && ns.head - after <= limit));
            let events = if recovered {
                ns.ring
                    .iter()
                    .filter(|e| e.offset > after && rooms.contains(&e.room))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            ReplayResponse {
                recovered,
                events,
                head,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(room: &str, retain: bool) -> StampInput {
        StampInput {
            namespace: "/".into(),
            room: room.into(),
            event: "e".into(),
            msgpack: Bytes::from_static(&[1]),
            retain,
            publish_id: String::new(),
            trace_context: HashMap::new(),
        }
    }

    #[test]
    fn published_payload_round_trips() {
        let frame = stamped_frame(&input("r", false));
        let mut payload = b"\x0042\nabc\n".to_vec();
        payload.extend(frame.encode_to_vec());
        let got = decode_published(&payload);
        assert_eq!(
            got.and_then(|f| f.position),
            Some(Position {
                epoch: "abc".into(),
                offset: 42
            })
        );
        assert!(decode_published(&frame.encode_to_vec()).is_none());
    }

    proptest::proptest! {
        /// Whatever a Redis channel carries, decoding gives a frame or `None`, never a panic.
        #[test]
        fn arbitrary_published_payloads_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let _ = decode_published(&bytes);
            let mut stamped = b"\x007\nepoch\n".to_vec();
            stamped.extend(&bytes);
            let _ = decode_published(&stamped);
        }
    }

    #[test]
    fn memory_history_replays_all_or_nothing() {
        let h = MemoryHistory {
            settings: HistorySettings::new(3, Duration::from_secs(60)),
            hub: Arc::new(Hub::default()),
            namespaces: Mutex::new(HashMap::new()),
        };
        let (p1, _) = h.stamp(input("a", true));
        let (p2, _) = h.stamp(input("b", false));
        assert_eq!((p1.offset, p2.offset), (1, 2));
        let head = h.head("/", "a");
        assert_eq!(head.retained.map(|r| r.offset), Some(1));
        let rooms = vec!["a".to_owned()];
        let r = h.replay("/", &rooms, &p1.epoch, 0, 100);
        assert!(r.recovered);
        assert_eq!(r.events.len(), 1);
        assert!(!h.replay("/", &rooms, "other", 0, 100).recovered);
        for _ in 0..3 {
            h.stamp(input("a", false));
        }
        // Offsets 3..5 kept: a client at 1 missed 2, gone.
        assert!(!h.replay("/", &rooms, &p1.epoch, 1, 100).recovered);
        let r = h.replay("/", &rooms, &p1.epoch, 2, 100);
        assert!(r.recovered);
        assert_eq!(
            r.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(h.replay("/", &rooms, &p1.epoch, 5, 100).recovered);
        assert!(!h.replay("/", &rooms, &p1.epoch, 6, 100).recovered);
    }

    #[test]
    fn memory_stamps_are_idempotent_per_publish_id_and_ids_stay_bounded() {
        let mut ns_limits = HistorySettings::new(100, Duration::from_secs(60));
        ns_limits.namespaces.insert(
            "/".into(),
            NsLimits {
                max_len: 2,
                ttl: Duration::from_secs(60),
            },
        );
        let h = MemoryHistory {
            settings: ns_limits,
            hub: Arc::new(Hub::default()),
            namespaces: Mutex::new(HashMap::new()),
        };
        let with_id = |id: &str| StampInput {
            publish_id: id.into(),
            ..input("a", false)
        };
        let (p1, dup) = h.stamp(with_id("n:1:1"));
        assert!(!dup);
        assert_eq!(h.stamp(with_id("n:1:1")), (p1.clone(), true));
        assert_eq!(h.stamp(with_id("n:1:2")).0.offset, 2);
        // Three ids with max_len 2: the first generation rotates, the last ids are kept.
        assert_eq!(h.stamp(with_id("n:1:3")).0.offset, 3);
        assert_eq!(h.stamp(with_id("n:1:2")).0.offset, 2);
        assert_eq!(h.stamp(with_id("n:1:3")).0.offset, 3);
        // Without an id every stamp is new; the ring holds max_len (2) events of the namespace.
        assert_eq!(h.stamp(input("a", false)).0.offset, 4);
        assert_eq!(h.stamp(input("a", false)).0.offset, 5);
        let r = h.replay("/", &["a".to_owned()], &p1.epoch, 3, 100);
        assert_eq!(
            r.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [4, 5]
        );
    }
}
