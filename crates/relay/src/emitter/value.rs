//! [`Arg`]: one argument of an emitted event, decoded from the MessagePack that
//! `@socket.io/redis-emitter` writes (notepack.io 3), binary kept as binary.
//!
//! The decoder is written here rather than taken from a serde format because notepack's output
//! needs three decisions serde would not make for us: a `Date` arrives as the MessagePack
//! timestamp extension (-1) and becomes the ISO 8601 string `JSON.stringify` would have sent to
//! a Node client; every other extension type is refused (nothing in the emitter writes one);
//! map keys must be strings (a JavaScript object's). It reads untrusted bytes, so every length
//! is checked against the bytes left before anything is allocated, nesting stops at
//! [`MAX_DEPTH`], and the input must be exactly one value.
//!
//! [`Arg`] serializes with `serialize_bytes` for binary, so the same value becomes a binary
//! attachment in socketioxide's common parser (live emits) and a MessagePack `bin` again for
//! history (stamped emits), which gateways decode binary-preserving.

use prost::bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, SerializeTuple, Serializer};

/// Deepest nesting of arrays and maps accepted.
pub const MAX_DEPTH: usize = 64;

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Bytes),
    Array(Vec<Arg>),
    Map(Vec<(String, Arg)>),
}

impl Arg {
    /// The string inside, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Arg::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The field `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Arg> {
        match self {
            Arg::Map(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Why bytes are not one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ends in the middle of a value")]
    Truncated,
    #[error("{0} bytes after the value")]
    Trailing(usize),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("marker 0x{0:02x} is not MessagePack")]
    Reserved(u8),
    #[error("a string that is not UTF-8")]
    NotUtf8,
    #[error("a map key that is not a string")]
    KeyNotString,
    #[error("extension type {0}, not a timestamp")]
    Extension(i8),
    #[error("a timestamp out of range")]
    BadTimestamp,
}

/// Decodes exactly one value from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Arg, DecodeError> {
    let mut rd = Reader { bytes, at: 0 };
    let value = rd.value(0)?;
    match bytes.len() - rd.at {
        0 => Ok(value),
        n => Err(DecodeError::Trailing(n)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let out = self.bytes.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(out)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| DecodeError::Truncated)
    }

    fn value(&mut self, depth: usize) -> Result<Arg, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => Arg::UInt(u64::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.seq(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(marker & 0x1f))?,
            0xc0 => Arg::Nil,
            0xc1 => return Err(DecodeError::Reserved(marker)),
            0xc2 => Arg::Bool(false),
            0xc3 => Arg::Bool(true),
            0xc4 => {
                let n = usize::from(self.u8()?);
                self.bin(n)?
            }
            0xc5 => {
                let n = self.u16()?;
                self.bin(n)?
            }
            0xc6 => {
                let n = self.u32()?;
                self.bin(n)?
            }
            0xc7 => {
                let n = usize::from(self.u8()?);
                self.ext(n)?
            }
            0xc8 => {
                let n = self.u16()?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.u32()?;
                self.ext(n)?
            }
            0xca => Arg::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Arg::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Arg::UInt(u64::from(self.u8()?)),
            0xcd => Arg::UInt(u64::from(u16::from_be_bytes(self.array()?))),
            0xce => Arg::UInt(u64::from(u32::from_be_bytes(self.array()?))),
            0xcf => Arg::UInt(u64::from_be_bytes(self.array()?)),
            0xd0 => Arg::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Arg::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Arg::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Arg::Int(i64::from_be_bytes(self.array()?)),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = usize::from(self.u8()?);
                self.str(n)?
            }
            0xda => {
                let n = self.u16()?;
                self.str(n)?
            }
            0xdb => {
                let n = self.u32()?;
                self.str(n)?
            }
            0xdc => {
                let n = self.u16()?;
                self.seq(n, depth)?
            }
            0xdd => {
                let n = self.u32()?;
                self.seq(n, depth)?
            }
            0xde => {
                let n = self.u16()?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.u32()?;
                self.map(n, depth)?
            }
            0xe0..=0xff => Arg::Int(i64::from(i8::from_be_bytes([marker]))),
        })
    }

    fn str(&mut self, n: usize) -> Result<Arg, DecodeError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        Ok(Arg::Str(s.to_owned()))
    }

    fn bin(&mut self, n: usize) -> Result<Arg, DecodeError> {
        Ok(Arg::Bin(Bytes::copy_from_slice(self.take(n)?)))
    }

    fn seq(&mut self, n: usize, depth: usize) -> Result<Arg, DecodeError> {
        // Every element takes at least one byte: a claimed length beyond what is left is a lie.
        if n > self.left() {
            return Err(DecodeError::Truncated);
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Arg::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Arg, DecodeError> {
        if n.saturating_mul(2) > self.left() {
            return Err(DecodeError::Truncated);
        }
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let Arg::Str(key) = self.value(depth + 1)? else {
                return Err(DecodeError::KeyNotString);
            };
            fields.push((key, self.value(depth + 1)?));
        }
        Ok(Arg::Map(fields))
    }

    /// An extension of `n` data bytes: only the timestamp (-1), as an ISO 8601 string.
    fn ext(&mut self, n: usize) -> Result<Arg, DecodeError> {
        let ty = i8::from_be_bytes([self.u8()?]);
        let data = self.take(n)?;
        if ty != -1 {
            return Err(DecodeError::Extension(ty));
        }
        let (secs, nanos) = match data.len() {
            4 => {
                let mut b = [0; 4];
                b.copy_from_slice(data);
                (i64::from(u32::from_be_bytes(b)), 0)
            }
            8 => {
                let mut b = [0; 8];
                b.copy_from_slice(data);
                let v = u64::from_be_bytes(b);
                // 30 bits of nanoseconds, 34 bits of seconds.
                let secs =
                    i64::try_from(v & 0x3_ffff_ffff).map_err(|_| DecodeError::BadTimestamp)?;
                (
                    secs,
                    u32::try_from(v >> 34).map_err(|_| DecodeError::BadTimestamp)?,
                )
            }
            12 => {
                let mut n = [0; 4];
                n.copy_from_slice(&data[..4]);
                let mut s = [0; 8];
                s.copy_from_slice(&data[4..]);
                (i64::from_be_bytes(s), u32::from_be_bytes(n))
            }
            _ => return Err(DecodeError::BadTimestamp),
        };
        switchyard_common::iso8601::from_unix(secs, nanos)
            .map(Arg::Str)
            .ok_or(DecodeError::BadTimestamp)
    }
}

impl Serialize for Arg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Arg::Nil => s.serialize_unit(),
            Arg::Bool(b) => s.serialize_bool(*b),
            Arg::Int(i) => s.serialize_i64(*i),
            Arg::UInt(u) => s.serialize_u64(*u),
            Arg::Float(f) => s.serialize_f64(*f),
            Arg::Str(v) => s.serialize_str(v),
            Arg::Bin(b) => s.serialize_bytes(b),
            Arg::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Arg::Map(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// An event's arguments, serialized as a tuple: socketioxide's parsers send a tuple as that
/// many arguments (`emit("e", a, b)`), anything else as one.
pub struct Args<'a>(pub &'a [Arg]);

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut tuple = s.serialize_tuple(self.0.len())?;
        for arg in self.0 {
            tuple.serialize_element(arg)?;
        }
        tuple.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notepack_values_decode() {
        // ["a", 1, -1, 1.5, nil, true, {"k": bin[1,2]}]
        let bytes = [
            0x97, 0xa1, b'a', 0x01, 0xff, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc0, 0xc3, 0x81,
            0xa1, b'k', 0xc4, 0x02, 1, 2,
        ];
        let want = Arg::Array(vec![
            Arg::Str("a".into()),
            Arg::UInt(1),
            Arg::Int(-1),
            Arg::Float(1.5),
            Arg::Nil,
            Arg::Bool(true),
            Arg::Map(vec![("k".into(), Arg::Bin(Bytes::from_static(&[1, 2])))]),
        ]);
        assert_eq!(decode(&bytes), Ok(want));
    }

    #[test]
    fn a_date_becomes_its_iso_string() {
        // notepack's own example: new Date('2000-06-13T00:00:00.000Z') => d6 ff 39 45 79 80.
        assert_eq!(
            decode(&[0xd6, 0xff, 0x39, 0x45, 0x79, 0x80]),
            Ok(Arg::Str("2000-06-13T00:00:00.000Z".into()))
        );
        // 64-bit form: 1.5 s after the epoch.
        let v: u64 = (500_000_000u64 << 34) | 1;
        let mut bytes = vec![0xd7, 0xff];
        bytes.extend(v.to_be_bytes());
        assert_eq!(
            decode(&bytes),
            Ok(Arg::Str("1970-01-01T00:00:01.500Z".into()))
        );
    }

    #[test]
    fn what_is_not_one_value_is_refused() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc1]), Err(DecodeError::Reserved(0xc1)));
        assert_eq!(decode(&[0x01, 0x02]), Err(DecodeError::Trailing(1)));
        assert_eq!(decode(&[0xd4, 0x05, 0x00]), Err(DecodeError::Extension(5)));
        assert_eq!(decode(&[0x81, 0x01, 0x01]), Err(DecodeError::KeyNotString));
        assert_eq!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&[0x91; 100]), Err(DecodeError::TooDeep));
    }

    #[test]
    fn binary_survives_a_round_trip_through_messagepack() -> anyhow::Result<()> {
        let arg = Arg::Map(vec![("b".into(), Arg::Bin(Bytes::from_static(&[0, 255])))]);
        let bytes = rmp_serde::to_vec(&arg)?;
        assert_eq!(decode(&bytes)?, arg);
        Ok(())
    }

    proptest! {
        /// Whatever is published on an emitter channel, decoding answers, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
