//! [`HeadReads`]: the head reads of `join`, shared by the joins of one namespace.
//!
//! A `join` reads the namespace's head after the relays took its room (the argument is in
//! [`crate::link`]): what it needs is a read that *starts* after its room's interest settled,
//! not a read of its own. So the joins of a namespace share reads. While a read is in flight,
//! the joins that ask wait for the next one, which starts when the current one ends and asks for
//! all their rooms at once (at most [`MAX_HEAD_ROOMS`] distinct rooms; the joins beyond wait for
//! the read after). Every join is answered by a read that started after it asked, so it starts
//! from the same kind of position a read of its own would give, and N joins arriving together
//! (a reconnect storm: every client of a dead gateway joins again within a second) cost a few
//! reads instead of N, each a gRPC call, a relay task and a Redis script.
//!
//! The reads of a namespace run in a task of their own, so a join that goes away (its socket
//! disconnected) never strands the others. If that task ends without answering (the runtime
//! shuts down), the joins still waiting get an error and the next join starts a new task. The
//! queue holds one entry per waiting join, so it is bounded by the joins in flight.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use switchyard_proto::MAX_HEAD_ROOMS;
use switchyard_proto::relay::v1::Position;
use tokio::sync::oneshot;

use crate::history::{History, HistoryError, Retained};
use crate::metrics;

/// A room's head: the namespace's position, and the room's retained event.
#[derive(Debug, Clone)]
pub struct Head {
    pub position: Position,
    pub retained: Option<Retained>,
}

/// Why a join got no head: the shared read failed (every join it served gets the same error),
/// or ended without an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadFailed {
    #[error("{0}")]
    History(Arc<HistoryError>),
    #[error("the head read ended without an answer")]
    Abandoned,
}

type Answer = oneshot::Sender<Result<Head, ReadFailed>>;

/// One namespace's waiting joins; present while its read task runs.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(String, Answer)>,
}

type Queues = Arc<Mutex<HashMap<String, Queue>>>;

fn lock(queues: &Queues) -> MutexGuard<'_, HashMap<String, Queue>> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared head reads of one gateway; owned by [`crate::cluster::ClusterState`].
#[derive(Debug)]
pub struct HeadReads {
    history: Arc<History>,
    queues: Queues,
}

impl HeadReads {
    pub fn new(history: Arc<History>) -> HeadReads {
        HeadReads {
            history,
            queues: Queues::default(),
        }
    }

    /// `room`'s head in namespace `ns`, from a read that starts after this call was made.
    pub async fn head(&self, ns: &str, room: &str) -> Result<Head, ReadFailed> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queues = lock(&self.queues);
            let start = !queues.contains_key(ns);
            queues
                .entry(ns.to_owned())
                .or_default()
                .waiting
                .push((room.to_owned(), answer));
            start
        };
        if start {
            let reader = Reader {
                history: Arc::clone(&self.history),
                queues: Arc::clone(&self.queues),
                ns: ns.to_owned(),
                done: false,
            };
            tokio::spawn(reader.run());
        }
        answered.await.unwrap_or(Err(ReadFailed::Abandoned))
    }
}

/// The read task of one namespace: reads until no join waits, then removes the queue.
struct Reader {
    history: Arc<History>,
    queues: Queues,
    ns: String,
    /// Set when the task removed the queue itself; otherwise dropping it does (see `Drop`).
    done: bool,
}

impl Reader {
    async fn run(mut self) {
        loop {
            let batch = {
                let mut queues = lock(&self.queues);
                let Some(queue) = queues.get_mut(&self.ns) else {
                    self.done = true;
                    return;
                };
                if queue.waiting.is_empty() {
                    queues.remove(&self.ns);
                    self.done = true;
                    return;
                }
                take_batch(&mut queue.waiting)
            };
            let rooms = distinct(&batch);
            ::metrics::counter!(metrics::HEAD_READS_TOTAL).increment(1);
            ::metrics::counter!(metrics::HEAD_READ_JOINS_TOTAL).increment(batch.len() as u64);
            match self.history.head(&self.ns, &rooms).await {
                Ok((position, retained)) => {
                    for (room, answer) in batch {
                        let head = Head {
                            position: position.clone(),
                            retained: retained.get(&room).cloned(),
                        };
                        let _ = answer.send(Ok(head));
                    }
                }
                Err(e) => {
                    let failed = ReadFailed::History(Arc::new(e));
                    for (_, answer) in batch {
                        let _ = answer.send(Err(failed.clone()));
                    }
                }
            }
        }
    }
}

impl Drop for Reader {
    /// A task dropped before it emptied its queue (the runtime shut down) takes the queue with
    /// it: the joins still waiting get [`ReadFailed::Abandoned`], and the next join starts anew.
    fn drop(&mut self) {
        if !self.done {
            lock(&self.queues).remove(&self.ns);
        }
    }
}

/// The waiting joins of the next read, in the order they asked: as many as name at most
/// [`MAX_HEAD_ROOMS`] distinct rooms.
fn take_batch(waiting: &mut Vec<(String, Answer)>) -> Vec<(String, Answer)> {
    let mut rooms = HashSet::new();
    let end = waiting
        .iter()
        .position(|(room, _)| {
            rooms.insert(room.as_str());
            rooms.len() > MAX_HEAD_ROOMS
        })
        .unwrap_or(waiting.len());
    let rest = waiting.split_off(end);
    std::mem::replace(waiting, rest)
}

/// The distinct rooms of `batch`, in first-asked order.
fn distinct(batch: &[(String, Answer)]) -> Vec<String> {
    let mut seen = HashSet::new();
    batch
        .iter()
        .filter(|(room, _)| seen.insert(room.as_str()))
        .map(|(room, _)| room.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(rooms: impl IntoIterator<Item = String>) -> Vec<(String, Answer)> {
        rooms
            .into_iter()
            .map(|room| (room, oneshot::channel().0))
            .collect()
    }

    #[test]
    fn a_read_names_at_most_the_most_rooms_and_keeps_the_order() {
        // Every room twice: the batch takes joins until the next one would add a room too many.
        let rooms: Vec<String> = (0..MAX_HEAD_ROOMS + 10)
            .flat_map(|i| [format!("r{i}"), format!("r{i}")])
            .collect();
        let mut queue = waiting(rooms.clone());
        let batch = take_batch(&mut queue);
        assert_eq!(batch.len(), MAX_HEAD_ROOMS * 2);
        assert_eq!(distinct(&batch).len(), MAX_HEAD_ROOMS);
        assert_eq!(queue.len(), 20);
        let order: Vec<&str> = batch
            .iter()
            .chain(&queue)
            .map(|(r, _)| r.as_str())
            .collect();
        assert_eq!(order, rooms);
        // What is left goes next, whole.
        let next = take_batch(&mut queue);
        assert_eq!((next.len(), queue.len()), (20, 0));
    }
}
