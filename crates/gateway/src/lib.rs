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
//! let listener = switchyard_common::http_server::HttpListener::bind(
//!     "127.0.0.1:4000".parse()?,
//!     None,
//!     &Default::default(),
//!     switchyard_gateway::metrics::HTTP_LISTENER,
//! )
//! .await?;
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
//!   room events carry `{room, epoch, offset}` from the relay's history, and per-socket gates
//!   make delivery exact: [`gates`]);
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
//! **Reading order**, which is also the import order (a module uses only modules after it):
//! [`server`] (listener, READY line, shutdown) → [`gateway`] ([`Switchyard`]: mount, start) →
//! [`admin_ui`] (`@socket.io/admin-ui`'s server side, cluster-wide) → [`handler`] (the
//! connect-handler wrapper) → `shared` (the state handlers share) → [`backend`] (what the
//! hooks' answers do to sockets: connect verdicts, forwarded events in order, disconnects) →
//! [`events`] (the built-in events) and [`adapter`] (the cluster adapter's protocol) →
//! [`cluster`] ([`ClusterState`]: relay links, history client and gates, owned together) →
//! [`heads`] (the joins' head reads, shared per namespace) → [`history`] (the relay history
//! client), [`delivery`] (stamped runs and backend events to
//! local sockets), [`severed`] (disconnects what the gates severed), [`report_stream`]
//! (placement) → [`gates`] (per-socket gates, a synchronous state machine; [`marks`], the
//! first arrival of a stamped event across relay links), [`drain`] →
//! [`link`] (relay streams; [`interest`], the rooms it declares for
//! interest routing), [`admission`] (token, rate, claim), [`load`], [`descriptors`]
//! (file-descriptor headroom), [`observe`] (what the
//! admin UI learns of client sockets, through a callback), [`hooks`] (the calls to the
//! application's backend: contract, client, breaker, disconnect queue), [`payload`],
//! [`config`] (flags) → [`codec`] (the adapter's wire format), [`rooms`], [`settings`],
//! [`metrics`].
//!
//! **Locks.** Every lock is a `std::sync::Mutex` whose critical section never awaits; a
//! poisoned one is recovered (the poison policy in ARCHITECTURE.md, "Cross-cutting concerns").
//! Locks nest in one direction only: the relay link's state lock, then the gates' lock (see
//! [`gates`]) or a namespace's local room map (the interest check of
//! [`link::RelayLink::rooms_left`]).
pub mod adapter;
pub mod admin_ui;
pub mod admission;
pub mod backend;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod descriptors;
pub mod drain;
pub mod events;
pub mod gates;
pub mod gateway;
pub mod handler;
pub mod heads;
pub mod history;
pub mod hooks;
pub mod interest;
pub mod link;
pub mod load;
pub mod marks;
pub mod metrics;
pub mod observe;
pub mod payload;
pub mod report_stream;
pub mod rooms;
pub mod server;
pub mod settings;
pub mod severed;
mod shared;

pub use crate::adapter::ClusterAdapter;
pub use crate::cluster::ClusterState;
pub use crate::drain::DRAIN_EVENT;
pub use crate::gateway::{Running, SetupError, Switchyard, release_seat};
pub use crate::settings::{
    DEFAULT_ADAPTER_QUEUE, DEFAULT_MAX_BUFFERED_PACKETS, DEFAULT_WS_READ_BUFFER_BYTES,
    ENVELOPE_HEADROOM, Settings,
};
