//! The relay link client: this gateway's long-lived streams to the broadcast relay.
//!
//! One bidirectional `Relay/Link` stream per relay URL, each kept up by its own task that
//! relinks with the common [`Backoff`] after any failure. What it guarantees to the adapter
//! ([`crate::adapter`]):
//!
//! - **Numbering.** Every outgoing frame gets the next `seq` of this process (1, 2, …, never
//!   reset on relink); `incarnation` is the process start time in Unix ms, sent in `Hello`.
//! - **No loss across relinks.** Each link keeps the frames the relay has not acknowledged
//!   (`Ack`), drops what `Welcome.accepted_seq` covers after a relink, and resends the rest in
//!   order before anything new. A frame the relay refuses as too large (`OUT_OF_RANGE`) is
//!   dropped, not resent. While a link is down its backlog is capped at [`MAX_BACKLOG`] frames
//!   (the oldest go first, counted); with several relays the others still carry them.
//! - **No doubles.** Incoming frames pass a per-origin high-water mark on
//!   `(incarnation, seq)`, shared by every link, so linking to two relays (each delivering
//!   the same frame) hands each frame to the adapter once.
//! - **Membership.** The latest `Members` per namespace is kept for `server_count`.
//! - **Stamps on the link.** [`Stamper`] sends a room publish's `StampCall` on the first link
//!   that is up and hands back the relay's `StampResult`; a call whose link ends first gets no
//!   answer (its receiver sees the sender dropped) and the caller retries with the `Stamp` RPC.
//! - **Gaps are never silent.** Frames a relay sends while no link of this gateway is up are
//!   lost to it. So when the first link comes back after all were down, before any frame of it
//!   is handed over, the gap handler runs ([`RelayLink::on_gap`]; the gateway severs every
//!   socket holding history gates there: it is disconnected and its client resumes from the
//!   last offset it got, replaying the gap). The handler runs under the link's state lock, so
//!   no frame can overtake it; it must not call back into the link. The time before the very
//!   first link counts as a gap too: the gateway serves (and placement assigns it) as soon as
//!   it listens, and a client may join a room through the `Head` RPC before any link is up (a
//!   Kubernetes pod whose relay Service had no ready endpoint yet).
//! - **Interest routing** (`LinkConfig::interest_routing`). The gateway declares the rooms it has
//!   local members in ([`crate::interest`]): the whole set in each link's Hello, then changes
//!   ([`RelayLink::rooms_joined`], [`RelayLink::rooms_left`]) on every link, which its relay
//!   acknowledges once it filters by them. **Why a join loses nothing**: the `join` event adds
//!   the socket locally, declares the room, then waits ([`RelayLink::interest_settled`]) until
//!   every link that is linking or up has either acknowledged that version or said Hello after
//!   it, and only then reads the head it starts from (a read that starts then, possibly shared
//!   with other joins: [`crate::heads`]). Take an event stamped with an offset above that head,
//!   on any replica R. It was stamped after the head was read (offsets come from one sequence),
//!   so after R's acknowledgement (or after R registered the link with a Hello that held the
//!   room); R hears it on the bus only after its stamp, and R decides what to forward
//!   under the same lock that applied the interest (see the relay's `interest.rs`). So every
//!   link of this gateway that is up when the event arrives carries it, and a link that comes
//!   up later starts from a Hello holding the room. If no link carries it, all were down: that
//!   is a gap, and the gap handler severs the socket (it resumes from what it got). With two
//!   replicas each filters by its own links' interests, and the argument holds per link. A
//!   remove is made only when no local member is left, under the same lock as the check, so a
//!   join racing it re-declares the room (see [`crate::interest`]). Frames without a position
//!   (adapter broadcasts) have no join position: one racing a join may be missed, as without
//!   interest routing. A remote join (`socketsJoin`) names its rooms in `Frame.joins`: each
//!   relay makes the links it forwards it to interested in them at once, so what its origin
//!   sends next reaches the joined sockets in order ([`RelayLink::rooms_joined_remotely`]
//!   then keeps the rooms with members and withdraws the rest). A link that does not acknowledge within [`INTEREST_TIMEOUT`] (a frozen
//!   relay) is cut: it no longer counts, and when it relinks its Hello carries the whole set.
//!   Only if it still has not ended soon after does the join fail (`unavailable`) rather than
//!   start from a position it cannot keep.
//! - **Bounded towards the adapter.** Each namespace's adapter takes frames from a queue of
//!   [`LinkConfig::adapter_queue`] frames. When it is full (the relay sends faster than this
//!   gateway applies), the frame is dropped and the relay's own policy for a slow peer applies
//!   here too: the gap handler runs (gated sockets resume), and the link is cut and relinks
//!   after a backoff, which gives the adapter time to catch up. Memory stays bounded; nothing
//!   is lost silently.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switchyard_common::{backoff::Backoff, bearer::Bearer, clock};
use switchyard_proto::relay::v1::{
    Frame, Hello, LinkMessage, Members, Position, StampCall, StampRequest, StampResult,
    link_message::Kind, relay_client::RelayClient,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::interest::{Interest, MemberCheck};
use crate::metrics;

/// Frames kept for resending per link while it is down, beyond which the oldest are dropped.
pub const MAX_BACKLOG: usize = 65_536;

/// Largest payload sent to a relay: the relay's default `--max-frame-bytes` (4 MiB) less room
/// for the frame's own fields. A larger one is refused here rather than cut the link.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024 - 4096;

/// Stamp calls queued per link before [`Stamper::call`] refuses more (the link is not keeping
/// up; the publish is answered `unavailable`).
const MAX_QUEUED_STAMPS: usize = 4096;

/// How long connecting and the `Welcome` may take before the attempt counts as failed.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a join waits for the relays to acknowledge its room ([`RelayLink::interest_settled`]).
pub const INTEREST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the link needs to speak for this gateway.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// gRPC URLs of the relays to link to (one stream each).
    pub urls: Vec<String>,
    pub node_id: String,
    pub namespaces: Vec<String>,
    /// Process start time in Unix ms ([`incarnation_now`]).
    pub incarnation: u64,
    /// Trust and client certificate for `https://` relay URLs.
    pub tls: switchyard_common::tls::ClientTls,
    /// Sent as `authorization: Bearer <token>` when opening a link (the relay's
    /// `--link-token`); a relay with a token refuses links without it.
    pub token: Option<String>,
    /// Frames queued per namespace towards its adapter; see the module docs for what happens
    /// when the queue is full.
    pub adapter_queue: usize,
    /// Declare the rooms with local members to the relays (see the module docs).
    pub interest_routing: bool,
}

/// What runs at the end of a gap, and when an adapter's queue overflowed (see the module docs).
pub type GapHandler = Arc<dyn Fn() + Send + Sync>;

/// The process start time in Unix milliseconds, the `incarnation` every link announces; never
/// 0 (an unset proto field), even with a clock set before 1970.
pub fn incarnation_now() -> u64 {
    clock::now_ms().max(1)
}

/// Locks `m`, recovering the guard from a poisoned lock (the workspace's poison policy; see
/// ARCHITECTURE.md, "Cross-cutting concerns").
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frame the relay forwarded to this gateway (already deduplicated).
pub type Incoming = Frame;

#[derive(Default)]
struct Inner {
    next_seq: u64,
    /// One queue per link task.
    outboxes: Vec<mpsc::UnboundedSender<Frame>>,
    /// Per namespace: where the adapter of that namespace takes its frames.
    subscribers: HashMap<String, mpsc::Sender<Incoming>>,
    /// Capacity of each subscriber's queue.
    adapter_queue: usize,
    /// Per namespace: the latest membership.
    members: HashMap<String, Vec<String>>,
    /// Per origin: the highest `(incarnation, seq)` handed over.
    marks: HashMap<String, (u64, u64)>,
    /// Links up right now, and whether one ever was: the first link up after all were down
    /// ends a **gap**, in which frames sent to this gateway reached nobody.
    links_up: usize,
    ever_up: bool,
    /// Runs at the end of a gap and on an adapter queue overflow ([`RelayLink::on_gap`]).
    on_gap: Option<GapHandler>,
    /// Interest routing on (`LinkConfig::interest_routing`).
    routing: bool,
    /// The declared rooms and each link's acknowledgements.
    interest: Interest,
    /// Per namespace: whether a room has a local member (set by its adapter).
    member_checks: HashMap<String, MemberCheck>,
    /// Per link task: woken when it has interest changes to send.
    interest_wakes: Vec<Arc<Notify>>,
    /// Per link task: woken to cut a link that did not acknowledge interest in time.
    interest_cuts: Vec<Arc<Notify>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("next_seq", &self.next_seq)
            .field("links_up", &self.links_up)
            .field("ever_up", &self.ever_up)
            .finish_non_exhaustive()
    }
}

/// Handle to the links; cheap to clone. Tasks stop when every handle is dropped.
#[derive(Debug, Clone)]
pub struct RelayLink {
    inner: Arc<Mutex<Inner>>,
    node_id: Arc<str>,
    stamper: Stamper,
    /// Woken when a link acknowledges interest or ends ([`RelayLink::interest_settled`]).
    settled: Arc<Notify>,
}

/// The relay's answer to one stamp call: the event's position, or the status the `Stamp` RPC
/// would have ended with.
pub type StampAnswer = Result<Position, tonic::Status>;

/// One stamp call on its way to a link task.
#[derive(Debug)]
struct QueuedStamp {
    request: StampRequest,
    trace_context: HashMap<String, String>,
    reply: oneshot::Sender<StampAnswer>,
}

/// Stamps room publishes on the relay links (`StampCall`): no HTTP/2 stream to open per publish.
/// Holds only the call queues of the links that are up, so the history client that owns one
/// does not keep the links alive. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Stamper {
    /// Link index (its relay URL's) → its call queue, while the link is up.
    up: Arc<Mutex<BTreeMap<usize, mpsc::Sender<QueuedStamp>>>>,
}

impl Stamper {
    /// Queues a stamp call on the first link that is up; the receiver gets its answer, or an
    /// error if the link ends before answering. `None` when no link is up or its queue is full.
    pub fn call(
        &self,
        request: StampRequest,
        trace_context: HashMap<String, String>,
    ) -> Option<oneshot::Receiver<StampAnswer>> {
        let (reply, answer) = oneshot::channel();
        let up = lock(&self.up);
        let queue = up.values().next()?;
        queue
            .try_send(QueuedStamp {
                request,
                trace_context,
                reply,
            })
            .ok()?;
        Some(answer)
    }

    /// Takes calls on link `index` for as long as the returned guard lives.
    fn register(&self, index: usize) -> (StampsRegistered, mpsc::Receiver<QueuedStamp>) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_STAMPS);
        lock(&self.up).insert(index, tx);
        (
            StampsRegistered {
                stamper: self.clone(),
                index,
            },
            rx,
        )
    }
}

/// Removes a link's call queue from its [`Stamper`] when the link goes down.
struct StampsRegistered {
    stamper: Stamper,
    index: usize,
}

impl Drop for StampsRegistered {
    fn drop(&mut self) {
        lock(&self.stamper.up).remove(&self.index);
    }
}

/// What the relay answered, as the `Stamp` RPC would have.
fn stamp_answer(result: StampResult) -> StampAnswer {
    match (result.position, result.code) {
        (Some(position), 0) => Ok(position),
        (None, 0) => Err(tonic::Status::internal(
            "the relay answered a stamp without a position",
        )),
        (_, code) => Err(tonic::Status::new(tonic::Code::from(code), result.message)),
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("no relay link is configured")]
    NoLinks,
    #[error("every relay link task has stopped")]
    Stopped,
    #[error("frame of {0} bytes exceeds the relay frame limit")]
    TooLarge(usize),
    #[error("a relay did not acknowledge the rooms of this gateway in time")]
    Unsettled,
}

impl RelayLink {
    /// Starts one link task per URL. Must be called inside a tokio runtime.
    pub fn spawn(cfg: LinkConfig) -> RelayLink {
        let interest_wakes: Vec<Arc<Notify>> =
            cfg.urls.iter().map(|_| Arc::new(Notify::new())).collect();
        let interest_cuts: Vec<Arc<Notify>> =
            cfg.urls.iter().map(|_| Arc::new(Notify::new())).collect();
        let inner = Arc::new(Mutex::new(Inner {
            adapter_queue: cfg.adapter_queue.max(1),
            routing: cfg.interest_routing,
            interest: Interest::new(cfg.urls.len()),
            interest_wakes: interest_wakes.clone(),
            interest_cuts: interest_cuts.clone(),
            ..Inner::default()
        }));
        let stamper = Stamper::default();
        let settled = Arc::new(Notify::new());
        let mut outboxes = Vec::new();
        for (index, url) in cfg.urls.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            outboxes.push(tx);
            let task = LinkTask {
                stamper: stamper.clone(),
                index,
                interest_wake: Arc::clone(&interest_wakes[index]),
                interest_cut: Arc::clone(&interest_cuts[index]),
                settled: Arc::clone(&settled),
            };
            tokio::spawn(run_link(
                url.clone(),
                cfg.clone(),
                rx,
                task,
                Arc::downgrade(&inner),
            ));
        }
        lock(&inner).outboxes = outboxes;
        RelayLink {
            inner,
            node_id: cfg.node_id.into(),
            stamper,
            settled,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Stamps room publishes on these links.
    pub fn stamper(&self) -> Stamper {
        self.stamper.clone()
    }

    /// Queues `frame` on every link, numbered in call order: the link sets its `seq` (the
    /// relay sets `origin` and `incarnation`); the caller sets the rest.
    pub fn send(&self, mut frame: Frame) -> Result<u64, LinkError> {
        if frame.payload.len() > MAX_PAYLOAD_BYTES {
            ::metrics::counter!(metrics::RELAY_FRAMES_OVERSIZED_TOTAL).increment(1);
            return Err(LinkError::TooLarge(frame.payload.len()));
        }
        let mut g = lock(&self.inner);
        if g.outboxes.is_empty() {
            return Err(LinkError::NoLinks);
        }
        g.next_seq += 1;
        frame.seq = g.next_seq;
        let mut queued = false;
        for out in &g.outboxes {
            queued |= out.send(frame.clone()).is_ok();
        }
        if !queued {
            return Err(LinkError::Stopped);
        }
        ::metrics::counter!(metrics::RELAY_FRAMES_SENT_TOTAL).increment(1);
        Ok(frame.seq)
    }

    /// Takes the frames of `namespace` from now on (replacing an earlier subscriber), from a
    /// queue of [`LinkConfig::adapter_queue`] frames.
    pub fn subscribe(&self, namespace: &str) -> mpsc::Receiver<Incoming> {
        let mut g = lock(&self.inner);
        let (tx, rx) = mpsc::channel(g.adapter_queue);
        g.subscribers.insert(namespace.to_owned(), tx);
        rx
    }

    /// Runs `handler` at the end of every gap (all links were down, one is up again) before any
    /// frame of the new link is handed over, and whenever a frame is dropped because an
    /// adapter's queue is full. Called under the link's state lock: `handler` must not call
    /// into the link.
    pub fn on_gap(&self, handler: impl Fn() + Send + Sync + 'static) {
        lock(&self.inner).on_gap = Some(Arc::new(handler));
    }

    /// Tells the link how to see whether a room of `namespace` has a local member (its
    /// adapter's local rooms); until then every room announced is kept declared.
    pub fn set_member_check(&self, namespace: &str, check: MemberCheck) {
        lock(&self.inner)
            .member_checks
            .insert(namespace.to_owned(), check);
    }

    /// Declares each of `rooms` of `namespace` that has a local member now; call after the
    /// sockets joined locally. Does nothing without interest routing.
    pub fn rooms_joined(&self, namespace: &str, rooms: &[String]) {
        self.declare(namespace, |interest, has| {
            interest.joined(namespace, rooms, has)
        });
    }

    /// After a remote join (an AddSockets frame with `joins`, which made the relays send this
    /// gateway those rooms' frames): declares the rooms with a local member, withdraws the rest.
    pub fn rooms_joined_remotely(&self, namespace: &str, rooms: &[String]) {
        self.declare(namespace, |interest, has| {
            interest.joined_remotely(namespace, rooms, has)
        });
    }

    /// Applies a join to the declared rooms of `namespace` under the link lock, where `has`
    /// says whether a room has a local member now (every room counts as one before the
    /// namespace's adapter registered its check), and sends the change to the relays.
    fn declare(
        &self,
        namespace: &str,
        join: impl FnOnce(&mut Interest, &dyn Fn(&str) -> bool) -> bool,
    ) {
        let mut g = lock(&self.inner);
        if !g.routing {
            return;
        }
        let Inner {
            interest,
            member_checks,
            ..
        } = &mut *g;
        let check = member_checks.get(namespace);
        let has = |room: &str| check.is_none_or(|has| has(room, None));
        if join(interest, &has) {
            interest_changed(&g, namespace);
        }
    }

    /// Withdraws each of `rooms` of `namespace` that has no local member now, not counting
    /// `except` (the id of a socket being disconnected, still in its rooms). Call after sockets
    /// left them.
    pub fn rooms_left(&self, namespace: &str, rooms: &[String], except: Option<&str>) {
        let mut g = lock(&self.inner);
        if !g.routing {
            return;
        }
        let Inner {
            interest,
            member_checks,
            ..
        } = &mut *g;
        let Some(check) = member_checks.get(namespace) else {
            return;
        };
        if interest.left(namespace, rooms, |room| check(room, except)) {
            interest_changed(&g, namespace);
        }
    }

    /// Waits until every relay link that is linking or up filters by the rooms declared so far
    /// (see the module docs for why a join waits for it). A link still behind after
    /// [`INTEREST_TIMEOUT`] is cut; [`LinkError::Unsettled`] if it has not ended after another
    /// [`INTEREST_TIMEOUT`]. At once without interest routing.
    pub async fn interest_settled(&self) -> Result<(), LinkError> {
        let version = {
            let g = lock(&self.inner);
            if !g.routing {
                return Ok(());
            }
            g.interest.version()
        };
        if self.settled_within(version).await.is_ok() {
            return Ok(());
        }
        {
            let g = lock(&self.inner);
            for index in g.interest.unsettled(version) {
                tracing::warn!(
                    link = index,
                    "relay did not acknowledge interest in time; cutting its link"
                );
                // Only the link task waiting now: no permit is left for a later link.
                if let Some(cut) = g.interest_cuts.get(index) {
                    cut.notify_waiters();
                }
            }
        }
        self.settled_within(version).await
    }

    /// Waits up to [`INTEREST_TIMEOUT`] until every registered link acknowledged `version`.
    async fn settled_within(&self, version: u64) -> Result<(), LinkError> {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if lock(&self.inner).interest.settled(version) {
                    return Ok(());
                }
                notified.await;
            }
        };
        tokio::time::timeout(INTEREST_TIMEOUT, wait)
            .await
            .unwrap_or(Err(LinkError::Unsettled))
    }

    /// Stops handing frames of `namespace` to the adapter.
    pub fn unsubscribe(&self, namespace: &str) {
        lock(&self.inner).subscribers.remove(namespace);
    }

    /// Gateways linked for `namespace` (this one included), per the latest `Members`; at
    /// least 1 (this gateway) before any membership arrived.
    pub fn server_count(&self, namespace: &str) -> u16 {
        lock(&self.inner)
            .members
            .get(namespace)
            .map(Vec::len)
            .map(|n| u16::try_from(n.max(1)).unwrap_or(u16::MAX))
            .unwrap_or(1)
    }
}

/// Wakes every link task to send the change, and updates the gauge of `namespace`.
fn interest_changed(g: &Inner, namespace: &str) {
    for wake in &g.interest_wakes {
        wake.notify_one();
    }
    ::metrics::gauge!(metrics::INTEREST_ROOMS, "namespace" => namespace.to_owned())
        .set(g.interest.rooms(namespace) as f64);
}

/// A frame was dropped because its namespace's adapter queue was full; the link is cut.
#[derive(Debug)]
struct Overflow {
    namespace: String,
}

/// Applies one incoming message to the shared state: dedupe and route frames, store members.
/// A frame its adapter's queue has no room for is dropped, the gap handler runs, and
/// `Err(Overflow)` tells the link to cut itself (see the module docs).
fn deliver(inner: &Mutex<Inner>, msg: Kind) -> Result<(), Overflow> {
    let mut g = lock(inner);
    match msg {
        Kind::Frame(frame) => {
            // Stamped history frames are deduplicated per socket by offset (crate::gates).
            if frame.position.is_none() {
                let mark = g.marks.entry(frame.origin.clone()).or_insert((0, 0));
                if (frame.incarnation, frame.seq) <= *mark {
                    ::metrics::counter!(metrics::RELAY_FRAMES_DUPLICATE_TOTAL).increment(1);
                    return Ok(());
                }
                *mark = (frame.incarnation, frame.seq);
            }
            ::metrics::counter!(metrics::RELAY_FRAMES_RECEIVED_TOTAL).increment(1);
            let Some(tx) = g.subscribers.get(&frame.namespace) else {
                tracing::debug!(namespace = %frame.namespace, "relay frame for a namespace without adapter");
                return Ok(());
            };
            match tx.try_send(frame) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    ::metrics::counter!(metrics::RELAY_FRAMES_OVERFLOW_TOTAL).increment(1);
                    if let Some(on_gap) = &g.on_gap {
                        on_gap();
                    }
                    Err(Overflow {
                        namespace: frame.namespace,
                    })
                }
            }
        }
        Kind::Members(Members {
            namespace,
            node_ids,
        }) => {
            tracing::debug!(%namespace, servers = node_ids.len(), "relay membership");
            ::metrics::gauge!(metrics::RELAY_MEMBERS, "namespace" => namespace.clone())
                .set(node_ids.len() as f64);
            g.members.insert(namespace, node_ids);
            Ok(())
        }
        Kind::Ack(_)
        | Kind::Welcome(_)
        | Kind::Hello(_)
        | Kind::Stamp(_)
        | Kind::Stamped(_)
        | Kind::Interest(_)
        | Kind::InterestAck(_) => Ok(()),
    }
}

/// What one link task owns: its index (its relay URL's), the [`Stamper`] slot it fills while
/// its link is up, and its interest wake-ups.
struct LinkTask {
    stamper: Stamper,
    index: usize,
    /// Woken when there are interest changes to send.
    interest_wake: Arc<Notify>,
    /// Woken when the link did not acknowledge interest in time: the task cuts it.
    interest_cut: Arc<Notify>,
    /// Notified when this link acknowledges interest or ends.
    settled: Arc<Notify>,
}

/// Registers a link's interest for as long as it lives (from its Hello), so joins wait for its
/// acknowledgements; unregisters it when the link ends. Holds the state weakly, like every
/// link task: the links stop when the last [`RelayLink`] is dropped.
struct InterestRegistered<'a> {
    inner: std::sync::Weak<Mutex<Inner>>,
    task: &'a LinkTask,
}

impl<'a> InterestRegistered<'a> {
    /// Registers link `task.index` and returns the whole set for its Hello (empty without
    /// interest routing).
    fn register(
        inner: &std::sync::Weak<Mutex<Inner>>,
        task: &'a LinkTask,
    ) -> Option<(
        InterestRegistered<'a>,
        Vec<switchyard_proto::relay::v1::Interest>,
    )> {
        let strong = inner.upgrade()?;
        let set = {
            let mut g = lock(&strong);
            if g.routing {
                g.interest.hello(task.index)
            } else {
                Vec::new()
            }
        };
        let inner = inner.clone();
        Some((InterestRegistered { inner, task }, set))
    }

    /// The changes this link has not sent yet.
    fn changes(&self) -> Vec<switchyard_proto::relay::v1::Interest> {
        self.inner
            .upgrade()
            .map(|inner| lock(&inner).interest.take_changes(self.task.index))
            .unwrap_or_default()
    }

    /// The relay filters by `version` now.
    fn acked(&self, version: u64) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner).interest.acked(self.task.index, version);
        }
        self.task.settled.notify_waiters();
    }
}

impl Drop for InterestRegistered<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner).interest.down(self.task.index);
        }
        self.task.settled.notify_waiters();
    }
}

/// Keeps one link to `url` up for as long as the [`RelayLink`] lives.
async fn run_link(
    url: String,
    cfg: LinkConfig,
    mut outbox: mpsc::UnboundedReceiver<Frame>,
    task: LinkTask,
    inner: std::sync::Weak<Mutex<Inner>>,
) {
    let mut backoff = Backoff::default();
    let mut unacked: VecDeque<Frame> = VecDeque::new();
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        let span = tracing::info_span!("relay_link", relay = %url, node_id = %cfg.node_id);
        let outcome = link_once(
            &url,
            &cfg,
            &mut outbox,
            &task,
            &mut unacked,
            &inner,
            &mut backoff,
        )
        .instrument(span)
        .await;
        ::metrics::gauge!(metrics::RELAY_LINK_UP, "relay" => url.clone()).set(0.0);
        match outcome {
            LinkEnd::Closed => return,
            LinkEnd::Failed(reason) => {
                ::metrics::counter!(metrics::RELAY_LINK_ERRORS_TOTAL).increment(1);
                tracing::warn!(relay = %url, %reason, backlog = unacked.len(), "relay link down; relinking");
            }
        }
        // Keep taking frames while down so they are resent in order after the relink.
        let delay = backoff.next_delay();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                f = outbox.recv() => match f {
                    Some(f) => push_backlog(&mut unacked, f),
                    None => return,
                },
            }
        }
    }
}

fn drop_largest(unacked: &mut VecDeque<Frame>) {
    let largest = unacked
        .iter()
        .enumerate()
        .max_by_key(|(_, f)| f.payload.len())
        .map(|(i, _)| i);
    if let Some(f) = largest.and_then(|i| unacked.remove(i)) {
        tracing::error!(
            seq = f.seq,
            bytes = f.payload.len(),
            "relay refused an oversized frame; dropped"
        );
        ::metrics::counter!(metrics::RELAY_FRAMES_OVERSIZED_TOTAL).increment(1);
    }
}

fn push_backlog(unacked: &mut VecDeque<Frame>, f: Frame) {
    unacked.push_back(f);
    while unacked.len() > MAX_BACKLOG {
        unacked.pop_front();
        ::metrics::counter!(metrics::RELAY_BACKLOG_DROPPED_TOTAL).increment(1);
    }
}

enum LinkEnd {
    /// The [`RelayLink`] was dropped.
    Closed,
    Failed(String),
}

async fn link_once(
    url: &str,
    cfg: &LinkConfig,
    outbox: &mut mpsc::UnboundedReceiver<Frame>,
    task: &LinkTask,
    unacked: &mut VecDeque<Frame>,
    inner: &std::sync::Weak<Mutex<Inner>>,
    backoff: &mut Backoff,
) -> LinkEnd {
    let connect = async {
        let endpoint = cfg.tls.endpoint(url).map_err(|e| e.to_string())?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = RelayClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<LinkMessage>(1024);
        let (registered, interests) = InterestRegistered::register(inner, task)
            .ok_or_else(|| "the gateway is stopping".to_owned())?;
        tx.send(LinkMessage {
            kind: Some(Kind::Hello(Hello {
                node_id: cfg.node_id.clone(),
                namespaces: cfg.namespaces.clone(),
                incarnation: cfg.incarnation,
                interest_routing: cfg.interest_routing,
                interests,
            })),
        })
        .await
        .map_err(|_| "hello not sent".to_owned())?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        Bearer::new(cfg.token.as_deref())
            .map_err(|e| format!("the link token: {e}"))?
            .apply(request.metadata_mut());
        let mut inbound = client
            .link(request)
            .await
            .map_err(|s| format!("link: {s}"))?
            .into_inner();
        let welcome = match inbound.next().await {
            Some(Ok(LinkMessage {
                kind: Some(Kind::Welcome(w)),
            })) => w,
            Some(Ok(_)) => return Err("first message was not Welcome".to_owned()),
            Some(Err(s)) => return Err(format!("welcome: {s}")),
            None => return Err("stream ended before Welcome".to_owned()),
        };
        Ok::<_, String>((tx, inbound, welcome, registered))
    };
    let (tx, mut inbound, welcome, interest) =
        match tokio::time::timeout(LINK_TIMEOUT, connect).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return LinkEnd::Failed(e),
            Err(_) => return LinkEnd::Failed("timed out linking".to_owned()),
        };
    let Some(_up) = LinkUp::count(inner) else {
        return LinkEnd::Closed;
    };
    tracing::info!(relay = %url, relay_id = %welcome.relay_id, accepted_seq = welcome.accepted_seq, resend = unacked.iter().filter(|f| f.seq > welcome.accepted_seq).count(), "relay link up");
    ::metrics::gauge!(metrics::RELAY_LINK_UP, "relay" => url.to_owned()).set(1.0);
    backoff.reset();
    unacked.retain(|f| f.seq > welcome.accepted_seq);
    for f in unacked.iter() {
        let msg = LinkMessage {
            kind: Some(Kind::Frame(f.clone())),
        };
        if tx.send(msg).await.is_err() {
            return LinkEnd::Failed("stream closed while resending".to_owned());
        }
        ::metrics::counter!(metrics::RELAY_FRAMES_RESENT_TOTAL).increment(1);
    }
    // Stamp calls sent on this link and not answered yet; dropped (failing their callers, who
    // retry with the RPC) when the link ends.
    let (_registered, mut calls) = task.stamper.register(task.index);
    let mut awaiting: HashMap<u64, oneshot::Sender<StampAnswer>> = HashMap::new();
    let mut next_call = 0u64;
    loop {
        tokio::select! {
            () = task.interest_cut.notified() => {
                return LinkEnd::Failed("the relay did not acknowledge interest in time".to_owned());
            }
            () = task.interest_wake.notified() => {
                for change in interest.changes() {
                    let msg = LinkMessage { kind: Some(Kind::Interest(change)) };
                    if tx.send(msg).await.is_err() {
                        return LinkEnd::Failed("stream closed".to_owned());
                    }
                }
            }
            Some(call) = calls.recv() => {
                next_call += 1;
                awaiting.insert(next_call, call.reply);
                let msg = LinkMessage { kind: Some(Kind::Stamp(StampCall {
                    id: next_call,
                    request: Some(call.request),
                    trace_context: call.trace_context,
                })) };
                if tx.send(msg).await.is_err() {
                    return LinkEnd::Failed("stream closed".to_owned());
                }
            }
            f = outbox.recv() => {
                let Some(f) = f else { return LinkEnd::Closed };
                push_backlog(unacked, f.clone());
                if tx.send(LinkMessage { kind: Some(Kind::Frame(f)) }).await.is_err() {
                    return LinkEnd::Failed("stream closed".to_owned());
                }
            }
            m = inbound.next() => match m {
                Some(Ok(LinkMessage { kind: Some(Kind::Ack(a)) })) => {
                    while unacked.front().is_some_and(|f| f.seq <= a.seq) {
                        unacked.pop_front();
                    }
                }
                Some(Ok(LinkMessage { kind: Some(Kind::InterestAck(a)) })) => {
                    interest.acked(a.version);
                }
                Some(Ok(LinkMessage { kind: Some(Kind::Stamped(r)) })) => {
                    if let Some(reply) = awaiting.remove(&r.id) {
                        let _ = reply.send(stamp_answer(r));
                    }
                }
                Some(Ok(LinkMessage { kind: Some(k) })) => {
                    let Some(inner) = inner.upgrade() else { return LinkEnd::Closed };
                    if let Err(Overflow { namespace }) = deliver(&inner, k) {
                        return LinkEnd::Failed(format!(
                            "the adapter of namespace {namespace} fell behind (its queue is full): \
                             link cut, gated sockets resume"
                        ));
                    }
                }
                Some(Ok(LinkMessage { kind: None })) => {}
                Some(Err(s)) => {
                    if s.code() == tonic::Code::OutOfRange {
                        // The relay (with a lower --max-frame-bytes than ours) refused a frame
                        // as too large: drop the largest unacknowledged one, the culprit, rather
                        // than resend it forever.
                        drop_largest(unacked);
                    }
                    return LinkEnd::Failed(format!("{}: {}", s.code(), s.message()));
                }
                None => return LinkEnd::Failed("relay ended the stream".to_owned()),
            }
        }
    }
}

/// Counts one link as up for as long as it lives; see [`Inner::links_up`].
struct LinkUp(std::sync::Weak<Mutex<Inner>>);

impl LinkUp {
    /// Counts the link up and, if it ends a gap, severs the gated sockets first. `None` once
    /// the [`RelayLink`] is gone.
    fn count(inner: &std::sync::Weak<Mutex<Inner>>) -> Option<LinkUp> {
        let strong = inner.upgrade()?;
        let mut g = lock(&strong);
        let gap = g.links_up == 0;
        let relink = g.ever_up;
        g.links_up += 1;
        g.ever_up = true;
        if gap {
            // Only a gap after a lost link counts; before the first link there is usually no
            // gated socket and the handler does nothing.
            if relink {
                ::metrics::counter!(metrics::RELAY_GAPS_TOTAL).increment(1);
            }
            if let Some(on_gap) = &g.on_gap {
                // Under the lock: no frame can be handed over before it ran.
                on_gap();
            }
        }
        Some(LinkUp(inner.clone()))
    }
}

impl Drop for LinkUp {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let mut g = lock(&inner);
            g.links_up = g.links_up.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(origin: &str, inc: u64, seq: u64) -> Kind {
        Kind::Frame(Frame {
            namespace: "/".into(),
            origin: origin.into(),
            incarnation: inc,
            seq,
            ..Default::default()
        })
    }

    #[test]
    fn incoming_frames_are_deduplicated_per_origin() {
        let inner = Mutex::new(Inner::default());
        let (tx, mut rx) = mpsc::channel(16);
        if let Ok(mut g) = inner.lock() {
            g.subscribers.insert("/".into(), tx);
        }
        for (o, i, s) in [
            ("a", 1, 1),
            ("a", 1, 1),
            ("b", 5, 1),
            ("a", 1, 3),
            ("a", 1, 2),
            ("a", 2, 1),
            ("a", 1, 9),
        ] {
            assert!(deliver(&inner, frame(o, i, s)).is_ok());
        }
        let mut got = Vec::new();
        while let Ok(f) = rx.try_recv() {
            got.push((f.origin, f.incarnation, f.seq));
        }
        assert_eq!(
            got,
            [
                ("a".into(), 1, 1),
                ("b".into(), 5, 1),
                ("a".into(), 1, 3),
                ("a".into(), 2, 1)
            ]
        );
    }

    #[test]
    fn a_full_adapter_queue_drops_the_frame_runs_the_gap_handler_and_cuts() {
        let gaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&gaps);
        let inner = Mutex::new(Inner {
            on_gap: Some(Arc::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })),
            ..Inner::default()
        });
        let (tx, mut rx) = mpsc::channel(2);
        if let Ok(mut g) = inner.lock() {
            g.subscribers.insert("/".into(), tx);
        }
        assert!(deliver(&inner, frame("a", 1, 1)).is_ok());
        assert!(deliver(&inner, frame("a", 1, 2)).is_ok());
        let overflow = deliver(&inner, frame("a", 1, 3));
        assert_eq!(overflow.map_err(|o| o.namespace), Err("/".to_owned()));
        assert_eq!(gaps.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(rx.try_recv().map(|f| f.seq).ok(), Some(1));
        assert_eq!(rx.try_recv().map(|f| f.seq).ok(), Some(2));
        assert!(
            rx.try_recv().is_err(),
            "the frame that found no room is gone"
        );
    }

    #[test]
    fn the_largest_frame_is_dropped_on_out_of_range() {
        let mut q: VecDeque<Frame> = [1usize, 50, 3]
            .iter()
            .enumerate()
            .map(|(i, n)| Frame {
                seq: i as u64 + 1,
                payload: bytes::Bytes::from(vec![0; *n]),
                ..Default::default()
            })
            .collect();
        drop_largest(&mut q);
        assert_eq!(q.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn backlog_is_capped() {
        let mut q = VecDeque::new();
        for seq in 1..=(MAX_BACKLOG as u64 + 2) {
            push_backlog(
                &mut q,
                Frame {
                    seq,
                    ..Default::default()
                },
            );
        }
        assert_eq!(q.len(), MAX_BACKLOG);
        assert_eq!(q.front().map(|f| f.seq), Some(3));
    }
}
