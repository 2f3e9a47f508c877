//! What a gateway's cluster adapter decodes from a relay frame another gateway sent: the
//! MessagePack `RequestIn` of BROADCAST / REQUEST frames, the `Response`s gathered for
//! `fetch_sockets` / `rooms` / acks, and backend event data (MessagePack or JSON) into
//! [`Payload`]. The first byte picks the decoder; every input must decode or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketioxide_core::adapter::RemoteSocketData;
use socketioxide_core::adapter::remote_packet::{RequestIn, Response};
use switchyard_gateway::payload::Payload;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => drop(rmp_serde::from_slice::<RequestIn>(body)),
        1 => drop(rmp_serde::from_slice::<Response<RemoteSocketData>>(body)),
        2 => drop(rmp_serde::from_slice::<Response<serde_json::Value>>(body)),
        3 => {
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
