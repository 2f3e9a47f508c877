//! [`Payload`]: any Socket.IO argument, binary attachments included, carried through untouched.
//!
//! `serde_json::Value` has no binary variant, so a `Buffer` published by a client would come out
//! as an array of numbers. socketioxide's common parser hands binary attachments to a visitor's
//! `visit_byte_buf`, and turns `serialize_bytes` back into an attachment; [`Payload`] keeps a
//! [`Payload::Binary`] variant in between, so `publish({data: <Buffer>})` reaches subscribers as
//! a `Buffer` again. Object keys keep their order.
//!
//! [`decode_event_data`] is the one decoder of event data that comes back through the relay
//! (live frames, a room's retained event, a replay) and the one policy for data that does not
//! decode: the event is dropped and counted, never delivered as `null`.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A self-describing value that may contain binary blobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Payload {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Binary(Bytes),
    Array(Vec<Payload>),
    Object(Vec<(String, Payload)>),
}

impl Payload {
    /// An estimate of the encoded size in bytes (JSON text plus raw binary attachments), used
    /// for the `payload_too_large` check. It never under-counts strings or binaries, which is
    /// where the bytes are.
    pub fn encoded_size(&self) -> usize {
        match self {
            Payload::Null => 4,
            Payload::Bool(_) => 5,
            Payload::Int(_) | Payload::UInt(_) | Payload::Float(_) => 20,
            Payload::Str(s) => s.len() + 2,
            Payload::Binary(b) => b.len() + 24,
            Payload::Array(items) => 2 + items.iter().map(|i| i.encoded_size() + 1).sum::<usize>(),
            Payload::Object(fields) => {
                2 + fields
                    .iter()
                    .map(|(k, v)| k.len() + 4 + v.encoded_size())
                    .sum::<usize>()
            }
        }
    }

    /// True when a binary blob appears anywhere inside.
    pub fn has_binary(&self) -> bool {
        match self {
            Payload::Binary(_) => true,
            Payload::Array(items) => items.iter().any(Payload::has_binary),
            Payload::Object(fields) => fields.iter().any(|(_, v)| v.has_binary()),
            _ => false,
        }
    }
}

/// Every argument of an event, however many: a tuple to socketioxide's parser (which then
/// hands over the whole argument list), collected into a vector. `Args<Payload>` keeps
/// binary arguments.
pub struct Args<T = serde_json::Value>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Args<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct All<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for All<T> {
            type Value = Args<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Args<T>, S::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<T>()? {
                    out.push(v);
                }
                Ok(Args(out))
            }
        }
        d.deserialize_tuple(usize::MAX, All(std::marker::PhantomData))
    }
}

/// Several arguments for an emit or an ack: a tuple to socketioxide's parser, so each element
/// is an argument of its own (a `Vec` would be one array argument).
pub struct ArgList<'a>(pub &'a [Payload]);

impl Serialize for ArgList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for item in self.0 {
            t.serialize_element(item)?;
        }
        t.end()
    }
}

/// Event data as it travels through the relay.
#[derive(Debug, Clone, Copy)]
pub enum Encoded<'a> {
    /// One MessagePack value (stamped events, history, most backend events).
    Msgpack(&'a [u8]),
    /// JSON text (backend events published as JSON).
    Json(&'a str),
}

/// Decodes the data of event `event`; `None` when it does not decode, which is logged and
/// counted in `switchyard_gateway_events_undecodable_total{path}` (`path`: where the event was
/// going, e.g. `live`, `retained`, `replay`). The caller drops such an event.
pub fn decode_event_data(data: Encoded<'_>, event: &str, path: &'static str) -> Option<Payload> {
    let decoded = match data {
        Encoded::Msgpack(bytes) => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        Encoded::Json(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
    };
    match decoded {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::warn!(event, path, %error, "undecodable event data: event dropped");
            metrics::counter!(crate::metrics::EVENTS_UNDECODABLE_TOTAL, "path" => path)
                .increment(1);
            None
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Null => s.serialize_unit(),
            Payload::Bool(b) => s.serialize_bool(*b),
            Payload::Int(i) => s.serialize_i64(*i),
            Payload::UInt(u) => s.serialize_u64(*u),
            Payload::Float(f) => s.serialize_f64(*f),
            Payload::Str(v) => s.serialize_str(v),
            Payload::Binary(b) => s.serialize_bytes(b),
            Payload::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Payload::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any Socket.IO value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
        Payload::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Payload, E> {
        Ok(Payload::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Payload, E> {
        Ok(Payload::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Payload, E> {
        Ok(Payload::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Payload, E> {
        Ok(Payload::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload::Binary(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload::Binary(Bytes::from(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Payload::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some((k, v)) = map.next_entry::<String, Payload>()? {
            fields.push((k, v));
        }
        Ok(Payload::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_keeps_key_order() -> anyhow::Result<()> {
        let text = r#"{"z":1,"a":[true,null,-2,1.5,"s"],"m":{"k":"v"}}"#;
        let p: Payload = serde_json::from_str(text)?;
        assert_eq!(serde_json::to_string(&p)?, text);
        Ok(())
    }

    #[test]
    fn binary_is_kept_as_bytes() {
        let p = Payload::Object(vec![(
            "b".into(),
            Payload::Binary(Bytes::from_static(b"\x00\x01")),
        )]);
        assert!(p.has_binary());
        assert!(p.encoded_size() >= 2);
        assert!(!Payload::Str("x".into()).has_binary());
    }

    #[test]
    fn undecodable_data_is_none_never_null() -> anyhow::Result<()> {
        let good = rmp_serde::to_vec(&Payload::Str("x".into()))?;
        assert_eq!(
            decode_event_data(Encoded::Msgpack(&good), "e", "live"),
            Some(Payload::Str("x".into()))
        );
        assert_eq!(
            decode_event_data(Encoded::Msgpack(&[0xc1]), "e", "live"),
            None
        );
        assert_eq!(
            decode_event_data(Encoded::Msgpack(&[]), "e", "replay"),
            None
        );
        assert_eq!(decode_event_data(Encoded::Json("{"), "e", "live"), None);
        assert_eq!(
            decode_event_data(Encoded::Json("null"), "e", "live"),
            Some(Payload::Null)
        );
        Ok(())
    }

    #[test]
    fn size_grows_with_content() {
        let small = Payload::Str("x".into());
        let big = Payload::Str("x".repeat(10_000));
        assert!(big.encoded_size() > 10_000);
        assert!(small.encoded_size() < big.encoded_size());
    }
}
