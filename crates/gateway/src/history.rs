//! The client of the relay's history: stamps for room publishes, a room's head for `join`,
//! replays for `resume`. The relay owns offsets and history (`switchyard_relay::history`);
//! this module only asks, with failover:
//!
//! - **Stamps** go on a relay link when one is up ([`Stamper`]: a message on a stream that is
//!   open anyway), else as the `Stamp` RPC on any relay. The publish id
//!   `<node_id>:<incarnation>:<counter>` is made once per publish and reused by every retry,
//!   so a retry never stamps twice, even when the first relay stamped and died before
//!   answering.
//! - **Reads** (`Head`, `Replay`) answer the same on every replica: a call moves on to the next
//!   relay while one is unreachable (`UNAVAILABLE`, or a relay that died mid-call). A `Head`
//!   names several rooms: the joins of a namespace share reads ([`crate::heads`]).
//! - Every call carries the link token (the relays' `--link-token`) as the links do.
//! - Event data read back from history goes through the one decoder of
//!   [`crate::payload::decode_event_data`]: an event that does not decode is dropped and
//!   counted, never turned into `null`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_common::{
    bearer::{Bearer, UnsendableToken},
    tls::ClientTls,
};
use switchyard_proto::relay::v1::{
    HeadRequest, HistoryEvent, Position, ReplayRequest, StampRequest, relay_client::RelayClient,
};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::gates::Stamped;
use crate::link::Stamper;
use crate::payload::{Encoded, Payload, decode_event_data};

/// How long one history call to the relay may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A history call failed (relay unreachable, refused, or answered nonsense).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("relay url: {0}")]
    Url(#[from] switchyard_common::tls::TlsError),
    #[error("relay: {0}")]
    Relay(#[from] tonic::Status),
    #[error("encoding event data: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the relay answered without a position")]
    NoPosition,
    #[error("no relay configured")]
    NoRelay,
    #[error("the link token: {0}")]
    Token(#[from] UnsendableToken),
}

/// Whether a failed history call may succeed on another relay: one that died mid-call ends it
/// as `UNKNOWN` or `CANCELLED`, one that cannot be reached (or cannot reach Redis) answers
/// `UNAVAILABLE`. Reads answer the same anywhere and stamps are idempotent by publish id.
fn moves_on(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// A room's latest `retain: true` event.
#[derive(Debug, Clone)]
pub struct Retained {
    pub event: String,
    pub data: Payload,
    pub offset: u64,
}

/// The answer to a replay: the missed events (in offset order, empty unless recovered) and
/// the namespace's head when the replay was read.
#[derive(Debug, Clone)]
pub struct Replay {
    pub recovered: bool,
    pub events: Vec<Stamped>,
    pub head: Position,
}

/// A history event of `epoch` as a stamped event; `None` when its data does not decode.
fn stamped(e: HistoryEvent, epoch: &str) -> Option<Stamped> {
    let data = decode_event_data(Encoded::Msgpack(&e.msgpack), &e.event, "replay")?;
    Some(Stamped {
        room: e.room,
        event: e.event,
        data,
        epoch: epoch.to_owned(),
        offset: e.offset,
    })
}

/// The history client: one per gateway, owned by [`crate::cluster::ClusterState`].
#[derive(Debug)]
pub struct History {
    /// One client per relay URL; calls go to `current` and move on to the next one when a
    /// relay is unreachable (any replica answers the same).
    clients: Vec<RelayClient<Channel>>,
    current: AtomicUsize,
    /// `<node_id>:<incarnation>`: with [`Self::publishes`], the publish id of each `Stamp`.
    publisher: String,
    publishes: AtomicU64,
    /// Stamps on the relay links; the `Stamp` RPC is the fallback.
    stamper: Stamper,
    /// Sends the link token with every call.
    bearer: Bearer,
}

impl History {
    /// Clients of the relays at `urls` (connected lazily; needs a tokio runtime). `publisher`
    /// (`<node_id>:<incarnation>`) prefixes publish ids, so they are unique cluster-wide.
    /// Publishes are stamped on the relay links of `stamper` while one is up. `link_token`
    /// (the relays' `--link-token`) goes with every call, as it does with the links.
    pub fn new(
        urls: &[String],
        publisher: String,
        tls: &ClientTls,
        stamper: Stamper,
        link_token: Option<&str>,
    ) -> Result<Self, HistoryError> {
        let bearer = Bearer::new(link_token)?;
        let mut clients = Vec::new();
        for url in urls {
            let channel = tls
                .endpoint(url)?
                .timeout(CALL_TIMEOUT)
                .connect_timeout(CALL_TIMEOUT)
                .connect_lazy();
            clients.push(RelayClient::new(channel));
        }
        if clients.is_empty() {
            return Err(HistoryError::NoRelay);
        }
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
            publisher,
            publishes: AtomicU64::new(0),
            stamper,
            bearer,
        })
    }

    /// Runs `call` on the current relay, then on the others while they are unreachable
    /// (`UNAVAILABLE`). A retried `Stamp` carries the same publish id, so the relays stamp it
    /// once even when the first relay stamped it and died before answering; other failures
    /// are not retried.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, HistoryError>
    where
        F: Fn(RelayClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(client) = self.clients.get(idx) else {
                continue;
            };
            match call(client.clone()).await {
                Ok(res) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(res.into_inner());
                }
                Err(status) if moves_on(&status) => last = Some(status),
                Err(status) => return Err(status.into()),
            }
        }
        Err(last.map_or(HistoryError::NoRelay, HistoryError::from))
    }

    /// Stamps a room publish; returns its offset. On a relay link when one is up (a message on
    /// a stream that is open anyway), else, or when that link ends or its relay cannot stamp,
    /// with the `Stamp` RPC on any relay. The publish id `<node_id>:<incarnation>:<counter>` is
    /// made once here and reused by every retry, so a retry never stamps twice.
    ///
    /// Runs in a `publish` span whose trace context goes to the relay with the call: the
    /// relay's `stamp` span and every gateway's `deliver` span continue its trace.
    pub async fn stamp(
        &self,
        ns: &str,
        room: &str,
        event: &str,
        data: &Payload,
        retain: bool,
    ) -> Result<u64, HistoryError> {
        let msgpack: bytes::Bytes = rmp_serde::to_vec(data)?.into();
        let n = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
        let publish_id = format!("{}:{n}", self.publisher);
        let span = tracing::info_span!("publish", namespace = %ns, room = %room,
                                       publish_id = %publish_id, offset = tracing::field::Empty);
        let request = StampRequest {
            namespace: ns.to_owned(),
            room: room.to_owned(),
            event: event.to_owned(),
            msgpack,
            retain,
            publish_id,
        };
        let position = match self.stamp_on_link(&request, &span).await? {
            Some(position) => position,
            None => self
                .call(|mut c| {
                    let mut req = self.request(request.clone());
                    switchyard_common::trace_context::inject_metadata(&span, req.metadata_mut());
                    async move { c.stamp(req).await }
                })
                .instrument(span.clone())
                .await?
                .position
                .ok_or(HistoryError::NoPosition)?,
        };
        span.record("offset", position.offset);
        Ok(position.offset)
    }

    /// Stamps on a relay link; `None` when no link is up, the link ended before answering, or
    /// its relay could not stamp for a reason another relay may not share (see [`moves_on`]).
    async fn stamp_on_link(
        &self,
        request: &StampRequest,
        span: &tracing::Span,
    ) -> Result<Option<Position>, HistoryError> {
        let context = switchyard_common::trace_context::to_map(span);
        let Some(answer) = self.stamper.call(request.clone(), context) else {
            return Ok(None);
        };
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(Ok(Ok(position))) => Ok(Some(position)),
            Ok(Ok(Err(status))) if moves_on(&status) => Ok(None),
            Ok(Ok(Err(status))) => Err(status.into()),
            // The link ended first.
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                Err(tonic::Status::deadline_exceeded("the relay did not stamp in time").into())
            }
        }
    }

    /// A call's request, with the link token when there is one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        self.bearer.apply(req.metadata_mut());
        req
    }

    /// The namespace's position, read once, and the retained event of each of `rooms` that has
    /// one, by room (at most [`switchyard_proto::MAX_HEAD_ROOMS`] rooms; [`crate::heads`] asks
    /// no more). An event whose data does not decode is dropped and counted.
    pub async fn head(
        &self,
        ns: &str,
        rooms: &[String],
    ) -> Result<(Position, HashMap<String, Retained>), HistoryError> {
        let (room, rooms) = match rooms.split_first() {
            Some((first, rest)) => (first.clone(), rest.to_vec()),
            None => (String::new(), Vec::new()),
        };
        let head = self
            .call(|mut c| {
                let req = self.request(HeadRequest {
                    namespace: ns.to_owned(),
                    room: room.clone(),
                    rooms: rooms.clone(),
                });
                async move { c.head(req).await }
            })
            .await?;
        let position = head.position.ok_or(HistoryError::NoPosition)?;
        let retained = head
            .retained
            .into_iter()
            .chain(head.retained_events)
            .filter_map(|r| {
                let data = decode_event_data(Encoded::Msgpack(&r.msgpack), &r.event, "retained")?;
                let retained = Retained {
                    event: r.event,
                    data,
                    offset: r.offset,
                };
                Some((r.room, retained))
            })
            .collect();
        Ok((position, retained))
    }

    /// Every event of `rooms` after `(epoch, after)`, all or nothing, with the namespace's
    /// head; an event whose data does not decode is dropped (counted), as on the live path.
    pub async fn replay(
        &self,
        ns: &str,
        rooms: &[String],
        epoch: &str,
        after: u64,
    ) -> Result<Replay, HistoryError> {
        let replay = self
            .call(|mut c| {
                let req = self.request(ReplayRequest {
                    namespace: ns.to_owned(),
                    rooms: rooms.to_vec(),
                    epoch: epoch.to_owned(),
                    after_offset: after,
                    limit: 0,
                });
                async move { c.replay(req).await }
            })
            .await?;
        let head = replay.head.ok_or(HistoryError::NoPosition)?;
        let events = if replay.recovered {
            replay
                .events
                .into_iter()
                .filter_map(|e| stamped(e, &head.epoch))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Replay {
            recovered: replay.recovered,
            events,
            head,
        })
    }
}
