//! The built-in client events, registered on every socket Switchyard admits.
//!
//! With a relay (history on; see [`crate::resume`] for the guarantees):
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

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use socketioxide::{
    SendError, SocketError,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
};

use crate::admission::Admitted;
use crate::payload::Payload;
use crate::resume::{History, Opening, Stamped};
use crate::rooms::MAX_ROOM_LEN;

/// Limits the built-in events enforce, and the history client when a relay is configured.
#[derive(Debug)]
pub struct EventLimits {
    pub max_rooms_per_socket: usize,
    pub max_payload_bytes: usize,
    /// Set once the cluster state exists (see [`crate::Switchyard::cluster_state`]).
    pub history: std::sync::OnceLock<Arc<History>>,
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
#[derive(Debug, Clone, Deserialize)]
pub struct PublishRequest {
    pub room: String,
    pub event: String,
    #[serde(default)]
    pub data: Payload,
    #[serde(default)]
    pub retain: Option<bool>,
}

/// The argument of `resume`.
#[derive(Debug, Clone, Deserialize)]
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

/// Registers `join`, `leave` and `publish` on `s`. Called from the admission middleware, before
/// socketioxide answers the CONNECT, so no event can arrive before its handler exists.
pub(crate) fn register<A: Adapter>(s: &SocketRef<A>, limits: Arc<EventLimits>) {
    let rooms_lock = Arc::new(RoomsLock::default());
    let l = limits.clone();
    let lock = rooms_lock.clone();
    s.on(
        "join",
        move |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| {
            let limits = l.clone();
            let lock = lock.clone();
            async move {
                if let Some(history) = limits.history.get().cloned() {
                    let result = join_with_history(&s, &limits, &lock, &history, room.ok()).await;
                    count("join", result.as_ref().map(|_| ()).map_err(|e| *e));
                    match result {
                        Ok((room, head)) => {
                            let position = head.position.unwrap_or_default();
                            let retained = head.retained.map(|r| {
                                let data: Payload =
                                    rmp_serde::from_slice(&r.msgpack).unwrap_or_default();
                                json!({"event": r.event, "data": data, "offset": r.offset})
                            });
                            let _ = ack.send(&json!({"ok": true, "epoch": position.epoch,
                                                      "offset": position.offset, "retained": retained}));
                            let rooms = [room];
                            let at = Opening { epoch: &position.epoch, from: position.offset,
                                               head: position.offset, stale: None };
                            history.open(s.ns(), s.id, &rooms, at, &[], |ev| emit_stamped(&s, ev));
                        }
                        Err(e) => {
                            let _ = ack.send(&json!({"ok": false, "error": e.code()}));
                        }
                    }
                    return;
                }
                let result = join(&s, &limits, &lock, room.ok());
                count("join", result);
                let _ = match result {
                    Ok(()) => ack.send(
                        &json!({"ok": true, "epoch": null, "offset": null, "retained": null}),
                    ),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
    let limits_leave = limits.clone();
    s.on(
        "leave",
        move |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| {
            let limits_leave = limits_leave.clone();
            async move {
                let result = match room.ok().as_ref().and_then(valid_room) {
                    Some(room) => {
                        s.leave(room.to_owned());
                        if let Some(history) = limits_leave.history.get() {
                            history.forget(s.ns(), s.id, room);
                        }
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
    let limits_resume = limits.clone();
    s.on(
        "resume",
        move |s: SocketRef<A>, TryData(req): TryData<ResumeRequest>, ack: AckSender<A>| {
            let limits = limits_resume.clone();
            let lock = rooms_lock.clone();
            async move {
                let reply = resume(&s, &limits, &lock, req.ok()).await;
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
            let limits = limits.clone();
            async move {
                if let Some(history) = limits.history.get() {
                    let result = match check_publish(&s, &limits, req.ok()) {
                        Ok(req) => history
                            .stamp(s.ns(), &req.room, &req.event, &req.data, req.retain == Some(true))
                            .await
                            .map_err(|e| {
                                // Debug, not warn: under overload this is every publish, and
                                // the refusals are counted (`switchyard_gateway_events_total`).
                                tracing::debug!(room = %req.room, error = %e, "publish: history unavailable");
                                EventError::Unavailable
                            }),
                        Err(e) => Err(e),
                    };
                    count("publish", result.map(|_| ()));
                    let _ = match result {
                        Ok(offset) => ack.send(&json!({"ok": true, "offset": offset})),
                        Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                    };
                    return;
                }
                let result = match check_publish(&s, &limits, req.ok()) {
                    Ok(req) => {
                        metrics::histogram!("switchyard_gateway_publish_payload_bytes")
                            .record(req.data.encoded_size() as f64);
                        let delivery = Delivery { room: req.room.clone() };
                        // `within` selects every member of the room, the publisher included
                        // when it is one. Through the adapter, so a cluster adapter fans it out.
                        match s.within(req.room.clone()).emit(&req.event, &(&req.data, &delivery)).await {
                            Ok(()) => Ok(()),
                            Err(e) => {
                                // Per-socket send failures (a full buffer) do not undo the publish.
                                tracing::debug!(room = %req.room, error = %e, "publish: some members could not be reached");
                                Ok(())
                            }
                        }
                    }
                    Err(e) => Err(e),
                };
                count("publish", result);
                let _ = match result {
                    Ok(()) => ack.send(&json!({"ok": true, "offset": null})),
                    Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
                };
            }
        },
    );
}

fn count(event: &'static str, result: Result<(), EventError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!("switchyard_gateway_events_total", "event" => event, "outcome" => outcome)
        .increment(1);
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

fn join<A: Adapter>(
    s: &SocketRef<A>,
    limits: &EventLimits,
    lock: &RoomsLock,
    room: Option<Payload>,
) -> Result<(), EventError> {
    let room = room
        .as_ref()
        .and_then(valid_room)
        .ok_or(EventError::BadRequest)?;
    join_checked(s, limits, lock, &[room.to_owned()], || {})
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
struct RoomsLock(std::sync::Mutex<()>);

/// Checks `rooms` (valid, granted, and the socket's rooms after joining them within
/// `--max-rooms-per-socket`) and joins them, in one step under `lock`. `before_join` runs under
/// the lock once every check passed, right before the join (history gates the rooms there).
/// All or nothing: a refusal joins none of them.
fn join_checked<A: Adapter>(
    s: &SocketRef<A>,
    limits: &EventLimits,
    lock: &RoomsLock,
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
    let _held = lock
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let current = s.rooms();
    let new = rooms
        .iter()
        .filter(|r| !current.iter().any(|c| c == *r))
        .count();
    if new > 0 && current.len() + new > limits.max_rooms_per_socket {
        return Err(EventError::TooManyRooms);
    }
    before_join();
    s.join(rooms.to_vec());
    Ok(())
}

/// Emits one stamped event to one socket as `event(data, {room, epoch, offset})`; `false` iff
/// the socket's send buffer is full (the history then severs it).
fn emit_stamped<A: Adapter>(s: &SocketRef<A>, ev: &Stamped) -> bool {
    match s.emit(&ev.event, &(&ev.data, ev.meta())) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(sid = %s.id, error = %e, "stamped event not delivered");
            !matches!(e, SendError::Socket(SocketError::InternalChannelFull))
        }
    }
}

/// `join` with history: gate pending, join locally, then read the head (see crate::resume).
async fn join_with_history<A: Adapter>(
    s: &SocketRef<A>,
    limits: &EventLimits,
    lock: &RoomsLock,
    history: &History,
    room: Option<Payload>,
) -> Result<(String, switchyard_proto::relay::v1::HeadResponse), EventError> {
    let room = room
        .as_ref()
        .and_then(valid_room)
        .ok_or(EventError::BadRequest)?
        .to_owned();
    let rooms = std::slice::from_ref(&room);
    join_checked(s, limits, lock, rooms, || history.hold(s.ns(), s.id, rooms))?;
    match history.head(s.ns(), &room).await {
        Ok(head) => Ok((room, head)),
        Err(e) => {
            tracing::warn!(%room, error = %e, "join: history unavailable");
            s.leave(room.clone());
            history.forget(s.ns(), s.id, &room);
            Err(EventError::Unavailable)
        }
    }
}

/// `resume`: join the rooms, replay what was missed or say it cannot (see crate::resume).
async fn resume<A: Adapter>(
    s: &SocketRef<A>,
    limits: &EventLimits,
    lock: &RoomsLock,
    req: Option<ResumeRequest>,
) -> Result<serde_json::Value, EventError> {
    let req = req.ok_or(EventError::BadRequest)?;
    let mut rooms = req.rooms;
    rooms.sort();
    rooms.dedup();
    let Some(history) = limits.history.get() else {
        join_checked(s, limits, lock, &rooms, || {})?;
        return Ok(
            json!({"ok": true, "recovered": false, "replayed": 0, "epoch": null, "offset": null}),
        );
    };
    join_checked(s, limits, lock, &rooms, || {
        history.hold(s.ns(), s.id, &rooms)
    })?;
    let epoch = req.epoch.unwrap_or_default();
    let replay = match req.offset {
        Some(offset) if !epoch.is_empty() => history.replay(s.ns(), &rooms, &epoch, offset).await,
        // Nothing to resume from: just read the head.
        _ => history.replay(s.ns(), &rooms, "", 0).await,
    };
    let replay = match replay {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "resume: history unavailable");
            for room in &rooms {
                s.leave(room.clone());
                history.forget(s.ns(), s.id, room);
            }
            return Err(EventError::Unavailable);
        }
    };
    let head = replay.head.unwrap_or_default();
    let recovered = replay.recovered;
    let events: Vec<Stamped> = if recovered {
        replay
            .events
            .into_iter()
            .map(|e| Stamped {
                room: e.room,
                event: e.event,
                data: rmp_serde::from_slice(&e.msgpack).unwrap_or_default(),
                epoch: head.epoch.clone(),
                offset: e.offset,
            })
            .collect()
    } else {
        Vec::new()
    };
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
    let replayed = history.open(s.ns(), s.id, &rooms, at, &events, |ev| emit_stamped(s, ev));
    // `None`: the socket's buffer filled mid-replay; it is being disconnected and will resume
    // again from what it got.
    let replayed = replayed.ok_or(EventError::Unavailable)?;
    metrics::counter!("switchyard_gateway_resumes_total",
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
