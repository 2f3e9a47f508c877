//! Listeners, wiring and shutdown of one relay replica.
//!
//! [`run`] picks the bus (Redis pub/sub when `--redis-url` is set, else in-process with a WARN),
//! starts the subscriber and membership tasks, binds HTTP (`/healthz`, `/readyz`, `/metrics`)
//! and gRPC (`Relay`, health, reflection v1 + v1alpha), prints
//! `SWITCHYARD_READY http=<addr> grpc=<addr>` once both are bound, and on SIGTERM or Ctrl-C
//! turns not-ready, stops the tasks (membership entries are removed), and waits for the servers.
//! Open links end with the server; their gateways relink to another replica.

use std::{sync::Arc, time::Duration};
use switchyard_common::grpc::{AdminAuth, BearerAuth};
use switchyard_common::shutdown::Servers;
use switchyard_common::tls::HttpListener;
use switchyard_common::trace_context;
use switchyard_proto::admin::v1::relay_admin_server::RelayAdminServer;
use tracing::Instrument;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_common::{
    assignment::now_ms,
    ops::{self, Readiness},
};
use switchyard_proto::relay::v1::{
    HeadRequest, HeadResponse, LinkMessage, Members, MembersRequest, Position, PublishRequest,
    PublishResponse, ReplayRequest, ReplayResponse, StampRequest, StampResponse,
    relay_server::{Relay, RelayServer},
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    admin::RelayAdminGrpc,
    bus::{Bus, RedisBus},
    config::Config,
    history::{History, StampInput},
    hub::Hub,
    link::{self, LinkStream},
    membership::Membership,
    publish,
};

/// Room for a frame's envelope (namespace, ids, kind) above `--max-frame-bytes` of payload.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Everything a link or a call needs; one per replica.
pub struct RelayState {
    /// Random per process; names this replica in `Welcome` and in membership entries.
    pub relay_id: String,
    /// Start time (ms): the incarnation of this replica's `Publish` frames.
    pub incarnation: u64,
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub membership: Arc<Membership>,
    pub link_queue: usize,
    pub max_frame_bytes: usize,
    pub publish_auth: BearerAuth,
    /// `--link-token`: when set, a `Link` without it is refused `UNAUTHENTICATED`.
    pub link_auth: Option<BearerAuth>,
    /// Offsets, the bounded event log, retained state (see [`crate::history`]).
    pub history: History,
}

/// The `switchyard.relay.v1.Relay` service.
pub struct RelayGrpc {
    state: Arc<RelayState>,
}

#[tonic::async_trait]
impl Relay for RelayGrpc {
    type LinkStream = LinkStream;

    async fn link(
        &self,
        req: Request<Streaming<LinkMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        self.gateway_only(req.metadata())?;
        link::open(Arc::clone(&self.state), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<Members>, Status> {
        let namespace = req.into_inner().namespace;
        let node_ids = self.state.membership.members(&namespace).await?;
        Ok(Response::new(Members {
            namespace,
            node_ids,
        }))
    }

    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        publish::publish(&self.state, req).await.map(Response::new)
    }

    async fn stamp(&self, req: Request<StampRequest>) -> Result<Response<StampResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let (metadata, _, req) = req.into_parts();
        // Continues the publishing gateway's trace; the frame carries it on to every gateway.
        let span = stamp_span(&req);
        trace_context::set_parent_from_metadata(&span, &metadata);
        let position = self
            .state
            .stamp(req, &span)
            .instrument(span.clone())
            .await?;
        Ok(Response::new(StampResponse {
            position: Some(position),
        }))
    }

    async fn head(&self, req: Request<HeadRequest>) -> Result<Response<HeadResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let req = req.into_inner();
        check_namespace(&req.namespace)?;
        let res = self.state.history.head(&req.namespace, &req.room).await?;
        Ok(Response::new(res))
    }

    async fn replay(
        &self,
        req: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        self.gateway_only(req.metadata())?;
        let req = req.into_inner();
        check_namespace(&req.namespace)?;
        let res = self
            .state
            .history
            .replay(
                &req.namespace,
                &req.rooms,
                &req.epoch,
                req.after_offset,
                u64::from(req.limit),
            )
            .await?;
        tracing::debug!(namespace = %req.namespace, recovered = res.recovered,
                        events = res.events.len(), after = req.after_offset, "replay");
        Ok(Response::new(res))
    }
}

impl RelayGrpc {
    /// With `--link-token`, what only gateways do (`Link`, and the history calls `Stamp`,
    /// `Head`, `Replay`) needs that token: nobody else may write into or read out of rooms.
    fn gateway_only(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match &self.state.link_auth {
            Some(auth) => auth.verify(metadata).inspect_err(|_| {
                metrics::counter!("switchyard_relay_links_refused_total", "reason" => "token")
                    .increment(1);
            }),
            None => Ok(()),
        }
    }
}

/// The span of one stamp (`Stamp` RPC or a link's `StampCall`); its trace context goes into the
/// stamped frame, so every gateway's delivery continues the publisher's trace.
pub(crate) fn stamp_span(req: &StampRequest) -> tracing::Span {
    tracing::info_span!("stamp", namespace = %req.namespace, room = %req.room,
                        offset = tracing::field::Empty)
}

impl RelayState {
    /// Checks and stamps one room publish, inside `span` (see [`stamp_span`]): the same for
    /// the `Stamp` RPC and for a `StampCall` on a link.
    pub(crate) async fn stamp(
        &self,
        req: StampRequest,
        span: &tracing::Span,
    ) -> Result<Position, Status> {
        check_namespace(&req.namespace)?;
        if req.room.is_empty() || req.event.is_empty() {
            return Err(Status::invalid_argument("room and event must not be empty"));
        }
        if req.publish_id.len() > 256 {
            return Err(Status::invalid_argument(
                "publish_id must be at most 256 bytes",
            ));
        }
        if req.msgpack.len() > self.max_frame_bytes {
            return Err(Status::out_of_range(format!(
                "data of {} bytes is larger than the relay's --max-frame-bytes ({})",
                req.msgpack.len(),
                self.max_frame_bytes
            )));
        }
        let input = StampInput {
            namespace: req.namespace,
            room: req.room,
            event: req.event,
            msgpack: req.msgpack,
            retain: req.retain,
            publish_id: req.publish_id,
            trace_context: trace_context::to_map(span),
        };
        let position = self.history.stamp(input).await?;
        span.record("offset", position.offset);
        tracing::trace!(epoch = %position.epoch, offset = position.offset, "stamped");
        Ok(position)
    }
}

fn check_namespace(namespace: &str) -> Result<(), Status> {
    if namespace.starts_with('/') && namespace.len() <= 256 {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "namespace must start with `/` and be at most 256 bytes",
        ))
    }
}

/// Describes the relay's metrics once, so `/metrics` carries HELP lines.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "switchyard_relay_link_stamps_total",
        "Stamps asked for on links (StampCall), by outcome: ok, error, busy (too many in flight)."
    );
    describe_counter!(
        "switchyard_relay_frames_in_total",
        "Frames received from gateways on links of this replica"
    );
    describe_counter!(
        "switchyard_relay_frames_out_total",
        "Frames queued towards gateways linked to this replica"
    );
    describe_counter!(
        "switchyard_relay_frames_duplicate_total",
        "Retransmitted frames dropped by the per-origin high-water mark"
    );
    describe_counter!(
        "switchyard_relay_links_cut_total",
        "Links cut by the relay, by reason (queue_full, superseded, frame_too_large, ...)"
    );
    describe_counter!(
        "switchyard_relay_links_refused_total",
        "Links (before Hello) and gateway history calls (Stamp, Head, Replay) refused, by reason (token: missing or wrong --link-token)"
    );
    describe_gauge!("switchyard_relay_links", "Gateways linked to this replica");
    describe_gauge!(
        "switchyard_relay_members",
        "Gateways linked for a namespace, cluster-wide"
    );
    describe_histogram!(
        "switchyard_relay_link_queue_depth",
        "Depth of a link's queue right after a message was queued"
    );
    describe_histogram!(
        "switchyard_relay_submit_seconds",
        "Time to dedup and hand one frame to the bus"
    );
    describe_counter!(
        "switchyard_relay_bus_frames_in_total",
        "Frames received from Redis pub/sub"
    );
    describe_counter!(
        "switchyard_relay_bus_disconnects_total",
        "Times the Redis pub/sub subscription was lost"
    );
    describe_counter!(
        "switchyard_relay_publish_total",
        "Backend events accepted by Publish"
    );
    describe_counter!(
        "switchyard_relay_history_stamped_total",
        "Room events stamped with an offset and appended to history"
    );
    describe_counter!(
        "switchyard_relay_history_replays_total",
        "Replays by outcome (recovered, lost)"
    );
    describe_counter!(
        "switchyard_relay_history_stamp_duplicates_total",
        "Stamps whose publish id was already stamped (a retry): answered, not stamped again"
    );
    describe_histogram!(
        "switchyard_relay_history_stamp_seconds",
        "Time to stamp, record and publish one history event (waiting for its batch included)"
    );
    describe_histogram!(
        "switchyard_relay_history_stamp_batch_events",
        "Events stamped by one Redis round trip (stamp.lua run) of one namespace"
    );
}

/// Serves until SIGTERM or Ctrl-C; returns `Ok` after a clean shutdown.
pub async fn run(config: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    config.validate()?;
    describe_metrics();
    crate::admin::describe_metrics();
    tracing::info!(config = ?config, "starting relay");
    let relay_id = uuid::Uuid::new_v4().to_string();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let readiness = Readiness::default();
    let hub = Arc::new(Hub::default());

    let mut tasks = Vec::new();
    let (bus, redis) = match config.redis.endpoint()? {
        Some(endpoint) => {
            let redis = RedisBus::new(&endpoint, &config.cluster, config.pubsub, Arc::clone(&hub))
                .with_context(|| format!("setting up Redis at {endpoint}"))?;
            redis.pool.check_at_startup().await?;
            tracing::info!(redis = %endpoint, cluster = %config.cluster, %relay_id,
                           "replicated relay: frames cross replicas through Redis pub/sub");
            tasks.push(tokio::spawn(
                Arc::clone(&redis).run_subscriber(shutdown_rx.clone()),
            ));
            (Bus::Redis(Arc::clone(&redis)), Some(redis))
        }
        None => {
            tracing::warn!(
                "no --redis-url: in-process fan-out only; run only ONE relay replica \
                 (replicas would not see each other's gateways)"
            );
            (Bus::local(Arc::clone(&hub)), None)
        }
    };
    let membership = Arc::new(Membership::new(
        Arc::clone(&hub),
        relay_id.clone(),
        config.membership_interval(),
        redis.clone(),
    ));
    tasks.push(tokio::spawn(
        Arc::clone(&membership).run(shutdown_rx.clone()),
    ));
    if config.publish_token.is_none() {
        tracing::warn!("no --publish-token: every Publish call will be refused");
    }
    let max_frame_bytes = config.max_frame_bytes as usize;
    let history_settings = config.history_settings();
    let history = match &redis {
        Some(redis) => History::redis(history_settings, Arc::clone(redis)),
        None => History::memory(history_settings, Arc::clone(&hub)),
    };
    let state = Arc::new(RelayState {
        relay_id,
        incarnation: now_ms(),
        hub,
        bus,
        membership,
        link_queue: config.link_queue as usize,
        max_frame_bytes,
        publish_auth: BearerAuth::for_purpose(
            "publish",
            "--publish-token (SWITCHYARD_PUBLISH_TOKEN)",
            config.publish_token.as_deref(),
        )?,
        history,
        link_auth: match config.link_token.as_deref() {
            Some(token) if !token.is_empty() => Some(BearerAuth::for_purpose(
                "link",
                "--link-token (SWITCHYARD_LINK_TOKEN)",
                Some(token),
            )?),
            _ => {
                tracing::warn!("no --link-token: any gateway that reaches the gRPC port may link");
                None
            }
        },
    });

    // Wait (bounded) for the first subscription, so a gateway linking right after READY is
    // not refused; Redis being down is not fatal: links are refused until it is back.
    if let Some(redis) = &redis {
        let mut subscribed = redis.subscribed.subscribe();
        let first = tokio::time::timeout(Duration::from_secs(5), subscribed.wait_for(|s| *s));
        if first.await.is_err() {
            tracing::warn!("not subscribed to Redis yet; links are refused until it answers");
        }
    }

    let tls = config.tls.load()?;
    let http_listener = HttpListener::bind(config.http_addr, tls.as_ref(), "relay")
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let http_task = tokio::spawn(
        axum::serve(http_listener, ops::router(readiness.clone(), metrics))
            .with_graceful_shutdown(stopped(&shutdown_rx))
            .into_future(),
    );

    let (health, health_service) = switchyard_common::grpc::health().await;
    health.set_serving::<RelayServer<RelayGrpc>>().await;
    let (reflection_v1, reflection_v1alpha) = switchyard_common::grpc::reflection()?;
    if config.admin_token.is_none() {
        tracing::warn!("no --admin-token: every RelayAdmin call will be refused");
    }
    let admin_auth = AdminAuth::new(config.admin_token.as_deref())?;
    health
        .set_serving::<RelayAdminServer<RelayAdminGrpc>>()
        .await;
    let admin =
        RelayAdminServer::with_interceptor(RelayAdminGrpc::new(Arc::clone(&state)), move |req| {
            admin_auth.check(req)
        });
    let relay = RelayServer::new(RelayGrpc {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(max_frame_bytes + ENVELOPE_BYTES)
    .max_encoding_message_size(max_frame_bytes + ENVELOPE_BYTES);
    // HTTP/2 pings find a gateway that vanished without closing its connection, so it leaves
    // the membership (and stops holding up acks) within about 20 s.
    let grpc = switchyard_common::grpc::server(tls.as_ref())
        .context("configuring gRPC TLS")?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(relay)
        .add_service(admin);
    let grpc_task = tokio::spawn(grpc.serve_with_incoming_shutdown(
        switchyard_common::grpc::incoming(grpc_listener),
        stopped(&shutdown_rx),
    ));

    readiness.set(true);
    // With Redis, ready means subscribed: an unsubscribed replica refuses links.
    if let Some(redis) = &redis {
        let mut subscribed = redis.subscribed.subscribe();
        let readiness = readiness.clone();
        let mut shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                readiness.set(*subscribed.borrow_and_update());
                tokio::select! {
                    changed = subscribed.changed() => if changed.is_err() { return },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }));
    }
    tracing::info!(%http_addr, %grpc_addr, relay_id = %state.relay_id, "listening");
    switchyard_common::ops::announce_ready(&[("http", &http_addr), ("grpc", &grpc_addr)])?;

    let mut servers = Servers {
        http: http_task,
        grpc: grpc_task,
    };
    let early = servers.until_signal().await;
    readiness.set(false);
    health.set_not_serving::<RelayServer<RelayGrpc>>().await;
    let _ = shutdown_tx.send(true);
    // Links are endless streams: end them so the gRPC server can finish.
    state.hub.cut_all(
        Status::unavailable("relay shutting down; relink to another replica"),
        "shutdown",
    );
    servers.finish("relay", tasks, early).await
}
