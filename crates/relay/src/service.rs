//! The `switchyard.relay.v1.Relay` gRPC service: each call checked and handed to the module
//! that owns it (`Link` to [`crate::link`], `Publish` to [`crate::publish`], `Stamp` to
//! [`RelayState::stamp`], `Head` and `Replay` to the history, `Members` to the membership).
//!
//! With `--link-token`, what only gateways do (`Link`, and the history calls `Stamp`, `Head`,
//! `Replay`) needs that token: nobody else may write into or read out of rooms. `Members`
//! reveals only node ids and needs none; `Publish` has its own token.

use std::sync::Arc;

use switchyard_common::trace_context;
use switchyard_proto::relay::v1::{
    HeadRequest, HeadResponse, LinkMessage, Members, MembersRequest, PublishRequest,
    PublishResponse, ReplayRequest, ReplayResponse, StampRequest, StampResponse,
    relay_server::Relay,
};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    link::{self, LinkStream},
    metrics, publish,
    state::{RelayState, stamp_span},
    validate::{check_namespace, head_rooms},
};

/// The `switchyard.relay.v1.Relay` service.
pub struct RelayGrpc {
    state: Arc<RelayState>,
}

impl RelayGrpc {
    /// The service over one replica's state.
    pub fn new(state: Arc<RelayState>) -> Self {
        Self { state }
    }

    /// Refuses a gateway-only call without the `--link-token`, when one is set.
    fn gateway_only(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match &self.state.link_auth {
            Some(auth) => auth
                .verify(metadata)
                .inspect_err(|_| metrics::link_refused("token")),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Relay for RelayGrpc {
    type LinkStream = LinkStream;

    async fn link(
        &self,
        req: Request<Streaming<LinkMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        self.gateway_only(req.metadata())?;
        link::open(Arc::clone(&self.state), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<Members>, Status> {
        let namespace = req.into_inner().namespace;
        let node_ids = self.state.membership.members(&namespace).await?;
        Ok(Response::new(Members {
            namespace,
            node_ids,
        }))
    }

    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        publish::publish(&self.state, req).await.map(Response::new)
    }

    async fn stamp(&self, req: Request<StampRequest>) -> Result<Response<StampResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let (metadata, _, req) = req.into_parts();
        // Continues the publishing gateway's trace; the frame carries it on to every gateway.
        let span = stamp_span(&req);
        trace_context::set_parent_from_metadata(&span, &metadata);
        let position = self
            .state
            .stamp(req, &span)
            .instrument(span.clone())
            .await?;
        Ok(Response::new(StampResponse {
            position: Some(position),
        }))
    }

    async fn head(&self, req: Request<HeadRequest>) -> Result<Response<HeadResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let req = req.into_inner();
        check_namespace(&req.namespace)?;
        let rooms = head_rooms(&req)?;
        let head = self.state.history.head(&req.namespace, &rooms).await?;
        let (retained, retained_events): (Vec<_>, Vec<_>) = head
            .retained
            .into_iter()
            .partition(|event| event.room == req.room);
        Ok(Response::new(HeadResponse {
            position: Some(head.position),
            retained: retained.into_iter().next(),
            retained_events,
        }))
    }

    async fn replay(
        &self,
        req: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let req = req.into_inner();
        check_namespace(&req.namespace)?;
        let res = self.state.history.replay(&req).await?;
        tracing::debug!(namespace = %req.namespace, recovered = res.recovered,
                        events = res.events.len(), after = req.after_offset, "replay");
        Ok(Response::new(res))
    }
}
