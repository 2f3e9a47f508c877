//! Batched stamps: one Redis round trip for every stamp of a namespace that is waiting.
//!
//! Each namespace has at most one `stamp.lua` call in flight on a replica. A stamp that
//! arrives meanwhile queues; when the call returns, what queued (up to `--history-batch-max`
//! events and [`BATCH_MAX_BYTES`] of data) goes in the next call, which stamps the events in
//! queue order. An idle namespace stamps an event at once (no delay is ever added to wait for
//! company); a busy one shares each round trip among many events, so the history does not
//! limit a namespace to one event per Redis round trip.
//!
//! Batching keeps every guarantee of one stamp per call: offsets come from the shared
//! per-namespace sequence with no gap (the script increments it per event); a caller's
//! events keep their order (queue order is arrival order and calls of one namespace never
//! overlap on this replica); publish ids stay idempotent (the script checks each event, also
//! against earlier events of the same batch); the channel sees events in offset order.
//!
//! The calls run on a spawned task per busy namespace, not on the first caller's future, so a
//! caller that goes away (its gRPC call cancelled) cannot strand the others. The task ends as
//! soon as its namespace's queue is empty.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use prost::Message;
use redis::Script;
use switchyard_proto::relay::v1::Position;
use tokio::sync::oneshot;

use super::{HistoryError, HistorySettings, keys::key, new_epoch, stamped_frame};
use crate::{bus::RedisBus, metrics, origin::Origin, validate::RoomEvent};

/// Stamp script; see its header.
const STAMP_SCRIPT: &str = include_str!("stamp.lua");

/// Most event data (bytes) one call carries; a single larger event still goes, alone.
pub const BATCH_MAX_BYTES: usize = 1 << 20;

/// A stamp's position, and whether its publish id was already stamped.
type Stamped = Result<(Position, bool), HistoryError>;

struct Waiting {
    event: RoomEvent,
    reply: oneshot::Sender<Stamped>,
}

/// Stamps of every namespace, batched per namespace. See the module docs.
pub struct StampBatcher {
    settings: HistorySettings,
    bus: Arc<RedisBus>,
    origin: Arc<Origin>,
    script: Script,
    /// Per namespace whose task is running: the stamps waiting for its next call. A namespace
    /// is a key here exactly while its task lives (both change under this lock), so a stamp
    /// queued here is always picked up. A `std` mutex: nothing under it awaits.
    queues: Mutex<HashMap<String, VecDeque<Waiting>>>,
}

impl StampBatcher {
    pub fn new(settings: HistorySettings, bus: Arc<RedisBus>, origin: Arc<Origin>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            bus,
            origin,
            script: Script::new(STAMP_SCRIPT),
            queues: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Waiting>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one stamp and waits for the call that carries it.
    pub async fn stamp(self: &Arc<Self>, event: RoomEvent) -> Stamped {
        let namespace = event.namespace().to_owned();
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting { event, reply };
        let start = match self.lock().entry(namespace.clone()) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(waiting);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::from([waiting]));
                true
            }
        };
        if start {
            tokio::spawn(Arc::clone(self).run(namespace));
        }
        answer.await.unwrap_or_else(|_| {
            Err(HistoryError::Unavailable(
                "the history batch ended without an answer".into(),
            ))
        })
    }

    /// The task of one namespace: calls until its queue is empty.
    async fn run(self: Arc<Self>, namespace: String) {
        loop {
            let batch = self.next_batch(&namespace);
            if batch.is_empty() {
                return;
            }
            metrics::history_stamp_batch(batch.len());
            match self.call(&namespace, &batch).await {
                Ok(stamped) => {
                    for (waiting, result) in batch.into_iter().zip(stamped) {
                        let _ = waiting.reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    tracing::warn!(%namespace, events = batch.len(), error = %e, "history stamp failed");
                    for waiting in batch {
                        let _ = waiting.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Takes the next batch off `namespace`'s queue; when it is empty, removes the queue
    /// (ending the task) and returns nothing.
    fn next_batch(&self, namespace: &str) -> Vec<Waiting> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(namespace) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.front() {
            let len = next.event.msgpack().len();
            let full = batch.len() >= self.settings.batch_max.max(1)
                || (!batch.is_empty() && bytes + len > BATCH_MAX_BYTES);
            if full {
                break;
            }
            bytes += len;
            batch.extend(queue.pop_front());
        }
        if batch.is_empty() {
            queues.remove(namespace);
        }
        batch
    }

    /// One `stamp.lua` run for `batch`: the position of each event, in order.
    async fn call(
        &self,
        ns: &str,
        batch: &[Waiting],
    ) -> Result<Vec<(Position, bool)>, HistoryError> {
        let limits = self.settings.limits(ns);
        let mut invocation = self.script.prepare_invoke();
        for what in ["seq", "stream", "epoch", "retained", "ids", "ids-old"] {
            invocation.key(key(&self.bus, ns, what));
        }
        invocation
            .arg(new_epoch())
            .arg(limits.max_len)
            .arg(limits.ttl.as_millis() as u64)
            .arg(self.bus.publish_command()?)
            .arg(self.bus.channel(ns));
        for waiting in batch {
            let event = &waiting.event;
            invocation
                .arg(event.room())
                .arg(event.event())
                .arg(event.msgpack().as_ref())
                .arg(if event.retain() { "1" } else { "0" })
                .arg(stamped_frame(event, &self.origin).encode_to_vec())
                .arg(event.publish_id());
        }
        let mut conn = self.bus.pool.get().await?;
        let (epoch, flat): (String, Vec<u64>) = invocation.invoke_async(&mut conn).await?;
        if flat.len() != 2 * batch.len() {
            return Err(HistoryError::Invalid(format!(
                "stamp.lua answered {} values for {} events",
                flat.len(),
                batch.len()
            )));
        }
        Ok(flat
            .chunks_exact(2)
            .map(|pair| {
                let position = Position {
                    epoch: epoch.clone(),
                    offset: pair[0],
                };
                (position, pair[1] == 1)
            })
            .collect())
    }
}
