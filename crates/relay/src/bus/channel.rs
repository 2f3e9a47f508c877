//! The format of a namespace's channel, owned by the bus.
//!
//! A message on a namespace's channel is either an encoded [`Frame`], or a stamped frame,
//! `\0<offset>\n<epoch>\n<Frame>`: the history's stamp script (`history/stamp.lua`) learns the
//! offset only inside Redis, so it writes the position in front of the frame instead of into
//! it. A protobuf message never starts with byte 0, so the two forms cannot be confused. The
//! membership channel carries only a notice ("changed").

use prost::Message;
use switchyard_proto::relay::v1::{Frame, Position};

/// Decodes one message of a namespace's channel (see the module docs).
pub fn decode_message(payload: &[u8]) -> Result<Frame, prost::DecodeError> {
    match decode_stamped(payload) {
        Some(frame) => Ok(frame),
        None => Frame::decode(payload),
    }
}

/// `\0<offset>\n<epoch>\n<frame>` → the frame with its position; `None` if it is not that.
fn decode_stamped(payload: &[u8]) -> Option<Frame> {
    let rest = payload.strip_prefix(&[0u8])?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let offset: u64 = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let rest = &rest[nl + 1..];
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let epoch = std::str::from_utf8(&rest[..nl]).ok()?.to_owned();
    let mut frame = Frame::decode(&rest[nl + 1..]).ok()?;
    frame.position = Some(Position { epoch, offset });
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_forms_of_a_channel_message_decode() {
        let frame = Frame {
            namespace: "/".into(),
            seq: 3,
            ..Frame::default()
        };
        let mut stamped = b"\x0042\nabc\n".to_vec();
        stamped.extend(frame.encode_to_vec());
        let got = decode_message(&stamped).ok().and_then(|f| f.position);
        let want = Position {
            epoch: "abc".into(),
            offset: 42,
        };
        assert_eq!(got, Some(want));
        assert_eq!(decode_message(&frame.encode_to_vec()).ok(), Some(frame));
        assert!(decode_message(b"\x00x\nabc\n").is_err());
    }

    proptest! {
        /// Whatever a Redis channel carries, decoding gives a frame or an error, never a panic.
        #[test]
        fn arbitrary_channel_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(&bytes);
            let mut stamped = b"\x007\nepoch\n".to_vec();
            stamped.extend(&bytes);
            let _ = decode_message(&stamped);
        }
    }
}
