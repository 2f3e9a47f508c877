//! What the relay accepts from outside: one rule for each thing, in one place.
//!
//! - [`check_namespace`]: every namespace a caller names (Hello, frames, history calls,
//!   `Publish`, admin calls, `--history-namespace`), by the rule every service shares
//!   ([`switchyard_common::namespace`]).
//! - [`head_rooms`]: the rooms of a `Head`, bounded.
//! - [`check_msgpack`] / [`check_json`]: event data, refused at the door rather than dropped by
//!   every gateway that cannot decode it.
//! - [`RoomEvent`]: a room event bound for history. It can only be built by [`RoomEvent::new`],
//!   which applies every check to a `StampRequest`, and it is the only thing a history stamps,
//!   so the `Stamp` RPC, a link's `StampCall` and a `Publish` to one room are held to the same
//!   rules.

use std::collections::HashMap;

use prost::bytes::Bytes;
use switchyard_common::namespace;
use switchyard_proto::MAX_HEAD_ROOMS;
use switchyard_proto::relay::v1::{HeadRequest, StampRequest};
use tonic::Status;

/// Longest publish id accepted, in bytes.
pub const MAX_PUBLISH_ID: usize = 256;

/// Longest `Frame.request_id` accepted, in bytes. The id travels beside the payload, so it is
/// bounded on its own (`--max-frame-bytes` bounds the payload); socketioxide's are 16 bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// Input the relay refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Malformed: `INVALID_ARGUMENT`.
    #[error("{0}")]
    Argument(String),
    /// Event data above `--max-frame-bytes`: `OUT_OF_RANGE`.
    #[error("data of {len} bytes is larger than the relay's --max-frame-bytes ({max})")]
    TooLarge {
        /// The data's size, in bytes.
        len: usize,
        /// `--max-frame-bytes`.
        max: usize,
    },
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Argument(m) => Status::invalid_argument(m),
            too_large @ Invalid::TooLarge { .. } => Status::out_of_range(too_large.to_string()),
        }
    }
}

/// [`namespace::check`], refused as [`Invalid::Argument`].
pub fn check_namespace(ns: &str) -> Result<(), Invalid> {
    namespace::check(ns).map_err(|e| Invalid::Argument(e.to_string()))
}

/// The rooms a `HeadRequest` asks the retained events of: `room` (when not empty) then
/// `rooms`, without empty names or repeats; more than [`MAX_HEAD_ROOMS`] is refused.
pub fn head_rooms(req: &HeadRequest) -> Result<Vec<String>, Invalid> {
    let asked = std::iter::once(&req.room).chain(&req.rooms);
    let mut seen = std::collections::HashSet::new();
    let rooms: Vec<String> = asked
        .filter(|room| !room.is_empty() && seen.insert(room.as_str()))
        .cloned()
        .collect();
    if rooms.len() > MAX_HEAD_ROOMS {
        return Err(Invalid::Argument(format!(
            "a head names at most {MAX_HEAD_ROOMS} rooms, not {}",
            rooms.len()
        )));
    }
    Ok(rooms)
}

/// [`namespace::normalize`] (empty means `/`, for the admin calls that allow it), refused as
/// [`Invalid::Argument`].
pub fn normalize_namespace(ns: &str) -> Result<&str, Invalid> {
    namespace::normalize(ns).map_err(|e| Invalid::Argument(e.to_string()))
}

/// Event data in MessagePack (`field` names it in the refusal): at most `max` bytes, one
/// valid value.
pub fn check_msgpack(field: &str, data: &[u8], max: usize) -> Result<(), Invalid> {
    if data.len() > max {
        return Err(Invalid::TooLarge {
            len: data.len(),
            max,
        });
    }
    rmp_serde::from_slice::<serde::de::IgnoredAny>(data)
        .map(|_| ())
        .map_err(|e| Invalid::Argument(format!("{field} is not valid MessagePack: {e}")))
}

/// Event data in JSON (`field` names it in the refusal): at most `max` bytes (checked before
/// parsing), one valid value, which is returned.
pub fn check_json(field: &str, json: &str, max: usize) -> Result<serde_json::Value, Invalid> {
    if json.len() > max {
        return Err(Invalid::TooLarge {
            len: json.len(),
            max,
        });
    }
    serde_json::from_str(json)
        .map_err(|e| Invalid::Argument(format!("{field} is not valid JSON: {e}")))
}

/// A Socket.IO event name: not empty.
pub fn check_event_name(event: &str) -> Result<(), Invalid> {
    if event.is_empty() {
        Err(Invalid::Argument("event must not be empty".into()))
    } else {
        Ok(())
    }
}

/// A room event that passed every check; what a history stamps. See [`RoomEvent::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct RoomEvent {
    namespace: String,
    room: String,
    event: String,
    msgpack: Bytes,
    retain: bool,
    publish_id: String,
    trace_context: HashMap<String, String>,
}

impl RoomEvent {
    /// The one gate into history: a valid namespace, a room and an event name that are not
    /// empty, a publish id of at most [`MAX_PUBLISH_ID`] bytes (empty: no idempotency), and
    /// data that is one MessagePack value of at most `max_data` bytes.
    pub fn new(req: StampRequest, max_data: usize) -> Result<Self, Invalid> {
        check_namespace(&req.namespace)?;
        if req.room.is_empty() {
            return Err(Invalid::Argument("room must not be empty".into()));
        }
        check_event_name(&req.event)?;
        if req.publish_id.len() > MAX_PUBLISH_ID {
            return Err(Invalid::Argument(format!(
                "publish_id must be at most {MAX_PUBLISH_ID} bytes"
            )));
        }
        check_msgpack("msgpack", &req.msgpack, max_data)?;
        Ok(Self {
            namespace: req.namespace,
            room: req.room,
            event: req.event,
            msgpack: req.msgpack,
            retain: req.retain,
            publish_id: req.publish_id,
            trace_context: HashMap::new(),
        })
    }

    /// Carries `trace_context` (W3C, from `trace_context::to_map`) in the stamped frame, so
    /// each gateway's delivery continues the publisher's trace.
    pub fn with_trace_context(mut self, trace_context: HashMap<String, String>) -> Self {
        self.trace_context = trace_context;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn room(&self) -> &str {
        &self.room
    }

    /// The Socket.IO event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The data: one MessagePack value.
    pub fn msgpack(&self) -> &Bytes {
        &self.msgpack
    }

    /// Whether it also becomes the room's retained event.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// Idempotency key; empty: none.
    pub fn publish_id(&self) -> &str {
        &self.publish_id
    }

    pub fn trace_context(&self) -> &HashMap<String, String> {
        &self.trace_context
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64;

    fn event(
        namespace: &str,
        room: &str,
        name: &str,
        data: &[u8],
        id: &str,
    ) -> Result<RoomEvent, Invalid> {
        let req = StampRequest {
            namespace: namespace.into(),
            room: room.into(),
            event: name.into(),
            msgpack: Bytes::copy_from_slice(data),
            retain: false,
            publish_id: id.into(),
        };
        RoomEvent::new(req, MAX)
    }

    fn code(result: Result<RoomEvent, Invalid>) -> Option<tonic::Code> {
        result.err().map(|e| Status::from(e).code())
    }

    #[test]
    fn a_room_event_is_checked_field_by_field() {
        // 0x2a: the positive fixint 42.
        assert!(event("/", "r", "e", &[0x2a], "").is_ok());
        assert!(event("/chat", "r", "e", &[0x2a], &"i".repeat(MAX_PUBLISH_ID)).is_ok());
        let invalid = Some(tonic::Code::InvalidArgument);
        assert_eq!(code(event("chat", "r", "e", &[0x2a], "")), invalid);
        let long = format!("/{}", "n".repeat(namespace::MAX_LEN));
        assert_eq!(code(event(&long, "r", "e", &[0x2a], "")), invalid);
        assert_eq!(code(event("/", "", "e", &[0x2a], "")), invalid);
        assert_eq!(code(event("/", "r", "", &[0x2a], "")), invalid);
        let long_id = "i".repeat(MAX_PUBLISH_ID + 1);
        assert_eq!(code(event("/", "r", "e", &[0x2a], &long_id)), invalid);
        // 0xc1 is never used in MessagePack; an empty slice holds no value.
        assert_eq!(code(event("/", "r", "e", &[0xc1], "")), invalid);
        assert_eq!(code(event("/", "r", "e", &[], "")), invalid);
        // A string of MAX bytes in MessagePack is longer than MAX.
        let mut big = vec![0xd9, MAX as u8];
        big.extend(std::iter::repeat_n(b'x', MAX));
        assert_eq!(
            code(event("/", "r", "e", &big, "")),
            Some(tonic::Code::OutOfRange)
        );
    }

    #[test]
    fn json_is_checked_and_parsed() {
        assert_eq!(
            check_json("data.json", r#"{"n":1}"#, MAX),
            Ok(serde_json::json!({"n": 1}))
        );
        assert!(matches!(
            check_json("data.json", "{", MAX),
            Err(Invalid::Argument(_))
        ));
        let big = format!("\"{}\"", "x".repeat(MAX));
        assert!(matches!(
            check_json("data.json", &big, MAX),
            Err(Invalid::TooLarge { .. })
        ));
    }

    proptest! {
        /// Whatever the data, the check answers, never panics, and accepts exactly what
        /// decodes as MessagePack within the limit.
        #[test]
        fn msgpack_check_accepts_exactly_what_decodes(
            data in proptest::collection::vec(any::<u8>(), 0..2 * MAX),
        ) {
            let decodes = rmp_serde::from_slice::<serde::de::IgnoredAny>(&data).is_ok();
            let ok = check_msgpack("data", &data, MAX).is_ok();
            prop_assert_eq!(ok, decodes && data.len() <= MAX);
        }
    }
}
