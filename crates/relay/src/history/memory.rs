//! The in-memory history: a relay without Redis, which is then the whole cluster.
//!
//! It follows the Redis scripts rule for rule (new epoch on a missing or idle history, publish
//! ids in two generations, all-or-nothing replay), with an exact ring buffer where Redis trims
//! approximately, so the one behavioural suite holds for both.
//!
//! Concurrency: every namespace sits behind one `std::sync::Mutex`, not tokio's, because no
//! critical section awaits. Stamping and the local delivery of the stamped frame happen under
//! it, so frames leave in offset order, as they do from the Redis script. Lock order: this
//! lock, then the hub's (delivery).

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use async_trait::async_trait;
use switchyard_proto::{
    admin::v1::NamespaceHistory,
    relay::v1::{HistoryEvent, Position, ReplayRequest, ReplayResponse},
};

use super::{
    Head, History, HistoryError, HistorySettings, new_epoch, observe_replay, observe_stamp,
    replay_limit, stamped_frame,
};
use crate::{hub::Hub, origin::Origin, validate::RoomEvent};

/// History of a relay without Redis. See the module docs.
pub struct MemoryHistory {
    settings: HistorySettings,
    hub: Arc<Hub>,
    origin: Arc<Origin>,
    namespaces: Mutex<HashMap<String, NsHistory>>,
}

/// One namespace's history.
struct NsHistory {
    epoch: String,
    head: u64,
    ring: VecDeque<HistoryEvent>,
    retained: HashMap<String, HistoryEvent>,
    /// Publish ids stamped in this epoch -> offset, two generations (like stamp.lua).
    ids: HashMap<String, u64>,
    ids_old: HashMap<String, u64>,
    touched: Instant,
}

impl NsHistory {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            head: 0,
            ring: VecDeque::new(),
            retained: HashMap::new(),
            ids: HashMap::new(),
            ids_old: HashMap::new(),
            touched: Instant::now(),
        }
    }

    fn position(&self, offset: u64) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset,
        }
    }
}

impl MemoryHistory {
    /// Stamped frames go straight to `hub`, from `origin`.
    pub fn new(settings: HistorySettings, hub: Arc<Hub>, origin: Arc<Origin>) -> Self {
        Self {
            settings,
            hub,
            origin,
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    fn namespaces(&self) -> MutexGuard<'_, HashMap<String, NsHistory>> {
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The namespace's history, replaced by a new epoch if it idled past the TTL.
    fn with_ns<T>(&self, namespace: &str, f: impl FnOnce(&mut NsHistory) -> T) -> T {
        let ttl = self.settings.limits(namespace).ttl;
        let mut all = self.namespaces();
        let ns = all
            .entry(namespace.to_owned())
            .or_insert_with(NsHistory::new);
        if ns.touched.elapsed() > ttl {
            *ns = NsHistory::new();
        }
        f(ns)
    }

    /// The position, and whether the publish id was already stamped.
    fn stamp_now(&self, event: &RoomEvent) -> (Position, bool) {
        let max_len =
            usize::try_from(self.settings.limits(event.namespace()).max_len).unwrap_or(usize::MAX);
        let mut frame = stamped_frame(event, &self.origin);
        self.with_ns(event.namespace(), |ns| {
            let id = event.publish_id();
            if !id.is_empty()
                && let Some(offset) = ns.ids.get(id).or_else(|| ns.ids_old.get(id))
            {
                return (ns.position(*offset), true);
            }
            ns.head += 1;
            if !id.is_empty() {
                ns.ids.insert(id.to_owned(), ns.head);
                if ns.ids.len() > max_len {
                    ns.ids_old = std::mem::take(&mut ns.ids);
                }
            }
            ns.touched = Instant::now();
            let stored = HistoryEvent {
                offset: ns.head,
                room: event.room().to_owned(),
                event: event.event().to_owned(),
                msgpack: event.msgpack().clone(),
            };
            if event.retain() {
                ns.retained.insert(stored.room.clone(), stored.clone());
            }
            ns.ring.push_back(stored);
            while ns.ring.len() > max_len {
                ns.ring.pop_front();
            }
            let position = ns.position(ns.head);
            frame.position = Some(position.clone());
            // Under the lock: frames leave in offset order.
            self.hub.deliver(&frame);
            (position, false)
        })
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn stamp(&self, event: RoomEvent) -> Result<Position, HistoryError> {
        let started = Instant::now();
        observe_stamp(started, Ok(self.stamp_now(&event)))
    }

    async fn head(&self, namespace: &str, rooms: &[String]) -> Result<Head, HistoryError> {
        Ok(self.with_ns(namespace, |ns| Head {
            position: ns.position(ns.head),
            retained: rooms
                .iter()
                .filter_map(|room| ns.retained.get(room).cloned())
                .collect(),
        }))
    }

    async fn replay(&self, req: &ReplayRequest) -> Result<ReplayResponse, HistoryError> {
        let (after, limit) = (req.after_offset, replay_limit(req.limit));
        let replay = self.with_ns(&req.namespace, |ns| {
            let oldest = ns.ring.front().map_or(ns.head + 1, |e| e.offset);
            let recovered = req.epoch == ns.epoch
                && after <= ns.head
                && (after == ns.head || (oldest <= after + 1 && ns.head - after <= limit));
            let events = if recovered {
                ns.ring
                    .iter()
                    .filter(|e| e.offset > after && req.rooms.contains(&e.room))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            ReplayResponse {
                recovered,
                events,
                head: Some(ns.position(ns.head)),
            }
        });
        Ok(observe_replay(replay))
    }

    async fn stats(&self, namespaces: &[String]) -> Result<Vec<NamespaceHistory>, HistoryError> {
        let all = self.namespaces();
        let names: BTreeSet<String> = if namespaces.is_empty() {
            all.keys().cloned().collect()
        } else {
            namespaces.iter().cloned().collect()
        };
        Ok(names
            .into_iter()
            .map(|ns| {
                let limits = self.settings.limits(&ns);
                let mut out = NamespaceHistory {
                    namespace: ns.clone(),
                    max_len: limits.max_len,
                    ttl_ms: limits.ttl.as_millis() as u64,
                    ..NamespaceHistory::default()
                };
                // An idle namespace past its TTL is as good as gone (the next call replaces it).
                if let Some(h) = all.get(&ns).filter(|h| h.touched.elapsed() <= limits.ttl) {
                    out.epoch = h.epoch.clone();
                    out.length = h.ring.len() as u64;
                    out.head_offset = h.head;
                    out.oldest_offset = h.ring.front().map_or(0, |e| e.offset);
                }
                out
            })
            .collect())
    }
}
