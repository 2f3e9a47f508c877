//! The Switchyard services as processes, with settings for fast tests.
//!
//! [`Placement::start`] and [`Gateway::start`] bind port 0 and read the real addresses from the
//! readiness line, so any number of clusters can run side by side. Both share
//! [`TEST_TOKEN_SECRET`]; placement accepts [`TEST_ADMIN_TOKEN`] on its admin API.
//!
//! Defaults can be overridden: a flag that appears in `extra_args` (as `--flag v` or
//! `--flag=v`) replaces the default for that flag, since clap refuses a flag given twice.

use std::ops::Deref;

use crate::process::Service;
use crate::redis::RedisAccess;

/// The HS256 secret every test cluster signs and verifies assignment tokens with.
pub const TEST_TOKEN_SECRET: &str = "switchyard-test-token-secret-0123456789abcdef";

/// The bearer token test placements accept on the admin gRPC API.
pub const TEST_ADMIN_TOKEN: &str = "switchyard-test-admin-token";

/// How a test placement is started.
#[derive(Debug, Clone, Default)]
pub struct PlacementOpts {
    /// `--redis-url`; `None` runs the in-memory ledger.
    pub redis_url: Option<String>,
    /// Further flags, passed last; a flag here replaces the default for it.
    pub extra_args: Vec<String>,
}

/// A running `switchyard-placement` process.
///
/// Defaults: `--http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --token-secret`
/// [`TEST_TOKEN_SECRET`] `--admin-token` [`TEST_ADMIN_TOKEN`] `--report-interval-ms 200
/// --rate-limit 0`. Derefs to its [`Service`] for `pid()`, `terminate()`, `pause()`, ...
#[derive(Debug)]
pub struct Placement(HttpGrpcService);

/// A service process with an HTTP and a gRPC port (placement, relay), both bound on port 0
/// and read back from its readiness line. Derefs to its [`Service`].
#[derive(Debug)]
pub struct HttpGrpcService {
    service: Service,
    http_url: String,
    grpc_url: String,
}

impl HttpGrpcService {
    /// Spawns `bin` with `defaults` (plus the Redis flags when given) overridden by
    /// `extra_args`, with the Redis password (if any) in the environment, and waits for
    /// `SWITCHYARD_READY http=... grpc=...`.
    fn spawn(
        bin: &str,
        defaults: Vec<(&str, String)>,
        redis: Option<RedisAccess>,
        extra_args: &[String],
    ) -> anyhow::Result<HttpGrpcService> {
        let redis_args = redis.as_ref().map(RedisAccess::args).unwrap_or_default();
        let mut defaults: Vec<(&str, String)> = defaults;
        defaults.extend([
            ("--http-addr", "127.0.0.1:0".to_owned()),
            ("--grpc-addr", "127.0.0.1:0".to_owned()),
        ]);
        for pair in redis_args.chunks(2) {
            if let [flag, value] = pair {
                defaults.push((flag.as_str(), value.clone()));
            }
        }
        let env = redis.as_ref().map(RedisAccess::env).unwrap_or_default();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args = with_defaults(&defaults, extra_args);
        let service = Service::spawn(bin, &args, &env)?;
        let scheme = scheme(&args);
        let http_url = format!("{scheme}://{}", service.ready_value("http")?);
        let grpc_url = format!("{scheme}://{}", service.ready_value("grpc")?);
        Ok(HttpGrpcService {
            service,
            http_url,
            grpc_url,
        })
    }

    /// `http://127.0.0.1:NNNN` (`https://` with `--tls-cert`): the HTTP port (`/healthz`,
    /// `/readyz`, `/metrics`, and placement's `/v1/assign`).
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// `http://127.0.0.1:MMMM` (`https://` with `--tls-cert`): the gRPC port.
    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// The process handle.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

impl Deref for HttpGrpcService {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl Placement {
    /// Spawns placement and waits for `SWITCHYARD_READY http=... grpc=...`.
    pub fn start(opts: PlacementOpts) -> anyhow::Result<Placement> {
        let redis = opts.redis_url.clone().map(|url| RedisAccess {
            url,
            ..RedisAccess::default()
        });
        Self::spawn(opts, redis)
    }

    /// [`Placement::start`] on the Redis `redis` describes (e.g. a TLS server with an ACL
    /// user, [`crate::redis::RedisServer::access`]): its flags, and its password as
    /// `SWITCHYARD_REDIS_PASSWORD`, the way a Secret reaches a pod. Replaces `opts.redis_url`.
    pub fn start_with_redis(opts: PlacementOpts, redis: &RedisAccess) -> anyhow::Result<Placement> {
        Self::spawn(opts, Some(redis.clone()))
    }

    fn spawn(opts: PlacementOpts, redis: Option<RedisAccess>) -> anyhow::Result<Placement> {
        let defaults = vec![
            ("--token-secret", TEST_TOKEN_SECRET.to_owned()),
            ("--admin-token", TEST_ADMIN_TOKEN.to_owned()),
            ("--report-interval-ms", "200".to_owned()),
            ("--rate-limit", "0".to_owned()),
        ];
        HttpGrpcService::spawn("switchyard-placement", defaults, redis, &opts.extra_args)
            .map(Placement)
    }
}

impl Deref for Placement {
    type Target = HttpGrpcService;
    fn deref(&self) -> &HttpGrpcService {
        &self.0
    }
}

/// How a test gateway is started.
#[derive(Debug, Clone, Default)]
pub struct GatewayOpts {
    /// `--placement-url`: placement's gRPC URL ([`Placement::grpc_url`]).
    pub placement_grpc: String,
    /// `--node-id`; empty leaves it to the gateway's default.
    pub node_id: String,
    /// Further flags, passed last; a flag here replaces the default for it.
    pub extra_args: Vec<String>,
    /// `--relay-urls` (the relays' gRPC URLs); empty runs the gateway without a relay.
    pub relay_urls: Vec<String>,
}

impl GatewayOpts {
    /// Options for a gateway reporting to `placement` as `node_id`.
    pub fn new(placement: &Placement, node_id: impl Into<String>) -> GatewayOpts {
        GatewayOpts {
            placement_grpc: placement.grpc_url().to_owned(),
            node_id: node_id.into(),
            extra_args: Vec::new(),
            relay_urls: Vec::new(),
        }
    }
}

/// The bearer token test relays accept on `Publish`.
pub const TEST_PUBLISH_TOKEN: &str = "switchyard-test-publish-token";

/// How a test relay is started.
#[derive(Debug, Clone, Default)]
pub struct RelayOpts {
    /// `--redis-url`; `None` runs the relay alone (no replicas).
    pub redis_url: Option<String>,
    /// Further flags, passed last; a flag here replaces the default for it.
    pub extra_args: Vec<String>,
}

/// A running `switchyard-relay` process.
///
/// Defaults: `--http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --publish-token`
/// [`TEST_PUBLISH_TOKEN`] `--admin-token` [`TEST_ADMIN_TOKEN`]. Derefs to its [`Service`].
#[derive(Debug)]
pub struct Relay(HttpGrpcService);

impl Relay {
    /// Spawns the relay and waits for `SWITCHYARD_READY http=... grpc=...`.
    pub fn start(opts: RelayOpts) -> anyhow::Result<Relay> {
        let redis = opts.redis_url.clone().map(|url| RedisAccess {
            url,
            ..RedisAccess::default()
        });
        Self::spawn(opts, redis)
    }

    /// [`Relay::start`] on the Redis `redis` describes (see [`Placement::start_with_redis`]).
    /// Replaces `opts.redis_url`.
    pub fn start_with_redis(opts: RelayOpts, redis: &RedisAccess) -> anyhow::Result<Relay> {
        Self::spawn(opts, Some(redis.clone()))
    }

    fn spawn(opts: RelayOpts, redis: Option<RedisAccess>) -> anyhow::Result<Relay> {
        let defaults = vec![
            ("--publish-token", TEST_PUBLISH_TOKEN.to_owned()),
            ("--admin-token", TEST_ADMIN_TOKEN.to_owned()),
        ];
        HttpGrpcService::spawn("switchyard-relay", defaults, redis, &opts.extra_args).map(Relay)
    }
}

impl Deref for Relay {
    type Target = HttpGrpcService;
    fn deref(&self) -> &HttpGrpcService {
        &self.0
    }
}

/// A running `switchyard-gateway` process.
///
/// Defaults: `--listen 127.0.0.1:0 --placement-url <placement_grpc> --node-id <node_id>
/// --token-secret` [`TEST_TOKEN_SECRET`] `--report-interval-ms 200`. Derefs to its [`Service`].
#[derive(Debug)]
pub struct Gateway {
    service: Service,
    url: String,
    node_id: String,
}

impl Gateway {
    /// Spawns a gateway and waits for `SWITCHYARD_READY http=... node=...`.
    pub fn start(opts: GatewayOpts) -> anyhow::Result<Gateway> {
        let mut defaults = vec![
            ("--listen", "127.0.0.1:0".to_owned()),
            ("--placement-url", opts.placement_grpc.clone()),
            ("--token-secret", TEST_TOKEN_SECRET.to_owned()),
            ("--report-interval-ms", "200".to_owned()),
        ];
        if !opts.node_id.is_empty() {
            defaults.push(("--node-id", opts.node_id.clone()));
        }
        if !opts.relay_urls.is_empty() {
            defaults.push(("--relay-urls", opts.relay_urls.join(",")));
        }
        let args = with_defaults(&defaults, &opts.extra_args);
        let service = Service::spawn("switchyard-gateway", &args, &[])?;
        let url = format!("{}://{}", scheme(&args), service.ready_value("http")?);
        let node_id = service.ready_value("node")?.to_owned();
        Ok(Gateway {
            service,
            url,
            node_id,
        })
    }

    /// `http://127.0.0.1:NNNN` (`https://` with `--tls-cert`): where Socket.IO clients connect
    /// (`/socket.io`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node id it registered with, as printed on its readiness line.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The process handle.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

impl Deref for Gateway {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

/// `https` when the service serves TLS (`--tls-cert` among its flags), else `http`.
fn scheme(args: &[String]) -> &'static str {
    if args
        .iter()
        .any(|a| a == "--tls-cert" || a.starts_with("--tls-cert="))
    {
        "https"
    } else {
        "http"
    }
}

/// `defaults` as `--flag value` pairs, minus the flags `extra` mentions, followed by `extra`.
fn with_defaults(defaults: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let overridden = |flag: &str| {
        extra
            .iter()
            .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
    };
    let mut args = Vec::new();
    for (flag, value) in defaults {
        if !overridden(flag) {
            args.push((*flag).to_owned());
            args.push(value.clone());
        }
    }
    args.extend(extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_args_replace_defaults() {
        let defaults = [
            ("--listen", "127.0.0.1:0".to_owned()),
            ("--report-interval-ms", "200".to_owned()),
        ];
        let extra = vec![
            "--report-interval-ms=50".to_owned(),
            "--allow-anonymous".to_owned(),
        ];
        assert_eq!(
            with_defaults(&defaults, &extra),
            [
                "--listen",
                "127.0.0.1:0",
                "--report-interval-ms=50",
                "--allow-anonymous"
            ]
        );
        let extra = vec!["--listen".to_owned(), "127.0.0.1:5".to_owned()];
        assert_eq!(
            with_defaults(&defaults, &extra),
            ["--report-interval-ms", "200", "--listen", "127.0.0.1:5"]
        );
    }
}
