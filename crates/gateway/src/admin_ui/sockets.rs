//! `all_sockets`: every socket of the cluster, for an admin UI that just connected.
//!
//! Local sockets are described in full ([`crate::observe::describe`]). Other gateways' sockets
//! come from socketioxide's own cluster requests through the adapter: `fetch_sockets` (ids, one
//! request per namespace) and room membership (`rooms`, then `fetch_sockets` of each room, at
//! most [`MAX_ROOMS`] rooms per namespace). A remote socket's handshake (address, headers) is
//! not part of socketioxide's remote socket data, so it is shown empty; every socket's own
//! room (named after its id, as in Node) is known without asking.

use std::collections::{BTreeMap, BTreeSet};

use socketioxide::{SocketIo, adapter::Adapter};

use crate::observe::{Handshake, SerializedSocket, describe};

/// Rooms per namespace whose members are asked for; beyond, remote sockets show fewer rooms.
pub const MAX_ROOMS: usize = 256;

/// Every socket of `namespaces`, cluster-wide.
pub async fn all_sockets<A: Adapter>(
    io: &SocketIo<A>,
    namespaces: &[String],
) -> Vec<SerializedSocket> {
    let mut out = Vec::new();
    for ns in namespaces {
        let Some(op) = io.of(ns) else { continue };
        let local: Vec<SerializedSocket> = op
            .clone()
            .broadcast()
            .sockets()
            .iter()
            .map(|s| describe(s))
            .collect();
        let known: BTreeSet<String> = local.iter().map(|s| s.id.clone()).collect();
        let remote_ids: Vec<String> = match op.clone().broadcast().fetch_sockets().await {
            Ok(sockets) => sockets
                .into_iter()
                .map(|s| s.data().id.to_string())
                .filter(|id| !known.contains(id))
                .collect(),
            Err(e) => {
                tracing::warn!(ns, error = %e, "admin UI: fetching remote sockets failed");
                Vec::new()
            }
        };
        let mut rooms: BTreeMap<String, BTreeSet<String>> = remote_ids
            .iter()
            .map(|id| (id.clone(), BTreeSet::from([id.clone()])))
            .collect();
        if !rooms.is_empty() {
            let names = op.clone().broadcast().rooms().await.unwrap_or_default();
            let shared = names
                .iter()
                .map(|r| r.to_string())
                .filter(|r| !rooms.contains_key(r) && !known.contains(r))
                .take(MAX_ROOMS)
                .collect::<Vec<_>>();
            for room in shared {
                let Some(op) = io.of(ns) else { break };
                let members = op
                    .within(room.clone())
                    .fetch_sockets()
                    .await
                    .unwrap_or_default();
                for m in members {
                    if let Some(set) = rooms.get_mut(&m.data().id.to_string()) {
                        set.insert(room.clone());
                    }
                }
            }
        }
        out.extend(local);
        let now = switchyard_common::iso8601::now();
        let issued = switchyard_common::clock::now_ms();
        out.extend(rooms.into_iter().map(|(id, rooms)| SerializedSocket {
            client_id: id.clone(),
            id,
            transport: "websocket",
            nsp: ns.clone(),
            data: serde_json::Value::Object(serde_json::Map::new()),
            handshake: Handshake {
                address: String::new(),
                headers: serde_json::Map::new(),
                query: serde_json::Map::new(),
                issued,
                secure: false,
                time: now.clone(),
                url: String::new(),
                xdomain: false,
            },
            rooms: rooms.into_iter().collect(),
        }));
    }
    out
}
