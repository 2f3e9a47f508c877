//! The relay's operator commands: `rooms`, `sockets`, `disconnect`, `links`, `history`, over
//! `switchyard.admin.v1.RelayAdmin`.
//!
//! The relay comes from `--relay` / `SWITCHYARD_RELAY_URL`, else from `.switchyard/cluster.json`
//! (`relays[].grpc`), and the token is the admin token (`--admin-token`, else the file's, sent
//! only to a relay the same file lists). `rooms`, `sockets` and `disconnect` span the cluster:
//! the relay asks every gateway of the namespace and answers with what arrived in time; when
//! some gateway did not answer, the result is partial and syctl says so on stderr (and in
//! `missing` with `--json`), still exiting 0: what it prints is true, only incomplete.
//!
//! JSON shapes (proto field names):
//! - `rooms`: `{"namespace","rooms":[{"room","members","gateways"}],"gateways","missing"}`
//! - `sockets`: `{"namespace","sockets":[{"socket_id","node_id","rooms"}],"gateways","missing"}`
//! - `disconnect`: `{"disconnected":[{"socket_id","node_id"}],"gateways","missing"}`
//! - `links`: `{"relay_id","links":[LinkInfo...]}`
//! - `history`: `{"namespaces":[NamespaceHistory...]}`

use std::time::Duration;

use serde_json::json;
use switchyard_common::tls::ClientTls;
use switchyard_proto::admin::v1::{
    Coverage, DisconnectSocketsRequest, ListHistoryRequest, ListLinksRequest, ListRoomsRequest,
    ListSocketsRequest, relay_admin_client::RelayAdminClient,
};
use tonic::{Code, Request, Status, service::interceptor::InterceptedService, transport::Channel};

use switchyard_common::bearer::Bearer;

use crate::{
    client::{bearer, connect_first},
    error::CtlError,
    output::{self, format_age, table},
    publish::RelayTarget,
};

/// One relay admin operation (the arguments of its subcommand).
#[derive(Debug, Clone)]
pub enum Op {
    Rooms {
        namespace: String,
    },
    Sockets {
        namespace: String,
        room: String,
    },
    Disconnect {
        namespace: String,
        socket_id: String,
        room: String,
    },
    Links,
    History {
        namespaces: Vec<String>,
    },
}

/// An authenticated client of one relay's `RelayAdmin`.
struct RelayAdmin {
    client: RelayAdminClient<InterceptedService<Channel, Bearer>>,
    endpoint: String,
    timeout: Duration,
}

impl RelayAdmin {
    /// Connects to the first endpoint of `target` that accepts a connection within `timeout`.
    async fn connect(
        target: &RelayTarget,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<RelayAdmin, CtlError> {
        let bearer = bearer(target.token.as_deref(), "admin")?;
        let (channel, endpoint) =
            connect_first(&target.endpoints, timeout, tls, "the relay", "").await?;
        Ok(RelayAdmin {
            client: RelayAdminClient::with_interceptor(channel, bearer),
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    /// A request carrying the timeout as `grpc-timeout`.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        req
    }

    /// How long the relay may wait for the gateways: a share of the call's timeout (a room
    /// listing makes two rounds of requests), at most the relay's own default of 2 s.
    fn gateway_wait_ms(&self) -> u32 {
        u32::try_from((self.timeout / 3).as_millis())
            .unwrap_or(u32::MAX)
            .clamp(1, 2_000)
    }

    /// Bounds a call by the timeout and converts its failure.
    async fn finish<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(from_status(&status, &self.endpoint)),
            Err(_) => Err(CtlError::Unavailable(format!(
                "relay at {} did not answer within {:?}; raise --timeout",
                self.endpoint, self.timeout
            ))),
        }
    }
}

/// Relay wording for a failed admin call; exit codes as for placement (see [`crate::error`]).
fn from_status(status: &Status, endpoint: &str) -> CtlError {
    let detail = status.message();
    match status.code() {
        Code::Unauthenticated => CtlError::Unauthenticated(format!(
            "relay at {endpoint} refused the admin token: {detail}\n\
             hint: pass --admin-token or set SWITCHYARD_ADMIN_TOKEN to the relay's \
             --admin-token (`cargo xtask up` writes it to .switchyard/cluster.json)"
        )),
        Code::NotFound => CtlError::NotFound(detail.to_owned()),
        Code::InvalidArgument => {
            CtlError::Config(format!("the relay rejected the request: {detail}"))
        }
        Code::Unavailable | Code::DeadlineExceeded => {
            CtlError::Unavailable(format!("relay at {endpoint} is unavailable: {detail}"))
        }
        Code::Unimplemented => CtlError::Other(format!(
            "{endpoint} does not serve switchyard.admin.v1.RelayAdmin ({detail}); is it the \
             relay's gRPC address?"
        )),
        code => CtlError::Other(format!(
            "relay admin call to {endpoint} failed ({code:?}): {detail}"
        )),
    }
}

/// Runs one relay admin operation and prints its answer.
pub async fn run(
    op: &Op,
    target: &RelayTarget,
    timeout: Duration,
    tls: &ClientTls,
    json: bool,
) -> Result<(), CtlError> {
    let relay = RelayAdmin::connect(target, timeout, tls).await?;
    let mut client = relay.client.clone();
    let wait = relay.gateway_wait_ms();
    match op {
        Op::Rooms { namespace } => {
            let req = relay.request(ListRoomsRequest {
                namespace: namespace.clone(),
                timeout_ms: wait,
            });
            let res = relay.finish(client.list_rooms(req)).await?;
            let coverage = res.coverage.unwrap_or_default();
            if json {
                let rooms: Vec<_> = res
                    .rooms
                    .iter()
                    .map(|r| json!({"room": r.room, "members": r.members, "gateways": r.gateways}))
                    .collect();
                return print_with_coverage(
                    json!({"namespace": res.namespace, "rooms": rooms}),
                    &coverage,
                );
            }
            warn_partial(&coverage);
            if res.rooms.is_empty() {
                println!("No rooms in {}.", res.namespace);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = res
                .rooms
                .iter()
                .map(|r| vec![r.room.clone(), r.members.to_string(), r.gateways.join(",")])
                .collect();
            print!(
                "{}",
                table(
                    &["ROOM", "MEMBERS", "GATEWAYS"],
                    &rows,
                    &[false, true, false]
                )
            );
        }
        Op::Sockets { namespace, room } => {
            let req = relay.request(ListSocketsRequest {
                namespace: namespace.clone(),
                room: room.clone(),
                socket_id: String::new(),
                timeout_ms: wait,
            });
            let res = relay.finish(client.list_sockets(req)).await?;
            let coverage = res.coverage.unwrap_or_default();
            if json {
                let sockets: Vec<_> = res
                    .sockets
                    .iter()
                    .map(|s| json!({"socket_id": s.socket_id, "node_id": s.node_id, "rooms": s.rooms}))
                    .collect();
                return print_with_coverage(
                    json!({"namespace": res.namespace, "sockets": sockets}),
                    &coverage,
                );
            }
            warn_partial(&coverage);
            if res.sockets.is_empty() {
                println!("No sockets in room {room} of {}.", res.namespace);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = res
                .sockets
                .iter()
                .map(|s| vec![s.socket_id.clone(), s.node_id.clone(), s.rooms.join(",")])
                .collect();
            print!(
                "{}",
                table(&["SOCKET", "GATEWAY", "ROOMS"], &rows, &[false; 3])
            );
        }
        Op::Disconnect {
            namespace,
            socket_id,
            room,
        } => {
            let req = relay.request(DisconnectSocketsRequest {
                namespace: namespace.clone(),
                socket_id: socket_id.clone(),
                room: room.clone(),
                timeout_ms: wait,
            });
            let res = relay.finish(client.disconnect_sockets(req)).await?;
            let coverage = res.coverage.unwrap_or_default();
            if json {
                let sockets: Vec<_> = res
                    .disconnected
                    .iter()
                    .map(|s| json!({"socket_id": s.socket_id, "node_id": s.node_id}))
                    .collect();
                return print_with_coverage(json!({"disconnected": sockets}), &coverage);
            }
            warn_partial(&coverage);
            println!(
                "Asked the gateways to disconnect {} socket(s):",
                res.disconnected.len()
            );
            let rows: Vec<Vec<String>> = res
                .disconnected
                .iter()
                .map(|s| vec![s.socket_id.clone(), s.node_id.clone()])
                .collect();
            print!("{}", table(&["SOCKET", "GATEWAY"], &rows, &[false, false]));
        }
        Op::Links => {
            let res = relay
                .finish(client.list_links(relay.request(ListLinksRequest {})))
                .await?;
            if json {
                let links: Vec<_> = res
                    .links
                    .iter()
                    .map(|l| {
                        json!({
                            "node_id": l.node_id, "namespaces": l.namespaces,
                            "incarnation": l.incarnation, "queue_depth": l.queue_depth,
                            "queue_capacity": l.queue_capacity, "frames_in": l.frames_in,
                            "frames_out": l.frames_out, "last_seq": l.last_seq,
                            "accepted_seq": l.accepted_seq,
                            "connected_since_ms": l.connected_since_ms,
                        })
                    })
                    .collect();
                return output::print_json(&json!({"relay_id": res.relay_id, "links": links}));
            }
            if res.links.is_empty() {
                println!("No gateway is linked to relay {}.", res.relay_id);
                return Ok(());
            }
            let now = switchyard_common::clock::now_ms();
            let rows: Vec<Vec<String>> = res
                .links
                .iter()
                .map(|l| {
                    vec![
                        l.node_id.clone(),
                        l.namespaces.join(","),
                        format!("{}/{}", l.queue_depth, l.queue_capacity),
                        l.last_seq.saturating_sub(l.accepted_seq).to_string(),
                        l.frames_in.to_string(),
                        l.frames_out.to_string(),
                        format_age(now.saturating_sub(l.connected_since_ms)),
                    ]
                })
                .collect();
            println!("Relay {}:", res.relay_id);
            print!(
                "{}",
                table(
                    &[
                        "GATEWAY",
                        "NAMESPACES",
                        "QUEUE",
                        "UNACKED",
                        "IN",
                        "OUT",
                        "UP"
                    ],
                    &rows,
                    &[false, false, true, true, true, true, true],
                )
            );
        }
        Op::History { namespaces } => {
            let req = relay.request(ListHistoryRequest {
                namespaces: namespaces.clone(),
            });
            let res = relay.finish(client.list_history(req)).await?;
            if json {
                let all: Vec<_> = res
                    .namespaces
                    .iter()
                    .map(|h| {
                        json!({
                            "namespace": h.namespace, "epoch": h.epoch, "length": h.length,
                            "head_offset": h.head_offset, "oldest_offset": h.oldest_offset,
                            "max_len": h.max_len, "ttl_ms": h.ttl_ms,
                        })
                    })
                    .collect();
                return output::print_json(&json!({"namespaces": all}));
            }
            if res.namespaces.is_empty() {
                println!("No namespace has a history.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = res
                .namespaces
                .iter()
                .map(|h| {
                    vec![
                        h.namespace.clone(),
                        if h.epoch.is_empty() {
                            "-".to_owned()
                        } else {
                            h.epoch.clone()
                        },
                        h.length.to_string(),
                        h.oldest_offset.to_string(),
                        h.head_offset.to_string(),
                        h.max_len.to_string(),
                        format_age(h.ttl_ms),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAMESPACE",
                        "EPOCH",
                        "LENGTH",
                        "OLDEST",
                        "HEAD",
                        "MAX_LEN",
                        "TTL"
                    ],
                    &rows,
                    &[false, false, true, true, true, true, true],
                )
            );
        }
    }
    Ok(())
}

/// `value` plus `"gateways"` and `"missing"`, printed as JSON.
fn print_with_coverage(mut value: serde_json::Value, coverage: &Coverage) -> Result<(), CtlError> {
    value["gateways"] = json!(coverage.gateways);
    value["missing"] = json!(coverage.missing);
    output::print_json(&value)
}

/// Says on stderr that the answer lacks some gateways.
fn warn_partial(coverage: &Coverage) {
    if !coverage.missing.is_empty() {
        eprintln!(
            "syctl: warning: partial answer: {} of {} gateway(s) did not answer in time: {}",
            coverage.missing.len(),
            coverage.gateways.len(),
            coverage.missing.join(", ")
        );
    }
}
