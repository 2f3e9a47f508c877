//! The adapter's wire format: socketioxide-core requests and responses between gateways,
//! encoded with MessagePack (binary attachments stay raw bytes). Every gateway of a cluster must
//! use the same Socket.IO parser (the common one, forced by [`crate::Switchyard::configure`]),
//! since payload values inside are already parser-encoded.
//!
//! A response frame's payload is `[n][request id (n bytes)][Response]`: the relay routes it to
//! the requesting gateway, which finds the pending request by its id.

use std::str::FromStr;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use socketioxide_core::Sid;
use socketioxide_core::adapter::remote_packet::{RequestIn, RequestOut, Response};

/// A request or broadcast to other gateways, encoded.
pub fn encode_request(req: &RequestOut<'_>) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(req)
}

/// A request or broadcast from another gateway, decoded.
pub fn decode_request(payload: &[u8]) -> Result<RequestIn, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
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

/// `[n][request id][Response]` → (request id, Response bytes); `None` when malformed.
pub fn split_response(payload: Bytes) -> Option<(Sid, Bytes)> {
    let n = usize::from(*payload.first()?);
    let id = payload.get(1..1 + n)?;
    let sid = Sid::from_str(std::str::from_utf8(id).ok()?).ok()?;
    Some((sid, payload.slice(1 + n..)))
}

/// (request id, Response) → `[n][request id][Response]`.
pub fn join_response<T: Serialize>(
    req_id: Sid,
    res: &Response<T>,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let id = req_id.to_string();
    let mut out = Vec::with_capacity(1 + id.len() + 64);
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&id.as_bytes()[..id.len().min(255)]);
    out.extend_from_slice(&rmp_serde::to_vec_named(res)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::Uid;
    use socketioxide_core::adapter::RemoteSocketData;
    use socketioxide_core::adapter::remote_packet::ResponseType;

    #[test]
    fn response_envelope_round_trips() -> anyhow::Result<()> {
        let id = Sid::new();
        let res = Response::<()> {
            node_id: Uid::new(),
            r#type: ResponseType::BroadcastAckCount(3),
        };
        let bytes = join_response(id, &res)?;
        let (got_id, body) = split_response(Bytes::from(bytes)).ok_or(anyhow::anyhow!("split"))?;
        assert_eq!(got_id, id);
        let back: Response<()> = rmp_serde::from_slice(&body)?;
        assert_eq!(back, res);
        assert!(split_response(Bytes::from_static(&[200, b'x'])).is_none());
        Ok(())
    }

    /// Properties over arbitrary frame payloads: whatever another gateway (or a corrupted
    /// frame) sends, decoding answers an error or a value and never panics.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..512)
        }

        proptest! {
            #[test]
            fn arbitrary_response_envelopes_never_panic(bytes in any_bytes()) {
                if let Some((_, body)) = split_response(Bytes::from(bytes)) {
                    let _ = decode_response::<RemoteSocketData>(body.clone());
                    let _ = decode_response::<()>(body.clone());
                    let _ = decode_ack::<serde_json::Value>(body);
                }
            }

            #[test]
            fn arbitrary_request_payloads_never_panic(bytes in any_bytes()) {
                let _ = decode_request(&bytes);
            }

            #[test]
            fn response_envelopes_round_trip(count in any::<u32>()) {
                let id = Sid::new();
                let res = Response::<()> {
                    node_id: Uid::new(),
                    r#type: ResponseType::BroadcastAckCount(count),
                };
                let bytes = join_response(id, &res).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (got, body) = split_response(Bytes::from(bytes))
                    .ok_or_else(|| TestCaseError::fail("split"))?;
                prop_assert_eq!(got, id);
                prop_assert_eq!(decode_response::<()>(body), Some(res));
            }
        }
    }
}
