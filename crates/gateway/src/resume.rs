//! History on the gateway side: stamped publishes, joins "state first, then every later event",
//! and exact resume. The relay owns offsets and history (`switchyard_relay::history`); this
//! module owns the per-socket **gates** that make delivery exact at the seams.
//!
//! A room publish is not emitted locally: it goes to the relay's `Stamp`, which gives it the
//! namespace's next offset and forwards it to every gateway, this one included, in offset
//! order. The adapter ([`crate::adapter`]) hands each stamped event to [`History::admit`] for
//! every local member of its room; the member's gate decides:
//!
//! - **no gate** (the socket joined through the application's own code): deliver;
//! - **pending** (a `join` or `resume` is in progress): buffer;
//! - **open at `(epoch, floor)`**: deliver iff the epoch differs or `offset > floor`, then raise
//!   the floor. So an event is never delivered twice to a socket (several relay links, or an
//!   in-flight event at or below a join's head), and events reach a socket in offset order.
//!
//! `join(room)`: gate pending → join locally → `Head` → ack `{ok, epoch, offset, retained}` →
//! open the gate at the head and flush the buffer (events above the head, in order). Why no
//! event is lost: one stamped after the head was read is delivered to this gateway after the
//! local join, so it is delivered or buffered; why none is doubled: everything at or below the
//! head is cut by the floor.
//!
//! `resume({epoch, offset, rooms})`: gates pending → join locally → `Replay` after `offset` →
//! if recovered, emit the replayed events, open the gates at the replay's head and flush the
//! buffer, all under the gate lock (so no live event overtakes the replay); ack
//! `{recovered: true, replayed: n}`. Otherwise open the gates at the head, emit nothing, and
//! ack `{recovered: false, replayed: 0}`: the client must re-sync (e.g. re-`join` for state).
//!
//! The gate lock is a `std` mutex: nothing under it awaits (socketioxide emits are
//! synchronous queue pushes).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use socketioxide_core::Sid;
use switchyard_proto::relay::v1::{
    HeadRequest, HeadResponse, ReplayRequest, ReplayResponse, StampRequest,
    relay_client::RelayClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::payload::Payload;

/// How long one history call to the relay may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Stamped events between two sweeps of gates of sockets that are gone.
const SWEEP_EVERY: u64 = 4096;

/// A history call failed (relay unreachable, refused, or answered nonsense).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("relay url: {0}")]
    Url(#[from] tonic::transport::Error),
    #[error("relay: {0}")]
    Relay(#[from] tonic::Status),
    #[error("encoding event data: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the relay answered without a position")]
    NoPosition,
    #[error("no relay configured")]
    NoRelay,
}

/// One stamped event on its way to sockets.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub room: String,
    pub event: String,
    pub data: Payload,
    pub epoch: String,
    pub offset: u64,
}

/// The second argument of every delivered room event: `{room, epoch, offset}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Meta<'a> {
    pub room: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
}

impl Stamped {
    pub fn meta(&self) -> Meta<'_> {
        Meta {
            room: &self.room,
            epoch: &self.epoch,
            offset: self.offset,
        }
    }
}

#[derive(Debug)]
enum RoomGate {
    Pending(Vec<Stamped>),
    Open { epoch: String, floor: u64 },
}

impl RoomGate {
    /// Whether `ev` passes an open gate; raises the floor if so.
    fn pass(epoch: &mut String, floor: &mut u64, ev: &Stamped) -> bool {
        if *epoch != ev.epoch || ev.offset > *floor {
            epoch.clone_from(&ev.epoch);
            *floor = ev.offset;
            true
        } else {
            false
        }
    }
}

/// The history client and the gates of every local socket (all namespaces).
#[derive(Debug)]
pub struct History {
    /// One client per relay URL; calls go to `current` and move on to the next one when a
    /// relay is unreachable (any replica answers the same).
    clients: Vec<RelayClient<Channel>>,
    current: AtomicUsize,
    gates: Mutex<HashMap<(String, Sid), HashMap<String, RoomGate>>>,
    stamped: AtomicU64,
    /// `<node_id>:<incarnation>`: with [`Self::publishes`], the publish id of each `Stamp`.
    publisher: String,
    publishes: AtomicU64,
}

impl History {
    /// Clients of the relays at `urls` (connected lazily; needs a tokio runtime). `publisher`
    /// (`<node_id>:<incarnation>`) prefixes publish ids, so they are unique cluster-wide.
    pub fn new(urls: &[String], publisher: String) -> Result<Self, HistoryError> {
        let mut clients = Vec::new();
        for url in urls {
            let channel = Endpoint::from_shared(url.clone())?
                .timeout(CALL_TIMEOUT)
                .connect_timeout(CALL_TIMEOUT)
                .connect_lazy();
            clients.push(RelayClient::new(channel));
        }
        if clients.is_empty() {
            return Err(HistoryError::NoRelay);
        }
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
            gates: Mutex::new(HashMap::new()),
            stamped: AtomicU64::new(0),
            publisher,
            publishes: AtomicU64::new(0),
        })
    }

    /// Runs `call` on the current relay, then on the others while they are unreachable
    /// (`UNAVAILABLE`). A retried `Stamp` carries the same publish id, so the relays stamp it
    /// once even when the first relay stamped it and died before answering; other failures
    /// are not retried.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, HistoryError>
    where
        F: Fn(RelayClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(client) = self.clients.get(idx) else {
                continue;
            };
            match call(client.clone()).await {
                Ok(res) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(res.into_inner());
                }
                Err(status) if status.code() == tonic::Code::Unavailable => last = Some(status),
                Err(status) => return Err(status.into()),
            }
        }
        Err(last.map_or(HistoryError::NoRelay, HistoryError::from))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Sid), HashMap<String, RoomGate>>> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stamps a room publish; returns its offset. The publish id
    /// `<node_id>:<incarnation>:<counter>` is made once here and reused by every retry.
    pub async fn stamp(
        &self,
        ns: &str,
        room: &str,
        event: &str,
        data: &Payload,
        retain: bool,
    ) -> Result<u64, HistoryError> {
        let msgpack: bytes::Bytes = rmp_serde::to_vec(data)?.into();
        let n = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
        let publish_id = format!("{}:{n}", self.publisher);
        let res = self
            .call(|mut c| {
                let req = StampRequest {
                    namespace: ns.to_owned(),
                    room: room.to_owned(),
                    event: event.to_owned(),
                    msgpack: msgpack.clone(),
                    retain,
                    publish_id: publish_id.clone(),
                };
                async move { c.stamp(req).await }
            })
            .await?;
        res.position
            .map(|p| p.offset)
            .ok_or(HistoryError::NoPosition)
    }

    /// The namespace's position and the room's retained event.
    pub async fn head(&self, ns: &str, room: &str) -> Result<HeadResponse, HistoryError> {
        self.call(|mut c| {
            let req = HeadRequest {
                namespace: ns.to_owned(),
                room: room.to_owned(),
            };
            async move { c.head(req).await }
        })
        .await
    }

    /// Every event of `rooms` after `(epoch, after)`, all or nothing.
    pub async fn replay(
        &self,
        ns: &str,
        rooms: &[String],
        epoch: &str,
        after: u64,
    ) -> Result<ReplayResponse, HistoryError> {
        self.call(|mut c| {
            let req = ReplayRequest {
                namespace: ns.to_owned(),
                rooms: rooms.to_vec(),
                epoch: epoch.to_owned(),
                after_offset: after,
                limit: 0,
            };
            async move { c.replay(req).await }
        })
        .await
    }

    /// Puts the gates of `rooms` of a socket in the pending state (buffering). A room whose
    /// gate is already open stays open: the socket is a member already and keeps receiving
    /// without a seam (re-joining a room must not drop events in flight).
    pub fn hold(&self, ns: &str, sid: Sid, rooms: &[String]) {
        let mut gates = self.lock();
        let socket = gates.entry((ns.to_owned(), sid)).or_default();
        for room in rooms {
            if !matches!(socket.get(room), Some(RoomGate::Open { .. })) {
                socket.insert(room.clone(), RoomGate::Pending(Vec::new()));
            }
        }
    }

    /// Opens the gates of `rooms`, all under the gate lock so no live event overtakes:
    /// a pending gate opens at `(epoch, from)`; then every `replayed` event (offset order)
    /// passes its room's gate, and pending gates move up to `head`; then what the pending
    /// gates buffered passes too, in offset order. `emit` runs for each event let through.
    /// A join passes `from = head` and no replay; a recovered resume the client's offset and
    /// the missed events. Returns how many replayed events were emitted.
    pub fn open(
        &self,
        ns: &str,
        sid: Sid,
        rooms: &[String],
        (epoch, from, head): (&str, u64, u64),
        replayed: &[Stamped],
        mut emit: impl FnMut(&Stamped),
    ) -> u64 {
        let mut gates = self.lock();
        let socket = gates.entry((ns.to_owned(), sid)).or_default();
        let mut buffered = Vec::new();
        let mut opened = Vec::new();
        for room in rooms {
            match socket.get_mut(room) {
                Some(RoomGate::Open { .. }) => {}
                Some(gate) => {
                    let old = std::mem::replace(
                        gate,
                        RoomGate::Open {
                            epoch: epoch.to_owned(),
                            floor: from,
                        },
                    );
                    if let RoomGate::Pending(b) = old {
                        buffered.extend(b);
                    }
                    opened.push(room);
                }
                None => {
                    socket.insert(
                        room.clone(),
                        RoomGate::Open {
                            epoch: epoch.to_owned(),
                            floor: from,
                        },
                    );
                    opened.push(room);
                }
            }
        }
        let mut emitted = 0;
        for ev in replayed {
            if let Some(RoomGate::Open { epoch, floor }) = socket.get_mut(&ev.room)
                && RoomGate::pass(epoch, floor, ev)
            {
                emit(ev);
                emitted += 1;
            }
        }
        for room in opened {
            if let Some(RoomGate::Open { epoch: e, floor }) = socket.get_mut(room)
                && e == epoch
                && *floor < head
            {
                *floor = head;
            }
        }
        // Buffers of several rooms interleave: deliver in offset order.
        buffered.sort_by_key(|e| e.offset);
        for ev in buffered {
            if let Some(RoomGate::Open { epoch, floor }) = socket.get_mut(&ev.room)
                && RoomGate::pass(epoch, floor, &ev)
            {
                emit(&ev);
            }
        }
        emitted
    }

    /// Offers a stamped event to one local member; `deliver` runs (under the gate lock) iff
    /// the socket should get it now.
    pub fn admit(&self, ns: &str, sid: Sid, ev: &Stamped, deliver: impl FnOnce()) {
        let mut gates = self.lock();
        match gates
            .get_mut(&(ns.to_owned(), sid))
            .and_then(|s| s.get_mut(&ev.room))
        {
            None => deliver(),
            Some(RoomGate::Pending(buffer)) => buffer.push(ev.clone()),
            Some(RoomGate::Open { epoch, floor }) => {
                if RoomGate::pass(epoch, floor, ev) {
                    deliver();
                } else {
                    metrics::counter!("switchyard_gateway_history_skipped_total").increment(1);
                }
            }
        }
    }

    /// Forgets every gate of a socket (at its disconnect).
    pub fn forget_socket(&self, ns: &str, sid: Sid) {
        self.lock().remove(&(ns.to_owned(), sid));
    }

    /// Forgets a socket's gate of `room` (after `leave`).
    pub fn forget(&self, ns: &str, sid: Sid, room: &str) {
        if let Some(s) = self.lock().get_mut(&(ns.to_owned(), sid)) {
            s.remove(room);
        }
    }

    /// Counts a stamped event; every [`SWEEP_EVERY`] drops the gates of `ns`'s sockets that
    /// are not in `live()` (the namespace's connected sockets). Gates are dropped at each
    /// disconnect ([`History::forget_socket`]); the sweep is the backstop for applications whose
    /// own `on_disconnect` replaces Switchyard's.
    pub fn tick(&self, ns: &str, live: impl FnOnce() -> HashSet<Sid>) {
        let n = self.stamped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(SWEEP_EVERY) {
            let live = live();
            self.lock()
                .retain(|(n, sid), _| n != ns || live.contains(sid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(room: &str, offset: u64) -> Stamped {
        Stamped {
            room: room.into(),
            event: "e".into(),
            data: Payload::Null,
            epoch: "E".into(),
            offset,
        }
    }

    #[tokio::test]
    async fn gates_buffer_then_deliver_each_offset_once_in_order() -> anyhow::Result<()> {
        let h = History::new(&["http://127.0.0.1:1".to_owned()], "n:1".to_owned())?;
        let sid = Sid::new();
        let rooms = vec!["a".to_owned()];
        let mut got = Vec::new();
        h.hold("/", sid, &rooms);
        for o in [4, 5, 6] {
            h.admit("/", sid, &ev("a", o), || got.push(o));
        }
        assert!(got.is_empty());
        h.open("/", sid, &rooms, ("E", 4, 4), &[], |e| got.push(e.offset));
        for o in [5, 6, 7] {
            h.admit("/", sid, &ev("a", o), || got.push(o));
        }
        assert_eq!(got, [5, 6, 7]);

        // A resume into a fresh room: replayed 2..=4, buffered 4..=6 meanwhile, head 4.
        let sid = Sid::new();
        let mut got = Vec::new();
        h.hold("/", sid, &rooms);
        for o in [4, 5, 6] {
            h.admit("/", sid, &ev("a", o), || got.push(o));
        }
        let replayed: Vec<Stamped> = [2, 3, 4].iter().map(|o| ev("a", *o)).collect();
        let n = h.open("/", sid, &rooms, ("E", 1, 4), &replayed, |e| {
            got.push(e.offset)
        });
        assert_eq!(n, 3);
        // Re-joining an open room keeps it open: nothing in flight is lost or doubled.
        h.hold("/", sid, &rooms);
        h.admit("/", sid, &ev("a", 6), || got.push(6));
        h.admit("/", sid, &ev("a", 7), || got.push(7));
        h.open("/", sid, &rooms, ("E", 9, 9), &[], |e| got.push(e.offset));
        h.admit("/", sid, &ev("a", 8), || got.push(8));
        assert_eq!(got, [2, 3, 4, 5, 6, 7, 8]);
        Ok(())
    }
}
