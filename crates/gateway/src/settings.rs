//! [`Settings`]: everything the gateway library needs, and the defaults the binary's flags
//! ([`crate::config`]) share with it.

use std::time::Duration;

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

/// Default [`Settings::adapter_queue`]: four times the relay's default `--link-queue`, so the
/// relay cuts a slow gateway's link before this queue fills in the common case.
pub const DEFAULT_ADAPTER_QUEUE: usize = 4096;

/// The admin UI's settings (`--admin-ui`; see [`crate::admin_ui`]).
#[derive(Debug, Clone)]
pub struct AdminUiSettings {
    /// The namespace the dashboard connects to (`/admin`).
    pub namespace: String,
    /// The login's username.
    pub username: String,
    /// bcrypt hash of the login's password.
    pub password_hash: String,
    /// Development mode: every client connect, disconnect, room change and event is shown
    /// (the package's default); production mode: only the 2-second server stats.
    pub development: bool,
}

/// What the connect hook's failure means for the client (`--hook-connect-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnectFailure {
    /// Refuse the CONNECT with `backend_unavailable`.
    Deny,
    /// Admit the client as if the backend had allowed it with no data and no rooms.
    Allow,
}

/// The hooks to the application's backend (see [`crate::hooks`] and `docs/hooks.md`).
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// `http://` or `https://` base URL (the hooks are `POST {url}/connect`, `/event`,
    /// `/disconnect`), or `grpc://` / `grpcs://` (`switchyard.hooks.v1.Hooks`).
    pub url: String,
    /// Globs of the application event names forwarded to the event hook (built-ins never are).
    pub events: Vec<String>,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Whole-call timeout of one hook call.
    pub timeout: Duration,
    /// Hook calls in flight at once, per gateway.
    pub concurrency: usize,
    pub connect_failure: ConnectFailure,
}

impl HookSettings {
    /// The defaults of the binary's flags, for the backend at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            events: Vec::new(),
            token: None,
            timeout: Duration::from_millis(5000),
            concurrency: 256,
            connect_failure: ConnectFailure::Deny,
        }
    }
}

/// Everything the gateway library needs; the binary fills it from flags ([`crate::config`]).
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
    /// Descriptors kept in reserve under RLIMIT_NOFILE before reporting full
    /// (see `descriptors`).
    pub fd_reserve: u64,
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
    /// Engine.IO ping interval (socketioxide `ping_interval`).
    pub ping_interval: Duration,
    /// Engine.IO ping timeout (socketioxide `ping_timeout`): a session silent this long after
    /// a ping, websocket or polling, is closed.
    pub ping_timeout: Duration,
    /// How long a session may go without a namespace CONNECT (socketioxide `connect_timeout`).
    pub connect_timeout: Duration,
    /// Frames from the relay queued per namespace for its adapter. When full, the link is cut
    /// and relinks, and sockets holding history gates resume (see [`crate::link`]).
    pub adapter_queue: usize,
    /// Interest routing (see [`crate::link`]): the relays forward a room's frames to this gateway
    /// only while it has a local member in the room. Rooms must then be joined through paths
    /// that announce them: the built-in `join` / `resume`, the adapter's remote joins
    /// (`socketsJoin`, the admin UI, the relay's admin API and emitter). Off here, because an
    /// embedding application may call `socket.join` itself (its rooms would not be announced);
    /// the binary turns it on (`--interest-routing`, default true).
    pub interest_routing: bool,
    /// The admin UI on this gateway; `None`: off.
    pub admin_ui: Option<AdminUiSettings>,
    /// Hooks to the application's backend; `None`: off.
    pub hooks: Option<HookSettings>,
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
            fd_reserve: 64,
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
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            adapter_queue: DEFAULT_ADAPTER_QUEUE,
            interest_routing: false,
            admin_ui: None,
            hooks: None,
        }
    }
}
