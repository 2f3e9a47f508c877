//! The Redis history: shared by every replica of a cluster.
//!
//! Every change is one Lua script (beside this file, each with a header giving its keys,
//! arguments, invariant and complexity), so the script is the critical section:
//! `stamp.lua` (run by [`StampBatcher`], several events of a namespace per call), `head.lua`,
//! `replay.lua`, and `namespaces.lua` for the figures. The stamp script also publishes each
//! stamped frame on the namespace's channel, in the bus's stamped form (`bus/channel.rs`), so
//! the offset, the log and the delivery order can never disagree. The keys are laid out in
//! `history/keys.rs`.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use async_trait::async_trait;
use prost::bytes::Bytes;
use redis::Script;
use switchyard_proto::{
    admin::v1::NamespaceHistory,
    relay::v1::{HistoryEvent, Position, ReplayRequest, ReplayResponse},
};

use super::{
    Head, History, HistoryError, HistorySettings, batch::StampBatcher, keys, new_epoch,
    observe_replay, observe_stamp, replay_limit,
};
use crate::{bus::RedisBus, origin::Origin, validate::RoomEvent};

/// Head script; see its header.
const HEAD_SCRIPT: &str = include_str!("head.lua");
/// Replay script; see its header.
const REPLAY_SCRIPT: &str = include_str!("replay.lua");
/// Namespaces script (one SCAN step); see its header.
const NAMESPACES_SCRIPT: &str = include_str!("namespaces.lua");

/// History in Redis, shared by every replica of the cluster.
pub struct RedisHistory {
    settings: HistorySettings,
    bus: Arc<RedisBus>,
    stamper: Arc<StampBatcher>,
    head: Script,
    replay: Script,
    namespaces: Script,
}

impl RedisHistory {
    /// Stamps through `bus`'s Redis and publishes on its channels, frames from `origin`.
    pub fn new(settings: HistorySettings, bus: Arc<RedisBus>, origin: Arc<Origin>) -> Self {
        Self {
            stamper: StampBatcher::new(settings.clone(), Arc::clone(&bus), origin),
            settings,
            bus,
            head: Script::new(HEAD_SCRIPT),
            replay: Script::new(REPLAY_SCRIPT),
            namespaces: Script::new(NAMESPACES_SCRIPT),
        }
    }

    fn key(&self, namespace: &str, what: &str) -> String {
        keys::key(&self.bus, namespace, what)
    }

    /// Every namespace with an epoch, a SCAN step at a time (see `namespaces.lua`).
    async fn namespaces_with_history(
        &self,
        conn: &mut switchyard_redis::Connection,
    ) -> Result<BTreeSet<String>, HistoryError> {
        let prefix = keys::namespaces_prefix(&self.bus);
        let pattern = format!("{prefix}*:epoch");
        let route = self.key("/", "seq");
        let mut found = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .namespaces
                .key(&route)
                .arg(cursor)
                .arg(&pattern)
                .arg(1000)
                .invoke_async(conn)
                .await?;
            found.extend(keys.iter().filter_map(|k| {
                k.strip_prefix(prefix.as_str())?
                    .strip_suffix(":epoch")
                    .map(str::to_owned)
            }));
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }
}

/// Epoch, head, stream length and the oldest entry (`[id, [field, value, ...]]`).
type Snapshot = (
    Option<String>,
    Option<u64>,
    u64,
    Vec<(String, Vec<Vec<u8>>)>,
);

#[async_trait]
impl History for RedisHistory {
    async fn stamp(&self, event: RoomEvent) -> Result<Position, HistoryError> {
        let started = Instant::now();
        observe_stamp(started, self.stamper.stamp(event).await)
    }

    async fn head(&self, namespace: &str, rooms: &[String]) -> Result<Head, HistoryError> {
        let mut conn = self.bus.pool.get().await?;
        let mut invocation = self.head.prepare_invoke();
        invocation
            .key(self.key(namespace, "seq"))
            .key(self.key(namespace, "stream"))
            .key(self.key(namespace, "epoch"))
            .key(self.key(namespace, "retained"))
            .arg(new_epoch())
            .arg(self.settings.limits(namespace).ttl.as_millis() as u64);
        for room in rooms {
            invocation.arg(room);
        }
        let (epoch, head, flat): (String, u64, Vec<Vec<u8>>) =
            invocation.invoke_async(&mut conn).await?;
        if flat.len() != rooms.len() * 3 {
            return Err(HistoryError::Invalid(format!(
                "head answered {} fields for {} rooms",
                flat.len(),
                rooms.len()
            )));
        }
        let retained = rooms
            .iter()
            .zip(flat.chunks_exact(3))
            .filter_map(|(room, r)| {
                let offset = std::str::from_utf8(&r[0]).ok()?.parse::<u64>().ok()?;
                Some(HistoryEvent {
                    offset,
                    room: room.clone(),
                    event: String::from_utf8_lossy(&r[1]).into_owned(),
                    msgpack: Bytes::copy_from_slice(&r[2]),
                })
            })
            .collect();
        Ok(Head {
            position: Position {
                epoch,
                offset: head,
            },
            retained,
        })
    }

    async fn replay(&self, req: &ReplayRequest) -> Result<ReplayResponse, HistoryError> {
        let namespace = req.namespace.as_str();
        let mut conn = self.bus.pool.get().await?;
        let (ok, cur_epoch, head, flat): (i64, String, u64, Vec<Vec<u8>>) = self
            .replay
            .key(self.key(namespace, "seq"))
            .key(self.key(namespace, "stream"))
            .key(self.key(namespace, "epoch"))
            .key(self.key(namespace, "retained"))
            .arg(&req.epoch)
            .arg(req.after_offset)
            .arg(replay_limit(req.limit))
            .arg(new_epoch())
            .arg(self.settings.limits(namespace).ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let mut events = Vec::new();
        if ok == 1 {
            for entry in flat.chunks_exact(4) {
                let id = String::from_utf8_lossy(&entry[0]);
                let Some(offset) = id.split('-').next().and_then(|o| o.parse::<u64>().ok()) else {
                    return Err(HistoryError::Invalid(format!(
                        "bad history entry id `{id}`"
                    )));
                };
                let room = String::from_utf8_lossy(&entry[1]).into_owned();
                if req.rooms.contains(&room) {
                    events.push(HistoryEvent {
                        offset,
                        room,
                        event: String::from_utf8_lossy(&entry[2]).into_owned(),
                        msgpack: Bytes::copy_from_slice(&entry[3]),
                    });
                }
            }
        }
        Ok(observe_replay(ReplayResponse {
            recovered: ok == 1,
            events,
            head: Some(Position {
                epoch: cur_epoch,
                offset: head,
            }),
        }))
    }

    async fn stats(&self, namespaces: &[String]) -> Result<Vec<NamespaceHistory>, HistoryError> {
        let mut conn = self.bus.pool.get().await?;
        let namespaces = if namespaces.is_empty() {
            self.namespaces_with_history(&mut conn).await?
        } else {
            namespaces.iter().cloned().collect()
        };
        let mut out = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            // One MULTI/EXEC: the four figures describe the same moment.
            let (epoch, head, length, oldest): Snapshot = redis::pipe()
                .atomic()
                .get(self.key(&ns, "epoch"))
                .get(self.key(&ns, "seq"))
                .cmd("XLEN")
                .arg(self.key(&ns, "stream"))
                .cmd("XRANGE")
                .arg(self.key(&ns, "stream"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let limits = self.settings.limits(&ns);
            let oldest_offset = oldest
                .first()
                .and_then(|(id, _)| id.split('-').next()?.parse().ok())
                .unwrap_or(0);
            let has_epoch = epoch.is_some();
            out.push(NamespaceHistory {
                namespace: ns,
                epoch: epoch.unwrap_or_default(),
                length: if has_epoch { length } else { 0 },
                head_offset: if has_epoch { head.unwrap_or(0) } else { 0 },
                oldest_offset: if has_epoch { oldest_offset } else { 0 },
                max_len: limits.max_len,
                ttl_ms: limits.ttl.as_millis() as u64,
            });
        }
        Ok(out)
    }
}
