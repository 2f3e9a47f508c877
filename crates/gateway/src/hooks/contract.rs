//! The bodies of the three hooks, as `docs/hooks.md` documents them (with a JSON Schema each),
//! and the checks every answer passes before anything of it reaches a socket.
//!
//! Requests are what the gateway sends; answers are what a backend may send back. An answer
//! is parsed into these types, then [`ConnectAnswer::check`] / [`EventAnswer::check`] hold it
//! against the same limits a client's own `join` and `publish` meet (room and event names,
//! data size, rooms per socket) plus the hooks' own caps ([`MAX_EMITS`], [`MAX_REASON_LEN`]);
//! an answer that fails is `invalid_answer`, applied not at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::payload::Payload;
use crate::rooms::MAX_ROOM_LEN;

use super::binary;

/// Emits one event answer may ask for.
pub const MAX_EMITS: usize = 64;
/// The longest reason or error a backend may give (longer ones are cut to this, on a char
/// boundary): it becomes a `connect_error` message or an ack's `error`.
pub const MAX_REASON_LEN: usize = 256;

/// `POST {base}/connect`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    pub sid: String,
    pub node_id: String,
    pub namespace: String,
    pub uid: Option<String>,
    /// What the assignment token said about the client: `uid`, `rooms` (its room patterns).
    pub claims: serde_json::Value,
    /// The client's `auth` object without `token`.
    pub auth: serde_json::Value,
    /// The peer's address, when the listener knows it.
    pub address: Option<String>,
    pub headers: ConnectHeaders,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectHeaders {
    #[serde(rename = "user-agent")]
    pub user_agent: Option<String>,
    pub origin: Option<String>,
}

/// The connect hook's answer, as parsed.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectAnswer {
    pub allow: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub join: Vec<String>,
}

/// What a checked connect answer means for the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow {
        data: serde_json::Value,
        join: Vec<String>,
    },
    Deny {
        reason: String,
    },
}

/// `POST {base}/event`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRequest {
    pub sid: String,
    pub uid: Option<String>,
    pub namespace: String,
    pub event: String,
    /// The event's arguments (without the ack callback), blobs as `{"$binary": …}`.
    pub args: Vec<serde_json::Value>,
    pub rooms: Vec<String>,
    /// The connect hook's `data` (null when it gave none).
    pub data: serde_json::Value,
}

/// The event hook's answer, as parsed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventAnswer {
    #[serde(default)]
    pub ack: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default)]
    pub leave: Vec<String>,
    #[serde(default)]
    pub emit: Vec<EmitAnswer>,
}

/// One emit of an event answer: to a room (through history, as `publish`) or to one socket.
#[derive(Debug, Clone, Deserialize)]
pub struct EmitAnswer {
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    pub event: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A checked emit.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    Room {
        room: String,
        event: String,
        data: Payload,
    },
    Socket {
        sid: String,
        event: String,
        data: Payload,
    },
}

/// A checked event answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actions {
    /// The ack's arguments; `None` when the backend gave none (the ack then gets `{ok: true}`).
    pub ack: Option<Vec<Payload>>,
    pub join: Vec<String>,
    pub leave: Vec<String>,
    pub emit: Vec<Emit>,
}

/// `POST {base}/disconnect`.
#[derive(Debug, Clone, Serialize)]
pub struct DisconnectRequest {
    pub sid: String,
    pub uid: Option<String>,
    pub namespace: String,
    pub reason: String,
}

/// A 4xx answer's body: its `error` is passed on to the client.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What answers are held against.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimits {
    /// `--max-payload-bytes`: each emit's data and the ack.
    pub max_payload_bytes: usize,
    /// `--max-rooms-per-socket`: a join list.
    pub max_rooms: usize,
}

/// Why an answer was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("a room name is empty or longer than {MAX_ROOM_LEN} bytes")]
    Room,
    #[error("more rooms than --max-rooms-per-socket")]
    TooManyRooms,
    #[error("an event name is empty, too long or reserved")]
    Event,
    #[error("an emit names neither `room` nor `to`, or both")]
    Target,
    #[error("more than {MAX_EMITS} emits")]
    TooManyEmits,
    #[error("data larger than --max-payload-bytes")]
    TooLarge,
}

fn check_rooms(rooms: &[String], limits: &AnswerLimits) -> Result<(), AnswerError> {
    if rooms.len() > limits.max_rooms {
        return Err(AnswerError::TooManyRooms);
    }
    if rooms.iter().any(|r| r.is_empty() || r.len() > MAX_ROOM_LEN) {
        return Err(AnswerError::Room);
    }
    Ok(())
}

fn sized(v: serde_json::Value, limits: &AnswerLimits) -> Result<Payload, AnswerError> {
    let p = binary::from_json(v);
    if p.encoded_size() > limits.max_payload_bytes {
        return Err(AnswerError::TooLarge);
    }
    Ok(p)
}

/// `s` cut to [`MAX_REASON_LEN`] bytes on a char boundary.
pub fn bounded_reason(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl ConnectAnswer {
    pub fn check(self, limits: &AnswerLimits) -> Result<Verdict, AnswerError> {
        if !self.allow {
            let reason = self
                .reason
                .as_deref()
                .map(bounded_reason)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "forbidden".to_owned());
            return Ok(Verdict::Deny { reason });
        }
        check_rooms(&self.join, limits)?;
        if binary::from_json(self.data.clone()).encoded_size() > limits.max_payload_bytes {
            return Err(AnswerError::TooLarge);
        }
        Ok(Verdict::Allow {
            data: self.data,
            join: self.join,
        })
    }
}

impl EventAnswer {
    pub fn check(
        self,
        limits: &AnswerLimits,
        valid_event: impl Fn(&str) -> bool,
    ) -> Result<Actions, AnswerError> {
        check_rooms(&self.join, limits)?;
        check_rooms(&self.leave, limits)?;
        if self.emit.len() > MAX_EMITS {
            return Err(AnswerError::TooManyEmits);
        }
        let ack = match self.ack {
            Some(args) => {
                let args: Vec<Payload> = args.into_iter().map(binary::from_json).collect();
                let size: usize = args.iter().map(Payload::encoded_size).sum();
                if size > limits.max_payload_bytes {
                    return Err(AnswerError::TooLarge);
                }
                Some(args)
            }
            None => None,
        };
        let mut emit = Vec::with_capacity(self.emit.len());
        for e in self.emit {
            if !valid_event(&e.event) {
                return Err(AnswerError::Event);
            }
            let data = sized(e.data, limits)?;
            emit.push(match (e.room, e.to) {
                (Some(room), None) => {
                    check_rooms(std::slice::from_ref(&room), limits)?;
                    Emit::Room {
                        room,
                        event: e.event,
                        data,
                    }
                }
                (None, Some(sid)) if !sid.is_empty() && sid.len() <= MAX_ROOM_LEN => Emit::Socket {
                    sid,
                    event: e.event,
                    data,
                },
                _ => return Err(AnswerError::Target),
            });
        }
        Ok(Actions {
            ack,
            join: self.join,
            leave: self.leave,
            emit,
        })
    }
}

/// The claims part of a connect request: the token's `uid` and `rooms` patterns.
pub fn claims(uid: Option<&str>, rooms: &[String]) -> serde_json::Value {
    let mut m = BTreeMap::new();
    m.insert("uid", serde_json::json!(uid));
    m.insert("rooms", serde_json::json!(rooms));
    serde_json::json!(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: AnswerLimits = AnswerLimits {
        max_payload_bytes: 100,
        max_rooms: 2,
    };

    #[test]
    fn a_denial_keeps_a_bounded_reason() -> anyhow::Result<()> {
        let a: ConnectAnswer = serde_json::from_value(json!({"allow": false, "reason": "banned"}))?;
        assert_eq!(
            a.check(&LIMITS)?,
            Verdict::Deny {
                reason: "banned".into()
            }
        );
        let a: ConnectAnswer = serde_json::from_value(json!({"allow": false}))?;
        assert_eq!(
            a.check(&LIMITS)?,
            Verdict::Deny {
                reason: "forbidden".into()
            }
        );
        let long = "é".repeat(400);
        let a: ConnectAnswer = serde_json::from_value(json!({"allow": false, "reason": long}))?;
        let Verdict::Deny { reason } = a.check(&LIMITS)? else {
            anyhow::bail!("allowed")
        };
        assert!(reason.len() <= MAX_REASON_LEN);
        Ok(())
    }

    #[test]
    fn answers_beyond_the_limits_are_refused_whole() -> anyhow::Result<()> {
        let ok = |_: &str| true;
        let a: ConnectAnswer =
            serde_json::from_value(json!({"allow": true, "join": ["a", "b", "c"]}))?;
        assert_eq!(a.check(&LIMITS), Err(AnswerError::TooManyRooms));
        let a: EventAnswer = serde_json::from_value(json!({"join": [""]}))?;
        assert_eq!(a.check(&LIMITS, ok), Err(AnswerError::Room));
        let a: EventAnswer = serde_json::from_value(
            json!({"emit": [{"room": "r", "event": "e", "data": "x".repeat(200)}]}),
        )?;
        assert_eq!(a.check(&LIMITS, ok), Err(AnswerError::TooLarge));
        let a: EventAnswer =
            serde_json::from_value(json!({"emit": [{"room": "r", "to": "s", "event": "e"}]}))?;
        assert_eq!(a.check(&LIMITS, ok), Err(AnswerError::Target));
        let a: EventAnswer =
            serde_json::from_value(json!({"emit": [{"room": "r", "event": "x"}]}))?;
        assert_eq!(a.check(&LIMITS, |_| false), Err(AnswerError::Event));
        let emits: Vec<_> = (0..=MAX_EMITS)
            .map(|_| json!({"to": "s", "event": "e"}))
            .collect();
        let a: EventAnswer = serde_json::from_value(json!({ "emit": emits }))?;
        assert_eq!(a.check(&LIMITS, ok), Err(AnswerError::TooManyEmits));
        Ok(())
    }

    proptest::proptest! {
        /// Whatever bytes a backend answers, parsing and checking them is a value or an error,
        /// never a panic.
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                         text in ".{0,256}") {
            for input in [bytes.as_slice(), text.as_bytes()] {
                if let Ok(a) = serde_json::from_slice::<EventAnswer>(input) {
                    let _ = a.check(&LIMITS, |_| true);
                }
                if let Ok(a) = serde_json::from_slice::<ConnectAnswer>(input) {
                    let _ = a.check(&LIMITS);
                }
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
                    let _ = binary::from_json(v);
                }
            }
        }
    }

    #[test]
    fn a_good_answer_becomes_actions() -> anyhow::Result<()> {
        let a: EventAnswer = serde_json::from_value(json!({
            "ack": [{"id": 7}], "join": ["r"], "leave": ["q"],
            "emit": [{"room": "r", "event": "msg", "data": {"$binary": "AQI="}},
                     {"to": "sid1", "event": "dm", "data": 1}]
        }))?;
        let actions = a.check(&LIMITS, |_| true)?;
        assert_eq!(actions.join, ["r"]);
        assert_eq!(actions.emit.len(), 2);
        assert!(
            matches!(&actions.emit[0], Emit::Room { data: Payload::Binary(b), .. } if b.as_ref() == [1, 2])
        );
        Ok(())
    }
}
