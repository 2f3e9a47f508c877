//! `Publish`: events from backend services in any language.
//!
//! A backend sends `PublishRequest{namespace, rooms, except, event, json | msgpack}` with
//! `authorization: Bearer <--publish-token>`. The relay wraps it in a broadcast frame whose
//! `event` is a [`BackendEvent`] (not opaque adapter bytes: the gateway turns it into a
//! socketioxide `to(rooms).except(except).emit(event, data)` itself) and forwards it to every
//! gateway linked for the namespace. The frame's origin is `relay:<relay_id>`, so no gateway
//! is skipped. The token is separate from the admin token so that a backend able to publish
//! cannot drain gateways; with no token configured every call is refused.
//!
//! **History.** The common backend case, exactly one room and no `except`, goes through
//! [`History::stamp`](crate::history::History::stamp) like a gateway's room publish: the event
//! gets the namespace's next offset, enters the history (so `resume` covers it) and members
//! receive `event(data, {room, epoch, offset})`; the response carries its position. The data
//! is stored as MessagePack (JSON is converted), the encoding of gateway stamps. Any other
//! target (the whole namespace, several rooms, an `except`) has no single room to record it
//! under: it stays a live-only fan-out (position unset, not replayable).

use std::collections::HashMap;

use switchyard_common::trace_context;
use tracing::Instrument;

use switchyard_proto::relay::v1::{
    BackendEvent, Frame, FrameKind, PublishRequest, PublishResponse, backend_event, publish_request,
};
use tonic::{Request, Status};

use crate::{history::StampInput, server::RelayState};

/// The last `seq` of this process's live publishes. Receivers keep a per-origin high-water
/// mark, so a frame overtaken by a later one of the same origin would be dropped as a
/// duplicate: the lock is held from taking a `seq` until the bus has the frame, so frames
/// reach the bus in `seq` order.
static LAST_SEQ: tokio::sync::Mutex<u64> = tokio::sync::Mutex::const_new(0);

/// Handles one `Publish` call, in a `publish` span that continues the backend's trace (from
/// its gRPC metadata); the frame carries it on to every gateway's delivery.
pub async fn publish(
    state: &RelayState,
    req: Request<PublishRequest>,
) -> Result<PublishResponse, Status> {
    state.publish_auth.verify(req.metadata())?;
    let span = tracing::info_span!("publish", namespace = %req.get_ref().namespace,
                                   event = %req.get_ref().event);
    trace_context::set_parent_from_metadata(&span, req.metadata());
    let trace = trace_context::to_map(&span);
    publish_traced(state, req.into_inner(), trace)
        .instrument(span)
        .await
}

async fn publish_traced(
    state: &RelayState,
    req: PublishRequest,
    trace: HashMap<String, String>,
) -> Result<PublishResponse, Status> {
    if !req.namespace.starts_with('/') {
        return Err(Status::invalid_argument("namespace must start with `/`"));
    }
    if req.event.is_empty() {
        return Err(Status::invalid_argument("event must not be empty"));
    }
    let stamped = stamps(&req);
    let data = match req.data {
        Some(publish_request::Data::Json(json)) => {
            if json.len() > state.max_frame_bytes {
                return Err(too_large(json.len(), state.max_frame_bytes));
            }
            let value = serde_json::from_str::<serde_json::Value>(&json).map_err(|e| {
                Status::invalid_argument(format!("data.json is not valid JSON: {e}"))
            })?;
            if stamped {
                // History stores MessagePack: the encoding of gateway stamps and of replay.
                let bytes = rmp_serde::to_vec(&value).map_err(|e| {
                    Status::invalid_argument(format!("data.json cannot be encoded: {e}"))
                })?;
                backend_event::Data::Msgpack(bytes.into())
            } else {
                backend_event::Data::Json(json)
            }
        }
        Some(publish_request::Data::Msgpack(bytes)) => {
            if bytes.len() > state.max_frame_bytes {
                return Err(too_large(bytes.len(), state.max_frame_bytes));
            }
            // Refused here, not dropped by every gateway that could not decode it.
            rmp_serde::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
                Status::invalid_argument(format!("data.msgpack is not valid MessagePack: {e}"))
            })?;
            backend_event::Data::Msgpack(bytes)
        }
        None => {
            return Err(Status::invalid_argument(
                "data (json or msgpack) is required",
            ));
        }
    };
    let gateways = state.membership.members(&req.namespace).await?.len();
    if stamped
        && let (Some(room), backend_event::Data::Msgpack(msgpack)) = (req.rooms.first(), &data)
    {
        let position = state
            .history
            .stamp(StampInput {
                namespace: req.namespace.clone(),
                room: room.clone(),
                event: req.event.clone(),
                msgpack: msgpack.clone(),
                retain: false,
                publish_id: String::new(),
                trace_context: trace,
            })
            .await?;
        metrics::counter!("switchyard_relay_publish_total", "path" => "history").increment(1);
        tracing::debug!(namespace = %req.namespace, %room, event = %req.event,
                        offset = position.offset, gateways, "published through history");
        return Ok(PublishResponse {
            position: Some(position),
            gateways: u32::try_from(gateways).unwrap_or(u32::MAX),
        });
    }
    let mut last_seq = LAST_SEQ.lock().await;
    *last_seq += 1;
    let frame = Frame {
        namespace: req.namespace.clone(),
        origin: format!("relay:{}", state.relay_id),
        seq: *last_seq,
        kind: FrameKind::Broadcast as i32,
        incarnation: state.incarnation,
        event: Some(BackendEvent {
            rooms: req.rooms,
            except: req.except,
            event: req.event.clone(),
            data: Some(data),
        }),
        trace_context: trace,
        ..Frame::default()
    };
    state.bus.publish(&frame).await?;
    drop(last_seq);
    metrics::counter!("switchyard_relay_publish_total", "path" => "live").increment(1);
    tracing::debug!(namespace = %req.namespace, event = %req.event, gateways, "published");
    Ok(PublishResponse {
        position: None,
        gateways: u32::try_from(gateways).unwrap_or(u32::MAX),
    })
}

/// Whether a publish goes through history: exactly one room, no `except`.
fn stamps(req: &PublishRequest) -> bool {
    req.rooms.len() == 1 && req.except.is_empty()
}

fn too_large(len: usize, max: usize) -> Status {
    Status::out_of_range(format!(
        "data of {len} bytes is larger than the relay's --max-frame-bytes ({max})"
    ))
}
