//! What a gateway's cluster adapter decodes from a relay frame another gateway sent: the
//! MessagePack `RequestIn` of BROADCAST / REQUEST frames, RESPONSE frames (the request id in
//! `Frame.request_id`, then the `Response`s gathered for `fetch_sockets` / `rooms` / acks), and
//! backend event data (MessagePack or JSON) into [`Payload`]. The first byte picks the decoder;
//! every input must decode or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use socketioxide_core::adapter::RemoteSocketData;
use switchyard_gateway::codec::{decode_ack, decode_request, decode_response, read_response};
use switchyard_gateway::payload::Payload;
use switchyard_proto::relay::v1::Frame;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => drop(decode_request(body)),
        1 => drop(decode_response::<RemoteSocketData>(body.to_vec().into())),
        2 => drop(decode_ack::<serde_json::Value>(body.to_vec().into())),
        3 => {
            // A whole RESPONSE frame as it arrives from the relay.
            if let Some((_, response)) = Frame::decode(body).ok().and_then(read_response) {
                let _ = decode_response::<RemoteSocketData>(response.clone());
                let _ = decode_ack::<serde_json::Value>(response);
            }
        }
        4 => {
            // Decoded event data is re-encoded to every receiving socket: that must hold too.
            if let Ok(p) = rmp_serde::from_slice::<Payload>(body) {
                let _ = rmp_serde::to_vec_named(&p);
                let _ = p.encoded_size();
            }
        }
        _ => {
            if let Ok(p) = serde_json::from_slice::<Payload>(body) {
                let _ = serde_json::to_vec(&p);
                let _ = p.encoded_size();
            }
        }
    }
});
