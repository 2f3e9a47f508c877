//! The cluster adapter: socketioxide operations across every gateway, through the relay.
//!
//! [`ClusterAdapter`] is a socketioxide `CoreAdapter` whose transport is the relay link
//! ([`crate::link`]). Plug it with
//! `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state)`, where `state` is
//! [`crate::Switchyard::cluster_state`]; then ordinary socketioxide code spans the cluster:
//!
//! - `to(room).emit`, `except`, `within`, `broadcast` (the built-in `publish` event included):
//!   sent as one `BROADCAST` frame, applied by every other gateway to its local sockets, and
//!   applied locally here;
//! - broadcast with acks: a `REQUEST` frame; every other gateway answers with its ack count,
//!   then each ack, as `RESPONSE` frames to this node. The expected number of gateways is the
//!   relay's membership (`Members`), so a dead gateway is never waited for;
//! - `fetch_sockets` (remote sockets with their rooms), `rooms`: requests gathered until every
//!   other gateway answered or the ack timeout passed;
//! - remote `join` / `leave` / `disconnect` (`add_sockets`, `del_sockets`, `disconnect_socket`):
//!   broadcast frames, applied everywhere;
//! - stamped room events and backend events (`Publish` on the relay): handed to
//!   [`crate::delivery`], which delivers them to the local sockets (stamped ones through the
//!   gates, as runs).
//!
//! The frames carry socketioxide-core requests and responses in the wire format of
//! [`crate::codec`]. A `to(rooms)` broadcast names its rooms in `Frame.rooms`, so relays route
//! it only to gateways with members in them (interest routing, see [`crate::link`]); the
//! adapter gives the link its local room membership for that ([`RelayLink::set_member_check`]),
//! and announces the rooms remote joins add or remove here.
//!
//! While the link is down, frames queue and are resent after the relink (see [`crate::link`]);
//! requests that need answers just get fewer answers within their timeout.
//!
//! **Admin UI.** Whatever this adapter delivers to local sockets (broadcasts of this gateway,
//! broadcasts from other gateways, and what [`crate::delivery`] delivers) is reported to the
//! admin UI as sent when it listens to outgoing events: the namespace's
//! [`OutgoingWatch`] is read once per broadcast or batch of frames, and the members and the
//! decoded event are looked up only when it is set ([`reports_outgoing`]).

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use socketioxide_core::adapter::{
    BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, RemoteSocketData, Room,
    RoomParam, SocketEmitter,
    errors::{AdapterError, BroadcastError},
    remote_packet::{RequestOut, RequestTypeIn, RequestTypeOut, Response, ResponseTypeId},
    request::RemoteRequestHandler,
    stream::{AckStream, ChanStream, ResponseHandlers, wait_responses},
};
use socketioxide_core::packet::Packet;
use socketioxide_core::{Sid, Uid};
use switchyard_proto::relay::v1::{Frame, FrameKind};
use tokio::sync::mpsc;

use crate::cluster::ClusterState;
use crate::codec::{
    decode_ack, decode_request, decode_response, read_response, request_frame, response_frame,
};
use crate::delivery::Delivery;
use crate::gates::Gates;
use crate::link::{Incoming, LinkError, RelayLink};
use crate::metrics;
use crate::observe::{OutgoingWatch, SentEvent};

/// Extra time a request waits beyond the ack timeout, for the answers of remote gateways
/// (which apply the same timeout to their clients) to travel back.
const RESPONSE_MARGIN: Duration = Duration::from_millis(500);

/// Responses buffered per pending request before extra ones are dropped (logged).
const RESPONSE_BUFFER: usize = 4096;

/// Frames applied per wake-up of a namespace's adapter, at most.
const FRAME_BATCH: usize = 64;

/// An adapter operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("relay link: {0}")]
    Link(#[from] LinkError),
    #[error("encoding an adapter frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl From<ClusterError> for AdapterError {
    fn from(e: ClusterError) -> Self {
        AdapterError(Box::new(e))
    }
}

/// The cluster adapter of one namespace. See the module docs.
pub struct ClusterAdapter<E> {
    local: CoreLocalAdapter<E>,
    link: RelayLink,
    gates: Arc<Gates>,
    ns: String,
    /// Pending requests of this node, by request id: where their responses go.
    handlers: Arc<Mutex<ResponseHandlers<Bytes>>>,
    /// socketioxide server id → gateway node id, learned from incoming requests, to address
    /// responses.
    peers: Mutex<HashMap<Sid, String>>,
    /// The admin UI's observer of this namespace's outgoing events, when it listens.
    outgoing: OutgoingWatch,
}

/// Whether socketioxide adapter `A` reports to the admin UI what it delivers to local sockets:
/// [`ClusterAdapter`] does, any other adapter (socketioxide's local one on a single gateway)
/// does not, so the code emitting through it reports instead.
pub fn reports_outgoing<A: socketioxide::adapter::Adapter>() -> bool {
    TypeId::of::<A::State>() == TypeId::of::<ClusterState>()
}

impl<E> DefinedAdapter for ClusterAdapter<E> {}

impl<E: SocketEmitter> ClusterAdapter<E> {
    fn uid(&self) -> Uid {
        self.local.server_id()
    }

    /// Queues `frame` on the relay links (the link numbers it).
    fn send_frame(&self, frame: Frame) -> Result<(), ClusterError> {
        self.link.send(frame)?;
        Ok(())
    }

    fn send_req(&self, req: &RequestOut<'_>, kind: FrameKind) -> Result<(), ClusterError> {
        self.send_frame(request_frame(&self.ns, kind, req)?)
    }

    /// Registers a pending request; responses go to the returned stream.
    fn expect_responses(&self, req_id: Sid) -> ChanStream<Bytes> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        self.handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req_id, tx);
        ChanStream::new(rx)
    }

    fn forget(&self, req_id: Sid) {
        self.handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&req_id);
    }

    /// Whether a local socket other than `except` (a socket id) is in `room`.
    fn has_local_member(&self, room: &str, except: Option<&str>) -> bool {
        let mut opts = BroadcastOptions::default();
        opts.rooms.push(Room::from(room.to_owned()));
        self.local
            .sockets(opts)
            .iter()
            .any(|sid| except.is_none_or(|e| sid.as_str() != e))
    }

    /// Reports `packet` as sent to the local sockets `opts` selects, if the admin UI listens.
    fn report_sent(&self, packet: &Packet, opts: &BroadcastOptions) {
        let Some(observer) = self.outgoing.get() else {
            return;
        };
        if let Some(sent) = SentEvent::of_packet(self.local.parser(), packet) {
            observer.sent(&self.ns, self.local.sockets(opts.clone()), &sent);
        }
    }

    fn request_timeout(&self) -> Duration {
        self.local.ack_timeout() + RESPONSE_MARGIN
    }

    /// Sends `req` to every other gateway and gathers the answers of type `ty`.
    async fn gather<D: DeserializeOwned>(
        &self,
        req: RequestOut<'_>,
        ty: ResponseTypeId,
    ) -> Result<Vec<Response<D>>, ClusterError> {
        let remote = usize::from(self.link.server_count(&self.ns).saturating_sub(1));
        if remote == 0 {
            return Ok(Vec::new());
        }
        let req_id = req.id;
        let rx = self.expect_responses(req_id);
        if let Err(e) = self.send_req(&req, FrameKind::Request) {
            self.forget(req_id);
            return Err(e);
        }
        let decoded = rx.filter_map(|b| futures::future::ready(decode_response::<D>(b)));
        let stream = wait_responses(
            decoded,
            self.handlers.clone(),
            req_id,
            ty,
            remote,
            self.request_timeout(),
        );
        Ok(stream.collect().await)
    }

    /// Applies frames the relay forwarded, in arrival order: events through
    /// [`crate::delivery`], adapter requests, broadcasts and responses here.
    fn on_frames(self: &Arc<Self>, frames: impl IntoIterator<Item = Incoming>) {
        let delivery = Delivery {
            local: &self.local,
            gates: &self.gates,
            ns: &self.ns,
            node_id: self.link.node_id(),
            outgoing: self.outgoing.get(),
        };
        delivery.frames(frames, |frame| self.on_control(frame));
    }

    /// Handles a frame that is not an event: an adapter request, broadcast or response.
    fn on_control(self: &Arc<Self>, frame: Incoming) {
        match FrameKind::try_from(frame.kind) {
            Ok(FrameKind::Response) => self.on_response(frame),
            Ok(FrameKind::Broadcast | FrameKind::Request) => match decode_request(&frame.payload) {
                Ok(req) => {
                    self.peers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*req.node_id, frame.origin.clone());
                    let rooms_changed = match &req.r#type {
                        RequestTypeIn::AddSockets(rooms) => Some((true, room_names(rooms))),
                        RequestTypeIn::DelSockets(rooms) => Some((false, room_names(rooms))),
                        _ => None,
                    };
                    // What `recv_req` broadcasts to local sockets (it ignores our own).
                    if let (
                        RequestTypeIn::Broadcast(packet) | RequestTypeIn::BroadcastWithAck(packet),
                        Some(opts),
                    ) = (&req.r#type, &req.opts)
                        && req.node_id != self.uid()
                    {
                        self.report_sent(packet, opts);
                    }
                    self.recv_req(req);
                    match rooms_changed {
                        Some((true, rooms)) => self.link.rooms_joined_remotely(&self.ns, &rooms),
                        Some((false, rooms)) => self.announce(false, &rooms),
                        None => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(origin = %frame.origin, seq = frame.seq, error = %e, "undecodable adapter request");
                    ::metrics::counter!(metrics::ADAPTER_BAD_FRAMES_TOTAL).increment(1);
                }
            },
            _ => tracing::warn!(origin = %frame.origin, kind = frame.kind, "unexpected frame kind"),
        }
    }

    /// Tells the link which of `rooms` gained (`joined`) or may have lost their local members.
    fn announce(&self, joined: bool, rooms: &[String]) {
        if joined {
            self.link.rooms_joined(&self.ns, rooms);
        } else {
            self.link.rooms_left(&self.ns, rooms, None);
        }
    }

    fn on_response(&self, frame: Incoming) {
        let origin = frame.origin.clone();
        let Some((req_id, body)) = read_response(frame) else {
            tracing::warn!(%origin, "adapter response without a valid request id");
            ::metrics::counter!(metrics::ADAPTER_BAD_FRAMES_TOTAL).increment(1);
            return;
        };
        let tx = self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&req_id)
            .cloned();
        match tx {
            Some(tx) => {
                if tx.try_send(body).is_err() {
                    tracing::debug!(%req_id, "response dropped (request finished or buffer full)");
                }
            }
            None => tracing::debug!(%req_id, "response for no pending request"),
        }
    }
}

impl<E: SocketEmitter> RemoteRequestHandler<E> for ClusterAdapter<E> {
    type Error = ClusterError;

    fn local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }

    fn send_res<T: Serialize + std::fmt::Debug + Send + 'static>(
        &self,
        req_id: Sid,
        req_origin: Uid,
        res: Response<T>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let target = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*req_origin)
            .cloned();
        let result = match target {
            Some(target) => response_frame(&self.ns, &target, req_id, &res)
                .map_err(ClusterError::from)
                .and_then(|frame| self.send_frame(frame)),
            None => {
                tracing::warn!(%req_origin, "response to an unknown gateway dropped");
                Ok(())
            }
        };
        std::future::ready(result)
    }
}

impl<E: SocketEmitter> CoreAdapter<E> for ClusterAdapter<E> {
    type Error = ClusterError;
    type State = ClusterState;
    type AckStream = AckStream<E, ChanStream<Bytes>, Bytes>;
    type InitRes = ();

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        let ns = local.path().to_string();
        let outgoing = state.outgoing(&ns);
        Self {
            local,
            link: state.link().clone(),
            gates: Arc::clone(state.gates()),
            ns,
            handlers: Arc::new(Mutex::new(HashMap::new())),
            peers: Mutex::new(HashMap::new()),
            outgoing,
        }
    }

    /// Subscribes to the namespace's frames and starts applying them (needs a tokio runtime).
    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        let rx = self.link.subscribe(&self.ns);
        let weak = Arc::downgrade(&self);
        let members = weak.clone();
        self.link.set_member_check(
            &self.ns,
            Box::new(move |room, except| {
                members
                    .upgrade()
                    .is_some_and(|a| a.has_local_member(room, except))
            }),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(apply_incoming(weak, rx));
            }
            Err(_) => {
                tracing::error!(ns = %self.ns, "cluster adapter initialised outside a tokio runtime: remote operations will not be applied");
            }
        }
        tracing::info!(ns = %self.ns, node_id = %self.link.node_id(), "cluster adapter ready");
        on_success();
    }

    async fn close(&self) -> Result<(), Self::Error> {
        self.link.unsubscribe(&self.ns);
        Ok(())
    }

    async fn server_count(&self) -> Result<u16, Self::Error> {
        Ok(self.link.server_count(&self.ns))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::Broadcast(&packet), &opts);
            let frame = request_frame(&self.ns, FrameKind::Broadcast, &req)
                .map(|frame| Frame {
                    rooms: room_names(&opts.rooms),
                    ..frame
                })
                .map_err(|e| BroadcastError::Adapter(ClusterError::from(e).into()))?;
            self.send_frame(frame)
                .map_err(|e| BroadcastError::Adapter(e.into()))?;
        }
        self.report_sent(&packet, &opts);
        self.local
            .broadcast(packet, opts)
            .map_err(BroadcastError::from)
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        let wait = timeout.unwrap_or(self.local.ack_timeout()) + RESPONSE_MARGIN;
        let remote = if opts.is_local(self.uid()) {
            0
        } else {
            self.link.server_count(&self.ns).saturating_sub(1)
        };
        let req = RequestOut::new(self.uid(), RequestTypeOut::BroadcastWithAck(&packet), &opts)
            .with_ack_timeout(timeout);
        let req_id = req.id;
        let rx = self.expect_responses(req_id);
        if remote > 0
            && let Err(e) = self.send_req(&req, FrameKind::Request)
        {
            self.forget(req_id);
            return Err(e);
        }
        self.report_sent(&packet, &opts);
        let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
        Ok(AckStream::new(
            local,
            rx,
            decode_ack::<E::AckError>,
            wait,
            remote,
            req_id,
            self.handlers.clone(),
        ))
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::AddSockets(&rooms), &opts);
            let frame = request_frame(&self.ns, FrameKind::Broadcast, &req)?;
            self.send_frame(Frame {
                joins: room_names(&rooms),
                ..frame
            })?;
        }
        self.local.add_sockets(opts, rooms.clone());
        self.announce(true, &room_names(&rooms));
        Ok(())
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::DelSockets(&rooms), &opts);
            self.send_req(&req, FrameKind::Broadcast)?;
        }
        self.local.del_sockets(opts, rooms.clone());
        self.announce(false, &room_names(&rooms));
        Ok(())
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::DisconnectSockets, &opts);
            self.send_req(&req, FrameKind::Broadcast)
                .map_err(|e| BroadcastError::Adapter(e.into()))?;
        }
        self.local
            .disconnect_socket(opts)
            .map_err(BroadcastError::Socket)
    }

    async fn rooms(&self, opts: BroadcastOptions) -> Result<Vec<Room>, Self::Error> {
        let mut rooms = self.local.rooms(opts.clone());
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::AllRooms, &opts);
            for res in self.gather::<()>(req, ResponseTypeId::AllRooms).await? {
                rooms.extend(res.into_rooms().unwrap_or_default());
            }
        }
        Ok(rooms.into_iter().collect())
    }

    async fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<RemoteSocketData>, Self::Error> {
        let mut sockets = self.local.fetch_sockets(opts.clone());
        if !opts.is_local(self.uid()) {
            let req = RequestOut::new(self.uid(), RequestTypeOut::FetchSockets, &opts);
            for res in self
                .gather::<RemoteSocketData>(req, ResponseTypeId::FetchSockets)
                .await?
            {
                sockets.extend(res.into_fetch_sockets().unwrap_or_default());
            }
        }
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

/// Room names as the relay protocol carries them.
fn room_names(rooms: &[Room]) -> Vec<String> {
    rooms.iter().map(|r| r.to_string()).collect()
}

/// Applies the namespace's incoming frames in arrival order until the adapter is gone.
/// Takes what has arrived, up to [`FRAME_BATCH`] frames, at each wake-up: runs of stamped
/// events form from what queued while the previous frames were applied, never by waiting.
async fn apply_incoming<E: SocketEmitter>(
    adapter: Weak<ClusterAdapter<E>>,
    mut rx: mpsc::Receiver<Incoming>,
) {
    let mut frames = Vec::with_capacity(FRAME_BATCH);
    while rx.recv_many(&mut frames, FRAME_BATCH).await > 0 {
        let Some(a) = adapter.upgrade() else { return };
        a.on_frames(frames.drain(..));
    }
}
