//! Carrying out an emitter [`Operation`] on the cluster, with what the relay already has.
//!
//! - **An emit to exactly one room**, not volatile, with exactly one argument: stamped
//!   through [`RelayState::stamp`] like any room publish ([`crate::validate::RoomEvent`]
//!   checks it), so it gets the namespace's next offset, enters history, and members receive
//!   `event(arg, {room, epoch, offset})` and can resume it. One argument because a history
//!   event carries one value (the shape of every Switchyard room event).
//! - **Any other emit** (the whole namespace, several rooms, an `except`, a volatile one, or
//!   not exactly one argument): a socketioxide broadcast request (`RequestOut::Broadcast`, the
//!   one gateways send each other) in a `BROADCAST` frame from the relay's own origin. Every
//!   gateway of the namespace applies it to its local sockets with the emitter's options,
//!   `volatile` as socketioxide's volatile flag; every argument is kept, binary ones as binary
//!   attachments. Live only: not in history.
//! - **`socketsJoin` / `socketsLeave` / `disconnectSockets`**: `AddSockets` / `DelSockets` /
//!   `DisconnectSockets` requests in `BROADCAST` frames, exactly as between gateways. `close`
//!   has no separate meaning: socketioxide's remote disconnect sends the socket its DISCONNECT
//!   packet (what a Node client sees either way, `io server disconnect`).
//!
//! Payload values of adapter requests are parser-encoded, so they are encoded with the common
//! parser, the one every gateway is configured with (`Switchyard::configure`).

use std::sync::atomic::{AtomicU64, Ordering};

use prost::bytes::Bytes;
use socketioxide_core::{
    Uid,
    adapter::{
        BroadcastFlags, BroadcastOptions, Room,
        remote_packet::{RequestOut, RequestTypeOut},
    },
    packet::Packet,
    parser::Parse,
};
use socketioxide_parser_common::CommonParser;
use switchyard_proto::relay::v1::{Frame, FrameKind, StampRequest};
use tonic::{Code, Status};

use super::message::{Operation, Target};
use super::value::{Arg, Args};
use crate::state::RelayState;

/// Tries of one stamp when the history is unavailable (same publish id, so it is stamped
/// once); then the emit is counted `failed`.
const STAMP_TRIES: u32 = 3;

/// Carries out operations for one replica.
pub struct Applier {
    /// The socketioxide server id the relay's requests carry (gateways answer none of them).
    uid: Uid,
    /// `emitter:<relay_id>:`, the prefix of this replica's publish ids.
    publisher: String,
    published: AtomicU64,
}

impl Applier {
    pub fn new(relay_id: &str) -> Self {
        Self {
            uid: Uid::new(),
            publisher: format!("emitter:{relay_id}:"),
            published: AtomicU64::new(0),
        }
    }

    /// Carries out `op`; returns the metric outcome (`history`, `live`, `join`, `leave`,
    /// `disconnect`) or a status saying why it could not.
    pub async fn apply(
        &self,
        state: &RelayState,
        op: Operation,
        span: &tracing::Span,
    ) -> Result<&'static str, Status> {
        match op {
            Operation::Emit {
                target,
                event,
                args,
                volatile,
            } => {
                let stamped = !volatile
                    && target.rooms.len() == 1
                    && target.except.is_empty()
                    && args.len() == 1;
                if let (true, [arg], [room]) = (stamped, args.as_slice(), target.rooms.as_slice()) {
                    self.stamp(state, &target.namespace, room, event, arg, span)
                        .await?;
                    return Ok("history");
                }
                let value = CommonParser
                    .encode_value(&Args(&args), Some(&event))
                    .map_err(|e| Status::invalid_argument(format!("arguments: {e}")))?;
                let packet = Packet::event(target.namespace.clone(), value);
                let mut opts = options(&target);
                if volatile {
                    opts.add_flag(BroadcastFlags::Volatile);
                }
                let req = RequestOut::new(self.uid, RequestTypeOut::Broadcast(&packet), &opts);
                send(state, &target.namespace, &req, Vec::new()).await?;
                Ok("live")
            }
            Operation::Join { target, rooms } => {
                let rooms = rooms.into_iter().map(Room::Owned).collect();
                let opts = options(&target);
                let req = RequestOut::new(self.uid, RequestTypeOut::AddSockets(&rooms), &opts);
                let joins = rooms.iter().map(|r| r.to_string()).collect();
                send(state, &target.namespace, &req, joins).await?;
                Ok("join")
            }
            Operation::Leave { target, rooms } => {
                let rooms = rooms.into_iter().map(Room::Owned).collect();
                let opts = options(&target);
                let req = RequestOut::new(self.uid, RequestTypeOut::DelSockets(&rooms), &opts);
                send(state, &target.namespace, &req, Vec::new()).await?;
                Ok("leave")
            }
            Operation::Disconnect { target, close: _ } => {
                let opts = options(&target);
                let req = RequestOut::new(self.uid, RequestTypeOut::DisconnectSockets, &opts);
                send(state, &target.namespace, &req, Vec::new()).await?;
                Ok("disconnect")
            }
        }
    }

    /// Stamps one room event, retrying an unavailable history with the same publish id.
    async fn stamp(
        &self,
        state: &RelayState,
        namespace: &str,
        room: &str,
        event: String,
        arg: &Arg,
        span: &tracing::Span,
    ) -> Result<(), Status> {
        let msgpack = rmp_serde::to_vec(arg)
            .map_err(|e| Status::invalid_argument(format!("argument: {e}")))?;
        let n = self.published.fetch_add(1, Ordering::Relaxed) + 1;
        let req = StampRequest {
            namespace: namespace.to_owned(),
            room: room.to_owned(),
            event,
            msgpack: Bytes::from(msgpack),
            retain: false,
            publish_id: format!("{}{n}", self.publisher),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match state.stamp(req.clone(), span).await {
                Ok(position) => {
                    tracing::debug!(offset = position.offset, "emitted through history");
                    return Ok(());
                }
                Err(e) if e.code() == Code::Unavailable && tries < STAMP_TRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(tries)))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// socketioxide's options for a target: its rooms and excepted rooms, with the `Broadcast`
/// flag, without which socketioxide selects no socket when no room is named (there is no
/// sending socket to leave out).
fn options(target: &Target) -> BroadcastOptions {
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    opts.rooms = target.rooms.iter().cloned().map(Room::Owned).collect();
    opts.except = target.except.iter().cloned().map(Room::Owned).collect();
    opts
}

/// One adapter request to every gateway of `namespace`, from the relay's origin; `joins`: the
/// rooms an `AddSockets` joins (`Frame.joins`).
async fn send(
    state: &RelayState,
    namespace: &str,
    req: &RequestOut<'_>,
    joins: Vec<String>,
) -> Result<(), Status> {
    let payload = rmp_serde::to_vec_named(req)
        .map_err(|e| Status::internal(format!("encoding an adapter request: {e}")))?;
    let frame = Frame {
        namespace: namespace.to_owned(),
        kind: FrameKind::Broadcast as i32,
        payload: Bytes::from(payload),
        joins,
        ..Frame::default()
    };
    state.origin.send(&state.bus, frame).await?;
    Ok(())
}
