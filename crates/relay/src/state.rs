//! The state one relay replica shares between its links and calls, and the one way a room event
//! gets stamped ([`RelayState::stamp`]).

use std::sync::Arc;

use switchyard_common::{grpc::BearerAuth, trace_context};
use switchyard_proto::relay::v1::{Position, StampRequest};
use tonic::Status;

use crate::{
    bus::Bus, history::History, hub::Hub, membership::Membership, origin::Origin,
    validate::RoomEvent,
};

/// Everything a link or a call needs; one per replica, built at startup.
pub struct RelayState {
    /// Random per process; names this replica in `Welcome` and in membership entries.
    pub relay_id: String,
    /// Origin and sequence of the frames this replica writes itself (`relay:<relay_id>`).
    pub origin: Arc<Origin>,
    /// The gateways linked to this replica.
    pub hub: Arc<Hub>,
    /// The way frames reach the other replicas (and so every gateway).
    pub bus: Bus,
    /// Who is linked for a namespace, cluster-wide.
    pub membership: Arc<Membership>,
    /// `--link-queue`: messages a link may have queued towards its gateway.
    pub link_queue: usize,
    /// `--max-frame-bytes`: the largest frame payload, or event data, accepted.
    pub max_frame_bytes: usize,
    /// `--publish-token`, for `Publish`.
    pub publish_auth: BearerAuth,
    /// `--link-token`: when set, `Link`, `Stamp`, `Head` and `Replay` without it are refused
    /// `UNAUTHENTICATED`.
    pub link_auth: Option<BearerAuth>,
    /// Offsets, the bounded event log, retained state (see [`crate::history`]).
    pub history: Box<dyn History>,
}

/// The span of one stamp (`Stamp` RPC, a link's `StampCall`, a `Publish` to one room); its trace
/// context goes into the stamped frame, so every gateway's delivery continues the publisher's
/// trace.
pub fn stamp_span(req: &StampRequest) -> tracing::Span {
    tracing::info_span!("stamp", namespace = %req.namespace, room = %req.room,
                        offset = tracing::field::Empty)
}

impl RelayState {
    /// Checks and stamps one room event inside `span` (see [`stamp_span`]): every path into
    /// history comes through here, so every path is checked by [`RoomEvent::new`].
    pub async fn stamp(&self, req: StampRequest, span: &tracing::Span) -> Result<Position, Status> {
        let event = RoomEvent::new(req, self.max_frame_bytes)?
            .with_trace_context(trace_context::to_map(span));
        let position = self.history.stamp(event).await?;
        span.record("offset", position.offset);
        tracing::trace!(epoch = %position.epoch, offset = position.offset, "stamped");
        Ok(position)
    }
}
