//! Binary arguments on the hooks' JSON: a blob travels as `{"$binary": "<base64>"}` in both
//! directions, since JSON has no bytes. Standard base64 with padding.
//!
//! From the backend, only an object whose one key is `$binary` with a string value that is
//! valid base64 becomes a blob; anything else (a second key, a number, bad base64) stays the
//! object it is, so no backend answer is lost to this mapping.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use crate::payload::Payload;

/// The key of the one-key object that stands for a blob.
pub const BINARY_KEY: &str = "$binary";

/// A Socket.IO value as the JSON the backend gets.
pub fn to_json(p: &Payload) -> serde_json::Value {
    use serde_json::Value;
    match p {
        Payload::Null => Value::Null,
        Payload::Bool(b) => Value::Bool(*b),
        Payload::Int(i) => Value::from(*i),
        Payload::UInt(u) => Value::from(*u),
        Payload::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Payload::Str(s) => Value::String(s.clone()),
        Payload::Binary(b) => {
            let mut m = serde_json::Map::new();
            m.insert(BINARY_KEY.into(), Value::String(STANDARD.encode(b)));
            Value::Object(m)
        }
        Payload::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Payload::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// JSON from the backend as a Socket.IO value, `{"$binary": …}` objects as blobs.
pub fn from_json(v: serde_json::Value) -> Payload {
    use serde_json::Value;
    match v {
        Value::Null => Payload::Null,
        Value::Bool(b) => Payload::Bool(b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Payload::Int(i),
            (None, Some(u), _) => Payload::UInt(u),
            (None, None, Some(f)) => Payload::Float(f),
            _ => Payload::Null,
        },
        Value::String(s) => Payload::Str(s),
        Value::Array(items) => Payload::Array(items.into_iter().map(from_json).collect()),
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(b64)) = map.get(BINARY_KEY)
                && let Ok(bytes) = STANDARD.decode(b64)
            {
                return Payload::Binary(Bytes::from(bytes));
            }
            Payload::Object(map.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blobs_become_base64_objects_and_come_back() {
        let p = Payload::Array(vec![
            Payload::Str("a".into()),
            Payload::Object(vec![(
                "file".into(),
                Payload::Binary(Bytes::from_static(b"\x00\xffhi")),
            )]),
        ]);
        let j = to_json(&p);
        assert_eq!(j, json!(["a", {"file": {"$binary": "AP9oaQ=="}}]));
        assert_eq!(from_json(j), p);
    }

    #[test]
    fn lookalikes_stay_objects() {
        for v in [
            json!({"$binary": "not base64!"}),
            json!({"$binary": 3}),
            json!({"$binary": "AA==", "other": 1}),
        ] {
            assert!(matches!(from_json(v), Payload::Object(_)));
        }
    }
}
