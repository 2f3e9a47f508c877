//! The placement service's configuration: one clap struct, every flag also read from a
//! `SWITCHYARD_…` environment variable. Defaults suit a laptop (loopback addresses, in-memory
//! ledger). Secrets (`--token-secret`, `--admin-token`, `--app-jwt-hs256-secret`,
//! `--redis-password` and a password inside `--redis-url`) are never printed: clap hides their
//! environment values and [`Config`]'s `Debug` redacts them. The Redis flags are
//! `switchyard_redis::RedisArgs`, shared with the relay.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use switchyard_common::runtime::RuntimeArgs;
use switchyard_common::telemetry::TelemetryArgs;

/// Placement: assigns new Socket.IO connections to the least-loaded gateway.
#[derive(Clone, Parser)]
#[command(name = "switchyard-placement", version, about)]
pub struct Config {
    /// HTTP listen address (`/v1/assign`, `/healthz`, `/readyz`, `/metrics`); port 0 picks one.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "127.0.0.1:7000")]
    pub http_addr: SocketAddr,
    /// gRPC listen address (report stream, `Assign`, admin, health, reflection); port 0 picks one.
    #[arg(long, env = "SWITCHYARD_GRPC_ADDR", default_value = "127.0.0.1:7001")]
    pub grpc_addr: SocketAddr,
    /// Redis for the shared ledger and lease (`--redis-url` and, for managed Redis, TLS and
    /// ACL flags). Without `--redis-url`: an in-memory ledger, correct only with a single
    /// placement replica.
    #[command(flatten)]
    pub redis: switchyard_redis::RedisArgs,
    /// Cluster name; every Redis key lives under the hash tag `{sy:<cluster>}`.
    #[arg(long, env = "SWITCHYARD_CLUSTER", default_value = "switchyard")]
    pub cluster: String,
    /// Secret for signing assignment tokens (HS256); gateways verify with the same secret.
    #[arg(long, env = "SWITCHYARD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: String,
    /// Bearer token admin calls must carry. Unset: every admin call is refused.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long a reservation counts as pending if its client never connects.
    #[arg(long, env = "SWITCHYARD_RESERVATION_TTL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub reservation_ttl_ms: u64,
    /// Expected gateway report interval; a node silent for 3 intervals leaves the ledger.
    #[arg(long, env = "SWITCHYARD_REPORT_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub report_interval_ms: u64,
    /// TTL of the singleton lease (reaping); renewed well before it expires.
    #[arg(long, env = "SWITCHYARD_LEASE_TTL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ttl_ms: u64,
    /// Assign requests per second allowed per client IP address; 0 turns the limit off.
    #[arg(long, env = "SWITCHYARD_RATE_LIMIT", default_value_t = 200)]
    pub rate_limit: u32,
    /// Origins allowed to call `/v1/assign` from a browser: `*` or a comma-separated list.
    #[arg(long, env = "SWITCHYARD_CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Default disconnects per second asked of a draining or shedding gateway.
    #[arg(long, env = "SWITCHYARD_DRAIN_RATE", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub drain_rate: u32,
    /// HS256 secret for verifying application tokens clients bring to `/v1/assign`
    /// (`Authorization: Bearer` or `?token=`). Unset (and no RS256 key): tokens are ignored.
    #[arg(long, env = "SWITCHYARD_APP_JWT_HS256_SECRET", hide_env_values = true)]
    pub app_jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key for verifying RS256 application tokens.
    #[arg(long, env = "SWITCHYARD_APP_JWT_RS256_PUBLIC_KEY_FILE")]
    pub app_jwt_rs256_public_key_file: Option<std::path::PathBuf>,
    /// Refuse assignments (HTTP 401) to clients without a valid application token.
    #[arg(long, env = "SWITCHYARD_REQUIRE_APP_TOKEN")]
    pub require_app_token: bool,
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

/// Configuration the flags parse but the service refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--token-secret (SWITCHYARD_TOKEN_SECRET) must not be empty")]
    EmptyTokenSecret,
    #[error("--cluster must be 1..=64 characters of [A-Za-z0-9_.-], got `{0}`")]
    BadCluster(String),
    #[error("--cors-origins: `{0}` is not a valid origin")]
    BadCorsOrigin(String),
    #[error(transparent)]
    Redis(#[from] switchyard_redis::EndpointError),
    #[error(transparent)]
    AppKey(#[from] crate::app_token::AppKeyError),
}

impl Config {
    /// Checks what clap cannot: call once after parsing, before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_secret.is_empty() {
            return Err(ConfigError::EmptyTokenSecret);
        }
        let cluster_ok = !self.cluster.is_empty()
            && self.cluster.len() <= 64
            && self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !cluster_ok {
            return Err(ConfigError::BadCluster(self.cluster.clone()));
        }
        self.redis.endpoint()?;
        self.cors()?;
        self.app_tokens()?;
        Ok(())
    }

    /// The application-token verifier the flags describe (keys loaded from disk).
    pub fn app_tokens(&self) -> Result<crate::app_token::AppTokenVerifier, ConfigError> {
        Ok(crate::app_token::AppTokenVerifier::new(
            self.app_jwt_hs256_secret.as_deref(),
            self.app_jwt_rs256_public_key_file.as_deref(),
            self.require_app_token,
        )?)
    }

    /// The parsed CORS origins: `None` means any origin (`*`).
    pub fn cors(&self) -> Result<Option<Vec<http::HeaderValue>>, ConfigError> {
        let origins: Vec<&str> = self
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() || origins.contains(&"*") {
            return Ok(None);
        }
        origins
            .into_iter()
            .map(|o| {
                http::HeaderValue::from_str(o).map_err(|_| ConfigError::BadCorsOrigin(o.into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms)
    }

    /// The liveness window: three report intervals.
    pub fn liveness(&self) -> Duration {
        self.report_interval() * 3
    }

    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_millis(self.reservation_ttl_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("redis", &self.redis)
            .field("cluster", &self.cluster)
            .field("token_secret", &"<redacted>")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("reservation_ttl_ms", &self.reservation_ttl_ms)
            .field("report_interval_ms", &self.report_interval_ms)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("rate_limit", &self.rate_limit)
            .field("cors_origins", &self.cors_origins)
            .field("drain_rate", &self.drain_rate)
            .field(
                "app_jwt_hs256_secret",
                &self.app_jwt_hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "app_jwt_rs256_public_key_file",
                &self.app_jwt_rs256_public_key_file,
            )
            .field("require_app_token", &self.require_app_token)
            .field("tls", &self.tls)
            .field("http", &self.http)
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("switchyard-placement").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_suit_a_laptop_and_secrets_are_redacted() -> anyhow::Result<()> {
        let c = parse(&[
            "--token-secret",
            "s3cret",
            "--admin-token",
            "adm1n",
            "--app-jwt-hs256-secret",
            "appsecret",
        ])?;
        c.validate()?;
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:7000");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:7001");
        assert_eq!(c.liveness(), Duration::from_secs(3));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("adm1n") && !shown.contains("appsecret"),
            "{shown}"
        );
        Ok(())
    }

    #[test]
    fn bad_values_are_refused() -> anyhow::Result<()> {
        assert!(parse(&["--token-secret", ""])?.validate().is_err());
        assert!(
            parse(&["--token-secret", "x", "--cluster", "a b"])?
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--token-secret", "x", "--redis-url", "http://x"])?
                .validate()
                .is_err()
        );
        assert!(parse(&["--token-secret", "x", "--report-interval-ms", "0"]).is_err());
        assert!(parse(&[]).is_err());
        let c = parse(&[
            "--token-secret",
            "x",
            "--cors-origins",
            "http://a.test, http://b.test",
        ])?;
        assert_eq!(c.cors()?.map(|v| v.len()), Some(2));
        Ok(())
    }

    #[test]
    fn redis_passwords_do_not_leak_and_redis_flags_are_checked() -> anyhow::Result<()> {
        let c = parse(&[
            "--token-secret",
            "x",
            "--redis-url",
            "rediss://u:in-the-url@h:6380",
            "--redis-username",
            "switchyard",
            "--redis-password",
            "on-the-flag",
        ])?;
        c.validate()?;
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("in-the-url") && !shown.contains("on-the-flag"),
            "{shown}"
        );
        let err = parse(&[
            "--token-secret",
            "x",
            "--redis-url",
            "redis://h:6379",
            "--redis-ca-file",
            "/etc/ca.pem",
        ])?
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("--redis-ca-file"), "{err}");
        Ok(())
    }
}
