//! What the relay decodes from the network: a gateway's `LinkMessage` (gRPC body), and the
//! messages replicas exchange over Redis pub/sub (the bus's channel format: plain `Frame`s, or
//! `\0<offset>\n<epoch>\n<frame>` from the history's stamp script). Every input must decode or
//! fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::relay::v1::{Frame, LinkMessage};
use switchyard_relay::bus::decode_message;

fuzz_target!(|data: &[u8]| {
    let _ = LinkMessage::decode(data);
    let _ = Frame::decode(data);
    let _ = decode_message(data);
});
