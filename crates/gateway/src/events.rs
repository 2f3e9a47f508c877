//! The built-in client events, registered on every socket Switchyard admits.
//!
//! With a relay (history on; see [`crate::gates`] for the guarantees):
//!
//! - `join(room)` → ack `{ok: true, epoch, offset, retained}`: `offset` is the namespace's
//!   head taken right after the socket joined; the client then receives every event of the
//!   room with a higher offset and none at or below it. `retained` is the room's latest
//!   `retain: true` event `{event, data, offset}` (or null).
//! - `publish({room, event, data, retain?})` → ack `{ok: true, offset}`. Every member of `room`
//!   on every gateway (the publisher too when it is one) receives `event` with two arguments,
//!   `(data, {room, epoch, offset})`, in offset order.
//! - `resume({epoch, offset, rooms})` → ack `{recovered, replayed, epoch, offset}`: joins the
//!   rooms; when the history still holds everything after `(epoch, offset)`, replays the
//!   missed events of those rooms in order, then live ones, none twice (`recovered: true`);
//!   otherwise replays nothing (`recovered: false`: re-sync, e.g. `join` again for the state).
//!   Relay unreachable: `{ok: false, error: "unavailable"}`.
//!
//! Without a relay (a single gateway): `join` acks `{ok, epoch: null, offset: null, retained:
//! null}`, `publish` `{ok, offset: null}` and delivers `(data, {room})`; `resume` only joins
//! and answers `{recovered: false, replayed: 0}`.
//!
//! - `leave(room)` → ack `{ok: true}`, also when the socket was not in the room.
//! - `data` may contain binary (a `Buffer`/`ArrayBuffer`, nested anywhere): it reaches
//!   subscribers as binary, byte for byte.
//!
//! Refusals are acks `{ok: false, error}`, never silence:
//! `bad_request` (not a string room, empty or longer than [`MAX_ROOM_LEN`] bytes, malformed
//! publish, empty or reserved event name), `forbidden` (the room is outside the client's grant,
//! see [`crate::rooms`]), `too_many_rooms` (`--max-rooms-per-socket` reached),
//! `payload_too_large` (`data` larger than `--max-payload-bytes`), `unavailable` (the relay's
//! history cannot be reached).
//!
//! Transport limits sit a little above `--max-payload-bytes` (see
//! [`crate::Switchyard::configure`]): a packet beyond them is not answered with an ack; the
//! transport closes the connection and the client sees a `transport close` / `transport error`
//! disconnect.
//!
//! Reserved event names, refused as `publish` targets: the Socket.IO client's own events
//! (`connect`, `connect_error`, `disconnect`, `disconnecting`, `newListener`,
//! `removeListener`) and anything starting with `switchyard:`.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::json;
use socketioxide::{
    SendError, SocketError,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
};

use crate::admission::Admitted;
use crate::cluster::ClusterState;
use crate::gates::{Opening, Stamped};
use crate::heads::Head;
use crate::metrics;
use crate::observe::{AdminEvent, Observer, SentEvent, outgoing_observer};
use crate::payload::Payload;
use crate::rooms::MAX_ROOM_LEN;

/// Limits the built-in events enforce.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub max_rooms_per_socket: usize,
    pub max_payload_bytes: usize,
}

/// Why a built-in event was refused; serialized as the ack's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("bad_request")]
    BadRequest,
    #[error("forbidden")]
    Forbidden,
    #[error("too_many_rooms")]
    TooManyRooms,
    #[error("payload_too_large")]
    PayloadTooLarge,
    #[error("unavailable")]
    Unavailable,
}

impl EventError {
    pub fn code(self) -> &'static str {
        match self {
            EventError::BadRequest => "bad_request",
            EventError::Forbidden => "forbidden",
            EventError::TooManyRooms => "too_many_rooms",
            EventError::PayloadTooLarge => "payload_too_large",
            EventError::Unavailable => "unavailable",
        }
    }
}

/// The second argument subscribers receive with a published event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Delivery {
    pub room: String,
}

/// The argument of `publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    pub room: String,
    pub event: String,
    #[serde(default)]
    pub data: Payload,
    #[serde(default)]
    pub retain: Option<bool>,
}

/// The argument of `resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeRequest {
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub rooms: Vec<String>,
}

const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// What the built-in events of one socket share.
struct Context {
    limits: EventLimits,
    /// With a relay: history and gates. `None`: a single gateway.
    cluster: Option<ClusterState>,
    rooms_lock: RoomsLock,
}

/// Serializes one socket's room-limit check with its joins.
///
/// socketioxide runs each event of a socket in a task of its own, so two `join`s can run at
/// once; had each read `s.rooms()` and then joined, both could pass the check before either was
/// counted (a 16-room limit once let 17 through). Every join a built-in event makes happens in
/// [`join_checked`], under this lock, between the check and the join: the limit is checked and
/// counted in one step. Leaving takes no lock: it can only make room. A std `Mutex`: the
/// critical section never awaits.
#[derive(Debug, Default)]
struct RoomsLock(Mutex<()>);

/// Registers `join`, `leave`, `publish` and `resume` on `s`. Called from the admission
/// middleware, before socketioxide answers the CONNECT, so no event can arrive before its
/// handler exists. With a cluster and the admin UI's observer on the socket, the cluster
/// adapter of its namespace reports outgoing events to it from now on
/// ([`ClusterState::watch`]).
pub(crate) fn register<A: Adapter>(
    s: &SocketRef<A>,
    limits: EventLimits,
    cluster: Option<ClusterState>,
) {
    if let (Some(cluster), Some(observer)) = (&cluster, s.extensions.get::<Observer>()) {
        cluster.watch(s.ns(), &observer);
    }
    let cx = Arc::new(Context {
        limits,
        cluster,
        rooms_lock: RoomsLock::default(),
    });
    let c = cx.clone();
    s.on(
        "join",
        move |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| {
            let cx = c.clone();
            async move {
                let name = room.as_ref().ok().and_then(valid_room).map(str::to_owned);
                seen(&s, "join", room.as_ref().ok());
                let result = join(&s, &cx, room.ok()).await;
                count("join", result.as_ref().map(|_| ()).map_err(|e| *e));
                if let (Ok(_), Some(room)) = (&result, name) {
                    crate::observe::report(&s, || AdminEvent::RoomJoined {
                        ns: s.ns().to_owned(),
                        room,
                        sid: s.id.to_string(),
                    });
                }
                let _ = match result {
                    Ok(answer) => ack.send(&answer),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
    let c = cx.clone();
    s.on(
        "leave",
        move |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| {
            let cx = c.clone();
            async move {
                seen(&s, "leave", room.as_ref().ok());
                let result = match room.ok().as_ref().and_then(valid_room) {
                    Some(room) => {
                        leave_room(&s, cx.cluster.as_ref(), room);
                        Ok(())
                    }
                    None => Err(EventError::BadRequest),
                };
                count("leave", result);
                let _ = match result {
                    Ok(()) => ack.send(&json!({"ok": true})),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
    let c = cx.clone();
    s.on(
        "resume",
        move |s: SocketRef<A>, TryData(req): TryData<ResumeRequest>, ack: AckSender<A>| {
            let cx = c.clone();
            async move {
                seen(&s, "resume", req.as_ref().ok());
                let reply = resume(&s, &cx, req.ok()).await;
                count("resume", reply.as_ref().map(|_| ()).map_err(|e| *e));
                let _ = match reply {
                    Ok(v) => ack.send(&v),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
    s.on(
        "publish",
        move |s: SocketRef<A>, TryData(req): TryData<PublishRequest>, ack: AckSender<A>| {
            let cx = cx.clone();
            async move {
                seen(&s, "publish", req.as_ref().ok());
                let result = publish(&s, &cx, req.ok()).await;
                count("publish", result.map(|_| ()));
                let _ = match result {
                    Ok(offset) => ack.send(&json!({"ok": true, "offset": offset})),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
}

/// Takes `s` out of `room` (and its history gate), for every path that does: the built-in
/// `leave`, the event hook's `leave`.
pub(crate) fn leave_room<A: Adapter>(s: &SocketRef<A>, cluster: Option<&ClusterState>, room: &str) {
    s.leave(room.to_owned());
    crate::observe::report(s, || AdminEvent::RoomLeft {
        ns: s.ns().to_owned(),
        room: room.to_owned(),
        sid: s.id.to_string(),
    });
    if let Some(cluster) = cluster {
        cluster.gates().forget(s.ns(), s.id, room);
        cluster.link().rooms_left(s.ns(), &[room.to_owned()], None);
    }
}

/// Tells the admin UI (when on) that `event` arrived with `arg`.
fn seen<A: Adapter>(s: &SocketRef<A>, event: &str, arg: Option<&impl Serialize>) {
    crate::observe::report(s, || AdminEvent::Received {
        ns: s.ns().to_owned(),
        sid: s.id.to_string(),
        args: vec![
            serde_json::Value::String(event.to_owned()),
            arg.and_then(|a| serde_json::to_value(a).ok())
                .unwrap_or_default(),
        ],
    });
}

fn count(event: &'static str, result: Result<(), EventError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) => e.code(),
    };
    ::metrics::counter!(metrics::EVENTS_TOTAL, "event" => event, "outcome" => outcome).increment(1);
}

/// A usable room name, or `None` (a `bad_request`).
fn valid_room(p: &Payload) -> Option<&str> {
    match p {
        Payload::Str(s) if !s.is_empty() && s.len() <= MAX_ROOM_LEN => Some(s),
        _ => None,
    }
}

fn grant_allows<A: Adapter>(s: &SocketRef<A>, room: &str) -> bool {
    s.extensions
        .get::<Arc<Admitted>>()
        .is_some_and(|a| a.rooms.allows(room))
}

/// Checks `rooms` (valid, granted, and the socket's rooms after joining them within
/// `--max-rooms-per-socket`) and joins them, in one step under the socket's [`RoomsLock`].
/// `before_join` runs under the lock once every check passed, right before the join (history
/// gates the rooms there). All or nothing: a refusal joins none of them.
fn join_checked<A: Adapter>(
    s: &SocketRef<A>,
    cx: &Context,
    rooms: &[String],
    before_join: impl FnOnce(),
) -> Result<(), EventError> {
    for room in rooms {
        if room.is_empty() || room.len() > MAX_ROOM_LEN {
            return Err(EventError::BadRequest);
        }
        if !grant_allows(s, room) {
            return Err(EventError::Forbidden);
        }
    }
    let _held = cx
        .rooms_lock
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // The socket's own room (with the admin UI on, see `crate::handler`) is not the client's.
    let own = s.id.to_string();
    let current: Vec<_> = s.rooms().into_iter().filter(|r| *r != own).collect();
    let new = rooms
        .iter()
        .filter(|r| !current.iter().any(|c| c == *r))
        .count();
    if new > 0 && current.len() + new > cx.limits.max_rooms_per_socket {
        return Err(EventError::TooManyRooms);
    }
    before_join();
    s.join(rooms.to_vec());
    Ok(())
}

/// Declares `rooms` (just joined locally) to the relays and waits until every relay link
/// filters by them, so the position read next is one from which every later event reaches
/// this gateway (the argument is in [`crate::link`]). On failure the socket leaves them again.
async fn declare<A: Adapter>(
    s: &SocketRef<A>,
    cluster: &ClusterState,
    rooms: &[String],
) -> Result<(), EventError> {
    cluster.link().rooms_joined(s.ns(), rooms);
    if let Err(e) = cluster.link().interest_settled().await {
        tracing::warn!(?rooms, error = %e, "join: the relays did not take the rooms");
        leave_all(s, cluster, rooms);
        return Err(EventError::Unavailable);
    }
    Ok(())
}

/// Undoes a join that could not complete: leaves `rooms`, drops their gates, withdraws them.
fn leave_all<A: Adapter>(s: &SocketRef<A>, cluster: &ClusterState, rooms: &[String]) {
    for room in rooms {
        s.leave(room.clone());
        cluster.gates().forget(s.ns(), s.id, room);
    }
    cluster.link().rooms_left(s.ns(), rooms, None);
}

/// `join`: the ack. With history: gate pending, join locally, declare the room to the relays
/// and wait for them, read the head, ack with the position and the retained event, open the
/// gate at the head (see [`crate::gates`]).
async fn join<A: Adapter>(
    s: &SocketRef<A>,
    cx: &Context,
    room: Option<Payload>,
) -> Result<serde_json::Value, EventError> {
    let room = room
        .as_ref()
        .and_then(valid_room)
        .ok_or(EventError::BadRequest)?
        .to_owned();
    let rooms = std::slice::from_ref(&room);
    let Some(cluster) = &cx.cluster else {
        join_checked(s, cx, rooms, || {})?;
        return Ok(json!({"ok": true, "epoch": null, "offset": null, "retained": null}));
    };
    let gates = cluster.gates();
    join_checked(s, cx, rooms, || gates.hold(s.ns(), s.id, rooms))?;
    declare(s, cluster, rooms).await?;
    let Head { position, retained } = match cluster.heads().head(s.ns(), &room).await {
        Ok(head) => head,
        Err(e) => {
            tracing::warn!(%room, error = %e, "join: history unavailable");
            leave_all(s, cluster, rooms);
            return Err(EventError::Unavailable);
        }
    };
    let retained = retained.map(|r| json!({"event": r.event, "data": r.data, "offset": r.offset}));
    let answer = json!({"ok": true, "epoch": position.epoch, "offset": position.offset,
                        "retained": retained});
    let at = Opening {
        epoch: &position.epoch,
        from: position.offset,
        head: position.offset,
        stale: None,
    };
    let mut to = StampedTo::new(s);
    gates.open(s.ns(), s.id, rooms, at, &[], |ev| to.emit(ev));
    to.report();
    Ok(answer)
}

/// `publish`: the offset in the ack (`None` without a relay).
async fn publish<A: Adapter>(
    s: &SocketRef<A>,
    cx: &Context,
    req: Option<PublishRequest>,
) -> Result<Option<u64>, EventError> {
    let req = check_publish(s, &cx.limits, req)?;
    ::metrics::histogram!(metrics::PUBLISH_PAYLOAD_BYTES).record(req.data.encoded_size() as f64);
    let retain = req.retain == Some(true);
    publish_to_room(
        s,
        cx.cluster.as_ref(),
        &req.room,
        &req.event,
        &req.data,
        retain,
    )
    .await
}

/// A room emit as `publish` makes it, for every path that emits to a room on a client's
/// behalf (the built-in `publish`, the event hook's emits): with a relay, stamped into the
/// room's history (so `resume` covers it) and delivered by the relay to every member on every
/// gateway as `event(data, {room, epoch, offset})`; without one, to the local members as
/// `event(data, {room})`. The offset when stamped. The caller has checked the room, the event
/// name and the data's size.
pub(crate) async fn publish_to_room<A: Adapter>(
    s: &SocketRef<A>,
    cluster: Option<&ClusterState>,
    room: &str,
    event: &str,
    data: &Payload,
    retain: bool,
) -> Result<Option<u64>, EventError> {
    if let Some(cluster) = cluster {
        return cluster
            .history()
            .stamp(s.ns(), room, event, data, retain)
            .await
            .map(Some)
            .map_err(|e| {
                // Debug, not warn: under overload this is every publish, and the refusals are
                // counted (`switchyard_gateway_events_total`).
                tracing::debug!(%room, error = %e, "publish: history unavailable");
                EventError::Unavailable
            });
    }
    let delivery = Delivery {
        room: room.to_owned(),
    };
    // `within` selects every member of the room, the publisher included when it is one. The
    // local adapter reports nothing to the admin UI: this path does (every socket of the
    // gateway carries the same observer, so the publisher's says whether anyone listens).
    let members = s.within(room.to_owned());
    if let Some(observer) = outgoing_observer(s) {
        let sent = SentEvent::of_args(event, [json_of(data), json_of(&delivery)]);
        observer.sent(
            s.ns(),
            members.clone().sockets().iter().map(|m| m.id),
            &sent,
        );
    }
    if let Err(e) = members.emit(event, &(data, &delivery)).await {
        // Per-socket send failures (a full buffer) do not undo the publish.
        tracing::debug!(%room, error = %e, "publish: some members could not be reached");
    }
    Ok(None)
}

/// A value as the admin UI shows it.
fn json_of(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Emits stamped events to one socket, the ones its gate held and the ones replayed, from
/// inside [`Gates::open`](crate::gates::Gates::open); with the admin UI listening (looked up
/// once), keeps what it sent, reported by [`StampedTo::report`] once the gates' lock is
/// released.
struct StampedTo<'a, A: Adapter> {
    s: &'a SocketRef<A>,
    observer: Option<Observer>,
    sent: Vec<SentEvent>,
}

impl<'a, A: Adapter> StampedTo<'a, A> {
    fn new(s: &'a SocketRef<A>) -> Self {
        Self {
            s,
            observer: outgoing_observer(s),
            sent: Vec::new(),
        }
    }

    /// Emits one stamped event as `event(data, {room, epoch, offset})`; `false` iff the
    /// socket's send buffer is full (the gates then sever it).
    fn emit(&mut self, ev: &Stamped) -> bool {
        match self.s.emit(&ev.event, &(&ev.data, ev.meta())) {
            Ok(()) => {
                if self.observer.is_some() {
                    self.sent.push(SentEvent::of_args(
                        &ev.event,
                        [json_of(&ev.data), json_of(&ev.meta())],
                    ));
                }
                true
            }
            Err(e) => {
                tracing::debug!(sid = %self.s.id, error = %e, "stamped event not delivered");
                !matches!(e, SendError::Socket(SocketError::InternalChannelFull))
            }
        }
    }

    /// Tells the admin UI what was sent.
    fn report(self) {
        if let Some(observer) = &self.observer {
            for sent in &self.sent {
                observer.sent(self.s.ns(), [self.s.id], sent);
            }
        }
    }
}

/// `resume`: join the rooms, replay what was missed or say it cannot (see [`crate::gates`]).
async fn resume<A: Adapter>(
    s: &SocketRef<A>,
    cx: &Context,
    req: Option<ResumeRequest>,
) -> Result<serde_json::Value, EventError> {
    let req = req.ok_or(EventError::BadRequest)?;
    let mut rooms = req.rooms;
    rooms.sort();
    rooms.dedup();
    let Some(cluster) = &cx.cluster else {
        join_checked(s, cx, &rooms, || {})?;
        return Ok(
            json!({"ok": true, "recovered": false, "replayed": 0, "epoch": null, "offset": null}),
        );
    };
    let gates = cluster.gates();
    join_checked(s, cx, &rooms, || gates.hold(s.ns(), s.id, &rooms))?;
    declare(s, cluster, &rooms).await?;
    let epoch = req.epoch.unwrap_or_default();
    let history = cluster.history();
    let replay = match req.offset {
        Some(offset) if !epoch.is_empty() => history.replay(s.ns(), &rooms, &epoch, offset).await,
        // Nothing to resume from: just read the head.
        _ => history.replay(s.ns(), &rooms, "", 0).await,
    };
    let replay = match replay {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "resume: history unavailable");
            leave_all(s, cluster, &rooms);
            return Err(EventError::Unavailable);
        }
    };
    let head = replay.head;
    let recovered = replay.recovered;
    let from = if recovered {
        req.offset.unwrap_or(head.offset)
    } else {
        head.offset
    };
    // The client's epoch is over when the relay is in another one: drop its stragglers.
    let stale = (!epoch.is_empty() && epoch != head.epoch).then_some(epoch.as_str());
    let at = Opening {
        epoch: &head.epoch,
        from,
        head: head.offset,
        stale,
    };
    let mut to = StampedTo::new(s);
    let replayed = gates.open(s.ns(), s.id, &rooms, at, &replay.events, |ev| to.emit(ev));
    to.report();
    // `None`: the socket's buffer filled mid-replay; it is being disconnected and will resume
    // again from what it got.
    let replayed = replayed.ok_or(EventError::Unavailable)?;
    ::metrics::counter!(metrics::RESUMES_TOTAL,
                        "outcome" => if recovered { "recovered" } else { "lost" })
    .increment(1);
    tracing::debug!(sid = %s.id, recovered, replayed, head = head.offset, "resume");
    Ok(
        json!({"ok": true, "recovered": recovered, "replayed": replayed,
              "epoch": head.epoch, "offset": head.offset}),
    )
}

fn check_publish<A: Adapter>(
    s: &SocketRef<A>,
    limits: &EventLimits,
    req: Option<PublishRequest>,
) -> Result<PublishRequest, EventError> {
    let req = req.ok_or(EventError::BadRequest)?;
    if req.room.is_empty() || req.room.len() > MAX_ROOM_LEN || !valid_event_name(&req.event) {
        return Err(EventError::BadRequest);
    }
    if !grant_allows(s, &req.room) {
        return Err(EventError::Forbidden);
    }
    if req.data.encoded_size() > limits.max_payload_bytes {
        return Err(EventError::PayloadTooLarge);
    }
    Ok(req)
}

/// Event names a publish may target.
pub fn valid_event_name(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= MAX_ROOM_LEN
        && !RESERVED_EVENTS.contains(&event)
        && !event.starts_with("switchyard:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_odd_event_names_are_refused() {
        assert!(valid_event_name("message"));
        assert!(valid_event_name("chat:new"));
        for bad in [
            "",
            "connect",
            "disconnect",
            "connect_error",
            "newListener",
            "switchyard:drain",
        ] {
            assert!(!valid_event_name(bad), "{bad}");
        }
        assert!(!valid_event_name(&"x".repeat(MAX_ROOM_LEN + 1)));
    }

    #[test]
    fn only_nonempty_short_strings_are_rooms() {
        assert_eq!(valid_room(&Payload::Str("a".into())), Some("a"));
        assert_eq!(valid_room(&Payload::Str(String::new())), None);
        assert_eq!(valid_room(&Payload::Int(1)), None);
        assert_eq!(
            valid_room(&Payload::Str("r".repeat(MAX_ROOM_LEN + 1))),
            None
        );
    }

    #[test]
    fn publish_request_parses_with_optional_fields() -> anyhow::Result<()> {
        let r: PublishRequest = serde_json::from_str(r#"{"room":"a","event":"e"}"#)?;
        assert_eq!(r.data, Payload::Null);
        assert_eq!(r.retain, None);
        let r: PublishRequest =
            serde_json::from_str(r#"{"room":"a","event":"e","data":{"x":1},"retain":true}"#)?;
        assert_eq!(r.retain, Some(true));
        assert!(serde_json::from_str::<PublishRequest>(r#"{"room":1,"event":"e"}"#).is_err());
        Ok(())
    }
}
