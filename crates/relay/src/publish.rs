//! `Publish`: events from backend services in any language.
//!
//! A backend sends `PublishRequest{namespace, rooms, except, event, json | msgpack}` with
//! `authorization: Bearer <--publish-token>`. The relay wraps it in a broadcast frame whose
//! `event` is a [`BackendEvent`] (not opaque adapter bytes: the gateway turns it into a
//! socketioxide `to(rooms).except(except).emit(event, data)` itself) and forwards it to every
//! gateway linked for the namespace. The frame's origin is `relay:<relay_id>`, so no gateway
//! is skipped. The token is separate from the admin token so that a backend able to publish
//! cannot drain gateways; with no token configured every call is refused.

use std::sync::atomic::{AtomicU64, Ordering};

use switchyard_proto::relay::v1::{
    BackendEvent, Frame, FrameKind, PublishRequest, PublishResponse, backend_event, publish_request,
};
use tonic::{Request, Status};

use crate::server::RelayState;

static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// Handles one `Publish` call.
pub async fn publish(
    state: &RelayState,
    req: Request<PublishRequest>,
) -> Result<PublishResponse, Status> {
    state.publish_auth.verify(req.metadata())?;
    let req = req.into_inner();
    if !req.namespace.starts_with('/') {
        return Err(Status::invalid_argument("namespace must start with `/`"));
    }
    if req.event.is_empty() {
        return Err(Status::invalid_argument("event must not be empty"));
    }
    let data = match req.data {
        Some(publish_request::Data::Json(json)) => {
            if json.len() > state.max_frame_bytes {
                return Err(too_large(json.len(), state.max_frame_bytes));
            }
            serde_json::from_str::<serde_json::Value>(&json).map_err(|e| {
                Status::invalid_argument(format!("data.json is not valid JSON: {e}"))
            })?;
            backend_event::Data::Json(json)
        }
        Some(publish_request::Data::Msgpack(bytes)) => {
            if bytes.len() > state.max_frame_bytes {
                return Err(too_large(bytes.len(), state.max_frame_bytes));
            }
            backend_event::Data::Msgpack(bytes)
        }
        None => {
            return Err(Status::invalid_argument(
                "data (json or msgpack) is required",
            ));
        }
    };
    let gateways = state.membership.members(&req.namespace).await?.len();
    let frame = Frame {
        namespace: req.namespace.clone(),
        origin: format!("relay:{}", state.relay_id),
        seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        kind: FrameKind::Broadcast as i32,
        incarnation: state.incarnation,
        event: Some(BackendEvent {
            rooms: req.rooms,
            except: req.except,
            event: req.event.clone(),
            data: Some(data),
        }),
        ..Frame::default()
    };
    state.bus.publish(&frame).await?;
    metrics::counter!("switchyard_relay_publish_total").increment(1);
    tracing::debug!(namespace = %req.namespace, event = %req.event, gateways, "published");
    Ok(PublishResponse {
        position: None,
        gateways: u32::try_from(gateways).unwrap_or(u32::MAX),
    })
}

fn too_large(len: usize, max: usize) -> Status {
    Status::out_of_range(format!(
        "data of {len} bytes is larger than the relay's --max-frame-bytes ({max})"
    ))
}
