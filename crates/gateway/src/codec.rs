//! The adapter's wire format: socketioxide-core requests and responses between gateways,
//! encoded with MessagePack (binary attachments stay raw bytes), each in the payload of one relay
//! [`Frame`]. Every gateway of a cluster must use the same Socket.IO parser (the common one,
//! forced by [`crate::Switchyard::configure`]), since payload values inside are already
//! parser-encoded.
//!
//! A response frame carries the id of the request it answers in `Frame.request_id` (see
//! `relay.proto`): the relay routes it to the requesting node, which finds the pending request
//! by that id. The relay's admin requests read the same field.

use std::str::FromStr;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use socketioxide_core::Sid;
use socketioxide_core::adapter::remote_packet::{RequestIn, RequestOut, Response};
use switchyard_proto::relay::v1::{Frame, FrameKind};

/// A request or broadcast to the other gateways of `namespace`, as the frame that carries it
/// (`kind` is `BROADCAST` or `REQUEST`; the link numbers it).
pub fn request_frame(
    namespace: &str,
    kind: FrameKind,
    req: &RequestOut<'_>,
) -> Result<Frame, rmp_serde::encode::Error> {
    Ok(Frame {
        namespace: namespace.to_owned(),
        kind: kind as i32,
        payload: Bytes::from(rmp_serde::to_vec_named(req)?),
        ..Frame::default()
    })
}

/// A request or broadcast from another gateway, decoded.
pub fn decode_request(payload: &[u8]) -> Result<RequestIn, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
}

/// The answer `res` to request `req_id`, as the `RESPONSE` frame that carries it to the node
/// `target` in `namespace` (the link numbers it).
pub fn response_frame<T: Serialize>(
    namespace: &str,
    target: &str,
    req_id: Sid,
    res: &Response<T>,
) -> Result<Frame, rmp_serde::encode::Error> {
    Ok(Frame {
        namespace: namespace.to_owned(),
        kind: FrameKind::Response as i32,
        target: target.to_owned(),
        request_id: req_id.to_string(),
        payload: Bytes::from(rmp_serde::to_vec_named(res)?),
        ..Frame::default()
    })
}

/// A `RESPONSE` frame → (the request it answers, its `Response` bytes); `None` when its
/// `request_id` is not a request id.
pub fn read_response(frame: Frame) -> Option<(Sid, Bytes)> {
    let req_id = Sid::from_str(&frame.request_id).ok()?;
    Some((req_id, frame.payload))
}

/// A response, decoded; `None` (logged) when it does not decode.
pub fn decode_response<D: DeserializeOwned>(b: Bytes) -> Option<Response<D>> {
    match rmp_serde::from_slice(&b) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable adapter response");
            None
        }
    }
}

/// An acknowledgement response, for socketioxide's `AckStream`.
pub fn decode_ack<D: DeserializeOwned>(
    b: Bytes,
) -> Result<Response<D>, Box<dyn std::error::Error + Send>> {
    rmp_serde::from_slice(&b).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use socketioxide_core::Uid;
    use socketioxide_core::adapter::RemoteSocketData;
    use socketioxide_core::adapter::remote_packet::ResponseType;

    /// What crosses the relay: the frame, encoded and decoded by prost.
    fn over_the_wire(frame: &Frame) -> anyhow::Result<Frame> {
        Ok(Frame::decode(frame.encode_to_vec().as_slice())?)
    }

    #[test]
    fn a_response_frame_names_its_request_and_target() -> anyhow::Result<()> {
        let id = Sid::new();
        let res = Response::<()> {
            node_id: Uid::new(),
            r#type: ResponseType::BroadcastAckCount(3),
        };
        let frame = over_the_wire(&response_frame("/chat", "gw-2", id, &res)?)?;
        assert_eq!(frame.kind, FrameKind::Response as i32);
        assert_eq!(
            (frame.namespace.as_str(), frame.target.as_str()),
            ("/chat", "gw-2")
        );
        let (got_id, body) = read_response(frame).ok_or(anyhow::anyhow!("no request id"))?;
        assert_eq!(got_id, id);
        assert_eq!(decode_response::<()>(body), Some(res));
        let without_id = Frame {
            kind: FrameKind::Response as i32,
            request_id: "not a request id".into(),
            ..Frame::default()
        };
        assert!(read_response(without_id).is_none());
        Ok(())
    }

    /// Properties over arbitrary frames and payloads: whatever another gateway (or a corrupted
    /// frame) sends, decoding answers an error or a value and never panics.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..512)
        }

        proptest! {
            #[test]
            fn arbitrary_response_frames_never_panic(bytes in any_bytes(), request_id in ".{0,40}") {
                for frame in [
                    Frame::decode(bytes.as_slice()).ok(),
                    Some(Frame { request_id, payload: Bytes::from(bytes), ..Frame::default() }),
                ].into_iter().flatten() {
                    if let Some((_, body)) = read_response(frame) {
                        let _ = decode_response::<RemoteSocketData>(body.clone());
                        let _ = decode_response::<()>(body.clone());
                        let _ = decode_ack::<serde_json::Value>(body);
                    }
                }
            }

            #[test]
            fn arbitrary_request_payloads_never_panic(bytes in any_bytes()) {
                let _ = decode_request(&bytes);
            }

            #[test]
            fn response_frames_round_trip(count in any::<u32>(), target in ".{0,40}") {
                let id = Sid::new();
                let res = Response::<()> {
                    node_id: Uid::new(),
                    r#type: ResponseType::BroadcastAckCount(count),
                };
                let frame = response_frame("/", &target, id, &res)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let frame = over_the_wire(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&frame.target, &target);
                let (got, body) = read_response(frame)
                    .ok_or_else(|| TestCaseError::fail("no request id"))?;
                prop_assert_eq!(got, id);
                prop_assert_eq!(decode_response::<()>(body), Some(res));
            }
        }
    }
}
