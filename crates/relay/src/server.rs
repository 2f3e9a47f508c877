//! Listeners, wiring and shutdown of one relay replica.
//!
//! [`run`] picks the bus (Redis pub/sub when `--redis-url` is set, else in-process with a WARN)
//! and the history that goes with it, starts the subscriber and membership tasks, binds HTTP
//! (`/healthz`, `/readyz`, `/metrics`) and gRPC (`Relay`, `RelayAdmin`, health, reflection v1 +
//! v1alpha), prints `SWITCHYARD_READY http=<addr> grpc=<addr>` once both are bound, and on
//! SIGTERM or Ctrl-C turns not-ready, stops the tasks (membership entries are removed), cuts
//! every link and waits for the servers. Cut gateways relink to another replica.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_common::{
    clock::now_ms,
    grpc::{AdminAuth, BearerAuth},
    http_server::HttpListener,
    ops::{self, Readiness},
    shutdown::Servers,
};
use switchyard_proto::{
    admin::v1::relay_admin_server::RelayAdminServer, relay::v1::relay_server::RelayServer,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::Status;

use crate::{
    admin::RelayAdminGrpc,
    bus::{Bus, RedisBus},
    config::Config,
    emitter::{Channels, Emitter},
    history::{History, MemoryHistory, RedisHistory},
    hub::Hub,
    membership::Membership,
    metrics,
    origin::Origin,
    service::RelayGrpc,
    state::RelayState,
};

/// Room for a frame's envelope (namespace, ids, kind) above `--max-frame-bytes` of payload.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Serves until SIGTERM or Ctrl-C; returns `Ok` after a clean shutdown.
pub async fn run(config: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    config.validate()?;
    metrics::describe();
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
    let origin = Arc::new(Origin::new(&relay_id, now_ms()));
    let history: Box<dyn History> = match &redis {
        Some(redis) => Box::new(RedisHistory::new(
            history_settings,
            Arc::clone(redis),
            Arc::clone(&origin),
        )),
        None => Box::new(MemoryHistory::new(
            history_settings,
            Arc::clone(&hub),
            Arc::clone(&origin),
        )),
    };
    let state = Arc::new(RelayState {
        relay_id,
        origin,
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

    if config.emitter
        && let Some(redis) = &redis
    {
        let channels = Channels::new(&config.emitter_key, &config.emitter_namespaces)
            .map_err(|e| anyhow::anyhow!("--emitter-key / --emitter-namespaces: {e}"))?;
        tracing::info!(key = %channels.key(), namespaces = ?channels.namespaces(),
                       "emitter on: the replica holding the emitter lease handles its messages");
        let emitter = Arc::new(Emitter::new(
            Arc::clone(&state),
            Arc::clone(redis),
            channels,
        ));
        tasks.push(tokio::spawn(emitter.run(shutdown_rx.clone())));
    }

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
    let http_listener = HttpListener::bind(
        config.http_addr,
        tls.as_ref(),
        &config.http,
        crate::metrics::HTTP_LISTENER,
    )
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

    let http_task = tokio::spawn(http_listener.serve(
        ops::router(readiness.clone(), metrics),
        stopped(&shutdown_rx),
    ));

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
    let relay = RelayServer::new(RelayGrpc::new(Arc::clone(&state)))
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
