//! `Publish`: events from backend services in any language.
//!
//! A backend sends `PublishRequest{namespace, rooms, except, event, json | msgpack}` with
//! `authorization: Bearer <--publish-token>`. The relay wraps it in a broadcast frame whose
//! `event` is a [`BackendEvent`] (not opaque adapter bytes: the gateway turns it into a
//! socketioxide `to(rooms).except(except).emit(event, data)` itself) and forwards it to every
//! gateway linked for the namespace. The frame comes from the relay's own origin
//! (`relay:<relay_id>`, see [`crate::origin`]), so no gateway is skipped. The token is separate
//! from the admin token so that a backend able to publish cannot drain gateways; with no token
//! configured every call is refused.
//!
//! **History.** The common backend case, exactly one room and no `except`, is stamped through
//! [`RelayState::stamp`] like a gateway's room publish, with the same checks: the event gets
//! the namespace's next offset, enters the history (so `resume` covers it) and members receive
//! `event(data, {room, epoch, offset})`; the response carries its position. The data is stored
//! as MessagePack (JSON is converted), the encoding of gateway stamps. Any other target (the
//! whole namespace, several rooms, an `except`) has no single room to record it under: it
//! stays a live-only fan-out (position unset, not replayable).

use switchyard_common::trace_context;
use switchyard_proto::relay::v1::{
    BackendEvent, Frame, FrameKind, PublishRequest, PublishResponse, StampRequest, backend_event,
    publish_request,
};
use tonic::{Request, Status};
use tracing::Instrument;

use crate::{
    metrics,
    state::RelayState,
    validate::{Invalid, check_event_name, check_json, check_msgpack, check_namespace},
};

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
    publish_traced(state, req.into_inner(), &span)
        .instrument(span.clone())
        .await
}

async fn publish_traced(
    state: &RelayState,
    mut req: PublishRequest,
    span: &tracing::Span,
) -> Result<PublishResponse, Status> {
    check_namespace(&req.namespace)?;
    check_event_name(&req.event)?;
    let stamped = stamps(&req);
    let data = data(req.data.take(), stamped, state.max_frame_bytes)?;
    let gateways = state.membership.members(&req.namespace).await?.len();
    let gateways = u32::try_from(gateways).unwrap_or(u32::MAX);
    if stamped
        && let (Some(room), backend_event::Data::Msgpack(msgpack)) = (req.rooms.first(), &data)
    {
        let stamp = StampRequest {
            namespace: req.namespace.clone(),
            room: room.clone(),
            event: req.event.clone(),
            msgpack: msgpack.clone(),
            retain: false,
            publish_id: String::new(),
        };
        let position = state.stamp(stamp, span).await?;
        metrics::published("history");
        tracing::debug!(namespace = %req.namespace, %room, event = %req.event,
                        offset = position.offset, gateways, "published through history");
        return Ok(PublishResponse {
            position: Some(position),
            gateways,
        });
    }
    let frame = Frame {
        namespace: req.namespace.clone(),
        kind: FrameKind::Broadcast as i32,
        event: Some(BackendEvent {
            rooms: req.rooms,
            except: req.except,
            event: req.event.clone(),
            data: Some(data),
        }),
        trace_context: trace_context::to_map(span),
        ..Frame::default()
    };
    state.origin.send(&state.bus, frame).await?;
    metrics::published("live");
    tracing::debug!(namespace = %req.namespace, event = %req.event, gateways, "published");
    Ok(PublishResponse {
        position: None,
        gateways,
    })
}

/// Whether a publish goes through history: exactly one room, no `except`.
fn stamps(req: &PublishRequest) -> bool {
    req.rooms.len() == 1 && req.except.is_empty()
}

/// The event's data, checked: MessagePack when it is `stamped` (the encoding of gateway stamps
/// and of replay; JSON is converted), as sent otherwise.
fn data(
    data: Option<publish_request::Data>,
    stamped: bool,
    max: usize,
) -> Result<backend_event::Data, Invalid> {
    match data {
        Some(publish_request::Data::Json(json)) => {
            let value = check_json("data.json", &json, max)?;
            if !stamped {
                return Ok(backend_event::Data::Json(json));
            }
            let bytes = rmp_serde::to_vec(&value)
                .map_err(|e| Invalid::Argument(format!("data.json cannot be encoded: {e}")))?;
            Ok(backend_event::Data::Msgpack(bytes.into()))
        }
        Some(publish_request::Data::Msgpack(bytes)) => {
            check_msgpack("data.msgpack", &bytes, max)?;
            Ok(backend_event::Data::Msgpack(bytes))
        }
        None => Err(Invalid::Argument(
            "data (json or msgpack) is required".into(),
        )),
    }
}
