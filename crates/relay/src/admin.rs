//! The relay's operator API, `switchyard.admin.v1.RelayAdmin` (behind the admin token, checked
//! by the server's interceptor before any call gets here).
//!
//! `ListLinks` and `ListHistory` read this replica's [`Hub`](crate::hub::Hub) and the
//! [`History`](crate::history::History). The socket operations span the cluster, and the relay
//! holds no socket state: it asks the gateways ([`requests`]) and reports the gateways that did
//! not answer in time in `Coverage.missing`, so an answer is partial, never late.
//!
//! - rooms: `AllRooms` to every gateway, then `FetchSockets` per room (member counts);
//! - sockets: `FetchSockets` for the room (or the one socket), then `AllRooms` per socket;
//! - disconnect: `FetchSockets` to find the sockets, then `DisconnectSockets` (a broadcast:
//!   gateways do not answer it, exactly as between gateways).

mod requests;

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use socketioxide_core::{
    Sid,
    adapter::{
        BroadcastFlags, BroadcastOptions, RemoteSocketData, Room,
        remote_packet::{RequestOut, RequestTypeOut},
    },
};
use switchyard_proto::{
    admin::v1::{
        DisconnectSocketsRequest, DisconnectSocketsResponse, LinkInfo, ListHistoryRequest,
        ListHistoryResponse, ListLinksRequest, ListLinksResponse, ListRoomsRequest,
        ListRoomsResponse, ListSocketsRequest, ListSocketsResponse, RoomInfo, SocketInfo,
        relay_admin_server::RelayAdmin,
    },
    relay::v1::FrameKind,
};
use tonic::{Request, Response as GrpcResponse, Status};
use tracing::Instrument;

use crate::{metrics, state::RelayState, validate::normalize_namespace};
use requests::{Covered, Requests};

/// How long a cluster-wide request waits for the gateways when the call names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// The longest a call may ask for.
const MAX_TIMEOUT_MS: u32 = 30_000;
/// Per-room or per-socket follow-up requests in flight at once.
const FOLLOW_UPS: usize = 16;
/// Most sockets `ListSockets` describes (each costs one request to every gateway).
const MAX_SOCKETS: usize = 10_000;

/// The `switchyard.admin.v1.RelayAdmin` service.
pub struct RelayAdminGrpc {
    state: Arc<RelayState>,
    requests: Arc<Requests>,
}

impl RelayAdminGrpc {
    /// The service; installs the replica's answer table in the hub (see [`Requests::install`]).
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

/// The namespace a call names; empty: `/`.
fn namespace_of(ns: String) -> Result<String, Status> {
    Ok(normalize_namespace(&ns)?.to_owned())
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
    metrics::admin_call(op);
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
            metrics::admin_disconnects(found.len());
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

#[cfg(test)]
mod tests {
    use super::*;

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
