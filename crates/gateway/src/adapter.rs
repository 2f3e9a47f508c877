//! The cluster adapter: socketioxide operations across every gateway, through the relay.
//!
//! [`ClusterAdapter`] is a socketioxide `CoreAdapter` whose transport is the relay link
//! ([`crate::link`]). Plug it with
//! `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(ClusterState::new(link))`; then
//! ordinary socketioxide code spans the cluster:
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
//! - backend events (`Publish` on the relay): emitted to `rooms` minus `except` on the local
//!   sockets with the decoded JSON or MessagePack value as the single argument.
//!
//! Payloads are socketioxide-core `RequestOut` / `Response` encoded with MessagePack (binary
//! attachments stay raw bytes). A response frame's payload is `[n][request id (n bytes)]
//! [Response]`. Every gateway of a cluster must use the same Socket.IO parser (the common one,
//! forced by [`crate::Switchyard::configure`]).
//!
//! While the link is down, frames queue and are resent after the relink (see [`crate::link`]);
//! requests that need answers just get fewer answers within their timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use socketioxide_core::adapter::{
    BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, RemoteSocketData, Room,
    RoomParam, SocketEmitter,
    errors::{AdapterError, BroadcastError, SocketError},
    remote_packet::{RequestIn, RequestOut, RequestTypeOut, Response, ResponseTypeId},
    request::RemoteRequestHandler,
    stream::{AckStream, ChanStream, ResponseHandlers, wait_responses},
};
use socketioxide_core::packet::Packet;
use socketioxide_core::parser::Parse;
use socketioxide_core::{Sid, Uid};
use switchyard_proto::relay::v1::{BackendEvent, FrameKind, Position, backend_event};
use tokio::sync::mpsc;

use crate::link::{Incoming, LinkError, RelayLink};
use crate::payload::Payload;
use crate::resume::{History, Stamped};

/// Extra time a request waits beyond the ack timeout, for the answers of remote gateways
/// (which apply the same timeout to their clients) to travel back.
const RESPONSE_MARGIN: Duration = Duration::from_millis(500);

/// Responses buffered per pending request before extra ones are dropped (logged).
const RESPONSE_BUFFER: usize = 4096;

/// Frames applied per wake-up of a namespace's adapter, at most.
const FRAME_BATCH: usize = 64;

/// Stamped events of one room that arrived in a row, with their encoded packets and
/// `deliver` spans (closed once the run is delivered).
#[derive(Default)]
struct Run {
    events: Vec<Stamped>,
    packets: Vec<Packet>,
    spans: Vec<tracing::Span>,
}

impl Run {
    fn clear(&mut self) {
        self.events.clear();
        self.packets.clear();
        self.spans.clear();
    }
}

/// The state shared by the adapters of every namespace: the relay link.
#[derive(Debug, Clone)]
pub struct ClusterState {
    link: RelayLink,
    history: Option<Arc<History>>,
}

impl ClusterState {
    pub fn new(link: RelayLink) -> Self {
        Self {
            link,
            history: None,
        }
    }

    /// With the history client whose gates stamped events pass (see [`crate::resume`]).
    pub fn with_history(mut self, history: Arc<History>) -> Self {
        self.link.sever_on_gap(Arc::clone(&history));
        self.history = Some(history);
        self
    }

    pub fn history(&self) -> Option<&Arc<History>> {
        self.history.as_ref()
    }
}

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
    history: Option<Arc<History>>,
    ns: String,
    /// Pending requests of this node, by request id: where their responses go.
    handlers: Arc<Mutex<ResponseHandlers<Bytes>>>,
    /// socketioxide server id → gateway node id, learned from incoming requests, to address
    /// responses.
    peers: Mutex<HashMap<Sid, String>>,
}

impl<E> DefinedAdapter for ClusterAdapter<E> {}

impl<E: SocketEmitter> ClusterAdapter<E> {
    fn uid(&self) -> Uid {
        self.local.server_id()
    }

    fn send_frame(
        &self,
        kind: FrameKind,
        target: &str,
        payload: Vec<u8>,
    ) -> Result<(), ClusterError> {
        self.link
            .send(&self.ns, kind, target, Bytes::from(payload))
            .map(|_| ())
            .map_err(ClusterError::from)
    }

    fn send_req(&self, req: &RequestOut<'_>, kind: FrameKind) -> Result<(), ClusterError> {
        let payload = rmp_serde::to_vec_named(req)?;
        self.send_frame(kind, "", payload)
    }

    /// Registers a pending request; responses go to the returned stream.
    fn expect_responses(&self, req_id: Sid) -> ChanStream<Bytes> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        if let Ok(mut h) = self.handlers.lock() {
            h.insert(req_id, tx);
        }
        ChanStream::new(rx)
    }

    fn forget(&self, req_id: Sid) {
        if let Ok(mut h) = self.handlers.lock() {
            h.remove(&req_id);
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

    /// Applies frames the relay forwarded, in arrival order. Stamped events of one room in a
    /// row are delivered together, as one [`Run`].
    fn on_frames(self: &Arc<Self>, frames: impl IntoIterator<Item = Incoming>) {
        let mut run = Run::default();
        for mut frame in frames {
            let Some(ev) = frame.event.take() else {
                self.deliver_run(&mut run);
                self.on_control(frame);
                continue;
            };
            // Continues the publisher's trace, which the relay carried in the frame.
            let span = tracing::info_span!("deliver", node = %self.link.node_id(),
                                           namespace = %self.ns, room = %ev.rooms.join(","),
                                           event = %ev.event,
                                           offset = frame.position.as_ref().map(|p| p.offset),
                                           sockets = tracing::field::Empty,
                                           run = tracing::field::Empty);
            switchyard_common::trace_context::set_parent_from_map(&span, &frame.trace_context);
            match frame.position {
                Some(position) => {
                    let Some((stamped, packet)) =
                        span.in_scope(|| self.encode_stamped(ev, position))
                    else {
                        continue;
                    };
                    if run
                        .events
                        .last()
                        .is_some_and(|last| last.room != stamped.room)
                    {
                        self.deliver_run(&mut run);
                    }
                    run.events.push(stamped);
                    run.packets.push(packet);
                    run.spans.push(span);
                }
                None => {
                    self.deliver_run(&mut run);
                    span.in_scope(|| self.emit_backend(ev));
                }
            }
        }
        self.deliver_run(&mut run);
    }

    /// Handles a frame that is not an event: an adapter request, broadcast or response.
    fn on_control(self: &Arc<Self>, frame: Incoming) {
        match FrameKind::try_from(frame.kind) {
            Ok(FrameKind::Response) => self.on_response(frame.payload),
            Ok(FrameKind::Broadcast | FrameKind::Request) => {
                match rmp_serde::from_slice::<RequestIn>(&frame.payload) {
                    Ok(req) => {
                        if let Ok(mut p) = self.peers.lock() {
                            p.insert(*req.node_id, frame.origin.clone());
                        }
                        self.recv_req(req);
                    }
                    Err(e) => {
                        tracing::warn!(origin = %frame.origin, seq = frame.seq, error = %e, "undecodable adapter request");
                        metrics::counter!("switchyard_gateway_adapter_bad_frames_total")
                            .increment(1);
                    }
                }
            }
            _ => tracing::warn!(origin = %frame.origin, kind = frame.kind, "unexpected frame kind"),
        }
    }

    fn on_response(&self, payload: Bytes) {
        let Some((req_id, body)) = split_response(payload) else {
            tracing::warn!("undecodable adapter response");
            return;
        };
        let tx = self
            .handlers
            .lock()
            .ok()
            .and_then(|h| h.get(&req_id).cloned());
        match tx {
            Some(tx) => {
                if tx.try_send(body).is_err() {
                    tracing::debug!(%req_id, "response dropped (request finished or buffer full)");
                }
            }
            None => tracing::debug!(%req_id, "response for no pending request"),
        }
    }

    /// Decodes a stamped room event (from the relay's `Stamp`) and encodes the packet its
    /// members get: `event(data, {room, epoch, offset})`. `None` (logged) if it cannot be.
    fn encode_stamped(&self, ev: BackendEvent, position: Position) -> Option<(Stamped, Packet)> {
        let room = ev.rooms.first().cloned()?;
        let data = decode_data(&ev)?;
        let stamped = Stamped {
            room,
            event: ev.event,
            data,
            epoch: position.epoch,
            offset: position.offset,
        };
        let value = match self
            .local
            .parser()
            .encode_value(&(&stamped.data, stamped.meta()), Some(&stamped.event))
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(event = %stamped.event, error = %e, "stamped event not encodable");
                return None;
            }
        };
        metrics::counter!("switchyard_gateway_history_events_total").increment(1);
        Some((stamped, Packet::event(self.local.path().clone(), value)))
    }

    /// Delivers a run of stamped events of one room to the local members its gates let
    /// through (see [`crate::resume`]), and empties it.
    ///
    /// Each member is offered every event of the run, in offset order, before the next member
    /// is: its writer wakes once and sends the run in one write. Frames queue up only when this
    /// gateway falls behind, so under load runs grow and the cost of each delivery falls,
    /// where one event at a time it would stay the same (a wake-up and a write per event per
    /// member). Members are read once per run, which loses nothing: a socket that joins
    /// locally after that reads its head (or replays) after every event of the run was
    /// stamped, so it needs none of them live.
    fn deliver_run(&self, run: &mut Run) {
        let Some(first) = run.events.first() else {
            return;
        };
        let mut opts = BroadcastOptions::default();
        opts.rooms.push(Cow::Owned(first.room.clone()));
        let Some(history) = &self.history else {
            for packet in run.packets.drain(..) {
                let _ = self.local.broadcast(packet, opts.clone());
            }
            run.clear();
            return;
        };
        // Logs of the delivery (sockets cut off) belong to the run's first event.
        let entered = run.spans.first().map(tracing::Span::enter);
        let members = self.local.sockets(opts);
        for span in &run.spans {
            span.record("sockets", members.len());
            span.record("run", run.events.len());
        }
        history.admit(&self.ns, &run.events, &members, |sid, i| {
            let Some(packet) = run.packets.get(i) else {
                return true;
            };
            let mut one = BroadcastOptions::default();
            one.sid = Some(sid);
            match self.local.broadcast(packet.clone(), one) {
                Ok(()) => true,
                Err(errors) => {
                    tracing::debug!(%sid, errors = errors.len(), "stamped event: socket unreachable");
                    // A closed socket is forgotten at its disconnect; a full one is severed.
                    !errors.iter().any(|e| matches!(e, SocketError::InternalChannelFull))
                }
            }
        });
        history.tick(&self.ns, run.events.len() as u64, || {
            let mut all = BroadcastOptions::default();
            all.add_flag(socketioxide_core::adapter::BroadcastFlags::Broadcast);
            self.local.sockets(all).into_iter().collect()
        });
        drop(entered);
        run.clear();
    }

    /// Emits a backend event (from the relay's `Publish`) to the local sockets.
    fn emit_backend(&self, ev: BackendEvent) {
        let Some(data) = decode_data(&ev) else {
            return;
        };
        let value = match self.local.parser().encode_value(&data, Some(&ev.event)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(event = %ev.event, error = %e, "backend event not encodable");
                return;
            }
        };
        let packet = Packet::event(self.local.path().clone(), value);
        let mut opts = BroadcastOptions::default();
        opts.rooms = ev.rooms.into_iter().map(Cow::Owned).collect();
        opts.except = ev.except.into_iter().map(Cow::Owned).collect();
        metrics::counter!("switchyard_gateway_backend_events_total").increment(1);
        if let Err(e) = self.local.broadcast(packet, opts) {
            tracing::debug!(event = %ev.event, errors = e.len(), "backend event: some sockets unreachable");
        }
    }
}

/// The data of a backend or stamped event, decoded; `None` (logged, counted) if undecodable.
fn decode_data(ev: &BackendEvent) -> Option<Payload> {
    let data: Result<Payload, String> = match &ev.data {
        Some(backend_event::Data::Json(s)) => serde_json::from_str(s).map_err(|e| e.to_string()),
        Some(backend_event::Data::Msgpack(b)) => {
            rmp_serde::from_slice(b).map_err(|e| e.to_string())
        }
        None => Ok(Payload::Null),
    };
    match data {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(event = %ev.event, error = %e, "undecodable event data");
            metrics::counter!("switchyard_gateway_adapter_bad_frames_total").increment(1);
            None
        }
    }
}

fn decode_response<D: DeserializeOwned>(b: Bytes) -> Option<Response<D>> {
    match rmp_serde::from_slice(&b) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable adapter response");
            None
        }
    }
}

fn decode_ack<D: DeserializeOwned>(
    b: Bytes,
) -> Result<Response<D>, Box<dyn std::error::Error + Send>> {
    rmp_serde::from_slice(&b).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send>)
}

/// `[n][request id][Response]` → (request id, Response bytes).
fn split_response(payload: Bytes) -> Option<(Sid, Bytes)> {
    let n = usize::from(*payload.first()?);
    let id = payload.get(1..1 + n)?;
    let sid = Sid::from_str(std::str::from_utf8(id).ok()?).ok()?;
    Some((sid, payload.slice(1 + n..)))
}

fn join_response<T: Serialize>(req_id: Sid, res: &Response<T>) -> Result<Vec<u8>, ClusterError> {
    let id = req_id.to_string();
    let mut out = Vec::with_capacity(1 + id.len() + 64);
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&id.as_bytes()[..id.len().min(255)]);
    out.extend_from_slice(&rmp_serde::to_vec_named(res)?);
    Ok(out)
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
            .ok()
            .and_then(|p| p.get(&*req_origin).cloned());
        let result = match target {
            Some(target) => join_response(req_id, &res)
                .and_then(|payload| self.send_frame(FrameKind::Response, &target, payload)),
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
        Self {
            local,
            link: state.link.clone(),
            history: state.history.clone(),
            ns,
            handlers: Arc::new(Mutex::new(HashMap::new())),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Subscribes to the namespace's frames and starts applying them (needs a tokio runtime).
    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        let rx = self.link.subscribe(&self.ns);
        let weak = Arc::downgrade(&self);
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
            self.send_req(&req, FrameKind::Broadcast)
                .map_err(|e| BroadcastError::Adapter(e.into()))?;
        }
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
            self.send_req(&req, FrameKind::Broadcast)?;
        }
        self.local.add_sockets(opts, rooms);
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
        self.local.del_sockets(opts, rooms);
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

/// Applies the namespace's incoming frames in arrival order until the adapter is gone.
/// Takes what has arrived, up to [`FRAME_BATCH`] frames, at each wake-up: runs of stamped
/// events form from what queued while the previous frames were applied, never by waiting.
async fn apply_incoming<E: SocketEmitter>(
    adapter: Weak<ClusterAdapter<E>>,
    mut rx: mpsc::UnboundedReceiver<Incoming>,
) {
    let mut frames = Vec::with_capacity(FRAME_BATCH);
    while rx.recv_many(&mut frames, FRAME_BATCH).await > 0 {
        let Some(a) = adapter.upgrade() else { return };
        a.on_frames(frames.drain(..));
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "switchyard_gateway_adapter_bad_frames_total",
        "Relay frames the adapter could not decode."
    );
    metrics::describe_counter!(
        "switchyard_gateway_backend_events_total",
        "Backend events (relay Publish) emitted to local sockets."
    );
}

impl ClusterState {
    /// Describes the adapter's metrics (call once).
    pub fn describe_metrics() {
        describe_metrics();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::remote_packet::ResponseType;

    #[test]
    fn response_envelope_round_trips() -> anyhow::Result<()> {
        let id = Sid::new();
        let res = Response::<()> {
            node_id: Uid::new(),
            r#type: ResponseType::BroadcastAckCount(3),
        };
        let bytes = join_response(id, &res)?;
        let (got_id, body) = split_response(Bytes::from(bytes)).ok_or(anyhow::anyhow!("split"))?;
        assert_eq!(got_id, id);
        let back: Response<()> = rmp_serde::from_slice(&body)?;
        assert_eq!(back, res);
        assert!(split_response(Bytes::from_static(&[200, b'x'])).is_none());
        Ok(())
    }

    /// Properties over arbitrary frame payloads: whatever another gateway (or a corrupted
    /// frame) sends, decoding answers an error or a value and never panics.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..512)
        }

        proptest! {
            #[test]
            fn arbitrary_response_envelopes_never_panic(bytes in any_bytes()) {
                if let Some((_, body)) = split_response(Bytes::from(bytes)) {
                    let _ = decode_response::<RemoteSocketData>(body.clone());
                    let _ = decode_response::<()>(body.clone());
                    let _ = decode_ack::<serde_json::Value>(body);
                }
            }

            #[test]
            fn arbitrary_request_payloads_never_panic(bytes in any_bytes()) {
                let _ = rmp_serde::from_slice::<RequestIn>(&bytes);
            }

            #[test]
            fn arbitrary_event_data_never_panics(bytes in any_bytes(), text in ".{0,256}") {
                let mut ev = BackendEvent {
                    rooms: vec!["r".into()],
                    except: Vec::new(),
                    event: "e".into(),
                    data: Some(backend_event::Data::Msgpack(bytes.into())),
                };
                let _ = decode_data(&ev);
                ev.data = Some(backend_event::Data::Json(text));
                let _ = decode_data(&ev);
            }

            #[test]
            fn response_envelopes_round_trip(count in any::<u32>()) {
                let id = Sid::new();
                let res = Response::<()> {
                    node_id: Uid::new(),
                    r#type: ResponseType::BroadcastAckCount(count),
                };
                let bytes = join_response(id, &res).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (got, body) = split_response(Bytes::from(bytes))
                    .ok_or_else(|| TestCaseError::fail("split"))?;
                prop_assert_eq!(got, id);
                prop_assert_eq!(decode_response::<()>(body), Some(res));
            }
        }
    }
}
