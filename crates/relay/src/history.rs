//! History: offsets, epochs, the bounded per-namespace event log, retained state and replay.
//!
//! One trait, two implementations: [`RedisHistory`] (`history/redis.rs`, its scripts beside
//! it), shared by every replica of a cluster, and [`MemoryHistory`] (`history/memory.rs`) for
//! a relay without Redis, which is then the whole cluster. Both keep the guarantees below,
//! checked by one behavioural suite (`tests/history_suite.rs`) run against both.
//!
//! A room publish goes to [`History::stamp`] (from the `Stamp` RPC, a link's `StampCall` or a
//! `Publish` to one room, always as a checked [`RoomEvent`]). In ONE atomic step the history
//! gives the event the namespace's next offset (one sequence per namespace, shared by every
//! replica), appends it to the namespace's history, keeps it as the room's retained event when
//! asked, and publishes it as a frame with `position` and `event` set to every gateway of the
//! namespace, the caller included. So:
//!
//! - **Offset order everywhere.** A namespace's stamped frames enter the bus in offset order
//!   (Redis runs the script alone and the channel keeps publish order; without Redis the stamp
//!   and the local delivery happen under one lock), so every gateway receives them in offset
//!   order and every member of a room sees one order.
//! - **Epochs.** The epoch is a random id stored next to the history. When it is missing
//!   (Redis flushed or restarted empty, or the namespace idle past `--history-ttl-ms`) a new
//!   one is created and the history starts empty at offset 1: offsets of two epochs are never
//!   compared, so a lost history is always detected.
//! - **Bounded.** Redis: a stream per namespace, `XADD MAXLEN ~ --history-max-len`, and every
//!   key of the namespace expires after `--history-ttl-ms` without a publish (like
//!   Centrifugo's history TTL). Without Redis: an exact ring buffer with the same rules.
//! - **Idempotent stamps.** A stamp carrying a `publish_id` the namespace already stamped (in
//!   the current epoch, among at least its last `max_len` ids, within the TTL) returns the
//!   first position and appends, retains and forwards nothing. So a gateway that retries a
//!   stamp on another relay (the first died after stamping, before answering) with the same id
//!   gets the event once in history and once per gateway: no client sees it twice.
//! - **Per-namespace limits.** `--history-namespace` overrides max_len/TTL per namespace (see
//!   [`HistorySettings`]).
//! - **Replay is all or nothing.** [`History::replay`] returns events only if it holds every
//!   offset after the client's one (offsets have no gaps), else `recovered = false`.
//!
//! Join: the gateway joins the socket locally, THEN asks [`History::head`]. Every event with an
//! offset above the head is stamped after the head was read, hence delivered to the gateway
//! after the socket joined: it reaches the socket. Events at or below the head may still be in
//! flight to the gateway; the gateway drops them for that socket (its per-socket floor), so the
//! client gets "the state at offset N, then every event after N", nothing twice.

mod batch;
mod keys;
mod memory;
mod redis;

use std::{collections::HashMap, time::Duration, time::Instant};

use async_trait::async_trait;
use switchyard_proto::{
    admin::v1::NamespaceHistory,
    relay::v1::{
        BackendEvent, Frame, FrameKind, HistoryEvent, Position, ReplayRequest, ReplayResponse,
        backend_event,
    },
};
use tonic::Status;

pub use memory::MemoryHistory;
pub use redis::RedisHistory;

use crate::{bus::BusError, metrics, origin::Origin, validate::RoomEvent};

/// Most namespace events one replay may cover when the request names no limit.
pub const DEFAULT_REPLAY_LIMIT: u64 = 100_000;

/// Default of [`HistorySettings::batch_max`].
pub const DEFAULT_BATCH_MAX: usize = 256;

/// The history contract; see the module docs for the guarantees.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Stamps, records and forwards one event; returns its position (the first one when its
    /// publish id was already stamped).
    async fn stamp(&self, event: RoomEvent) -> Result<Position, HistoryError>;

    /// The namespace's position, read once (its epoch is created when it has none), and the
    /// retained event of each of `rooms` that has one.
    async fn head(&self, namespace: &str, rooms: &[String]) -> Result<Head, HistoryError>;

    /// The events of `req.rooms` after `req.after_offset` in `req.epoch`, all or nothing:
    /// `recovered = false` when the epoch differs, the offset is ahead of the head, more than
    /// `req.limit` events of the namespace followed it (0: [`DEFAULT_REPLAY_LIMIT`]), or some of
    /// them are gone.
    async fn replay(&self, req: &ReplayRequest) -> Result<ReplayResponse, HistoryError>;

    /// Figures of `namespaces`, or of every namespace that has a history when empty; sorted.
    /// Read-only: unlike [`History::head`] it never creates an epoch, so looking does not
    /// change what clients would see.
    async fn stats(&self, namespaces: &[String]) -> Result<Vec<NamespaceHistory>, HistoryError>;
}

/// The answer of [`History::head`].
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub position: Position,
    /// The retained events of the rooms asked that have one, each naming its room.
    pub retained: Vec<HistoryEvent>,
}

/// What a history call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// Redis cannot be reached, or this replica is not subscribed (it could not publish what
    /// it stamps); worth retrying, here or on another replica.
    #[error("{0}")]
    Unavailable(String),
    /// Redis answered something the scripts never return.
    #[error("{0}")]
    Invalid(String),
}

impl From<::redis::RedisError> for HistoryError {
    fn from(e: ::redis::RedisError) -> Self {
        HistoryError::Unavailable(format!("redis: {e}"))
    }
}

impl From<switchyard_redis::Error> for HistoryError {
    fn from(e: switchyard_redis::Error) -> Self {
        HistoryError::Unavailable(e.to_string())
    }
}

impl From<BusError> for HistoryError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Invalid(m) => HistoryError::Invalid(m),
            other => HistoryError::Unavailable(other.to_string()),
        }
    }
}

impl From<HistoryError> for Status {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Unavailable(m) => {
                Status::unavailable(format!("relay history unavailable: {m}"))
            }
            HistoryError::Invalid(m) => Status::internal(m),
        }
    }
}

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

/// The replay limit a request asks for: `0` means [`DEFAULT_REPLAY_LIMIT`].
fn replay_limit(requested: u32) -> u64 {
    match requested {
        0 => DEFAULT_REPLAY_LIMIT,
        n => u64::from(n),
    }
}

/// A fresh random epoch.
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The frame a stamped event travels in, from the relay's own origin (gateways deduplicate
/// stamped frames by offset, not by origin); the position is set by the caller.
fn stamped_frame(event: &RoomEvent, origin: &Origin) -> Frame {
    let mut frame = Frame {
        namespace: event.namespace().to_owned(),
        kind: FrameKind::Broadcast as i32,
        event: Some(BackendEvent {
            rooms: vec![event.room().to_owned()],
            except: Vec::new(),
            event: event.event().to_owned(),
            data: Some(backend_event::Data::Msgpack(event.msgpack().clone())),
        }),
        trace_context: event.trace_context().clone(),
        ..Frame::default()
    };
    origin.number(&mut frame);
    frame
}

/// Counts one stamp started at `started` (the same for both implementations) and returns its
/// position: `stamped` is the position and whether its publish id was already stamped.
fn observe_stamp(
    started: Instant,
    stamped: Result<(Position, bool), HistoryError>,
) -> Result<Position, HistoryError> {
    match stamped {
        Ok((position, duplicate)) => {
            metrics::history_stamp(started.elapsed(), duplicate);
            Ok(position)
        }
        Err(e) => {
            metrics::history_stamp_failed(started.elapsed());
            Err(e)
        }
    }
}

/// Counts one answered replay (the same for both implementations).
fn observe_replay(replay: ReplayResponse) -> ReplayResponse {
    metrics::history_replay(replay.recovered);
    replay
}
