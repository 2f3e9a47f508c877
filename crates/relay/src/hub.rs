//! The local fan-out: which gateways are linked to THIS replica, per namespace, and the one
//! place that puts messages into their queues.
//!
//! Every link has a bounded queue (`--link-queue`). Delivery never waits: it uses `try_send`,
//! and a link whose queue is full is cut on the spot (its stream ends with
//! `RESOURCE_EXHAUSTED`, the counter `switchyard_relay_links_cut_total{reason="queue_full"}`
//! grows). That is the whole backpressure policy: one slow gateway costs the others nothing,
//! and the slow one relinks and resyncs.
//!
//! The state sits behind a `std::sync::Mutex`, not tokio's, because no critical section awaits:
//! delivery is a loop of `try_send`s. It is released before a link is cut (a link's own cut
//! switch) or the inbox is called, so no other lock is ever taken under it; callers may hold
//! theirs while they deliver (the in-memory history does, to keep offset order).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use switchyard_proto::relay::v1::{Frame, FrameKind, LinkMessage, link_message::Kind};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tonic::Status;

use crate::interest::{LinkInterest, frame_rooms};
use crate::metrics;

/// One gateway's link as the hub sees it: its queue and the switch that cuts it.
#[derive(Debug)]
pub struct LinkHandle {
    /// Unique per link on this replica (a relinking gateway gets a new one).
    pub link_id: u64,
    pub node_id: String,
    pub namespaces: Vec<String>,
    /// Counters for the admin API; the link's reader holds a clone.
    pub stats: Arc<LinkStats>,
    queue: mpsc::Sender<LinkMessage>,
    cut: Mutex<Option<oneshot::Sender<Status>>>,
    /// Turns `true` on the cut, so the link's reader stops reading too (dropping the request
    /// stream resets it, and the gateway cannot keep a cut link half open).
    cut_flag: watch::Sender<bool>,
}

/// Takes response frames addressed to this replica (see [`Hub::set_inbox`]).
pub type Inbox = Box<dyn Fn(&Frame) + Send + Sync>;

/// What the admin API reports about one link. Relaxed atomics: figures, not synchronisation.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub incarnation: u64,
    /// Unix ms when the link was registered.
    pub connected_since_ms: u64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Highest seq received from the gateway.
    pub last_seq: AtomicU64,
    /// Highest seq accepted (what the gateway's `Ack`s say).
    pub accepted_seq: AtomicU64,
}

impl LinkHandle {
    /// Messages queued towards the gateway, not yet taken by its stream.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue.max_capacity()
    }

    /// Ends the link's stream with `status`. Only the first cut counts.
    pub fn cut(&self, status: Status, reason: &'static str) {
        let sender = self
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.cut_flag.send_replace(true);
        if let Some(sender) = sender {
            tracing::warn!(node_id = %self.node_id, link_id = self.link_id, reason,
                           status = %status.message(), "link cut");
            metrics::link_cut(reason);
            let _ = sender.send(status);
        }
    }

    /// Queues `msg` without waiting; an error when the queue is full (the caller cuts) or closed.
    fn offer(&self, msg: LinkMessage) -> Offer {
        match self.queue.try_send(msg) {
            Ok(()) => {
                let depth = self.queue.max_capacity() - self.queue.capacity();
                metrics::link_queue_depth(depth);
                Offer::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// What became of a message offered to a link's queue.
enum Offer {
    Queued,
    Full,
    Closed,
}

#[derive(Default)]
struct HubState {
    links: HashMap<u64, Arc<LinkHandle>>,
    /// namespace -> node id -> link id.
    by_namespace: HashMap<String, HashMap<String, u64>>,
    /// node id -> link id (one link per node on this replica).
    by_node: HashMap<String, u64>,
    /// link id -> the rooms its gateway has local members in (see [`crate::interest`]).
    interest: HashMap<u64, LinkInterest>,
}

/// The gateways linked to this replica.
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
    next_id: AtomicU64,
    /// Woken whenever a link joins or leaves, so membership is published at once.
    pub changed: Notify,
    /// Where response frames addressed to this replica itself go (answers to the requests it
    /// sends the gateways for the admin API) instead of to a link: `(target, handler)`.
    inbox: OnceLock<(String, Inbox)>,
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a link, with the interest it starts with (in effect before any frame is forwarded
    /// to it). A link of the same node id already on this replica is cut ("superseded"): a
    /// gateway relinking must not receive every frame twice.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        node_id: &str,
        namespaces: Vec<String>,
        queue: mpsc::Sender<LinkMessage>,
        cut: oneshot::Sender<Status>,
        cut_flag: watch::Sender<bool>,
        incarnation: u64,
        interest: LinkInterest,
    ) -> Arc<LinkHandle> {
        let link_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = Arc::new(LinkHandle {
            link_id,
            node_id: node_id.to_owned(),
            namespaces,
            stats: Arc::new(LinkStats {
                incarnation,
                connected_since_ms: switchyard_common::clock::now_ms(),
                ..LinkStats::default()
            }),
            queue,
            cut: Mutex::new(Some(cut)),
            cut_flag,
        });
        let replaced = {
            let mut st = self.state();
            let replaced = st
                .by_node
                .get(node_id)
                .copied()
                .and_then(|old| remove_link(&mut st, old));
            st.links.insert(link_id, Arc::clone(&handle));
            metrics::link_interest_rooms(node_id, interest.len());
            st.interest.insert(link_id, interest);
            st.by_node.insert(node_id.to_owned(), link_id);
            for ns in &handle.namespaces {
                st.by_namespace
                    .entry(ns.clone())
                    .or_default()
                    .insert(node_id.to_owned(), link_id);
            }
            metrics::links(st.links.len());
            replaced
        };
        if let Some(old) = replaced {
            old.cut(
                Status::aborted("superseded by a newer link of the same node"),
                "superseded",
            );
        }
        self.changed.notify_one();
        handle
    }

    /// Removes a link if it is still registered (a superseded or cut link already is not).
    pub fn unregister(&self, link_id: u64) {
        let removed = {
            let mut st = self.state();
            let removed = remove_link(&mut st, link_id);
            metrics::links(st.links.len());
            removed
        };
        if removed.is_some() {
            self.changed.notify_one();
        }
    }

    /// Applies an `Interest` change of one link (see [`crate::interest`]); under the hub's lock,
    /// so every later [`Hub::deliver`] filters by it. False when the link is gone.
    pub fn apply_interest(
        &self,
        link_id: u64,
        namespace: &str,
        add: Vec<String>,
        remove: &[String],
    ) -> bool {
        let mut st = self.state();
        let Some(node_id) = st.links.get(&link_id).map(|l| l.node_id.clone()) else {
            return false;
        };
        let Some(interest) = st.interest.get_mut(&link_id) else {
            return false;
        };
        interest.apply(namespace, add, remove);
        metrics::link_interest_rooms(&node_id, interest.len());
        true
    }

    /// Forwards a frame to the local gateways it is meant for: every gateway of its namespace
    /// but its origin, or only its target for a response; a frame that targets rooms only to
    /// the links that want one of them ([`crate::interest`]). Links whose queue is full are
    /// cut.
    pub fn deliver(&self, frame: &Frame) {
        let response = frame.kind == FrameKind::Response as i32;
        if response
            && let Some((target, inbox)) = self.inbox.get()
            && frame.target == *target
        {
            inbox(frame);
            return;
        }
        let msg = LinkMessage {
            kind: Some(Kind::Frame(frame.clone())),
        };
        let rooms = frame_rooms(frame);
        let mut overflowed = Vec::new();
        {
            let mut st = self.state();
            let st = &mut *st;
            let Some(members) = st.by_namespace.get(&frame.namespace) else {
                return;
            };
            for (node, link_id) in members {
                if node == &frame.origin || (response && node != &frame.target) {
                    continue;
                }
                let Some(link) = st.links.get(link_id) else {
                    continue;
                };
                if let Some(interest) = st.interest.get_mut(link_id) {
                    if !interest.wants(&frame.namespace, rooms) {
                        metrics::frame_saved();
                        continue;
                    }
                    if !frame.joins.is_empty() {
                        // A remote join: the frames after it reach the joined sockets.
                        interest.apply(&frame.namespace, frame.joins.clone(), &[]);
                    }
                }
                match link.offer(msg.clone()) {
                    Offer::Queued => {
                        link.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                        metrics::frame_out();
                    }
                    Offer::Full => overflowed.push(*link_id),
                    // The link's stream is gone; its own task unregisters it.
                    Offer::Closed => {}
                }
            }
        }
        for link_id in overflowed {
            self.cut_queue_full(link_id);
        }
    }

    /// Sends `msg` to every local gateway of `namespace` (membership updates); same policy.
    pub fn send_to_namespace(&self, namespace: &str, msg: &LinkMessage) {
        let mut overflowed = Vec::new();
        {
            let st = self.state();
            let Some(members) = st.by_namespace.get(namespace) else {
                return;
            };
            for link_id in members.values() {
                if let Some(link) = st.links.get(link_id)
                    && let Offer::Full = link.offer(msg.clone())
                {
                    overflowed.push(*link_id);
                }
            }
        }
        for link_id in overflowed {
            self.cut_queue_full(link_id);
        }
    }

    /// Queues `msg` to one link (a `StampResult`); same policy: a full queue cuts the link. A
    /// link gone meanwhile takes nothing (its gateway retries the stamp elsewhere).
    pub fn send_to_link(&self, link_id: u64, msg: LinkMessage) {
        let full = self
            .state()
            .links
            .get(&link_id)
            .is_some_and(|link| matches!(link.offer(msg), Offer::Full));
        if full {
            self.cut_queue_full(link_id);
        }
    }

    /// The no-stall rule: a link whose queue is full is cut, and nobody waits for it.
    fn cut_queue_full(&self, link_id: u64) {
        self.cut_link(
            link_id,
            Status::resource_exhausted(
                "link cut: the gateway did not keep up and its queue filled; relink and resync",
            ),
            "queue_full",
        );
    }

    /// Removes and cuts one link.
    pub fn cut_link(&self, link_id: u64, status: Status, reason: &'static str) {
        let removed = {
            let mut st = self.state();
            let removed = remove_link(&mut st, link_id);
            metrics::links(st.links.len());
            removed
        };
        if let Some(link) = removed {
            link.cut(status, reason);
            self.changed.notify_one();
        }
    }

    /// Cuts every link (this replica lost what makes its delivery complete, e.g. its Redis
    /// subscription); the gateways relink, possibly elsewhere, and resync.
    pub fn cut_all(&self, status: Status, reason: &'static str) {
        let links: Vec<u64> = self.state().links.keys().copied().collect();
        for id in links {
            self.cut_link(id, status.clone(), reason);
        }
    }

    /// `(namespace, node ids)` of every namespace with local links.
    pub fn local_members(&self) -> HashMap<String, BTreeSet<String>> {
        self.state()
            .by_namespace
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(ns, m)| (ns.clone(), m.keys().cloned().collect()))
            .collect()
    }

    /// Hands response frames whose target is `target` to `inbox` instead of a link (set once,
    /// at startup). `inbox` runs under no lock and must not block.
    pub fn set_inbox(&self, target: String, inbox: Inbox) {
        let _ = self.inbox.set((target, inbox));
    }

    /// Every link on this replica.
    pub fn links(&self) -> Vec<Arc<LinkHandle>> {
        self.state().links.values().cloned().collect()
    }

    /// Number of links on this replica.
    pub fn len(&self) -> usize {
        self.state().links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_link(st: &mut HubState, link_id: u64) -> Option<Arc<LinkHandle>> {
    let link = st.links.remove(&link_id)?;
    st.interest.remove(&link_id);
    if st.by_node.get(&link.node_id) == Some(&link_id) {
        metrics::link_interest_rooms(&link.node_id, 0);
    }
    if st.by_node.get(&link.node_id) == Some(&link_id) {
        st.by_node.remove(&link.node_id);
    }
    for ns in &link.namespaces {
        if let Some(members) = st.by_namespace.get_mut(ns) {
            if members.get(&link.node_id) == Some(&link_id) {
                members.remove(&link.node_id);
            }
            if members.is_empty() {
                st.by_namespace.remove(ns);
            }
        }
    }
    Some(link)
}
