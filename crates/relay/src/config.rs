//! The relay's configuration: one clap struct, every flag also read from a `SWITCHYARD_…`
//! environment variable. Defaults suit a laptop (loopback, no Redis: one replica, in-process
//! fan-out). Secrets (`--admin-token`, `--publish-token`, `--link-token`, `--redis-password`
//! and a password in `--redis-url`) are never printed: clap hides their environment values and
//! [`Config`]'s `Debug` redacts them. The Redis flags are `switchyard_redis::RedisArgs`, shared
//! with placement.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use switchyard_common::runtime::RuntimeArgs;
use switchyard_common::telemetry::TelemetryArgs;

use crate::bus::PubSubMode;
use crate::history::{HistorySettings, NsLimits};

/// One `--history-namespace` entry: limits of one namespace (unset: the global flag's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryNamespace {
    pub namespace: String,
    pub max_len: Option<u64>,
    pub ttl_ms: Option<u64>,
}

/// Parses `<namespace>=<key>:<value>[,<key>:<value>]` (keys `max_len` 1..=100000000,
/// `ttl_ms` 1000..=30 days, like the global flags).
pub fn parse_history_namespace(s: &str) -> Result<HistoryNamespace, String> {
    let s = s.trim();
    let (namespace, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected <namespace>=max_len:<n>,ttl_ms:<ms>"))?;
    let namespace = namespace.trim();
    crate::validate::check_namespace(namespace).map_err(|e| format!("`{namespace}`: {e}"))?;
    let mut out = HistoryNamespace {
        namespace: namespace.to_owned(),
        max_len: None,
        ttl_ms: None,
    };
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}`: expected <key>:<value>"))?;
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the value must be a whole number"))?;
        match key.trim() {
            "max_len" if (1..=100_000_000).contains(&value) => out.max_len = Some(value),
            "ttl_ms" if (1_000..=30 * 24 * 3_600_000).contains(&value) => out.ttl_ms = Some(value),
            "max_len" | "ttl_ms" => return Err(format!("`{part}`: value out of range")),
            other => {
                return Err(format!(
                    "`{other}`: unknown key (expected max_len or ttl_ms)"
                ));
            }
        }
    }
    if out.max_len.is_none() && out.ttl_ms.is_none() {
        return Err(format!("`{s}`: set max_len and/or ttl_ms"));
    }
    Ok(out)
}

/// Relay: forwards adapter frames between gateways and takes events from backends.
#[derive(Clone, Parser)]
#[command(name = "switchyard-relay", version, about)]
pub struct Config {
    /// HTTP listen address (`/healthz`, `/readyz`, `/metrics`); port 0 picks one.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "127.0.0.1:7100")]
    pub http_addr: SocketAddr,
    /// gRPC listen address (`Relay`, health, reflection); port 0 picks one.
    #[arg(long, env = "SWITCHYARD_GRPC_ADDR", default_value = "127.0.0.1:7101")]
    pub grpc_addr: SocketAddr,
    /// Redis shared by every relay replica (`--redis-url` and, for managed Redis, TLS and ACL
    /// flags). Without `--redis-url`: a single replica with in-process fan-out (replicas would
    /// not see each other's gateways).
    #[command(flatten)]
    pub redis: switchyard_redis::RedisArgs,
    /// Cluster name; every Redis key and channel lives under the hash tag `{sy:<cluster>}`.
    #[arg(long, env = "SWITCHYARD_CLUSTER", default_value = "switchyard")]
    pub cluster: String,
    /// Pub/sub between replicas: `auto` uses sharded pub/sub (SPUBLISH/SSUBSCRIBE) when the
    /// server is Redis 7 or newer, classic PUBLISH/SUBSCRIBE otherwise. All replicas of one
    /// cluster must resolve to the same mode.
    #[arg(long, env = "SWITCHYARD_PUBSUB", value_enum, default_value_t = PubSubMode::Auto)]
    pub pubsub: PubSubMode,
    /// Messages a link may have queued towards its gateway; when full the link is cut.
    #[arg(long, env = "SWITCHYARD_LINK_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub link_queue: u32,
    /// Largest frame payload (or Publish data) accepted, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=256 * 1024 * 1024))]
    pub max_frame_bytes: u32,
    /// Bearer token for `switchyard.admin.v1.RelayAdmin` calls. Unset: every admin call is
    /// refused.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token gateways must send when they open a `Link`. Unset: any gateway may link
    /// (fine on a private network; set it, and the gateways' --link-token, elsewhere).
    #[arg(long, env = "SWITCHYARD_LINK_TOKEN", hide_env_values = true)]
    pub link_token: Option<String>,
    /// Bearer token backends must send with `Publish`. Unset: every Publish is refused.
    #[arg(long, env = "SWITCHYARD_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// How often membership is refreshed in Redis and re-read; entries expire after 3x this.
    #[arg(long, env = "SWITCHYARD_MEMBERSHIP_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub membership_interval_ms: u64,
    /// History: events kept per namespace (Redis `XADD MAXLEN ~`, so approximately; exact in
    /// the in-memory ring buffer). A client away longer than this many events cannot resume.
    #[arg(long, env = "SWITCHYARD_HISTORY_MAX_LEN", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub history_max_len: u64,
    /// History: a namespace idle this long loses its history (and gets a new epoch).
    #[arg(long, env = "SWITCHYARD_HISTORY_TTL_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1_000..=30 * 24 * 3_600_000))]
    pub history_ttl_ms: u64,
    /// History limits of one namespace, overriding --history-max-len / --history-ttl-ms:
    /// `<namespace>=<key>:<value>[,<key>:<value>]` with keys `max_len` and `ttl_ms`, e.g.
    /// `/chat=max_len:5000,ttl_ms:60000`. Repeat the flag for several namespaces; in the
    /// environment variable separate them with `;` (`/chat=max_len:5000;/feed=ttl_ms:5000`).
    /// A key left out falls back to the global flag.
    #[arg(long = "history-namespace", env = "SWITCHYARD_HISTORY_NAMESPACE",
          value_delimiter = ';', value_parser = parse_history_namespace)]
    pub history_namespace: Vec<HistoryNamespace>,
    /// History (Redis): most events of one namespace stamped in one Redis round trip. Stamps
    /// that arrive while a namespace's previous round trip is in flight wait for it and then
    /// go together, up to this many; no delay is ever added to gather them. 1 turns batching
    /// off (one round trip per event).
    #[arg(long, env = "SWITCHYARD_HISTORY_BATCH_MAX", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub history_batch_max: u64,
    /// Turn the messages of `@socket.io/redis-emitter` (Socket.IO's own emitter, unchanged
    /// backend code) into cluster operations: the relay subscribes to the emitter's channels on
    /// this Redis (needs `--redis-url`). Off by default. Its channels are outside the cluster's
    /// hash tag: the Redis ACL rule must grant them (see docs/deploy.md).
    #[arg(long, env = "SWITCHYARD_EMITTER")]
    pub emitter: bool,
    /// The emitter's `key` option: channels are `<key>#<namespace>#…` and
    /// `<key>-request#<namespace>#`.
    #[arg(long, env = "SWITCHYARD_EMITTER_KEY", default_value = "socket.io")]
    pub emitter_key: String,
    /// Namespaces whose emitter channels the relay subscribes to, comma separated
    /// (`emitter.of("/chat")` needs `/chat` here).
    #[arg(
        long,
        env = "SWITCHYARD_EMITTER_NAMESPACES",
        default_value = "/",
        value_delimiter = ','
    )]
    pub emitter_namespaces: Vec<String>,
    #[command(flatten)]
    pub tls: switchyard_common::tls::ServerTlsArgs,
    /// Limits of the HTTP listener (header-read timeout, pending connections).
    #[command(flatten)]
    pub http: switchyard_common::http_server::HttpServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("redis", &self.redis)
            .field("cluster", &self.cluster)
            .field("pubsub", &self.pubsub)
            .field("link_queue", &self.link_queue)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("publish_token", &self.publish_token.as_ref().map(|_| "***"))
            .field("link_token", &self.link_token.as_ref().map(|_| "***"))
            .field("membership_interval_ms", &self.membership_interval_ms)
            .field("history_max_len", &self.history_max_len)
            .field("history_ttl_ms", &self.history_ttl_ms)
            .field("history_namespace", &self.history_namespace)
            .field("history_batch_max", &self.history_batch_max)
            .field("emitter", &self.emitter)
            .field("emitter_key", &self.emitter_key)
            .field("emitter_namespaces", &self.emitter_namespaces)
            .field("tls", &self.tls)
            .field("http", &self.http)
            .finish()
    }
}

/// Configuration the flags parse but the service refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--cluster must be 1..=64 characters of [A-Za-z0-9_.-], got `{0}`")]
    BadCluster(String),
    #[error(transparent)]
    Redis(#[from] switchyard_redis::EndpointError),
    #[error("--emitter needs --redis-url: the emitter publishes on Redis")]
    EmitterWithoutRedis,
    #[error("--emitter-key and --emitter-namespaces: {0}")]
    BadEmitter(String),
}

impl Config {
    /// Checks what clap cannot: call once after parsing, before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cluster_ok = !self.cluster.is_empty()
            && self.cluster.len() <= 64
            && self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !cluster_ok {
            return Err(ConfigError::BadCluster(self.cluster.clone()));
        }
        let redis = self.redis.endpoint()?;
        if self.emitter {
            if redis.is_none() {
                return Err(ConfigError::EmitterWithoutRedis);
            }
            crate::emitter::Channels::new(&self.emitter_key, &self.emitter_namespaces)
                .map_err(ConfigError::BadEmitter)?;
        }
        Ok(())
    }

    /// History settings: the global limits plus the `--history-namespace` overrides (a later
    /// entry for the same namespace wins).
    pub fn history_settings(&self) -> HistorySettings {
        let mut settings = HistorySettings::new(
            self.history_max_len,
            Duration::from_millis(self.history_ttl_ms),
        );
        settings.batch_max = usize::try_from(self.history_batch_max).unwrap_or(usize::MAX);
        for ns in &self.history_namespace {
            let limits = NsLimits {
                max_len: ns.max_len.unwrap_or(self.history_max_len),
                ttl: Duration::from_millis(ns.ttl_ms.unwrap_or(self.history_ttl_ms)),
            };
            settings.namespaces.insert(ns.namespace.clone(), limits);
        }
        settings
    }

    pub fn membership_interval(&self) -> Duration {
        Duration::from_millis(self.membership_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_namespace_parses_and_falls_back() -> anyhow::Result<()> {
        let ns = parse_history_namespace("/chat=max_len:5000,ttl_ms:60000")
            .map_err(anyhow::Error::msg)?;
        assert_eq!(
            ns,
            HistoryNamespace {
                namespace: "/chat".into(),
                max_len: Some(5000),
                ttl_ms: Some(60_000)
            }
        );
        let ns = parse_history_namespace(" /feed = ttl_ms:5000 ").map_err(anyhow::Error::msg)?;
        assert_eq!((ns.max_len, ns.ttl_ms), (None, Some(5000)));
        for bad in [
            "/chat",
            "chat=max_len:1",
            "/chat=",
            "/chat=max_len",
            "/chat=max_len:x",
            "/chat=max_len:0",
            "/chat=ttl_ms:10",
            "/chat=size:3",
        ] {
            assert!(parse_history_namespace(bad).is_err(), "{bad}");
        }

        let config = Config::try_parse_from([
            "switchyard-relay",
            "--history-max-len",
            "100",
            "--history-ttl-ms",
            "9000",
            "--history-namespace",
            "/chat=max_len:5000,ttl_ms:60000;/feed=ttl_ms:5000",
            "--history-namespace",
            "/x=max_len:7",
        ])?;
        let settings = config.history_settings();
        let limits = |ns: &str| {
            let l = settings.limits(ns);
            (l.max_len, l.ttl.as_millis() as u64)
        };
        assert_eq!(limits("/chat"), (5000, 60_000));
        assert_eq!(limits("/feed"), (100, 5000));
        assert_eq!(limits("/x"), (7, 9000));
        assert_eq!(limits("/"), (100, 9000));
        Ok(())
    }
}
