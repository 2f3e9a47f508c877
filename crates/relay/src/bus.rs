//! How frames travel between relay replicas.
//!
//! [`Bus::Local`] (no `--redis-url`): this process is the whole cluster; an accepted frame goes
//! straight to [`Hub::deliver`].
//!
//! [`Bus::Redis`]: an accepted frame is PUBLISHed on its namespace's channel
//! `{sy:<cluster>}:relay:ns:<namespace>` by the same script that checks and raises the origin's
//! mark ([`crate::dedup::ACCEPT_SCRIPT`]). EVERY replica, the origin's included, delivers frames
//! to its local links only from its subscription, so all replicas see one order per channel
//! (Redis's), and a frame reaches each gateway exactly once. Frames of one origin are submitted
//! one after another by its link (each waits for the script), so they are published in `seq`
//! order.
//!
//! Sharded pub/sub (SPUBLISH/SSUBSCRIBE) is used when the server has it (Redis >= 7, detected
//! with `INFO server` under `--pubsub auto`), classic PUBLISH/SUBSCRIBE otherwise; how the
//! subscriber connection is opened in each mode, on one server or a cluster, is
//! [`subscription`]'s business. Every channel carries the cluster's hash tag, so on Redis
//! Cluster all of a cluster's channels live on one shard, with the scripts that publish.
//!
//! Pub/sub is fire-and-forget: a replica whose subscription drops misses what was published
//! meanwhile. So when it drops, the replica cuts every link (`UNAVAILABLE`) before resubscribing;
//! the gateways relink (here or elsewhere) and resync. Links are refused while unsubscribed.
//!
//! The bus owns its channel format ([`channel`]): what the history's stamp script publishes is
//! read here, not by the history.

mod channel;
mod subscription;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use redis::Script;
use switchyard_common::backoff::Backoff;
use switchyard_proto::relay::v1::Frame;
use switchyard_redis::{Endpoint, Pool, key_prefix};
use tokio::sync::{Mutex, Notify, watch};
use tonic::Status;

use crate::{
    dedup::{ACCEPT_SCRIPT, LocalMarks, MARK_SCRIPT, MARK_TTL, Verdict},
    hub::Hub,
    metrics,
};

pub use channel::decode_message;
use subscription::SubSink;

const POOL_SIZE: usize = 32;
const POOL_WAIT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Redis being unreachable or answering nonsense.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A command or script failed (connection lost, Redis answered an error).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No connection (pool exhausted, Redis or the cluster unreachable).
    #[error("{0}")]
    Pool(#[from] switchyard_redis::Error),
    /// The subscriber is not (yet, or no longer) subscribed: publishing now could go unheard,
    /// so nothing is published until it is.
    #[error("not subscribed to Redis pub/sub (reconnecting)")]
    NotSubscribed,
    /// A configuration Redis cannot work with (the URL), or an answer the scripts never give.
    #[error("invalid redis configuration: {0}")]
    Invalid(String),
}

impl BusError {
    /// What the failure most likely means for the operator (see [`switchyard_redis::Hint`]).
    pub fn hint(&self) -> switchyard_redis::Hint {
        match self {
            BusError::Redis(e) => switchyard_redis::Error::hint_of(e),
            BusError::Pool(e) => e.hint(),
            BusError::NotSubscribed | BusError::Invalid(_) => switchyard_redis::Hint::Unavailable,
        }
    }
}

impl From<BusError> for Status {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Invalid(m) => Status::internal(m),
            other => Status::unavailable(format!("relay bus unavailable: {other}")),
        }
    }
}

/// The frame exchange between replicas (or the lack of one).
pub enum Bus {
    /// No `--redis-url`: this process is the whole cluster.
    Local(LocalBus),
    /// Replicas share frames through Redis pub/sub.
    Redis(Arc<RedisBus>),
}

/// Single-replica mode.
pub struct LocalBus {
    marks: LocalMarks,
    hub: Arc<Hub>,
}

impl Bus {
    pub fn local(hub: Arc<Hub>) -> Self {
        Bus::Local(LocalBus {
            marks: LocalMarks::default(),
            hub,
        })
    }

    /// Makes sure frames of `namespaces` reach this replica. Call before a link is registered.
    pub async fn ensure_subscribed(&self, namespaces: &[String]) -> Result<(), BusError> {
        match self {
            Bus::Local(_) => Ok(()),
            Bus::Redis(r) => r.ensure_subscribed(namespaces).await,
        }
    }

    /// `Welcome.accepted_seq` for a linking gateway; `None` if a newer incarnation exists.
    pub async fn accepted(&self, origin: &str, incarnation: u64) -> Result<Option<u64>, BusError> {
        match self {
            Bus::Local(l) => Ok(l.marks.accepted(origin, incarnation)),
            Bus::Redis(r) => r.accepted(origin, incarnation).await,
        }
    }

    /// Offers a gateway's frame: dedup, then forward to every replica (and so every gateway).
    pub async fn submit(&self, frame: &Frame) -> Result<Verdict, BusError> {
        let started = Instant::now();
        let verdict = match self {
            Bus::Local(l) => {
                let v = l.marks.offer(&frame.origin, frame.incarnation, frame.seq);
                if v == Verdict::Accepted {
                    l.hub.deliver(frame);
                }
                Ok(v)
            }
            Bus::Redis(r) => r.submit(frame).await,
        };
        metrics::submit_time(started.elapsed());
        verdict
    }

    /// Forwards a frame that needs no dedup: one the relay writes itself, which nobody resends.
    pub async fn publish(&self, frame: &Frame) -> Result<(), BusError> {
        match self {
            Bus::Local(l) => {
                l.hub.deliver(frame);
                Ok(())
            }
            Bus::Redis(r) => r.publish(frame).await,
        }
    }
}

/// Builds the connections (a pool for one server, or one cluster connection; `TCP_NODELAY`
/// on). Never connects: connections are opened on first use.
pub fn build_pool(endpoint: &Endpoint) -> Result<Pool, BusError> {
    let settings = switchyard_redis::Settings {
        pool_size: POOL_SIZE,
        pool_wait: POOL_WAIT,
        connect_timeout: CONNECT_TIMEOUT,
        response_timeout: RESPONSE_TIMEOUT,
    };
    Pool::new(endpoint, settings).map_err(|e| BusError::Invalid(e.to_string()))
}

/// Which pub/sub commands the relay uses (`--pubsub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PubSubMode {
    /// Sharded when the server is Redis 7 or newer, classic otherwise.
    Auto,
    /// SPUBLISH / SSUBSCRIBE.
    Sharded,
    /// PUBLISH / SUBSCRIBE.
    Classic,
}

struct Subscriber {
    sink: Option<SubSink>,
    channels: BTreeSet<String>,
}

/// `publish_command` values.
const MODE_UNKNOWN: u8 = 0;
const MODE_CLASSIC: u8 = 1;
const MODE_SHARDED: u8 = 2;

/// Replicated mode: frames cross replicas through Redis pub/sub.
pub struct RedisBus {
    pub pool: Pool,
    pub prefix: String,
    mode: PubSubMode,
    /// What this replica publishes with, once the subscriber has chosen (`MODE_*`).
    resolved: AtomicU8,
    hub: Arc<Hub>,
    accept: Script,
    mark: Script,
    subscriber: Mutex<Subscriber>,
    /// Poked when another replica announces a membership change.
    pub membership_notice: Arc<Notify>,
    /// `true` while subscribed; exposed for readiness.
    pub subscribed: watch::Sender<bool>,
}

impl RedisBus {
    pub fn new(
        endpoint: &Endpoint,
        cluster: &str,
        mode: PubSubMode,
        hub: Arc<Hub>,
    ) -> Result<Arc<Self>, BusError> {
        let prefix = key_prefix(cluster);
        let membership = format!("{prefix}:relay:membership");
        Ok(Arc::new(RedisBus {
            pool: build_pool(endpoint)?,
            mode,
            resolved: AtomicU8::new(MODE_UNKNOWN),
            hub,
            accept: Script::new(ACCEPT_SCRIPT),
            mark: Script::new(MARK_SCRIPT),
            subscriber: Mutex::new(Subscriber {
                sink: None,
                channels: BTreeSet::from([membership]),
            }),
            membership_notice: Arc::new(Notify::new()),
            subscribed: watch::channel(false).0,
            prefix,
        }))
    }

    /// `PUBLISH` or `SPUBLISH`, whichever the subscribers listen to.
    pub(crate) fn publish_command(&self) -> Result<&'static str, BusError> {
        match self.resolved.load(Ordering::Acquire) {
            MODE_CLASSIC => Ok("PUBLISH"),
            MODE_SHARDED => Ok("SPUBLISH"),
            _ => Err(BusError::NotSubscribed),
        }
    }

    /// Decides sharded or classic for this connection attempt.
    async fn sharded(&self) -> Result<bool, BusError> {
        match self.mode {
            PubSubMode::Sharded => return Ok(true),
            PubSubMode::Classic => return Ok(false),
            PubSubMode::Auto => {}
        }
        Ok(self.pool.server_major_version().await? >= 7)
    }

    pub(crate) fn channel(&self, namespace: &str) -> String {
        format!("{}:relay:ns:{namespace}", self.prefix)
    }

    fn mark_key(&self, origin: &str) -> String {
        format!("{}:relay:mark:{origin}", self.prefix)
    }

    /// The channel other replicas listen on for "membership changed, re-read it".
    pub fn membership_channel(&self) -> String {
        format!("{}:relay:membership", self.prefix)
    }

    async fn ensure_subscribed(&self, namespaces: &[String]) -> Result<(), BusError> {
        let mut sub = self.subscriber.lock().await;
        let missing: Vec<String> = namespaces
            .iter()
            .map(|ns| self.channel(ns))
            .filter(|c| !sub.channels.contains(c))
            .collect();
        let Some(sink) = sub.sink.as_mut() else {
            return Err(BusError::NotSubscribed);
        };
        if !missing.is_empty() {
            sink.subscribe(&missing).await?;
            sub.channels.extend(missing);
        }
        Ok(())
    }

    async fn accepted(&self, origin: &str, incarnation: u64) -> Result<Option<u64>, BusError> {
        let mut conn = self.pool.get().await?;
        let seq: i64 = self
            .mark
            .key(self.mark_key(origin))
            .arg(incarnation)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(seq).ok())
    }

    async fn submit(&self, frame: &Frame) -> Result<Verdict, BusError> {
        let mut conn = self.pool.get().await?;
        let verdict: i64 = self
            .accept
            .key(self.mark_key(&frame.origin))
            .arg(frame.incarnation)
            .arg(frame.seq)
            .arg(self.channel(&frame.namespace))
            .arg(frame.encode_to_vec())
            .arg(MARK_TTL.as_millis() as u64)
            .arg(self.publish_command()?)
            .invoke_async(&mut conn)
            .await?;
        Ok(match verdict {
            1 => Verdict::Accepted,
            0 => Verdict::Duplicate,
            _ => Verdict::Stale,
        })
    }

    async fn publish(&self, frame: &Frame) -> Result<(), BusError> {
        let command = self.publish_command()?;
        let mut conn = self.pool.get().await?;
        let _: i64 = redis::cmd(command)
            .arg(self.channel(&frame.namespace))
            .arg(frame.encode_to_vec())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Tells the other replicas that this one's membership changed.
    pub async fn announce_membership(&self) -> Result<(), BusError> {
        let command = self.publish_command()?;
        let mut conn = self.pool.get().await?;
        let _: i64 = redis::cmd(command)
            .arg(self.membership_channel())
            .arg("changed")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Keeps the subscription alive until `shutdown`: connect, subscribe to every channel
    /// wanted so far, deliver frames to the hub; on loss cut every link, back off, reconnect.
    pub async fn run_subscriber(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let membership = self.membership_channel();
        loop {
            let connected = async {
                let sharded = self.sharded().await?;
                let (mut sink, stream) = subscription::connect(&self.pool, sharded).await?;
                let mut sub = self.subscriber.lock().await;
                let channels: Vec<String> = sub.channels.iter().cloned().collect();
                sink.subscribe(&channels).await?;
                sub.sink = Some(sink);
                let mode = if sharded { MODE_SHARDED } else { MODE_CLASSIC };
                self.resolved.store(mode, Ordering::Release);
                Ok::<_, BusError>((stream, sharded))
            };
            let (mut stream, sharded) = match connected.await {
                Ok(s) => s,
                Err(e) => {
                    // Not ready until subscribed; say why in words an operator can act on.
                    let hint = e.hint();
                    if hint.is_configuration() {
                        tracing::error!(error = %e, hint = hint.advice(),
                                        "relay cannot subscribe to Redis; not ready, retrying");
                    } else {
                        tracing::warn!(error = %e, "relay cannot subscribe to Redis; retrying");
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            };
            backoff.reset();
            self.subscribed.send_replace(true);
            tracing::info!(sharded, "subscribed to Redis pub/sub");
            // Another replica may have changed membership while we were away.
            self.membership_notice.notify_one();
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let Some((channel, payload)) = msg else { break };
                if channel == membership {
                    self.membership_notice.notify_one();
                    continue;
                }
                match decode_message(&payload) {
                    Ok(frame) => {
                        metrics::bus_frame_in();
                        self.hub.deliver(&frame);
                    }
                    Err(e) => {
                        tracing::warn!(%channel, error = %e,
                                       "undecodable frame on the bus; dropped");
                    }
                }
            }
            self.subscriber.lock().await.sink = None;
            self.subscribed.send_replace(false);
            tracing::warn!("lost the Redis pub/sub subscription; cutting every link");
            metrics::bus_disconnect();
            self.hub.cut_all(
                Status::unavailable("relay lost its Redis subscription; relink and resync"),
                "bus_lost",
            );
        }
    }
}
