//! Listeners, wiring and shutdown of one placement replica.
//!
//! [`run`] picks the ledger and lease (Redis when `--redis-url` is set, else in memory with a
//! WARN), binds HTTP (`/v1/assign` with CORS, `/healthz`, `/readyz`, `/metrics`) and gRPC
//! (`Placement`, `Admin` behind [`AdminAuth`], health, reflection v1 + v1alpha), prints
//! `SWITCHYARD_READY http=<addr> grpc=<addr>` on stdout once both are bound (both serve TLS
//! with `--tls-cert`, see `switchyard_common::tls`), and on SIGTERM or
//! Ctrl-C turns not-ready, closes the report streams (gateways reconnect elsewhere; their
//! nodes stay in the ledger), releases the lease and waits for both servers to finish.

use std::sync::Arc;
use switchyard_common::shutdown::Servers;

use anyhow::Context;
use axum::Router;
use http::Method;
use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_common::{
    assignment::TokenKey,
    bearer,
    grpc::AdminAuth,
    http_server::HttpListener,
    ops::{self, Readiness},
};
use switchyard_proto::{
    admin::v1::admin_server::AdminServer,
    placement::v1::{
        AssignRequest, AssignResponse, Directive, GatewayReport,
        placement_server::{Placement, PlacementServer},
    },
};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    admin::AdminService,
    assign::{self, Assigner},
    config::Config,
    lease::{Lease, LocalLease, RedisLease},
    ledger::{Ledger, LedgerSettings, MemoryLedger, RedisLedger},
    reaper::{self, LeaseStatus, ReaperSettings},
    report_stream::{ReportStreams, StreamRegistry, StreamSettings},
};

/// The `switchyard.placement.v1.Placement` service: both calls delegate to their modules.
pub struct PlacementGrpc {
    assigner: Arc<Assigner>,
    reports: Arc<ReportStreams>,
}

#[tonic::async_trait]
impl Placement for PlacementGrpc {
    type ReportStream = ReceiverStream<Result<Directive, Status>>;

    async fn report(
        &self,
        req: Request<Streaming<GatewayReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        self.reports.open(req.into_inner()).await.map(Response::new)
    }

    async fn assign(
        &self,
        req: Request<AssignRequest>,
    ) -> Result<Response<AssignResponse>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        let span = Assigner::span();
        switchyard_common::trace_context::set_parent_from_metadata(&span, req.metadata());
        let app_token = req
            .metadata()
            .get(bearer::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer::token_of)
            .map(str::to_owned);
        let namespace = req.into_inner().namespace;
        let a = self
            .assigner
            .assign_in(span, &namespace, client, app_token.as_deref())
            .await?;
        Ok(Response::new(AssignResponse {
            url: a.url,
            node_id: a.node_id,
            token: a.token,
            expires_in_ms: a.expires_in_ms,
        }))
    }
}

async fn open_ledger(
    config: &Config,
    settings: LedgerSettings,
) -> anyhow::Result<(Arc<dyn Ledger>, Arc<dyn Lease>)> {
    let holder_id = uuid::Uuid::new_v4().to_string();
    match config.redis.endpoint()? {
        Some(endpoint) => {
            let ledger = RedisLedger::connect(&endpoint, settings)
                .await
                .with_context(|| format!("connecting the ledger to Redis at {endpoint}"))?;
            ledger.pool().check_at_startup().await?;
            let lease = RedisLease::new(
                &endpoint,
                &config.cluster,
                holder_id.clone(),
                config.lease_ttl(),
            )
            .with_context(|| format!("creating the lease on Redis at {endpoint}"))?;
            tracing::info!(redis = %endpoint, cluster = %config.cluster, holder_id, "Redis ledger");
            Ok((Arc::new(ledger), Arc::new(lease)))
        }
        None => {
            tracing::warn!(
                "no --redis-url: using the in-memory ledger; run only ONE placement replica \
                 (replicas would not share gateways or assignments)"
            );
            Ok((Arc::new(MemoryLedger::new(settings)), Arc::new(LocalLease)))
        }
    }
}

fn cors(config: &Config) -> anyhow::Result<CorsLayer> {
    let origin = match config.cors()? {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list),
    };
    Ok(CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::OPTIONS]))
}

/// Serves until SIGTERM or Ctrl-C; returns `Ok` after a clean shutdown.
pub async fn run(config: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    config.validate()?;
    crate::metrics::describe();
    tracing::info!(config = ?config, "starting placement");
    let settings = LedgerSettings {
        cluster: config.cluster.clone(),
        reservation_ttl: config.reservation_ttl(),
        liveness: config.liveness(),
    };
    let (ledger, lease) = open_ledger(&config, settings).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let readiness = Readiness::default();

    let assigner = Arc::new(
        Assigner::new(
            Arc::clone(&ledger),
            TokenKey::new(config.token_secret.as_bytes()),
            config.rate_limit,
        )
        .with_app_tokens(config.app_tokens()?),
    );
    let registry = Arc::new(StreamRegistry::default());
    let reports = Arc::new(ReportStreams::new(
        Arc::clone(&ledger),
        Arc::clone(&registry),
        StreamSettings {
            liveness: config.liveness(),
            drain_rate: config.drain_rate,
        },
        shutdown_rx.clone(),
    ));
    let lease_status = LeaseStatus::default();
    let admin = AdminService {
        ledger: Arc::clone(&ledger),
        registry,
        assigner: Arc::clone(&assigner),
        lease: lease_status.clone(),
        drain_rate: config.drain_rate,
        liveness: config.liveness(),
    };

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

    let grpc_incoming = switchyard_common::grpc::incoming(grpc_listener);
    // `HttpListener` gives every request axum's `ConnectInfo<SocketAddr>` (the rate limit's
    // client address).
    let app = Router::new()
        .merge(assign::router(Arc::clone(&assigner)).layer(cors(&config)?))
        .merge(ops::router(readiness.clone(), metrics));
    let http_task = tokio::spawn(http_listener.serve(app, stopped(&shutdown_rx)));

    let (health, health_service) = switchyard_common::grpc::health().await;
    health.set_serving::<PlacementServer<PlacementGrpc>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let (reflection_v1, reflection_v1alpha) = switchyard_common::grpc::reflection()?;
    let auth = AdminAuth::new(config.admin_token.as_deref())?;
    if config.admin_token.is_none() {
        tracing::warn!("no --admin-token: every admin call will be refused");
    }
    let grpc = switchyard_common::grpc::server(tls.as_ref())
        .context("configuring gRPC TLS")?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PlacementServer::new(PlacementGrpc { assigner, reports }))
        .add_service(AdminServer::with_interceptor(admin, move |req| {
            auth.check(req)
        }));
    let grpc_task =
        tokio::spawn(grpc.serve_with_incoming_shutdown(grpc_incoming, stopped(&shutdown_rx)));

    let reaper_task = tokio::spawn(reaper::run(
        Arc::clone(&ledger),
        lease,
        ReaperSettings {
            report_interval: config.report_interval(),
            lease_ttl: config.lease_ttl(),
        },
        lease_status,
        shutdown_rx.clone(),
    ));

    readiness.set(true);
    tracing::info!(%http_addr, %grpc_addr, "listening");
    switchyard_common::ops::announce_ready(&[("http", &http_addr), ("grpc", &grpc_addr)])?;

    let mut servers = Servers {
        http: http_task,
        grpc: grpc_task,
    };
    let early = servers.until_signal().await;
    readiness.set(false);
    health
        .set_not_serving::<PlacementServer<PlacementGrpc>>()
        .await;
    let _ = shutdown_tx.send(true);
    servers.finish("placement", vec![reaper_task], early).await
}
