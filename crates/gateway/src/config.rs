//! The gateway's flags. Every flag also reads `SWITCHYARD_<FLAG>`; defaults suit a laptop.
//!
//! [`GatewayArgs`] is public so an application embedding Switchyard can `#[command(flatten)]`
//! it into its own flags and get the same command line (see `examples/embedded.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use switchyard_common::runtime::RuntimeArgs;
use switchyard_common::telemetry::TelemetryArgs;

use crate::settings::{AdminUiSettings, ConnectFailure, HookSettings, Settings};

/// `switchyard-gateway` flags.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// HTTP listen address: `/socket.io`, `/healthz`, `/readyz`, `/metrics`. Port 0 picks one.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Base URL placement hands to clients; default `http://<bound listen address>`
    /// (`https://` when `--tls-cert` is set).
    #[arg(long, env = "SWITCHYARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Node id; default `$POD_NAME`, else `<hostname>-<port>`.
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    pub node_id: Option<String>,
    /// Placement's gRPC URL (report stream). An empty value runs standalone.
    #[arg(
        long,
        env = "SWITCHYARD_PLACEMENT_URL",
        default_value = "http://127.0.0.1:7001"
    )]
    pub placement_url: String,
    /// HS256 secret shared with placement; required unless `--allow-anonymous`.
    #[arg(long, env = "SWITCHYARD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Admit clients that bring no token (development); they still count in the load.
    #[arg(long, env = "SWITCHYARD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Socket.IO namespaces served, comma separated.
    #[arg(
        long,
        env = "SWITCHYARD_NAMESPACES",
        default_value = "/",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Relative share of new connections.
    #[arg(long, env = "SWITCHYARD_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// Connected sockets beyond which CONNECTs are refused `over_capacity`; 0 = unlimited.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u64,
    /// File descriptors kept in reserve: with fewer than this many left under the process's
    /// RLIMIT_NOFILE, the gateway reports itself full to placement and `/readyz` answers 503.
    #[arg(long, env = "SWITCHYARD_FD_RESERVE", default_value_t = 64)]
    pub fd_reserve: u64,
    /// Largest `publish` data in bytes (`payload_too_large` beyond).
    #[arg(
        long,
        env = "SWITCHYARD_MAX_PAYLOAD_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_payload_bytes: u64,
    /// Rooms one socket may be in (`too_many_rooms` beyond).
    #[arg(long, env = "SWITCHYARD_MAX_ROOMS_PER_SOCKET", default_value_t = 64)]
    pub max_rooms_per_socket: usize,
    /// New connections per second (`rate_limited` beyond), counted only for CONNECTs whose
    /// token is good; 0 = unlimited.
    #[arg(long, env = "SWITCHYARD_CONNECT_RATE", default_value_t = 1000)]
    pub connect_rate: u32,
    /// Room glob patterns (`*` = any run of characters) for clients whose token has no rooms claim.
    #[arg(
        long,
        env = "SWITCHYARD_ROOMS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub rooms: Vec<String>,
    /// Interval between load reports to placement, in milliseconds.
    #[arg(long, env = "SWITCHYARD_REPORT_INTERVAL_MS", default_value_t = 1000)]
    pub report_interval_ms: u64,
    /// Client disconnects per second while draining.
    #[arg(long, env = "SWITCHYARD_DRAIN_RATE", default_value_t = 50)]
    pub drain_rate: u32,
    /// A drain disconnects every remaining client and exits after this many milliseconds.
    #[arg(long, env = "SWITCHYARD_DRAIN_DEADLINE_MS", default_value_t = 30_000)]
    pub drain_deadline_ms: u64,
    /// gRPC URLs of the broadcast relays, comma separated; empty runs this gateway alone.
    #[arg(long, env = "SWITCHYARD_RELAY_URLS", value_delimiter = ',')]
    pub relay_urls: Vec<String>,
    /// Bearer token sent when linking to a relay; must match the relays' --link-token.
    #[arg(long, env = "SWITCHYARD_LINK_TOKEN", hide_env_values = true)]
    pub link_token: Option<String>,
    /// Initial websocket read buffer per connection, in bytes. Every connected socket holds one,
    /// so this is a direct per-connection memory cost; a socket that receives a larger message
    /// grows its own buffer. Lower it for many mostly-idle clients, raise it for large uploads.
    #[arg(
        long,
        env = "SWITCHYARD_WS_READ_BUFFER_BYTES",
        default_value_t = crate::settings::DEFAULT_WS_READ_BUFFER_BYTES
    )]
    pub ws_read_buffer_bytes: usize,
    /// Packets queued per socket before emits to it fail (a slow client's backlog bound). A
    /// bound, not a preallocation: it does not change an idle socket's memory.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_BUFFERED_PACKETS",
        default_value_t = crate::settings::DEFAULT_MAX_BUFFERED_PACKETS
    )]
    pub max_buffered_packets: usize,
    /// Engine.IO ping interval, ms: the server pings every session this often.
    #[arg(long, env = "SWITCHYARD_PING_INTERVAL_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,
    /// Engine.IO ping timeout, ms: a session that has not answered a ping (a websocket that
    /// stays silent, a polling session never polled again) is closed this long after it.
    #[arg(long, env = "SWITCHYARD_PING_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout_ms: u64,
    /// Ms an Engine.IO session may stay open without a successful namespace CONNECT before it
    /// is closed.
    #[arg(long, env = "SWITCHYARD_CONNECT_TIMEOUT_MS", default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// Interest routing: tell the relays which rooms have local members, so a room's frames
    /// reach only the gateways with members in it. Turn it off only for handlers that call
    /// `socket.join` themselves (their rooms are not announced).
    #[arg(
        long,
        env = "SWITCHYARD_INTEREST_ROUTING",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub interest_routing: bool,
    /// Frames from the relay queued per namespace for its adapter. When the queue is full (the
    /// relay sends faster than this gateway applies), the link is cut and relinks after a
    /// backoff, and sockets holding history gates resume: memory stays bounded, nothing is
    /// lost silently.
    #[arg(
        long,
        env = "SWITCHYARD_ADAPTER_QUEUE",
        default_value_t = crate::settings::DEFAULT_ADAPTER_QUEUE,
        value_parser = clap::builder::TypedValueParser::map(
            clap::value_parser!(u32).range(1..),
            |v| usize::try_from(v).unwrap_or(usize::MAX)
        )
    )]
    pub adapter_queue: usize,
    /// Serve `@socket.io/admin-ui` (the official dashboard) on `--admin-ui-namespace`, with
    /// its own login (`--admin-ui-username`, `--admin-ui-password-hash`). Every gateway of a
    /// cluster should have the same settings: one dashboard connection on any gateway sees and
    /// acts on all of them.
    #[arg(long, env = "SWITCHYARD_ADMIN_UI")]
    pub admin_ui: bool,
    /// The admin UI's namespace.
    #[arg(long, env = "SWITCHYARD_ADMIN_UI_NAMESPACE", default_value = "/admin")]
    pub admin_ui_namespace: String,
    /// The admin UI login's username.
    #[arg(long, env = "SWITCHYARD_ADMIN_UI_USERNAME", default_value = "admin")]
    pub admin_ui_username: String,
    /// bcrypt hash of the admin UI login's password (`$2b$10$…`); required with --admin-ui.
    /// From a Secret: it also keys the session ids every gateway accepts.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_UI_PASSWORD_HASH",
        hide_env_values = true
    )]
    pub admin_ui_password_hash: Option<String>,
    /// `development`: the dashboard sees every client connect, disconnect, room change and
    /// event (a relay frame each); `production`: only the server stats every 2 s.
    #[arg(long, env = "SWITCHYARD_ADMIN_UI_MODE", value_enum, default_value_t = AdminUiMode::Development)]
    pub admin_ui_mode: AdminUiMode,
    /// Base URL of the application's backend for hooks (`POST {url}/connect`, `/event`,
    /// `/disconnect`; see docs/hooks.md), or `grpc://host:port` / `grpcs://host:port` for the
    /// same calls over gRPC (`switchyard.hooks.v1.Hooks`); unset or empty: no hooks.
    #[arg(long, env = "SWITCHYARD_HOOKS_URL")]
    pub hooks_url: Option<String>,
    /// Application event names forwarded to the event hook, comma-separated globs (`*` = any
    /// run of characters). Built-in events are never forwarded.
    #[arg(long, env = "SWITCHYARD_HOOK_EVENTS", value_delimiter = ',')]
    pub hook_events: Vec<String>,
    /// Bearer token sent to the backend with every hook call.
    #[arg(long, env = "SWITCHYARD_HOOK_TOKEN", hide_env_values = true)]
    pub hook_token: Option<String>,
    /// Timeout of one hook call, in milliseconds.
    #[arg(long, env = "SWITCHYARD_HOOK_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub hook_timeout_ms: u64,
    /// Hook calls in flight at once on this gateway; more wait up to the timeout.
    #[arg(long, env = "SWITCHYARD_HOOK_CONCURRENCY", default_value_t = 256,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u32).range(1..),
              |v| usize::try_from(v).unwrap_or(usize::MAX)
          ))]
    pub hook_concurrency: usize,
    /// When the connect hook fails (timeout, unreachable, 5xx, invalid answer): `deny` refuses
    /// the CONNECT with `backend_unavailable`, `allow` admits the client with no data.
    #[arg(long, env = "SWITCHYARD_HOOK_CONNECT_FAILURE", value_enum, default_value_t = ConnectFailure::Deny)]
    pub hook_connect_failure: ConnectFailure,
    /// TLS for the listener (`--tls-cert`, `--tls-key`) and for the `https://` placement and
    /// relay URLs (`--tls-ca`, `--tls-client-cert`, `--tls-client-key`). The gateway has no
    /// gRPC listener, so `--tls-client-ca` does not apply to it.
    #[command(flatten)]
    pub tls: switchyard_common::tls::TlsArgs,
    /// Limits of the HTTP listener (header-read timeout, pending connections).
    #[command(flatten)]
    pub http: switchyard_common::http_server::HttpServerArgs,
}

/// `--admin-ui-mode`, as the package's `mode` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdminUiMode {
    Development,
    Production,
}

/// The binary's whole command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "switchyard-gateway",
    version,
    about = "Switchyard gateway: Socket.IO placed by placement"
)]
pub struct Cli {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl GatewayArgs {
    /// Library [`Settings`] once the listener is bound (node id and public URL default to it).
    /// Reads the client TLS files, so a missing or invalid one is an error now.
    pub fn settings(
        &self,
        bound: SocketAddr,
    ) -> Result<Settings, switchyard_common::tls::TlsError> {
        let node_id = self
            .node_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                std::env::var("POD_NAME")
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
            .unwrap_or_else(|| format!("{}-{}", hostname(), bound.port()));
        let public_url = self
            .public_url
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| {
                let scheme = if self.tls.server.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{bound}")
            });
        let placement_url = Some(self.placement_url.trim().to_owned()).filter(|s| !s.is_empty());
        let namespaces = self
            .namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        let rooms = self
            .rooms
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        Ok(Settings {
            node_id,
            public_url,
            placement_url,
            token_secret: self.token_secret.clone().filter(|s| !s.is_empty()),
            allow_anonymous: self.allow_anonymous,
            namespaces,
            weight: self.weight,
            max_connections: self.max_connections,
            fd_reserve: self.fd_reserve,
            max_payload_bytes: self.max_payload_bytes,
            max_rooms_per_socket: self.max_rooms_per_socket,
            connect_rate: self.connect_rate,
            rooms,
            report_interval: Duration::from_millis(self.report_interval_ms),
            drain_rate: self.drain_rate,
            drain_deadline: Duration::from_millis(self.drain_deadline_ms),
            relay_urls: self
                .relay_urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            tls: self.tls.client.load()?,
            link_token: self.link_token.clone().filter(|t| !t.is_empty()),
            ws_read_buffer_bytes: self.ws_read_buffer_bytes,
            max_buffered_packets: self.max_buffered_packets,
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            adapter_queue: self.adapter_queue,
            interest_routing: self.interest_routing,
            admin_ui: self.admin_ui.then(|| AdminUiSettings {
                namespace: self.admin_ui_namespace.trim().to_owned(),
                username: self.admin_ui_username.clone(),
                password_hash: self.admin_ui_password_hash.clone().unwrap_or_default(),
                development: self.admin_ui_mode == AdminUiMode::Development,
            }),
            hooks: self
                .hooks_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|url| HookSettings {
                    url: url.to_owned(),
                    events: self
                        .hook_events
                        .iter()
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect(),
                    token: self.hook_token.clone().filter(|t| !t.is_empty()),
                    timeout: Duration::from_millis(self.hook_timeout_ms),
                    concurrency: self.hook_concurrency,
                    connect_failure: self.hook_connect_failure,
                }),
        })
    }
}

/// The machine's host name, for the default node id (and the admin UI's `hostname`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_follow_the_contract() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "switchyard-gateway",
            "--node-id",
            "gw-7",
            "--rooms",
            "a:*,b",
        ])?;
        let s = cli.gateway.settings("127.0.0.1:4123".parse()?)?;
        assert_eq!(s.node_id, "gw-7");
        assert_eq!(s.public_url, "http://127.0.0.1:4123");
        assert_eq!(s.placement_url.as_deref(), Some("http://127.0.0.1:7001"));
        assert_eq!(s.namespaces, ["/"]);
        assert_eq!(s.rooms, ["a:*", "b"]);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.max_payload_bytes, 1_048_576);
        assert_eq!(s.report_interval, Duration::from_millis(1000));
        assert_eq!(s.drain_deadline, Duration::from_millis(30_000));
        assert_eq!(s.ws_read_buffer_bytes, 1024);
        assert_eq!(s.max_buffered_packets, 1024);
        Ok(())
    }

    #[test]
    fn relay_urls_are_a_comma_list_and_default_to_none() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["switchyard-gateway"])?;
        assert!(
            cli.gateway
                .settings("127.0.0.1:1".parse()?)?
                .relay_urls
                .is_empty()
        );
        let cli = Cli::try_parse_from([
            "switchyard-gateway",
            "--relay-urls",
            "http://r1:7101, http://r2:7101,",
        ])?;
        assert_eq!(
            cli.gateway.settings("127.0.0.1:1".parse()?)?.relay_urls,
            ["http://r1:7101", "http://r2:7101"]
        );
        Ok(())
    }

    #[test]
    fn hooks_are_off_without_a_url_and_take_their_flags_with_one() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["switchyard-gateway", "--hooks-url", " "])?;
        assert!(
            cli.gateway
                .settings("127.0.0.1:1".parse()?)?
                .hooks
                .is_none()
        );
        let cli = Cli::try_parse_from([
            "switchyard-gateway",
            "--hooks-url",
            "http://backend:8000/",
            "--hook-events",
            "chat:*, move",
            "--hook-connect-failure",
            "allow",
        ])?;
        let hooks = cli
            .gateway
            .settings("127.0.0.1:1".parse()?)?
            .hooks
            .ok_or_else(|| anyhow::anyhow!("hooks off"))?;
        assert_eq!(hooks.url, "http://backend:8000/");
        assert_eq!(hooks.events, ["chat:*", "move"]);
        assert_eq!(hooks.timeout, Duration::from_millis(5000));
        assert_eq!(hooks.concurrency, 256);
        assert_eq!(hooks.connect_failure, ConnectFailure::Allow);
        assert!(
            Cli::try_parse_from(["switchyard-gateway", "--hook-concurrency", "0"]).is_err(),
            "at least one call in flight"
        );
        Ok(())
    }

    #[test]
    fn node_id_defaults_to_host_and_port() -> anyhow::Result<()> {
        let cli =
            Cli::try_parse_from(["switchyard-gateway", "--public-url", "http://gw.example:80"])?;
        let s = cli.gateway.settings("127.0.0.1:4555".parse()?)?;
        if std::env::var("POD_NAME").is_err() && std::env::var("SWITCHYARD_NODE_ID").is_err() {
            assert!(s.node_id.ends_with("-4555"), "{}", s.node_id);
        }
        assert_eq!(s.public_url, "http://gw.example:80");
        Ok(())
    }
}
