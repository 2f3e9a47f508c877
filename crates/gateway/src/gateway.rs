//! [`Switchyard`]: a gateway to mount on a socketioxide instance, start and serve; and
//! [`Running`], its background tasks. See the crate docs for how to use it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use socketioxide::{
    ParserConfig, SocketIo, SocketIoBuilder, adapter::Adapter, extract::SocketRef,
    handler::ConnectHandler,
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use switchyard_common::namespace::{self, NamespaceError};
use switchyard_common::node_id::{self, NodeIdError};
use switchyard_common::{assignment::TokenKey, ops::Readiness};
use tokio::sync::watch;

use crate::admin_ui::AdminUi;
use crate::admission::Admission;
use crate::cluster::ClusterState;
use crate::drain::{DrainCause, DrainController, DrainEnd, DrainState};
use crate::events::EventLimits;
use crate::handler::GatewayHandler;
use crate::hooks::Hooks;
use crate::hooks::contract::AnswerLimits;
use crate::link::{LinkConfig, incarnation_now};
use crate::load::{Load, Seat};
use crate::metrics;
use crate::report_stream;
use crate::rooms::RoomGrant;
use crate::settings::{ENVELOPE_HEADROOM, Settings};
use crate::severed;
use crate::shared::Shared;

/// A configuration the gateway cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(
        "a token secret is required (--token-secret / SWITCHYARD_TOKEN_SECRET) unless --allow-anonymous is set"
    )]
    MissingSecret,
    #[error("{0:?}: {1}")]
    BadNodeId(String, NodeIdError),
    #[error("no namespace configured")]
    NoNamespaces,
    #[error("{0:?}: {1}")]
    BadNamespace(String, NamespaceError),
    #[error("the report interval must be positive")]
    ZeroReportInterval,
    #[error("Switchyard::start was already called")]
    AlreadyStarted,
    #[error("the relay links must be started inside a tokio runtime")]
    NoRuntime,
    #[error("the relay history client: {0}")]
    Relay(String),
    #[error("the admin UI: {0}")]
    AdminUi(#[from] crate::admin_ui::auth::CredentialsError),
    #[error("the admin UI namespace {0:?} must start with '/' and not be a client namespace")]
    AdminUiNamespace(String),
    #[error("hooks: {0}")]
    Hooks(String),
}

/// A gateway: mount it on a socketioxide instance, start it, serve it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Switchyard {
    shared: Arc<Shared>,
    /// `Some` with `--admin-ui`.
    admin_ui: Option<Arc<AdminUi>>,
}

impl Switchyard {
    pub fn new(settings: Settings) -> Result<Self, SetupError> {
        if settings.token_secret.as_deref().is_none_or(str::is_empty) && !settings.allow_anonymous {
            return Err(SetupError::MissingSecret);
        }
        node_id::check(&settings.node_id)
            .map_err(|e| SetupError::BadNodeId(settings.node_id.clone(), e))?;
        if settings.namespaces.is_empty() {
            return Err(SetupError::NoNamespaces);
        }
        for ns in &settings.namespaces {
            namespace::check(ns).map_err(|e| SetupError::BadNamespace(ns.clone(), e))?;
        }
        if settings.report_interval.is_zero() {
            return Err(SetupError::ZeroReportInterval);
        }
        metrics::describe();
        let admin_ui = match &settings.admin_ui {
            Some(ui) => {
                if !ui.namespace.starts_with('/') || settings.namespaces.contains(&ui.namespace) {
                    return Err(SetupError::AdminUiNamespace(ui.namespace.clone()));
                }
                Some(Arc::new(AdminUi::new(
                    ui.clone(),
                    &settings.node_id,
                    &settings.namespaces,
                    settings.token_secret.as_deref(),
                )?))
            }
            None => None,
        };
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
        let limits = EventLimits {
            max_rooms_per_socket: settings.max_rooms_per_socket,
            max_payload_bytes: usize::try_from(settings.max_payload_bytes).unwrap_or(usize::MAX),
        };
        let hooks = match &settings.hooks {
            Some(h) => {
                let answers = AnswerLimits {
                    max_payload_bytes: limits.max_payload_bytes,
                    max_rooms: limits.max_rooms_per_socket,
                };
                // An answer may carry an ack and emits: one payload's worth in all, plus the
                // envelope a client's packet gets too.
                let max_answer =
                    usize::try_from(settings.max_payload_bytes.saturating_add(ENVELOPE_HEADROOM))
                        .unwrap_or(usize::MAX);
                Some(Arc::new(
                    Hooks::new(h, answers, max_answer, &settings.tls)
                        .map_err(|e| SetupError::Hooks(e.to_string()))?,
                ))
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                load: Arc::new(Load::new(settings.max_connections)),
                settings,
                admission,
                drain,
                limits,
                hooks,
                drain_inbox: Mutex::new(Some(inbox)),
                cluster: OnceLock::new(),
                observer: OnceLock::new(),
            }),
            admin_ui,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Applies Switchyard's transport limits to a socketioxide builder: payload limits a little
    /// above `max_payload_bytes` (engine.io `max_payload`, websocket message and frame size,
    /// binary attachment buffer), the per-socket send queue bound and websocket read buffer from
    /// [`Settings`], the Engine.IO timeouts that close sessions which never finish (ping
    /// interval and timeout, namespace connect timeout), and the common parser (the one every
    /// gateway of a cluster must share).
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
            .ping_interval(self.shared.settings.ping_interval)
            .ping_timeout(self.shared.settings.ping_timeout)
            .connect_timeout(self.shared.settings.connect_timeout)
            .with_parser(ParserConfig::common().max_incoming_binary_buf_size(limit_usize))
    }

    /// With relay URLs configured, the state of the cluster adapter: plug it with
    /// `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state)` so rooms span every
    /// gateway. The first call starts the relay links and the history client; later calls
    /// return the same. `Ok(None)` without relay URLs (use the local adapter); an error outside
    /// a tokio runtime, or when a relay URL or the link token cannot be used.
    pub fn cluster_state(&self) -> Result<Option<ClusterState>, SetupError> {
        let s = &self.shared.settings;
        if s.relay_urls.is_empty() {
            return Ok(None);
        }
        if let Some(cluster) = self.shared.cluster.get() {
            return Ok(cluster.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::NoRuntime);
        }
        // The admin UI's namespace rides the links too, so its events reach every gateway.
        let mut namespaces = s.namespaces.clone();
        if let Some(ui) = &self.admin_ui {
            namespaces.push(ui.namespace().to_owned());
        }
        let cfg = LinkConfig {
            urls: s.relay_urls.clone(),
            node_id: s.node_id.clone(),
            namespaces,
            incarnation: incarnation_now(),
            tls: s.tls.clone(),
            token: s.link_token.clone(),
            adapter_queue: s.adapter_queue,
            interest_routing: s.interest_routing,
        };
        let started = ClusterState::start(cfg).map_err(|e| SetupError::Relay(e.to_string()))?;
        // A concurrent first call may have won: everyone uses the one that was stored.
        Ok(self.shared.cluster.get_or_init(|| Some(started)).clone())
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

    /// Registers every configured namespace with only the built-in behaviour, and the admin
    /// UI's namespace when it is on ([`Switchyard::mount_admin_ui`]).
    pub fn mount<A: Adapter + DefinedAdapter>(&self, io: &SocketIo<A>) {
        for ns in &self.shared.settings.namespaces {
            self.ns(io, ns.clone(), async || {}).spawn();
        }
        self.mount_admin_ui(io);
    }

    /// Registers the admin UI's namespace (no token, no seat; its own login), if it is on.
    /// [`Switchyard::mount`] does it; call it yourself when you register namespaces with
    /// [`Switchyard::ns`].
    pub fn mount_admin_ui<A: Adapter + DefinedAdapter>(&self, io: &SocketIo<A>) {
        if let Some(ui) = &self.admin_ui {
            ui.mount(io);
        }
    }

    /// `/healthz`, `/readyz` (503 until serving and while draining) and `/metrics`.
    pub fn ops_router(&self, metrics: PrometheusHandle) -> axum::Router {
        switchyard_common::ops::router(self.shared.drain.readiness(), metrics)
    }

    /// Starts the drain controller, the disconnect of severed sockets (see [`severed`]) and,
    /// with a placement URL, the reporter. Once only.
    pub fn start<A: Adapter>(&self, io: SocketIo<A>) -> Result<Running, SetupError> {
        let inbox = self
            .shared
            .drain_inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(SetupError::AlreadyStarted)?;
        let settings = &self.shared.settings;
        if let Some(severed) = self
            .shared
            .cluster()
            .and_then(|cluster| cluster.gates().take_severed())
        {
            tokio::spawn(severed::disconnect_severed(io.clone(), severed));
        }
        if let Some(hooks) = &self.shared.hooks {
            hooks.start();
        }
        if let Some(ui) = &self.admin_ui {
            let observer = ui.start(io.clone(), self.shared.load.clone());
            let _ = self.shared.observer.set(observer);
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
            hooks: self.shared.hooks.clone(),
        })
    }

    /// The drain flag and controls (also used by [`crate::server`] on signals).
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
    hooks: Option<Arc<Hooks>>,
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

    /// Gives the disconnect hooks of closed sockets a bounded time to reach the backend, then
    /// stops the reporter (closing the report stream, which removes the node from the ledger
    /// at once) and the drain controller. Call it after the sockets are closed.
    pub async fn stop(self) {
        if let Some(hooks) = &self.hooks {
            hooks.flush().await;
        }
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
