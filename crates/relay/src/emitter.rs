//! `@socket.io/redis-emitter`, unchanged backend code, against Switchyard (`--emitter`).
//!
//! Backends that push to Socket.IO through the official emitter PUBLISH on the cluster's Redis;
//! the relay holds the Redis connection (gateways never do), so it subscribes to the emitter's
//! channels ([`channel`]) and turns each message into the cluster operation it means
//! ([`message::parse`], carried out by [`apply`]): room emits through history, everything else
//! as the adapter requests gateways already apply. A message that is not what the emitter
//! writes is counted (`switchyard_relay_emitter_messages_total{outcome}`), logged at most once
//! per [`COMPLAINT_EVERY`] per kind with how many were left unsaid, and goes nowhere.
//!
//! # Exactly once with several replicas
//!
//! Redis pushes a PUBLISHed message to every connection subscribed at that moment, so if every
//! replica subscribed, each would stamp (or forward) every message: two replicas, every event
//! twice. The dedup of gateways' frames (`crate::dedup`) cannot help, because it keys on an
//! origin's sequence and nothing in an emitter message is unique (the emitter's uid is the
//! constant `"emitter"`, and `emit("tick")` twice is the same bytes twice). So exactly one
//! replica, the **handler**, subscribes, and a message is handled by the replica it was pushed
//! to. The handler is whoever holds the emitter lease ([`lease`]), and a term works like this:
//!
//! 1. take the lease (`SET NX PX`), which gives a local deadline before Redis's expiry;
//! 2. only then open a NEW subscriber connection and subscribe;
//! 3. handle each message read from it while `now < deadline`; renew every third of the TTL
//!    (each success moves the deadline);
//! 4. at the deadline, when a renewal says the lease is not ours, or when the subscription
//!    drops: close that connection (whatever it still holds is never read), and start over.
//!
//! Why no message is handled twice: a message replica A reads before its deadline was pushed
//! before A's lease expired in Redis (it was pushed before it was read, and the deadline is
//! before the expiry), and after A subscribed, which was after A took the lease: so it was
//! pushed during A's term. Terms never overlap in Redis (`SET NX` wins only once the previous
//! key is gone, and renewals only extend a key still holding the renewer's token). A message
//! pushed during A's term is not pushed during B's, so B does not handle it. A paused process
//! reads late and drops what it reads after its deadline; it never handles it. (The usual
//! lease assumption: the two machines' clocks run at rates within a tenth of the TTL of each
//! other over one TTL.)
//!
//! Why no message is lost while a handler lives: the handler reads every message pushed during
//! its term, and a term lasts as long as renewals succeed. Each handled message becomes exactly
//! one stamp (one offset, kept in history, deduplicated per socket by offset at the gateways)
//! or one frame from the relay's origin (deduplicated per origin by sequence), so each socket
//! gets it once.
//!
//! What is lost: messages pushed while no replica is subscribed, i.e. from a handler's death
//! until its lease expires (at most [`LEASE_TTL`]) and the standby, trying every
//! [`LEASE_TTL`]` / 3`, subscribes; messages read after a deadline; and messages that overflow
//! the handler's queue ([`QUEUE`]). All are counted (`dropped`). The emitter is fire-and-forget
//! (`PUBLISH` answers how many subscribers heard it, 0 during such a window), as with Socket.IO's
//! own servers, which miss what is published while they are not subscribed. A graceful stop
//! releases the lease, so the standby takes over within a third of the TTL.

pub mod apply;
pub mod channel;
pub mod lease;
pub mod message;
pub mod value;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use switchyard_redis::Connection;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::Instrument;

use crate::{bus::RedisBus, metrics, state::RelayState};
use apply::Applier;
pub use channel::Channels;
use lease::Lease;

/// How long the lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Messages read from the subscription and waiting to be carried out; when full, a message is
/// dropped (counted) rather than the subscription left unread, which would make Redis close it
/// (its output-buffer limit for pub/sub clients) and lose more.
pub const QUEUE: usize = 4096;

/// At most one log line per kind of complaint this often.
pub const COMPLAINT_EVERY: Duration = Duration::from_secs(10);

/// The emitter bridge of one replica. See the module docs.
pub struct Emitter {
    state: Arc<RelayState>,
    redis: Arc<RedisBus>,
    channels: Channels,
    lease: Lease,
    applier: Applier,
    complaints: Complaints,
}

/// Why a term ended.
enum TermEnd {
    Shutdown,
    /// The deadline passed or a renewal said the lease is not ours.
    LeaseLost,
    /// The subscriber connection failed or dropped; the lease may still be ours.
    SubscriptionLost,
}

impl Emitter {
    pub fn new(state: Arc<RelayState>, redis: Arc<RedisBus>, channels: Channels) -> Self {
        let lease = Lease::new(&redis.prefix, &state.relay_id, LEASE_TTL);
        let applier = Applier::new(&state.relay_id);
        Self {
            state,
            redis,
            channels,
            lease,
            applier,
            complaints: Complaints::default(),
        }
    }

    /// Takes the lease whenever it is free and handles the emitter's messages while it holds
    /// it, until `shutdown`; then releases it.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        metrics::emitter_handler(false);
        let retry = self.lease.ttl() / 3;
        loop {
            let deadline = match self.lease.acquire(&self.redis.pool).await {
                Ok(Some(deadline)) => deadline,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => continue,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
                Err(e) => {
                    self.complaints
                        .warn("lease", format_args!("emitter lease unavailable: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => continue,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            };
            let span = tracing::info_span!("emitter_term", key = %self.channels.key());
            let end = self
                .term(deadline, &mut shutdown)
                .instrument(span.clone())
                .await;
            metrics::emitter_handler(false);
            match end {
                TermEnd::Shutdown => {
                    if let Err(e) = self.lease.release(&self.redis.pool).await {
                        tracing::warn!(error = %e, "could not release the emitter lease");
                    }
                    tracing::info!("emitter handler stopped; lease released");
                    return;
                }
                TermEnd::LeaseLost => {
                    tracing::warn!(parent: &span, "emitter lease lost; no longer the handler");
                }
                TermEnd::SubscriptionLost => {
                    // Give the standby an even chance while this replica cannot subscribe.
                    let _ = self.lease.release(&self.redis.pool).await;
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    /// One term: subscribe on a fresh connection, read until the lease or the subscription
    /// ends, then let the handler finish what it was given (see the module docs).
    async fn term(&self, mut deadline: Instant, shutdown: &mut watch::Receiver<bool>) -> TermEnd {
        let (pushes_tx, mut pushes) = mpsc::unbounded_channel();
        let conn = match self.subscribe(pushes_tx).await {
            Ok(conn) => conn,
            Err(e) => {
                self.complaints.warn(
                    "subscribe",
                    format_args!("cannot subscribe to the emitter's channels: {e}"),
                );
                return TermEnd::SubscriptionLost;
            }
        };
        metrics::emitter_handler(true);
        tracing::info!(patterns = ?self.channels.patterns(), requests = ?self.channels.requests(),
                       "emitter handler: subscribed");
        let (queue, work) = mpsc::channel::<(String, Vec<u8>)>(QUEUE);
        let worker = self.work(work);
        let reader = async {
            // Owned here: when the reader ends, the connection (whatever it still holds is
            // never read) and the queue's sender (so the worker finishes) go with it.
            let _conn = conn;
            let queue = queue;
            let renew_every = self.lease.ttl() / 3;
            let mut next_renew = Instant::now() + renew_every;
            loop {
                tokio::select! {
                    push = pushes.recv() => {
                        let Some(push) = push else { return TermEnd::SubscriptionLost };
                        if Instant::now() >= deadline {
                            metrics::emitter_message("dropped");
                            return TermEnd::LeaseLost;
                        }
                        match message_of(push) {
                            Pushed::Message(channel, payload) => {
                                if queue.try_send((channel, payload)).is_err() {
                                    metrics::emitter_message("dropped");
                                    self.complaints.warn("queue", format_args!(
                                        "emitter queue full ({QUEUE}): message dropped"));
                                }
                            }
                            Pushed::Lost => return TermEnd::SubscriptionLost,
                            Pushed::Other => {}
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return TermEnd::LeaseLost,
                    _ = tokio::time::sleep_until(next_renew) => {
                        match self.lease.renew(&self.redis.pool).await {
                            Ok(Some(d)) => {
                                deadline = d;
                                next_renew = Instant::now() + renew_every;
                            }
                            Ok(None) => return TermEnd::LeaseLost,
                            Err(e) => {
                                // Keep the deadline; try again soon, and stop at the deadline.
                                self.complaints.warn("renew", format_args!(
                                    "emitter lease renewal failed: {e}"));
                                next_renew = Instant::now() + renew_every / 4;
                            }
                        }
                    }
                    _ = stopped(shutdown) => return TermEnd::Shutdown,
                }
            }
        };
        let (end, ()) = tokio::join!(reader, worker);
        end
    }

    /// A fresh RESP3 connection subscribed to every pattern and request channel.
    async fn subscribe(
        &self,
        pushes: mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<Connection, crate::bus::BusError> {
        let mut conn = self.redis.pool.push_connection(pushes).await?;
        for pattern in self.channels.patterns() {
            match &mut conn {
                Connection::Cluster(c) => c.psubscribe(&pattern).await?,
                Connection::Multiplexed(c) => c.psubscribe(&pattern).await?,
                Connection::Pooled(_) => {
                    return Err(crate::bus::BusError::Invalid(
                        "a pooled connection cannot subscribe".into(),
                    ));
                }
            }
        }
        for channel in self.channels.requests() {
            match &mut conn {
                Connection::Cluster(c) => c.subscribe(&channel).await?,
                Connection::Multiplexed(c) => c.subscribe(&channel).await?,
                Connection::Pooled(_) => {}
            }
        }
        Ok(conn)
    }

    /// Carries out queued messages in order until the queue is closed and empty.
    async fn work(&self, mut work: mpsc::Receiver<(String, Vec<u8>)>) {
        let max = self.state.max_frame_bytes;
        while let Some((channel, payload)) = work.recv().await {
            let op = match message::parse(&self.channels, &channel, &payload, max) {
                Ok(op) => op,
                Err(rejected) => {
                    metrics::emitter_message(rejected.outcome());
                    self.complaints.warn(
                        rejected.outcome(),
                        format_args!("emitter message on `{channel}` ignored: {rejected}"),
                    );
                    continue;
                }
            };
            let target = op.target();
            let span = tracing::info_span!("emitter", op = op.name(),
                                           namespace = %target.namespace,
                                           rooms = ?target.rooms,
                                           offset = tracing::field::Empty);
            let outcome = self
                .applier
                .apply(&self.state, op, &span)
                .instrument(span.clone())
                .await;
            match outcome {
                Ok(outcome) => metrics::emitter_message(outcome),
                Err(status) => {
                    // Refused by the same checks as any event (validate.rs), or the bus/history
                    // is down: either way this message reaches no client.
                    let outcome = if status.code() == tonic::Code::Unavailable {
                        "failed"
                    } else {
                        "malformed"
                    };
                    metrics::emitter_message(outcome);
                    self.complaints.warn(
                        outcome,
                        format_args!("emitter message on `{channel}` not carried out: {status}"),
                    );
                }
            }
        }
    }
}

/// Resolves once `shutdown` says stop (its guard is not held across an await of the caller).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What a push from the subscriber connection is.
enum Pushed {
    /// A message (or a pattern message) on a channel, with its payload.
    Message(String, Vec<u8>),
    /// The connection dropped.
    Lost,
    /// A subscription confirmation, or anything else.
    Other,
}

fn message_of(push: redis::PushInfo) -> Pushed {
    let bulk = |v: redis::Value| match v {
        redis::Value::BulkString(b) => Some(b),
        _ => None,
    };
    let mut data = push.data.into_iter();
    match push.kind {
        redis::PushKind::Message | redis::PushKind::SMessage => {
            match (data.next().and_then(bulk), data.next().and_then(bulk)) {
                (Some(channel), Some(payload)) => {
                    Pushed::Message(String::from_utf8_lossy(&channel).into_owned(), payload)
                }
                _ => Pushed::Other,
            }
        }
        redis::PushKind::PMessage => {
            let _pattern = data.next();
            match (data.next().and_then(bulk), data.next().and_then(bulk)) {
                (Some(channel), Some(payload)) => {
                    Pushed::Message(String::from_utf8_lossy(&channel).into_owned(), payload)
                }
                _ => Pushed::Other,
            }
        }
        redis::PushKind::Disconnection => Pushed::Lost,
        _ => Pushed::Other,
    }
}

/// Rate-bounded warnings: per kind, one line per [`COMPLAINT_EVERY`], the next one saying how
/// many were left unsaid. Junk on a public channel must not flood the log.
#[derive(Default)]
struct Complaints {
    /// kind → (last logged, suppressed since). A `std` mutex: nothing under it awaits.
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Complaints {
    fn warn(&self, kind: &'static str, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < COMPLAINT_EVERY => {
                *suppressed += 1;
            }
            Some((at, suppressed)) => {
                tracing::warn!(kind, suppressed = *suppressed, "{message}");
                *at = now;
                *suppressed = 0;
            }
            None => {
                tracing::warn!(kind, "{message}");
                last.insert(kind, (now, 0));
            }
        }
    }
}
