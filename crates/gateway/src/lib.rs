//! Switchyard's gateway: Socket.IO (socketioxide on axum), placed by placement.
//!
//! Use it as the `switchyard-gateway` binary, or mount it in your own socketioxide app:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use socketioxide::{SocketIo, extract::SocketRef};
//! use switchyard_gateway::{Settings, Switchyard};
//!
//! let mut settings = Settings::new("gw-1", "http://127.0.0.1:4000");
//! settings.placement_url = Some("http://127.0.0.1:7001".into());
//! settings.token_secret = Some("shared-secret".into());
//! let gateway = Switchyard::new(settings)?;
//!
//! let (layer, io) = gateway.configure(SocketIo::builder()).build_layer();
//! // Your handlers, behind Switchyard's admission and next to its built-in events.
//! gateway.ns(&io, "/", async |s: SocketRef| {
//!     s.on("echo", async |s: SocketRef, socketioxide::extract::Data::<String>(m)| {
//!         let _ = s.emit("echo", &m);
//!     });
//! });
//! let running = gateway.start(io.clone())?;
//! # let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
//! let app = axum::Router::new().merge(gateway.ops_router(metrics)).layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! switchyard_gateway::server::serve(listener, app, &gateway, io, running).await?;
//! # Ok(()) }
//! ```
//!
//! What mounting gives you, per namespace registered with [`Switchyard::ns`] (or every
//! configured namespace with [`Switchyard::mount`]):
//!
//! - **admission** ([`admission`]): `auth.token` checked on CONNECT, refusals as `connect_error`
//!   with the reason as the error message;
//! - **the built-in events** ([`events`]): `join`, `leave`, `publish`, `resume` (with a relay,
//!   room events carry `{room, epoch, offset}` from the relay's history: [`resume`]);
//! - **load** ([`load`]): exact connection counting with a hard cap, consumed reservations;
//! - **the reporter** ([`report_stream`], started by [`Switchyard::start`]): registration and
//!   load reports to placement, directives back;
//! - **drain** ([`drain`]): bounded-rate disconnects that make clients re-assign;
//! - **ops** ([`Switchyard::ops_router`]): `/healthz`, `/readyz`, `/metrics`.
//!
//! Across gateways: with `relay_urls` set, build with
//! `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state)` where `state` is
//! [`Switchyard::cluster_state`], and spawn what [`Switchyard::ns`] returns; then rooms,
//! broadcasts (the built-in `publish` too), acks, `fetch_sockets` and remote join / leave /
//! disconnect span every gateway linked to the relay ([`adapter`], [`link`]).
//!
//! Module map: [`config`] (flags) → [`server`] (listener, READY line, shutdown) → [`handler`]
//! (the connect-handler wrapper) → [`admission`], [`events`], [`rooms`], [`load`], [`drain`],
//! [`report_stream`], [`payload`]; [`adapter`] (the cluster adapter) → [`link`] (relay streams), [`resume`] (history
//! client and per-socket gates).

pub mod adapter;
pub mod admission;
pub mod config;
pub mod drain;
pub mod events;
pub mod handler;
pub mod link;
pub mod load;
pub mod payload;
pub mod report_stream;
pub mod resume;
pub mod rooms;
pub mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use socketioxide::{
    ParserConfig, SocketIo, SocketIoBuilder, adapter::Adapter, extract::SocketRef,
    handler::ConnectHandler,
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use switchyard_common::{assignment::TokenKey, ops::Readiness};
use tokio::sync::watch;

pub use crate::adapter::{ClusterAdapter, ClusterState};
use crate::admission::Admission;
use crate::drain::{DrainCause, DrainController, DrainEnd, DrainInbox, DrainState};
use crate::events::EventLimits;
use crate::handler::GatewayHandler;
use crate::link::{LinkConfig, RelayLink, incarnation_now};
use crate::load::{Load, Seat};
use crate::rooms::RoomGrant;

pub use crate::drain::DRAIN_EVENT;

/// Headroom above `max_payload_bytes` for the Socket.IO envelope (event name, room, JSON
/// punctuation), so a `data` just over the limit gets a `payload_too_large` ack instead of a
/// transport-level disconnect.
pub const ENVELOPE_HEADROOM: u64 = 64 * 1024;

/// Default [`Settings::ws_read_buffer_bytes`]: 1 KiB instead of engine.io's 4 KiB. Measured
/// with `switchyard-bench idle` (3,000 clients, one gateway): 4096 → 30.6 KB resident per idle
/// connection, 1024 → 27.4 KB, 512 → 27.0 KB, 256 → 26.9 KB. Below 1 KiB saves little more,
/// while tungstenite caps each socket read at this size, so large messages would take more
/// reads; 1 KiB still holds a typical Socket.IO event in one read.
pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 1024;

/// Default [`Settings::max_buffered_packets`]. Memory-neutral for idle sockets (measured: 128
/// and 1024 give the same resident size per connection), so it stays generous for bursts.
pub const DEFAULT_MAX_BUFFERED_PACKETS: usize = 1024;

/// Everything the gateway library needs; the binary fills it from flags ([`config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id; tokens must name it.
    pub node_id: String,
    /// The base URL clients are sent to by placement.
    pub public_url: String,
    /// Placement's gRPC URL; `None` runs standalone (no registration, no reports).
    pub placement_url: Option<String>,
    /// The HS256 secret shared with placement; `None` only with `allow_anonymous`.
    pub token_secret: Option<String>,
    /// Admit clients that bring no token (development).
    pub allow_anonymous: bool,
    /// Socket.IO namespaces served (and registered with placement).
    pub namespaces: Vec<String>,
    /// Relative share of new connections.
    pub weight: u32,
    /// Hard cap on connected sockets; 0 = unlimited.
    pub max_connections: u64,
    /// Largest `publish` data, in bytes; transport limits are set a little above it.
    pub max_payload_bytes: u64,
    pub max_rooms_per_socket: usize,
    /// New connections per second; 0 = unlimited.
    pub connect_rate: u32,
    /// Room patterns for clients whose token has no `rooms` claim.
    pub rooms: Vec<String>,
    pub report_interval: Duration,
    /// Disconnects per second while draining (when placement gives no rate).
    pub drain_rate: u32,
    /// A drain that ends the process disconnects everyone left at this deadline.
    pub drain_deadline: Duration,
    /// gRPC URLs of the broadcast relays; empty runs alone (socketioxide's local adapter).
    pub relay_urls: Vec<String>,
    /// Bearer token sent when linking to a relay (the relays' `--link-token`).
    pub link_token: Option<String>,
    /// Trust (CA bundle) and client certificate for `https://` placement and relay URLs.
    pub tls: switchyard_common::tls::ClientTls,
    /// Initial websocket read buffer per connection, in bytes (engine.io `ws_read_buffer_size`).
    /// Allocated up front for every socket, so it is a direct per-connection memory cost. A
    /// larger message grows that socket's buffer as needed, but each read from the socket is
    /// capped at this size: a small value costs more reads for large messages. Values below 64
    /// are raised to 64.
    pub ws_read_buffer_bytes: usize,
    /// Packets queued per socket before emits to it fail (engine.io `max_buffer_size`). A bound,
    /// not an allocation: the queue grows in small blocks only while packets wait in it.
    pub max_buffered_packets: usize,
}

impl Settings {
    /// Settings with the binary's defaults for everything but identity.
    pub fn new(node_id: impl Into<String>, public_url: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            public_url: public_url.into(),
            placement_url: None,
            token_secret: None,
            allow_anonymous: false,
            namespaces: vec!["/".into()],
            weight: 1,
            max_connections: 10_000,
            max_payload_bytes: 1_048_576,
            max_rooms_per_socket: 64,
            connect_rate: 1000,
            rooms: vec!["*".into()],
            report_interval: Duration::from_millis(1000),
            drain_rate: 50,
            drain_deadline: Duration::from_millis(30_000),
            relay_urls: Vec::new(),
            link_token: None,
            tls: switchyard_common::tls::ClientTls::default(),
            ws_read_buffer_bytes: DEFAULT_WS_READ_BUFFER_BYTES,
            max_buffered_packets: DEFAULT_MAX_BUFFERED_PACKETS,
        }
    }
}

/// A configuration the gateway cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(
        "a token secret is required (--token-secret / SWITCHYARD_TOKEN_SECRET) unless --allow-anonymous is set"
    )]
    MissingSecret,
    #[error("the node id must not be empty")]
    EmptyNodeId,
    #[error("no namespace configured")]
    NoNamespaces,
    #[error("namespace {0:?} must start with '/'")]
    BadNamespace(String),
    #[error("the report interval must be positive")]
    ZeroReportInterval,
    #[error("Switchyard::start was already called")]
    AlreadyStarted,
    #[error("the relay links must be started inside a tokio runtime")]
    NoRuntime,
}

/// State shared by every socket handler, the reporter and the drain controller.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) admission: Admission,
    pub(crate) load: Arc<Load>,
    pub(crate) drain: Arc<DrainState>,
    pub(crate) limits: Arc<EventLimits>,
    drain_inbox: Mutex<Option<DrainInbox>>,
    cluster: std::sync::OnceLock<Option<ClusterState>>,
}

/// A gateway: mount it on a socketioxide instance, start it, serve it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Switchyard {
    shared: Arc<Shared>,
}

impl Switchyard {
    pub fn new(settings: Settings) -> Result<Self, SetupError> {
        if settings.token_secret.as_deref().is_none_or(str::is_empty) && !settings.allow_anonymous {
            return Err(SetupError::MissingSecret);
        }
        if settings.node_id.trim().is_empty() {
            return Err(SetupError::EmptyNodeId);
        }
        if settings.namespaces.is_empty() {
            return Err(SetupError::NoNamespaces);
        }
        if let Some(bad) = settings.namespaces.iter().find(|n| !n.starts_with('/')) {
            return Err(SetupError::BadNamespace(bad.clone()));
        }
        if settings.report_interval.is_zero() {
            return Err(SetupError::ZeroReportInterval);
        }
        describe_metrics();
        let key = settings
            .token_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| TokenKey::new(s.as_bytes()));
        let default_rooms = RoomGrant::new(settings.rooms.iter().cloned());
        let admission = Admission::new(
            settings.node_id.clone(),
            key,
            settings.allow_anonymous,
            default_rooms,
            settings.connect_rate,
        );
        let (drain, inbox) = DrainState::new(settings.drain_rate);
        let limits = Arc::new(EventLimits {
            max_rooms_per_socket: settings.max_rooms_per_socket,
            max_payload_bytes: usize::try_from(settings.max_payload_bytes).unwrap_or(usize::MAX),
            history: std::sync::OnceLock::new(),
        });
        Ok(Self {
            shared: Arc::new(Shared {
                load: Arc::new(Load::new(settings.max_connections)),
                settings,
                admission,
                drain,
                limits,
                drain_inbox: Mutex::new(Some(inbox)),
                cluster: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Applies Switchyard's transport limits to a socketioxide builder: payload limits a little
    /// above `max_payload_bytes` (engine.io `max_payload`, websocket message and frame size,
    /// binary attachment buffer), the per-socket send queue bound and websocket read buffer from
    /// [`Settings`], and the common parser (the one every gateway of a cluster must share).
    pub fn configure<A: Adapter>(&self, builder: SocketIoBuilder<A>) -> SocketIoBuilder<A> {
        let limit = self
            .shared
            .settings
            .max_payload_bytes
            .saturating_add(ENVELOPE_HEADROOM);
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        builder
            .max_payload(limit)
            .ws_max_message_size(limit_usize)
            .ws_max_frame_size(limit_usize)
            .max_buffer_size(self.shared.settings.max_buffered_packets.max(1))
            .ws_read_buffer_size(self.shared.settings.ws_read_buffer_bytes.max(64))
            .with_parser(ParserConfig::common().max_incoming_binary_buf_size(limit_usize))
    }

    /// With relay URLs configured, the state of the cluster adapter: plug it with
    /// `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state)` so rooms span every
    /// gateway. The first call starts the relay links; later calls return the same links.
    /// `Ok(None)` without relay URLs (use the local adapter); an error outside a tokio runtime.
    pub fn cluster_state(&self) -> Result<Option<ClusterState>, SetupError> {
        if !self.shared.settings.relay_urls.is_empty()
            && tokio::runtime::Handle::try_current().is_err()
        {
            return Err(SetupError::NoRuntime);
        }
        Ok(self
            .shared
            .cluster
            .get_or_init(|| {
                let s = &self.shared.settings;
                if s.relay_urls.is_empty() {
                    return None;
                }
                ClusterState::describe_metrics();
                let incarnation = incarnation_now();
                let link = RelayLink::spawn(LinkConfig {
                    urls: s.relay_urls.clone(),
                    node_id: s.node_id.clone(),
                    namespaces: s.namespaces.clone(),
                    incarnation,
                    tls: s.tls.clone(),
                    token: s.link_token.clone(),
                });
                let stamper = link.stamper();
                let state = ClusterState::new(link);
                let publisher = format!("{}:{incarnation}", s.node_id);
                let token = s.link_token.as_deref();
                match crate::resume::History::new(&s.relay_urls, publisher, &s.tls, stamper, token) {
                    Ok(history) => {
                        let history = Arc::new(history);
                        let _ = self.shared.limits.history.set(Arc::clone(&history));
                        Some(state.with_history(history))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "relay url unusable for history; publishes stay local-order only");
                        Some(state)
                    }
                }
            })
            .clone())
    }

    /// Registers namespace `path` with `handler` behind Switchyard: admission runs first, then
    /// `handler`'s own middlewares, then `handler`. The built-in events are on every socket.
    /// With a non-local adapter, spawn the returned value (see socketioxide's `SocketIo::ns`).
    pub fn ns<A, H, T>(&self, io: &SocketIo<A>, path: impl Into<String>, handler: H) -> A::InitRes
    where
        A: Adapter + DefinedAdapter,
        H: ConnectHandler<A, T>,
        T: Send + Sync + 'static,
    {
        io.ns(
            path.into(),
            GatewayHandler {
                shared: self.shared.clone(),
                inner: handler,
            },
        )
    }

    /// Registers every configured namespace with only the built-in behaviour.
    pub fn mount<A: Adapter + DefinedAdapter>(&self, io: &SocketIo<A>) {
        for ns in &self.shared.settings.namespaces {
            self.ns(io, ns.clone(), async || {}).spawn();
        }
    }

    /// `/healthz`, `/readyz` (503 until serving and while draining) and `/metrics`.
    pub fn ops_router(&self, metrics: PrometheusHandle) -> axum::Router {
        switchyard_common::ops::router(self.shared.drain.readiness(), metrics)
    }

    /// Starts the drain controller, the disconnect of severed sockets (see [`resume`]) and,
    /// with a placement URL, the reporter. Once only.
    pub fn start<A: Adapter>(&self, io: SocketIo<A>) -> Result<Running, SetupError> {
        let inbox = self
            .shared
            .drain_inbox
            .lock()
            .ok()
            .and_then(|mut i| i.take())
            .ok_or(SetupError::AlreadyStarted)?;
        let settings = &self.shared.settings;
        if let Some(severed) = self
            .shared
            .limits
            .history
            .get()
            .and_then(|h| h.take_severed())
        {
            tokio::spawn(crate::resume::disconnect_severed(io.clone(), severed));
        }
        let (drain_task, finished) = DrainController::spawn(
            io,
            self.shared.drain.clone(),
            inbox,
            self.shared.load.clone(),
            settings.drain_deadline,
        );
        let (stop, stop_rx) = watch::channel(false);
        let reporter = settings.placement_url.clone().map(|url| {
            report_stream::spawn(
                report_stream::ReporterConfig::from_settings(settings, url),
                self.shared.load.clone(),
                self.shared.drain.clone(),
                stop_rx,
            )
        });
        if reporter.is_none() {
            tracing::warn!("no placement URL: running standalone, not registered with placement");
        }
        Ok(Running {
            drain_task,
            reporter,
            stop,
            finished,
            drain: self.shared.drain.clone(),
        })
    }

    /// The drain flag and controls (also used by [`server`] on signals).
    pub fn drain_state(&self) -> &Arc<DrainState> {
        &self.shared.drain
    }

    pub fn readiness(&self) -> Readiness {
        self.shared.drain.readiness()
    }

    /// Sockets connected right now (all namespaces).
    pub fn connections(&self) -> u64 {
        self.shared.load.connections()
    }
}

/// Gives a socket's seat back: call it from your own `on_disconnect` handler if you set one
/// (it replaces Switchyard's). Idempotent.
pub fn release_seat<A: Adapter>(s: &SocketRef<A>) {
    if let Some(seat) = s.extensions.get::<Seat>() {
        seat.release();
    }
}

/// The background tasks of a started gateway.
#[derive(Debug)]
pub struct Running {
    drain_task: tokio::task::JoinHandle<()>,
    reporter: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    finished: watch::Receiver<Option<DrainEnd>>,
    drain: Arc<DrainState>,
}

impl Running {
    /// Resolves when a drain that ends the process has finished (every client gone, or the
    /// deadline passed). Never resolves otherwise.
    pub async fn drained(&mut self) -> DrainEnd {
        loop {
            if let Some(end) = *self.finished.borrow_and_update() {
                return end;
            }
            if self.finished.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Starts the shutdown drain (what SIGTERM does).
    pub fn shutdown(&self) {
        self.drain.drain(DrainCause::Shutdown, 0);
    }

    /// Stops the reporter (closing the report stream, which removes the node from the ledger
    /// at once) and the drain controller.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Some(reporter) = self.reporter {
            let abort = reporter.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), reporter)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.drain_task.abort();
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "switchyard_gateway_connections",
        "Sockets connected (all namespaces)."
    );
    describe_counter!(
        "switchyard_gateway_connects_total",
        "CONNECT attempts by outcome and refusal reason."
    );
    describe_counter!(
        "switchyard_gateway_disconnects_total",
        "Socket disconnects by reason."
    );
    describe_counter!(
        "switchyard_gateway_events_total",
        "Built-in events by event and outcome."
    );
    describe_histogram!(
        "switchyard_gateway_publish_payload_bytes",
        "Estimated size of published data."
    );
    describe_gauge!("switchyard_gateway_draining", "1 while the gateway drains.");
    describe_gauge!(
        "switchyard_gateway_drain_remaining",
        "Sockets left to move during a drain."
    );
    describe_counter!(
        "switchyard_gateway_drain_disconnects_total",
        "Clients told to re-assign, by cause."
    );
    describe_counter!(
        "switchyard_gateway_drains_total",
        "Drains started, by cause."
    );
    describe_counter!(
        "switchyard_gateway_reports_total",
        "Load reports sent to placement."
    );
    describe_gauge!(
        "switchyard_gateway_report_stream_up",
        "1 while registered with placement."
    );
    describe_counter!(
        "switchyard_gateway_report_stream_errors_total",
        "Report stream failures."
    );
    describe_counter!(
        "switchyard_gateway_directives_total",
        "Directives received from placement, by kind."
    );
    // Gauges start at zero so dashboards see the series before the first client.
    metrics::gauge!("switchyard_gateway_connections").set(0.0);
    metrics::gauge!("switchyard_gateway_draining").set(0.0);
    metrics::gauge!("switchyard_gateway_report_stream_up").set(0.0);
}
