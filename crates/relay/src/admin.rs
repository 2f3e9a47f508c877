//! The relay's operator API, `switchyard.admin.v1.RelayAdmin` (behind the admin token, checked
//! by the server's interceptor before any call gets here).
//!
//! `ListLinks` and `ListHistory` read this replica's [`Hub`](crate::hub::Hub) and the
//! [`History`](crate::history::History). The socket operations span the cluster, and the relay
//! holds no socket state: it asks the gateways, speaking the protocol their adapters already
//! speak to each other (see `crates/gateway/src/adapter.rs`). A request is a socketioxide-core
//! `RequestOut` (MessagePack) in a `REQUEST` frame of the namespace, from the origin
//! `relay:<relay_id>:admin`; every gateway of the namespace applies it through its
//! `RemoteRequestHandler` and answers with a `RESPONSE` frame targeted at that origin, whose
//! payload is `[n][request id (n bytes)][Response]`. The hub hands those frames to
//! [`Requests::on_response`] instead of a link. A request waits for every gateway the
//! membership listed when it was sent, or the timeout, whichever comes first; gateways that did
//! not answer are reported in `Coverage.missing`, so the answer is partial, never late.
//!
//! - rooms: `AllRooms` to every gateway, then `FetchSockets` per room (member counts);
//! - sockets: `FetchSockets` for the room (or the one socket), then `AllRooms` per socket;
//! - disconnect: `FetchSockets` to find the sockets, then `DisconnectSockets` (a broadcast:
//!   gateways do not answer it, exactly as between gateways).
//!
//! Admin frames get their own origin and sequence (not `Publish`'s), published one at a time
//! in `seq` order: gateways drop a frame whose `seq` is not above the origin's last one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, stream};
use prost::bytes::Bytes;
use serde::de::DeserializeOwned;
use socketioxide_core::{
    Sid, Uid,
    adapter::{
        BroadcastFlags, BroadcastOptions, RemoteSocketData, Room,
        remote_packet::{RequestOut, RequestTypeOut, Response},
    },
};
use switchyard_proto::{
    admin::v1::{
        Coverage, DisconnectSocketsRequest, DisconnectSocketsResponse, LinkInfo,
        ListHistoryRequest, ListHistoryResponse, ListLinksRequest, ListLinksResponse,
        ListRoomsRequest, ListRoomsResponse, ListSocketsRequest, ListSocketsResponse, RoomInfo,
        SocketInfo, relay_admin_server::RelayAdmin,
    },
    relay::v1::{Frame, FrameKind},
};
use tokio::sync::mpsc;
use tonic::{Request, Response as GrpcResponse, Status};
use tracing::Instrument;

use crate::server::RelayState;

/// How long a cluster-wide request waits for the gateways when the call names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// The longest a call may ask for.
const MAX_TIMEOUT_MS: u32 = 30_000;
/// Per-room or per-socket follow-up requests in flight at once.
const FOLLOW_UPS: usize = 16;
/// Most sockets `ListSockets` describes (each costs one request to every gateway).
const MAX_SOCKETS: usize = 10_000;

/// This replica's outstanding requests to gateways, and how to send new ones.
pub struct Requests {
    /// `relay:<relay_id>:admin`: the origin of admin frames and the target of the answers.
    origin: String,
    incarnation: u64,
    /// The socketioxide server id this relay speaks as (`RequestOut.node_id`); gateways map it
    /// to `origin` to address their responses.
    uid: Uid,
    /// The last seq used; held across the publish so frames leave in seq order.
    seq: tokio::sync::Mutex<u64>,
    /// Request id -> where its responses go, as `(gateway node id, Response bytes)`.
    pending: Mutex<HashMap<Sid, mpsc::UnboundedSender<(String, Bytes)>>>,
}

impl Requests {
    /// Creates the table and routes this replica's responses to it through the hub.
    pub fn install(state: &RelayState) -> Arc<Requests> {
        let requests = Arc::new(Requests {
            origin: format!("relay:{}:admin", state.relay_id),
            incarnation: state.incarnation,
            uid: Uid::new(),
            seq: tokio::sync::Mutex::new(0),
            pending: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&requests);
        state.hub.set_inbox(
            requests.origin.clone(),
            Box::new(move |frame| {
                if let Some(r) = weak.upgrade() {
                    r.on_response(frame);
                }
            }),
        );
        requests
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Sid, mpsc::UnboundedSender<(String, Bytes)>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A response frame addressed to this replica: to its pending request, if still waiting.
    fn on_response(&self, frame: &Frame) {
        let Some((req_id, body)) = split_response(&frame.payload) else {
            tracing::warn!(origin = %frame.origin, "undecodable response to an admin request");
            return;
        };
        if let Some(tx) = self.pending().get(&req_id) {
            let _ = tx.send((frame.origin.clone(), body));
        }
    }

    /// Sends one adapter request to every gateway of `namespace` (a `REQUEST` frame when
    /// answers are expected, else a `BROADCAST`).
    async fn send(
        &self,
        state: &RelayState,
        namespace: &str,
        req: &RequestOut<'_>,
        kind: FrameKind,
    ) -> Result<(), Status> {
        let payload = rmp_serde::to_vec_named(req)
            .map_err(|e| Status::internal(format!("encoding an adapter request: {e}")))?;
        let mut seq = self.seq.lock().await;
        *seq += 1;
        let frame = Frame {
            namespace: namespace.to_owned(),
            origin: self.origin.clone(),
            seq: *seq,
            kind: kind as i32,
            incarnation: self.incarnation,
            payload: Bytes::from(payload),
            ..Frame::default()
        };
        state.bus.publish(&frame).await?;
        metrics::counter!("switchyard_relay_admin_requests_total").increment(1);
        Ok(())
    }

    /// Sends `ty` with `opts` to every gateway of `namespace` and gathers their responses
    /// until each answered or `timeout` passed.
    async fn gather<D: DeserializeOwned>(
        &self,
        state: &RelayState,
        namespace: &str,
        ty: RequestTypeOut<'_>,
        opts: &BroadcastOptions,
        timeout: Duration,
    ) -> Result<Gathered<D>, Status> {
        let gateways: BTreeSet<String> = state
            .membership
            .members(namespace)
            .await?
            .into_iter()
            .collect();
        let mut gathered = Gathered {
            gateways: gateways.clone(),
            missing: gateways.clone(),
            answers: Vec::new(),
        };
        if gateways.is_empty() {
            return Ok(gathered);
        }
        // Answers travel on the namespace's channel: this replica must hear it even when none
        // of its own links serves the namespace.
        state.bus.ensure_subscribed(&[namespace.to_owned()]).await?;
        let req = RequestOut::new(self.uid, ty, opts);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending().insert(req.id, tx);
        let _forget = Forget(self, req.id);
        self.send(state, namespace, &req, FrameKind::Request)
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while !gathered.missing.is_empty() {
            let Ok(Some((node, body))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            if !gathered.missing.remove(&node) {
                continue; // not expected, or a second answer
            }
            match rmp_serde::from_slice::<Response<D>>(&body) {
                Ok(res) => gathered.answers.push((node, res)),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "undecodable answer to an admin request")
                }
            }
        }
        if !gathered.missing.is_empty() {
            metrics::counter!("switchyard_relay_admin_gateways_missing_total")
                .increment(gathered.missing.len() as u64);
            tracing::info!(%namespace, missing = ?gathered.missing, "gateways did not answer in time");
        }
        Ok(gathered)
    }
}

/// Removes a request from the table when its gathering ends (or is cancelled).
struct Forget<'a>(&'a Requests, Sid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending().remove(&self.1);
    }
}

/// The answers to one request.
struct Gathered<D> {
    gateways: BTreeSet<String>,
    missing: BTreeSet<String>,
    answers: Vec<(String, Response<D>)>,
}

/// `[n][request id][Response]` → (request id, Response bytes): the envelope gateways put on
/// responses (written by `join_response` in `crates/gateway/src/adapter.rs`).
fn split_response(payload: &Bytes) -> Option<(Sid, Bytes)> {
    let n = usize::from(*payload.first()?);
    let id = payload.get(1..1 + n)?;
    let sid = Sid::from_str(std::str::from_utf8(id).ok()?).ok()?;
    Some((sid, payload.slice(1 + n..)))
}

/// Coverage of several requests: every gateway asked, and every one that missed any of them.
#[derive(Default)]
struct Covered {
    gateways: BTreeSet<String>,
    missing: BTreeSet<String>,
}

impl Covered {
    fn add<D>(&mut self, g: &Gathered<D>) {
        self.gateways.extend(g.gateways.iter().cloned());
        self.missing.extend(g.missing.iter().cloned());
    }

    fn merge(&mut self, other: Covered) {
        self.gateways.extend(other.gateways);
        self.missing.extend(other.missing);
    }

    fn into_proto(self) -> Coverage {
        Coverage {
            gateways: self.gateways.into_iter().collect(),
            missing: self.missing.into_iter().collect(),
        }
    }
}

/// The `switchyard.admin.v1.RelayAdmin` service.
pub struct RelayAdminGrpc {
    state: Arc<RelayState>,
    requests: Arc<Requests>,
}

impl RelayAdminGrpc {
    pub fn new(state: Arc<RelayState>) -> Self {
        let requests = Requests::install(&state);
        Self { state, requests }
    }

    /// `(sid, gateway)` of the sockets in `room`, or of the one socket `socket_id`.
    async fn find_sockets(
        &self,
        namespace: &str,
        room: &str,
        socket_id: &str,
        timeout: Duration,
    ) -> Result<(Vec<(Sid, String)>, Covered), Status> {
        let opts = target_opts(room, socket_id)?;
        let gathered = self
            .requests
            .gather::<RemoteSocketData>(
                &self.state,
                namespace,
                RequestTypeOut::FetchSockets,
                &opts,
                timeout,
            )
            .await?;
        let mut covered = Covered::default();
        covered.add(&gathered);
        let mut found = BTreeMap::new();
        for (node, res) in gathered.answers {
            for socket in res.into_fetch_sockets().unwrap_or_default() {
                found.insert(socket.id, node.clone());
            }
        }
        Ok((found.into_iter().collect(), covered))
    }
}

/// What the request of `room` or `socket_id` (exactly one) targets.
fn target_opts(room: &str, socket_id: &str) -> Result<BroadcastOptions, Status> {
    let mut opts = BroadcastOptions::default();
    match (room.is_empty(), socket_id.is_empty()) {
        (false, true) => opts.rooms.push(Room::Owned(room.to_owned())),
        (true, false) => {
            let sid = Sid::from_str(socket_id).map_err(|_| {
                Status::invalid_argument(format!("`{socket_id}` is not a Socket.IO socket id"))
            })?;
            opts.sid = Some(sid);
        }
        _ => {
            return Err(Status::invalid_argument(
                "name exactly one of room and socket_id",
            ));
        }
    }
    Ok(opts)
}

fn namespace_of(ns: String) -> Result<String, Status> {
    let ns = if ns.is_empty() { "/".to_owned() } else { ns };
    if ns.starts_with('/') && ns.len() <= 256 {
        Ok(ns)
    } else {
        Err(Status::invalid_argument(
            "namespace must start with `/` and be at most 256 bytes",
        ))
    }
}

fn timeout_of(ms: u32) -> Result<Duration, Status> {
    match ms {
        0 => Ok(DEFAULT_TIMEOUT),
        ms if ms <= MAX_TIMEOUT_MS => Ok(Duration::from_millis(u64::from(ms))),
        _ => Err(Status::invalid_argument(format!(
            "timeout_ms must be at most {MAX_TIMEOUT_MS}"
        ))),
    }
}

fn call_span(op: &'static str, namespace: &str) -> tracing::Span {
    metrics::counter!("switchyard_relay_admin_calls_total", "op" => op).increment(1);
    tracing::info_span!("relay_admin", op, namespace = %namespace)
}

#[tonic::async_trait]
impl RelayAdmin for RelayAdminGrpc {
    async fn list_links(
        &self,
        _req: Request<ListLinksRequest>,
    ) -> Result<GrpcResponse<ListLinksResponse>, Status> {
        let _span = call_span("list_links", "").entered();
        let mut links: Vec<LinkInfo> = self
            .state
            .hub
            .links()
            .iter()
            .map(|l| {
                use std::sync::atomic::Ordering::Relaxed;
                LinkInfo {
                    node_id: l.node_id.clone(),
                    namespaces: l.namespaces.clone(),
                    incarnation: l.stats.incarnation,
                    queue_depth: l.queue_depth() as u64,
                    queue_capacity: l.queue_capacity() as u64,
                    frames_in: l.stats.frames_in.load(Relaxed),
                    frames_out: l.stats.frames_out.load(Relaxed),
                    last_seq: l.stats.last_seq.load(Relaxed),
                    accepted_seq: l.stats.accepted_seq.load(Relaxed),
                    connected_since_ms: l.stats.connected_since_ms,
                }
            })
            .collect();
        links.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(GrpcResponse::new(ListLinksResponse {
            relay_id: self.state.relay_id.clone(),
            links,
        }))
    }

    async fn list_history(
        &self,
        req: Request<ListHistoryRequest>,
    ) -> Result<GrpcResponse<ListHistoryResponse>, Status> {
        let namespaces = req
            .into_inner()
            .namespaces
            .into_iter()
            .map(namespace_of)
            .collect::<Result<Vec<_>, _>>()?;
        let span = call_span("list_history", "");
        let namespaces = self
            .state
            .history
            .stats(&namespaces)
            .instrument(span)
            .await?;
        Ok(GrpcResponse::new(ListHistoryResponse { namespaces }))
    }

    async fn list_rooms(
        &self,
        req: Request<ListRoomsRequest>,
    ) -> Result<GrpcResponse<ListRoomsResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace_of(req.namespace)?;
        let timeout = timeout_of(req.timeout_ms)?;
        let span = call_span("list_rooms", &namespace);
        async {
            let mut all = BroadcastOptions::default();
            all.add_flag(BroadcastFlags::Broadcast);
            let rooms = self
                .requests
                .gather::<()>(
                    &self.state,
                    &namespace,
                    RequestTypeOut::AllRooms,
                    &all,
                    timeout,
                )
                .await?;
            let mut covered = Covered::default();
            covered.add(&rooms);
            let names: BTreeSet<String> = rooms
                .answers
                .into_iter()
                .flat_map(|(_, res)| res.into_rooms().unwrap_or_default())
                .map(|room| room.to_string())
                .collect();
            let counted: Vec<_> = stream::iter(names)
                .map(|room| async {
                    let members = self.find_sockets(&namespace, &room, "", timeout).await;
                    (room, members)
                })
                .buffer_unordered(FOLLOW_UPS)
                .collect()
                .await;
            let mut out = Vec::new();
            for (room, members) in counted {
                let (sockets, room_covered) = members?;
                covered.merge(room_covered);
                if sockets.is_empty() {
                    continue; // emptied meanwhile
                }
                let gateways: BTreeSet<String> =
                    sockets.iter().map(|(_, node)| node.clone()).collect();
                out.push(RoomInfo {
                    room,
                    members: sockets.len() as u64,
                    gateways: gateways.into_iter().collect(),
                });
            }
            out.sort_by(|a, b| a.room.cmp(&b.room));
            Ok(GrpcResponse::new(ListRoomsResponse {
                namespace: namespace.clone(),
                rooms: out,
                coverage: Some(covered.into_proto()),
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_sockets(
        &self,
        req: Request<ListSocketsRequest>,
    ) -> Result<GrpcResponse<ListSocketsResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace_of(req.namespace)?;
        let timeout = timeout_of(req.timeout_ms)?;
        let span = call_span("list_sockets", &namespace);
        async {
            let (mut found, mut covered) = self
                .find_sockets(&namespace, &req.room, &req.socket_id, timeout)
                .await?;
            found.truncate(MAX_SOCKETS);
            let ns = namespace.as_str();
            let described: Vec<_> = stream::iter(found)
                .map(|(sid, node)| async move {
                    let mut one = BroadcastOptions::default();
                    one.sid = Some(sid);
                    let rooms = self
                        .requests
                        .gather::<()>(&self.state, ns, RequestTypeOut::AllRooms, &one, timeout)
                        .await;
                    (sid, node, rooms)
                })
                .buffer_unordered(FOLLOW_UPS)
                .collect()
                .await;
            let mut sockets = Vec::new();
            for (sid, node, rooms) in described {
                let rooms = rooms?;
                covered.add(&rooms);
                let names: BTreeSet<String> = rooms
                    .answers
                    .into_iter()
                    .filter(|(from, _)| *from == node)
                    .flat_map(|(_, res)| res.into_rooms().unwrap_or_default())
                    .map(|room| room.to_string())
                    .collect();
                sockets.push(SocketInfo {
                    socket_id: sid.to_string(),
                    node_id: node,
                    rooms: names.into_iter().collect(),
                });
            }
            sockets.sort_by(|a, b| (&a.node_id, &a.socket_id).cmp(&(&b.node_id, &b.socket_id)));
            Ok(GrpcResponse::new(ListSocketsResponse {
                namespace: namespace.clone(),
                sockets,
                coverage: Some(covered.into_proto()),
            }))
        }
        .instrument(span)
        .await
    }

    async fn disconnect_sockets(
        &self,
        req: Request<DisconnectSocketsRequest>,
    ) -> Result<GrpcResponse<DisconnectSocketsResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace_of(req.namespace)?;
        let timeout = timeout_of(req.timeout_ms)?;
        let span = call_span("disconnect_sockets", &namespace);
        async {
            let (found, covered) = self
                .find_sockets(&namespace, &req.room, &req.socket_id, timeout)
                .await?;
            if found.is_empty() {
                let what = if req.room.is_empty() {
                    format!("socket `{}`", req.socket_id)
                } else {
                    format!("room `{}`", req.room)
                };
                let partial = if covered.missing.is_empty() {
                    String::new()
                } else {
                    format!(" (gateways that did not answer: {:?})", covered.missing)
                };
                return Err(Status::not_found(format!(
                    "no gateway of {namespace} holds {what}{partial}"
                )));
            }
            let opts = target_opts(&req.room, &req.socket_id)?;
            let disconnect =
                RequestOut::new(self.requests.uid, RequestTypeOut::DisconnectSockets, &opts);
            self.requests
                .send(&self.state, &namespace, &disconnect, FrameKind::Broadcast)
                .await?;
            metrics::counter!("switchyard_relay_admin_disconnects_total")
                .increment(found.len() as u64);
            tracing::info!(sockets = found.len(), room = %req.room, socket_id = %req.socket_id,
                           "disconnect requested");
            Ok(GrpcResponse::new(DisconnectSocketsResponse {
                disconnected: found
                    .into_iter()
                    .map(|(sid, node)| SocketInfo {
                        socket_id: sid.to_string(),
                        node_id: node,
                        rooms: Vec::new(),
                    })
                    .collect(),
                coverage: Some(covered.into_proto()),
            }))
        }
        .instrument(span)
        .await
    }
}

/// Describes the admin API's metrics once, so `/metrics` carries HELP lines.
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "switchyard_relay_admin_calls_total",
        "RelayAdmin calls by operation"
    );
    describe_counter!(
        "switchyard_relay_admin_requests_total",
        "Adapter requests the relay sent to gateways for admin calls"
    );
    describe_counter!(
        "switchyard_relay_admin_gateways_missing_total",
        "Gateways that did not answer an admin request in time (partial answers)"
    );
    describe_counter!(
        "switchyard_relay_admin_disconnects_total",
        "Sockets an admin call asked the gateways to disconnect"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::remote_packet::ResponseType;

    #[test]
    fn the_response_envelope_matches_the_gateways() -> anyhow::Result<()> {
        // What the gateway's `join_response` writes: [n][id][Response].
        let id = Sid::new();
        let res = Response::<()> {
            node_id: Uid::new(),
            r#type: ResponseType::AllRooms(["a".into()].into_iter().collect()),
        };
        let text = id.to_string();
        let mut payload = vec![u8::try_from(text.len())?];
        payload.extend_from_slice(text.as_bytes());
        payload.extend(rmp_serde::to_vec_named(&res)?);
        let (got, body) =
            split_response(&Bytes::from(payload)).ok_or_else(|| anyhow::anyhow!("split"))?;
        assert_eq!(got, id);
        let back: Response<()> = rmp_serde::from_slice(&body)?;
        assert_eq!(back, res);
        assert!(split_response(&Bytes::from_static(&[9, b'x'])).is_none());
        Ok(())
    }

    #[test]
    fn a_target_is_a_room_or_a_socket() {
        assert!(target_opts("r", "").is_ok_and(|o| o.rooms.len() == 1 && o.sid.is_none()));
        let sid = Sid::new().to_string();
        assert!(target_opts("", &sid).is_ok_and(|o| o.sid.is_some() && o.rooms.is_empty()));
        for (room, sid) in [("", ""), ("r", sid.as_str()), ("", "not a sid!")] {
            let code = target_opts(room, sid).err().map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::InvalidArgument), "{room:?} {sid:?}");
        }
    }
}
