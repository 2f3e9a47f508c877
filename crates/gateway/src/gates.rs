//! The per-socket **gates** that make delivery of stamped events exact at the seams: a pure,
//! synchronous state machine (no runtime, no relay client), shared by the adapter, which offers
//! every stamped event to the gates of its room's local members ([`Gates::admit`]), and the
//! built-in events, which hold and open gates around a `join` or `resume` ([`Gates::hold`],
//! [`Gates::open`]).
//!
//! For each member and stamped event, the member's gate of the event's room decides:
//!
//! - **no gate** (the socket joined through the application's own code): deliver;
//! - **pending** (a `join` or `resume` is in progress): buffer;
//! - **open at `(epoch, floor)`**: deliver iff the epoch differs or `offset > floor`, then raise
//!   the floor. So an event is never delivered twice to a socket (several relay links, or an
//!   in-flight event at or below a join's head), and events reach a socket in offset order.
//!   A gate opened by a resume that could not recover (the client's epoch is gone) also drops
//!   every event of that old epoch still in flight.
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
//! A socket whose send buffer is full when an event is handed to it is **severed**: nothing more
//! is delivered to it (a later event would advance the client's position past the one it lost),
//! and it is handed over ([`Gates::take_severed`]) to be disconnected ([`crate::severed`]), so
//! the client reconnects and resumes from the last offset it really got. A full buffer thus
//! costs a reconnect and a replay, never a silent gap. So does a **gap** of the relay links
//! (frames sent while no link was up): [`Gates::sever_all`].
//!
//! The gate lock is a `std` mutex: nothing under it awaits (socketioxide emits are synchronous
//! queue pushes). Lock order: the relay link's state lock may be held when the gate lock is
//! taken (the link severs every gated socket at the end of a gap, before it hands over a frame
//! of the new link); never the other way round, since nothing under the gate lock touches the
//! link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use socketioxide_core::Sid;
use tokio::sync::mpsc;

use crate::marks::StampedMarks;
use crate::metrics;
use crate::payload::Payload;

/// Stamped events between two sweeps of gates of sockets that are gone.
const SWEEP_EVERY: u64 = 4096;

/// Deliveries (members × events of a run) per hold of the gate lock: a room of thousands of
/// local members does not keep joins and disconnects (which take the lock too) waiting for
/// the whole fan-out.
const ADMIT_CHUNK: usize = 256;

/// Maps on the delivery path, which looks up every local member of a room for every event:
/// foldhash (seeded per process) costs a fraction of SipHash on sids and room names.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Gates by namespace, then by socket.
type Table = HashMap<String, FastMap<Sid, SocketGates>>;

/// A socket severed by its gates: `(namespace, sid)`, to be disconnected.
pub type Severed = (String, Sid);

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
    Open(Floor),
}

/// An open gate: the epoch it is in and the highest offset delivered in it.
#[derive(Debug)]
struct Floor {
    epoch: String,
    offset: u64,
    /// An epoch known to be over for this socket (the one a resume that could not recover came
    /// from): its events still in flight are dropped. Epochs are random ids, so an unknown
    /// epoch cannot be told older or newer; this is the one the relay said is not current.
    stale: Option<String>,
}

impl Floor {
    /// Whether `ev` passes; raises the floor if so. An event of another epoch (not the stale
    /// one) passes and moves the gate to that epoch: the history was lost while the socket was
    /// subscribed, and live events go on.
    fn pass(&mut self, ev: &Stamped) -> bool {
        if self.stale.as_deref() == Some(ev.epoch.as_str()) {
            return false;
        }
        if self.epoch != ev.epoch || ev.offset > self.offset {
            self.epoch.clone_from(&ev.epoch);
            self.offset = ev.offset;
            true
        } else {
            false
        }
    }
}

/// Where [`Gates::open`] opens gates: in `epoch`, at offset `from`; pending gates then move
/// up to `head` (once the replay, if any, is through). `stale` is the epoch a resume came from
/// when the relay's current epoch is another one: events of it are dropped from then on.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    pub epoch: &'a str,
    pub from: u64,
    pub head: u64,
    pub stale: Option<&'a str>,
}

impl Opening<'_> {
    fn floor(&self) -> Floor {
        Floor {
            epoch: self.epoch.to_owned(),
            offset: self.from,
            stale: self.stale.map(str::to_owned),
        }
    }
}

/// The gates of one socket, by room.
#[derive(Debug, Default)]
struct SocketGates {
    rooms: FastMap<String, RoomGate>,
    /// An event could not be queued to the socket: it gets nothing more until it reconnects.
    severed: bool,
}

impl SocketGates {
    /// Offers `ev` to this socket's gate of its room. Returns false iff `deliver` ran and
    /// failed (the socket is severed then); true when the event was queued or rightly held
    /// back (buffered, already delivered, or the socket is severed).
    fn admit(&mut self, ev: &Stamped, deliver: impl FnOnce() -> bool) -> bool {
        if self.severed {
            return true;
        }
        match self.rooms.get_mut(&ev.room) {
            None => self.deliver(deliver),
            Some(RoomGate::Pending(buffer)) => {
                buffer.push(ev.clone());
                true
            }
            Some(RoomGate::Open(floor)) => {
                if floor.pass(ev) {
                    self.deliver(deliver)
                } else {
                    ::metrics::counter!(metrics::HISTORY_SKIPPED_TOTAL).increment(1);
                    true
                }
            }
        }
    }

    /// Runs `deliver` unless the socket is severed; severs it when the event was not queued.
    fn deliver(&mut self, deliver: impl FnOnce() -> bool) -> bool {
        if self.severed {
            return false;
        }
        if !deliver() {
            self.sever();
        }
        !self.severed
    }

    fn sever(&mut self) {
        self.severed = true;
        self.rooms.clear();
        ::metrics::counter!(metrics::HISTORY_SEVERED_TOTAL).increment(1);
    }
}

/// The gates of socket `sid` of namespace `ns`, created (empty) if it has none yet.
fn socket_gates<'a>(gates: &'a mut Table, ns: &str, sid: Sid) -> &'a mut SocketGates {
    gates
        .entry(ns.to_owned())
        .or_default()
        .entry(sid)
        .or_default()
}

/// The gates of every local socket (all namespaces), and the queue of sockets they severed.
#[derive(Debug)]
pub struct Gates {
    table: Mutex<Table>,
    /// Stamped events already seen on another relay link (see [`crate::marks`]).
    marks: StampedMarks,
    stamped: AtomicU64,
    severed_tx: mpsc::UnboundedSender<Severed>,
    severed_rx: Mutex<Option<mpsc::UnboundedReceiver<Severed>>>,
}

impl Default for Gates {
    fn default() -> Self {
        let (severed_tx, severed_rx) = mpsc::unbounded_channel();
        Self {
            table: Mutex::new(HashMap::new()),
            marks: StampedMarks::default(),
            stamped: AtomicU64::new(0),
            severed_tx,
            severed_rx: Mutex::new(Some(severed_rx)),
        }
    }
}

impl Gates {
    /// True iff this stamped event of `ns` arrives for the first time on any relay link; a
    /// repeat (the same event from another replica) is dropped before any socket sees it.
    pub fn first_arrival(&self, ns: &str, epoch: &str, offset: u64) -> bool {
        self.marks.first_arrival(ns, epoch, offset)
    }

    /// The gate table. A poisoned lock is recovered: every update leaves the table consistent
    /// (a panic cannot stop one half-way through a gate change that matters for exactness).
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the gates of `rooms` of a socket in the pending state (buffering). A room whose
    /// gate is already open stays open: the socket is a member already and keeps receiving
    /// without a seam (re-joining a room must not drop events in flight).
    pub fn hold(&self, ns: &str, sid: Sid, rooms: &[String]) {
        let mut gates = self.lock();
        let socket = socket_gates(&mut gates, ns, sid);
        for room in rooms {
            if !matches!(socket.rooms.get(room), Some(RoomGate::Open(_))) {
                socket
                    .rooms
                    .insert(room.clone(), RoomGate::Pending(Vec::new()));
            }
        }
    }

    /// Opens the gates of `rooms`, all under the gate lock so no live event overtakes:
    /// a pending gate opens at `(at.epoch, at.from)`; then every `replayed` event (offset order)
    /// passes its room's gate, and pending gates move up to `head`; then what the pending
    /// gates buffered passes too, in offset order. `emit` runs for each event let through.
    /// A join passes `from = head` and no replay; a recovered resume the client's offset and
    /// the missed events. `emit` returns whether the event was queued to the socket; when one
    /// was not, the socket is severed (and handed over to be disconnected), nothing more is
    /// emitted and `open` returns `None`. Otherwise returns how many replayed events were emitted.
    pub fn open(
        &self,
        ns: &str,
        sid: Sid,
        rooms: &[String],
        at: Opening<'_>,
        replayed: &[Stamped],
        mut emit: impl FnMut(&Stamped) -> bool,
    ) -> Option<u64> {
        let mut gates = self.lock();
        let socket = socket_gates(&mut gates, ns, sid);
        let mut buffered = Vec::new();
        let mut opened = Vec::new();
        for room in rooms {
            match socket.rooms.get_mut(room) {
                Some(RoomGate::Open(_)) => {}
                Some(gate) => {
                    let old = std::mem::replace(gate, RoomGate::Open(at.floor()));
                    if let RoomGate::Pending(b) = old {
                        buffered.extend(b);
                    }
                    opened.push(room);
                }
                None => {
                    socket
                        .rooms
                        .insert(room.clone(), RoomGate::Open(at.floor()));
                    opened.push(room);
                }
            }
        }
        let mut emitted = 0;
        for ev in replayed {
            if let Some(RoomGate::Open(floor)) = socket.rooms.get_mut(&ev.room)
                && floor.pass(ev)
            {
                if !socket.deliver(|| emit(ev)) {
                    self.severed(ns, sid);
                    return None;
                }
                emitted += 1;
            }
        }
        for room in opened {
            if let Some(RoomGate::Open(floor)) = socket.rooms.get_mut(room)
                && floor.epoch == at.epoch
                && floor.offset < at.head
            {
                floor.offset = at.head;
            }
        }
        // Buffers of several rooms interleave: deliver in offset order.
        buffered.sort_by_key(|e| e.offset);
        for ev in buffered {
            if let Some(RoomGate::Open(floor)) = socket.rooms.get_mut(&ev.room)
                && floor.pass(&ev)
                && !socket.deliver(|| emit(&ev))
            {
                self.severed(ns, sid);
                return None;
            }
        }
        Some(emitted)
    }

    /// Offers a run of stamped events of one room (in offset order) to the room's local
    /// `members`, each member every event of the run before the next member. `deliver(sid, i)`
    /// runs (under the gate lock) for each event `run[i]` a member should get now, and returns
    /// whether it was queued to that socket. A member whose event was not queued gets nothing
    /// more: it is severed and handed over to be disconnected. A member without a gate (it
    /// joined through the application's own code) gets every event, and is severed all the
    /// same when its buffer is full.
    pub fn admit(
        &self,
        ns: &str,
        run: &[Stamped],
        members: &[Sid],
        mut deliver: impl FnMut(Sid, usize) -> bool,
    ) {
        let per_lock = (ADMIT_CHUNK / run.len().max(1)).max(1);
        for chunk in members.chunks(per_lock) {
            let mut gates = self.lock();
            let mut unqueued = Vec::new();
            let mut sockets = gates.get_mut(ns);
            for &sid in chunk {
                let mut events = run.iter().enumerate();
                let queued = match sockets.as_deref_mut().and_then(|s| s.get_mut(&sid)) {
                    None => events.all(|(i, _)| deliver(sid, i)),
                    Some(socket) => events.all(|(i, ev)| socket.admit(ev, || deliver(sid, i))),
                };
                if !queued {
                    unqueued.push(sid);
                }
            }
            for sid in unqueued {
                let socket = socket_gates(&mut gates, ns, sid);
                if !socket.severed {
                    socket.sever();
                }
                tracing::warn!(%sid, ns, "send buffer full: socket severed");
                self.severed(ns, sid);
            }
        }
    }

    /// Hands a socket just severed over to be disconnected ([`Gates::take_severed`]).
    fn severed(&self, ns: &str, sid: Sid) {
        tracing::debug!(%sid, ns, "socket severed; it will resume");
        let _ = self.severed_tx.send((ns.to_owned(), sid));
    }

    /// Severs every socket holding gates: called at the end of a gap of the relay links (see
    /// [`crate::link`]), since events stamped meanwhile never reached this gateway and only a
    /// resume brings them.
    pub fn sever_all(&self) {
        let mut gates = self.lock();
        let mut severed = Vec::new();
        for (ns, sockets) in gates.iter_mut() {
            for (sid, socket) in sockets.iter_mut() {
                if !socket.severed && !socket.rooms.is_empty() {
                    socket.sever();
                    severed.push((ns.clone(), *sid));
                }
            }
        }
        drop(gates);
        if !severed.is_empty() {
            tracing::warn!(
                sockets = severed.len(),
                "relay links were all down: subscribed sockets resume to replay the gap"
            );
        }
        for (ns, sid) in severed {
            self.severed(&ns, sid);
        }
    }

    /// The receiving end of severed sockets, for [`crate::severed::disconnect_severed`];
    /// `None` after the first call.
    pub fn take_severed(&self) -> Option<mpsc::UnboundedReceiver<Severed>> {
        self.severed_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Forgets every gate of a socket (at its disconnect).
    pub fn forget_socket(&self, ns: &str, sid: Sid) {
        if let Some(sockets) = self.lock().get_mut(ns) {
            sockets.remove(&sid);
        }
    }

    /// Forgets a socket's gate of `room` (after `leave`).
    pub fn forget(&self, ns: &str, sid: Sid, room: &str) {
        if let Some(socket) = self.lock().get_mut(ns).and_then(|s| s.get_mut(&sid)) {
            socket.rooms.remove(room);
        }
    }

    /// Counts delivered stamped events; every `SWEEP_EVERY` drops the gates of `ns`'s sockets that
    /// are not in `live()` (the namespace's connected sockets). Gates are dropped at each
    /// disconnect ([`Gates::forget_socket`]); the sweep is the backstop for applications whose
    /// own `on_disconnect` replaces Switchyard's.
    pub fn tick(&self, ns: &str, events: u64, live: impl FnOnce() -> HashSet<Sid>) {
        let before = self.stamped.fetch_add(events, Ordering::Relaxed);
        if before / SWEEP_EVERY != (before + events) / SWEEP_EVERY {
            let live = live();
            if let Some(sockets) = self.lock().get_mut(ns) {
                sockets.retain(|sid, _| live.contains(sid));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(room: &str, offset: u64) -> Stamped {
        ev_in("E", room, offset)
    }

    fn ev_in(epoch: &str, room: &str, offset: u64) -> Stamped {
        Stamped {
            room: room.into(),
            event: "e".into(),
            data: Payload::Null,
            epoch: epoch.into(),
            offset,
        }
    }

    fn at(from: u64, head: u64) -> Opening<'static> {
        Opening {
            epoch: "E",
            from,
            head,
            stale: None,
        }
    }

    #[test]
    fn gates_buffer_then_deliver_each_offset_once_in_order() -> anyhow::Result<()> {
        let h = Gates::default();
        let sid = Sid::new();
        let rooms = vec!["a".to_owned()];
        let mut got = Vec::new();
        h.hold("/", sid, &rooms);
        for o in [4, 5, 6] {
            h.admit("/", &[ev("a", o)], &[sid], |_, _| {
                got.push(o);
                true
            });
        }
        assert!(got.is_empty());
        h.open("/", sid, &rooms, at(4, 4), &[], |e| {
            got.push(e.offset);
            true
        });
        for o in [5, 6, 7] {
            h.admit("/", &[ev("a", o)], &[sid], |_, _| {
                got.push(o);
                true
            });
        }
        assert_eq!(got, [5, 6, 7]);

        // A resume into a fresh room: replayed 2..=4, buffered 4..=6 meanwhile, head 4.
        let sid = Sid::new();
        let mut got = Vec::new();
        h.hold("/", sid, &rooms);
        for o in [4, 5, 6] {
            h.admit("/", &[ev("a", o)], &[sid], |_, _| {
                got.push(o);
                true
            });
        }
        let replayed: Vec<Stamped> = [2, 3, 4].iter().map(|o| ev("a", *o)).collect();
        let n = h.open("/", sid, &rooms, at(1, 4), &replayed, |e| {
            got.push(e.offset);
            true
        });
        assert_eq!(n, Some(3));
        // Re-joining an open room keeps it open: nothing in flight is lost or doubled.
        h.hold("/", sid, &rooms);
        h.admit("/", &[ev("a", 6)], &[sid], |_, _| {
            got.push(6);
            true
        });
        h.admit("/", &[ev("a", 7)], &[sid], |_, _| {
            got.push(7);
            true
        });
        h.open("/", sid, &rooms, at(9, 9), &[], |e| {
            got.push(e.offset);
            true
        });
        h.admit("/", &[ev("a", 8)], &[sid], |_, _| {
            got.push(8);
            true
        });
        assert_eq!(got, [2, 3, 4, 5, 6, 7, 8]);
        Ok(())
    }

    #[test]
    fn a_resume_that_could_not_recover_drops_its_old_epoch_in_flight() -> anyhow::Result<()> {
        let h = Gates::default();
        let sid = Sid::new();
        let rooms = vec!["a".to_owned()];
        let mut got = Vec::new();
        h.hold("/", sid, &rooms);
        // In flight while the resume asked the relay: one event of the client's old epoch,
        // one of the current epoch.
        h.admit("/", &[ev_in("OLD", "a", 900)], &[sid], |_, _| {
            got.push(900);
            true
        });
        h.admit("/", &[ev_in("NEW", "a", 3)], &[sid], |_, _| {
            got.push(3);
            true
        });
        let opening = Opening {
            epoch: "NEW",
            from: 2,
            head: 2,
            stale: Some("OLD"),
        };
        h.open("/", sid, &rooms, opening, &[], |e| {
            got.push(e.offset);
            true
        });
        // Late stragglers of the old epoch are dropped; the current epoch goes on, and so
        // does a later epoch (history lost again while subscribed).
        h.admit("/", &[ev_in("OLD", "a", 901)], &[sid], |_, _| {
            got.push(901);
            true
        });
        h.admit("/", &[ev_in("NEW", "a", 4)], &[sid], |_, _| {
            got.push(4);
            true
        });
        h.admit("/", &[ev_in("NEWER", "a", 1)], &[sid], |_, _| {
            got.push(1);
            true
        });
        h.admit("/", &[ev_in("NEWER", "a", 2)], &[sid], |_, _| {
            got.push(2);
            true
        });
        assert_eq!(got, [3, 4, 1, 2]);
        Ok(())
    }

    /// Runs offered to a whole room at once (more members than one hold of the lock takes):
    /// each member's own gate decides, and a failure severs only that socket, which gets
    /// nothing after the event it lost, whether it has a gate or not.
    #[test]
    fn runs_to_many_members_pass_each_gate_on_its_own() -> anyhow::Result<()> {
        let h = Gates::default();
        let mut severed = h.take_severed().ok_or_else(|| anyhow::anyhow!("taken"))?;
        let rooms = vec!["a".to_owned()];
        let (open, pending, full) = (Sid::new(), Sid::new(), Sid::new());
        for sid in [open, full] {
            h.hold("/", sid, &rooms);
            h.open("/", sid, &rooms, at(0, 0), &[], |_| true);
        }
        h.hold("/", pending, &rooms);
        let plain: Vec<Sid> = (0..ADMIT_CHUNK + 44).map(|_| Sid::new()).collect();
        let plain_full = plain[0];
        let mut members = vec![open, pending, full];
        members.extend(&plain);
        let mut got: HashMap<Sid, Vec<u64>> = HashMap::new();
        for run in [vec![ev("a", 1), ev("a", 2)], vec![ev("a", 3)]] {
            h.admit("/", &run, &members, |sid, i| {
                let offset = run[i].offset;
                if (sid == full || sid == plain_full) && offset == 2 {
                    return false;
                }
                got.entry(sid).or_default().push(offset);
                true
            });
        }
        assert_eq!(got.get(&open), Some(&vec![1, 2, 3]));
        assert_eq!(
            got.get(&full),
            Some(&vec![1]),
            "nothing after the lost event"
        );
        assert_eq!(
            got.get(&plain_full),
            Some(&vec![1]),
            "nothing after the lost event"
        );
        assert_eq!(got.get(&pending), None, "buffered until its gate opens");
        assert!(
            plain[1..]
                .iter()
                .all(|sid| got.get(sid) == Some(&vec![1, 2, 3]))
        );
        assert_eq!(severed.try_recv()?, ("/".to_owned(), full));
        assert_eq!(severed.try_recv()?, ("/".to_owned(), plain_full));
        assert!(
            severed.try_recv().is_err(),
            "each socket is handed over once"
        );
        h.open("/", pending, &rooms, at(0, 0), &[], |e| {
            got.entry(pending).or_default().push(e.offset);
            true
        });
        assert_eq!(got.get(&pending), Some(&vec![1, 2, 3]));
        Ok(())
    }

    /// A full send buffer must never turn into a silent gap: the first event that cannot be
    /// queued severs the socket, no later event (which would move the client's position past
    /// the lost one) reaches it, and it is handed over to be disconnected.
    #[test]
    fn a_full_buffer_severs_the_socket_and_nothing_after_reaches_it() -> anyhow::Result<()> {
        let h = Gates::default();
        let mut severed = h.take_severed().ok_or_else(|| anyhow::anyhow!("taken"))?;
        let (gated, plain) = (Sid::new(), Sid::new());
        let rooms = vec!["a".to_owned()];
        h.hold("/", gated, &rooms);
        h.open("/", gated, &rooms, at(0, 0), &[], |_| true);
        let mut got = Vec::new();
        for sid in [gated, plain] {
            h.admit("/", &[ev("a", 1)], &[sid], |_, _| {
                got.push((sid, 1));
                true
            });
            h.admit("/", &[ev("a", 2)], &[sid], |_, _| false);
            h.admit("/", &[ev("a", 3)], &[sid], |_, _| {
                got.push((sid, 3));
                true
            });
        }
        assert_eq!(got, [(gated, 1), (plain, 1)]);
        assert_eq!(severed.try_recv()?, ("/".to_owned(), gated));
        assert_eq!(severed.try_recv()?, ("/".to_owned(), plain));
        assert!(
            severed.try_recv().is_err(),
            "each socket is handed over once"
        );
        // A resume replay that fills the buffer stops there and reports it.
        let other = Sid::new();
        h.hold("/", other, &rooms);
        let replayed: Vec<Stamped> = [1, 2, 3].iter().map(|o| ev("a", *o)).collect();
        let mut emitted = Vec::new();
        let n = h.open("/", other, &rooms, at(0, 3), &replayed, |e| {
            emitted.push(e.offset);
            e.offset < 2
        });
        assert_eq!((n, emitted), (None, vec![1, 2]));
        assert_eq!(severed.try_recv()?, ("/".to_owned(), other));
        Ok(())
    }
}
