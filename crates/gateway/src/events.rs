//! The built-in client events, registered on every socket Switchyard admits.
//!
//! - `join(room)` → ack `{ok: true, epoch: null, offset: null, retained: null}`. Joining a room
//!   the socket is already in is a success. (Positions and retained state arrive with the relay.)
//! - `leave(room)` → ack `{ok: true}`, also when the socket was not in the room.
//! - `publish({room, event, data, retain?})` → ack `{ok: true, offset: null}`. Every member of
//!   `room` receives `event` with two arguments, `(data, {room})`; the publisher too when it is a
//!   member; a publisher need not be one. `data` may contain binary (a `Buffer`/`ArrayBuffer`,
//!   nested anywhere): it reaches subscribers as binary, byte for byte.
//!
//! Refusals are acks `{ok: false, error}`, never silence:
//! `bad_request` (not a string room, empty or longer than [`MAX_ROOM_LEN`] bytes, malformed
//! publish, empty or reserved event name), `forbidden` (the room is outside the client's grant,
//! see [`crate::rooms`]), `too_many_rooms` (`--max-rooms-per-socket` reached),
//! `payload_too_large` (`data` larger than `--max-payload-bytes`).
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
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
};

use crate::admission::Admitted;
use crate::payload::Payload;
use crate::rooms::MAX_ROOM_LEN;

/// Limits the built-in events enforce.
#[derive(Debug, Clone)]
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
}

impl EventError {
    pub fn code(self) -> &'static str {
        match self {
            EventError::BadRequest => "bad_request",
            EventError::Forbidden => "forbidden",
            EventError::TooManyRooms => "too_many_rooms",
            EventError::PayloadTooLarge => "payload_too_large",
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
    let l = limits.clone();
    s.on(
        "join",
        move |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| {
            let limits = l.clone();
            async move {
                let result = join(&s, &limits, room.ok());
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
    s.on(
        "leave",
        |s: SocketRef<A>, TryData(room): TryData<Payload>, ack: AckSender<A>| async move {
            let result = match room.ok().as_ref().and_then(valid_room) {
                Some(room) => {
                    s.leave(room.to_owned());
                    Ok(())
                }
                None => Err(EventError::BadRequest),
            };
            count("leave", result);
            let _ = match result {
                Ok(()) => ack.send(&json!({"ok": true})),
                Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
            };
        },
    );
    s.on(
        "publish",
        move |s: SocketRef<A>, TryData(req): TryData<PublishRequest>, ack: AckSender<A>| {
            let limits = limits.clone();
            async move {
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
    room: Option<Payload>,
) -> Result<(), EventError> {
    let room = room
        .as_ref()
        .and_then(valid_room)
        .ok_or(EventError::BadRequest)?;
    if !grant_allows(s, room) {
        return Err(EventError::Forbidden);
    }
    let rooms = s.rooms();
    if !rooms.iter().any(|r| r == room) && rooms.len() >= limits.max_rooms_per_socket {
        return Err(EventError::TooManyRooms);
    }
    s.join(room.to_owned());
    Ok(())
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
