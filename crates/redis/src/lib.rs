//! How placement and the relay reach Redis: one server or a Redis Cluster, plain or over TLS,
//! as the `default` user or as an ACL user with only the rights Switchyard needs.
//!
//! Both services take the same flags ([`RedisArgs`], flattened into their `Config`):
//! `--redis-url`, and for managed Redis `--redis-ca-file`, `--redis-username`,
//! `--redis-password` (from the environment: `SWITCHYARD_REDIS_PASSWORD`) and, for mutual TLS,
//! `--redis-client-cert-file` / `--redis-client-key-file`. URLs:
//!
//! - `redis://host:port[/db]`, `rediss://…` (TLS), `redis+unix://…`, `unix://…`: one Redis
//!   server, reached through a deadpool pool of multiplexed connections (health-checked on
//!   checkout, reconnected after an outage).
//! - `redis+cluster://[user[:password]@]host:port[,host:port…]`, or `rediss+cluster://…` over
//!   TLS: a Redis Cluster, given by one or more of its nodes (the rest, and the slot map, are
//!   discovered, and reached with the same TLS settings and credentials). One redis-rs
//!   `ClusterConnection` serves every caller: it keeps a multiplexed connection per node,
//!   routes each command by its first key (scripts by their first key), follows `MOVED`/`ASK`
//!   and reconnects to nodes by itself. Needs Redis 6 or newer (RESP3, for pub/sub pushes).
//!
//! TLS is rustls with ring (the one TLS stack of the workspace). Without `--redis-ca-file` the
//! server's certificate is checked against the platform's trust store (rustls-native-certs: on
//! Linux the system bundle; `SSL_CERT_FILE` overrides it), never against a bundle compiled into
//! the binary; with it, against that bundle only. Hostnames (or IP addresses) are always
//! verified.
//!
//! Every key and channel of one Switchyard cluster carries the hash tag `{sy:<cluster>}`, so
//! every script touches one slot and runs unchanged on a Redis Cluster, and an ACL user can be
//! confined to `~{sy:<cluster>}:*` and `&{sy:<cluster>}:*` ([`acl`] has the whole rule). The
//! code above this crate does not know which of the two it talks to, except for pub/sub
//! subscriptions ([`Pool::push_connection`]).
//!
//! What can be checked without a server is checked once, when the flags become an
//! [`Endpoint`] ([`EndpointError`]: bad scheme, unreadable or empty CA bundle, half a client
//! identity, TLS files for a plain URL). Nothing connects at construction: [`Pool::new`] never
//! fails for an unreachable server, and each [`Pool::get`] fails with [`Error`] while Redis is
//! unreachable; [`Pool::check`] is the first contact a service makes at startup, and
//! [`Error::hint`] tells a wrong password or a TLS mismatch (which retrying will not fix) from
//! an outage (which it will). No error or `Debug` output of this crate contains a password.
//!
//! This is its own crate, not a module of `switchyard-common`, because common never talks to
//! Redis and the gateway and `syctl` must not link a Redis client.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

pub mod acl;
mod args;
mod endpoint;
mod error;

pub use args::RedisArgs;
pub use endpoint::{
    Access, CLUSTER_SCHEME, Endpoint, EndpointError, SCHEMES, TLS_CLUSTER_SCHEME, is_supported_url,
};
pub use error::{Error, Hint};

use endpoint::Topology;

/// `{sy:<cluster>}`: the prefix and hash tag of every key and channel of the Switchyard cluster
/// named `cluster` (the services' `--cluster`). Keys and channels are `<prefix>:<rest>`. One hash
/// tag per cluster puts all of them in one slot, so every script runs unchanged on a Redis
/// Cluster, and [`acl::rule`] confines a user to them.
pub fn key_prefix(cluster: &str) -> String {
    format!("{{sy:{cluster}}}")
}

/// How connections are opened and how long a caller waits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections a single-server pool holds at most (unused for a cluster, where one
    /// multiplexed connection per node serves everyone).
    pub pool_size: usize,
    /// How long a checkout waits for a free pooled connection.
    pub pool_wait: Duration,
    /// Opening one connection (to the server or to one cluster node), TLS handshake and
    /// authentication included.
    pub connect_timeout: Duration,
    /// One command's round trip (for a cluster: one whole call, redirects and retries included).
    pub response_timeout: Duration,
}

/// Connections to one Redis server or to a Redis Cluster. Cheap to clone (clones share).
#[derive(Clone)]
pub struct Pool {
    inner: Inner,
    endpoint: Endpoint,
    settings: Settings,
}

#[derive(Clone)]
enum Inner {
    Server {
        pool: deadpool_redis::Pool,
        info: Box<redis::ConnectionInfo>,
    },
    Cluster(Arc<Cluster>),
}

/// The cluster client and its one shared connection, opened on first use.
struct Cluster {
    nodes: Vec<redis::ConnectionInfo>,
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Prepares the connections to `endpoint` without opening any. Fails only when redis-rs
    /// refuses the (already checked) configuration.
    pub fn new(endpoint: &Endpoint, settings: Settings) -> Result<Self, Error> {
        let inner = match &endpoint.topology {
            Topology::Cluster(nodes) => {
                let client = cluster_builder(endpoint, nodes, settings)
                    .build()
                    .map_err(|e| Error::InvalidUrl(e.to_string()))?;
                Inner::Cluster(Arc::new(Cluster {
                    nodes: nodes.clone(),
                    client,
                    conn: tokio::sync::Mutex::new(None),
                }))
            }
            Topology::Server(info) => {
                let manager = deadpool_redis::Manager::new_with_config(
                    info.as_ref().clone(),
                    connection_config(settings),
                )
                .map_err(|e| Error::InvalidUrl(e.to_string()))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(settings.pool_size)
                    .wait_timeout(Some(settings.pool_wait))
                    .create_timeout(Some(settings.connect_timeout + settings.response_timeout))
                    .recycle_timeout(Some(settings.response_timeout))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map_err(|e| Error::InvalidUrl(format!("pool: {e}")))?;
                Inner::Server {
                    pool,
                    info: info.clone(),
                }
            }
        };
        Ok(Self {
            inner,
            endpoint: endpoint.clone(),
            settings,
        })
    }

    /// Whether this talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// What this pool connects to (for logs: the password is never shown).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A connection for one call or a few: a checked-out pooled connection (back in the pool
    /// when dropped), or the shared cluster connection, opened on first use.
    pub async fn get(&self) -> Result<Connection, Error> {
        match &self.inner {
            Inner::Server { pool, .. } => Ok(Connection::Pooled(pool.get().await?)),
            Inner::Cluster(cluster) => {
                let mut conn = cluster.conn.lock().await;
                if let Some(conn) = conn.as_ref() {
                    return Ok(Connection::Cluster(conn.clone()));
                }
                let limit = self.settings.connect_timeout * 2 + self.settings.response_timeout;
                let opened = tokio::time::timeout(limit, cluster.client.get_async_connection())
                    .await
                    .map_err(|_| Error::ConnectTimeout(limit))??;
                *conn = Some(opened.clone());
                Ok(Connection::Cluster(opened))
            }
        }
    }

    /// The major version of the Redis server (of any node of a cluster), 0 if it does not say.
    ///
    /// Asked with `HELLO` (no arguments: the connection keeps its protocol), not `INFO`: `HELLO`
    /// needs no ACL permission at all, while `INFO` is in `@dangerous`, which a least-privilege
    /// user lacks (see [`acl`]). A server older than 6.2 refuses `HELLO` without arguments and
    /// counts as 0, which is right for the only use (sharded pub/sub needs Redis 7).
    pub async fn server_major_version(&self) -> Result<u32, Error> {
        let hello = redis::cmd("HELLO");
        let reply = match self.get().await? {
            Connection::Cluster(mut conn) => {
                conn.route_command(
                    hello,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
            }
            mut conn => hello.query_async::<Value>(&mut conn).await,
        };
        match reply {
            Ok(reply) => Ok(hello_version(reply)
                .as_deref()
                .and_then(|v| v.split('.').next()?.parse().ok())
                .unwrap_or(0)),
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens one connection and runs `PING`, within the connect and response timeouts: the
    /// configuration's first contact with the server. The error says what went wrong the way
    /// [`Error::hint`] classifies it (credentials, TLS trust, a TLS URL for a plain server,
    /// unreachable).
    pub async fn check(&self) -> Result<(), Error> {
        let limit = self.settings.connect_timeout * 2 + self.settings.response_timeout;
        let ping = async {
            let mut conn = self.get().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<_, Error>(())
        };
        let result = tokio::time::timeout(limit, ping)
            .await
            .map_err(|_| Error::ConnectTimeout(limit))
            .and_then(|r| r);
        match result {
            // A plain server may sit on a TLS handshake (it reads the ClientHello as an unfinished
            // inline command) until we time out, or answer it with a plain error: ask it in
            // plain text whether it is a Redis, so the error says so.
            Err(e) if self.endpoint.is_tls() && e.hint() == Hint::Unavailable => {
                match self.endpoint.first_address() {
                    Some((host, port)) if answers_plain_resp(host, port, self.settings).await => {
                        Err(Error::NotTls {
                            address: format!("{host}:{port}"),
                        })
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// [`Pool::check`] as a service's first contact: logs where Redis is and how it is reached
    /// (never the password) once it answers; fails with [`Error::Misconfigured`] when the
    /// configuration is to blame (wrong credentials, untrusted certificate, TLS against a
    /// plain port, missing ACL permission), so the service exits with a message saying what
    /// to fix; only warns when Redis is merely unreachable, because services start and wait
    /// for a Redis that is down (calls fail as unavailable until it is back).
    pub async fn check_at_startup(&self) -> Result<(), Error> {
        match self.check().await {
            Ok(()) => {
                tracing::info!(redis = %self.endpoint, "Redis answers");
                Ok(())
            }
            Err(e) if e.hint().is_configuration() => Err(Error::Misconfigured {
                endpoint: self.endpoint.to_string(),
                hint: e.hint(),
                cause: e.to_string(),
            }),
            Err(e) => {
                tracing::warn!(redis = %self.endpoint, error = %e,
                               "Redis does not answer yet; continuing, calls fail until it does");
                Ok(())
            }
        }
    }

    /// A new RESP3 connection of its own whose pushes (pub/sub messages, and a
    /// [`redis::PushKind::Disconnection`] when a socket drops) go to `pushes`: a
    /// [`Connection::Multiplexed`] to the server, or a [`Connection::Cluster`] over every node,
    /// which subscribes on the node that owns a channel's slot (`SSUBSCRIBE`) and resubscribes
    /// by itself after a reconnection.
    pub async fn push_connection(
        &self,
        pushes: UnboundedSender<PushInfo>,
    ) -> Result<Connection, Error> {
        match &self.inner {
            Inner::Server { info, .. } => {
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.as_ref().clone().set_redis_settings(resp3))?;
                let config = connection_config(self.settings).set_push_sender(pushes);
                Ok(Connection::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Inner::Cluster(cluster) => {
                let client = cluster_builder(&self.endpoint, &cluster.nodes, self.settings)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .build()?;
                let limit = self.settings.connect_timeout * 2 + self.settings.response_timeout;
                let conn = tokio::time::timeout(limit, client.get_async_connection())
                    .await
                    .map_err(|_| Error::ConnectTimeout(limit))??;
                Ok(Connection::Cluster(conn))
            }
        }
    }

    /// Opens a classic (RESP2) pub/sub connection to the single server; `None` for a cluster,
    /// which subscribes through [`Pool::push_connection`] instead.
    pub fn classic_pubsub(
        &self,
    ) -> Option<impl std::future::Future<Output = Result<redis::aio::PubSub, Error>> + use<>> {
        match &self.inner {
            Inner::Server { info, .. } => {
                let info = info.as_ref().clone();
                Some(async move {
                    let client = redis::Client::open(info)?;
                    Ok(client.get_async_pubsub().await?)
                })
            }
            Inner::Cluster(_) => None,
        }
    }
}

fn connection_config(settings: Settings) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
}

/// Retries are few and short: a call that cannot complete reports an error to its caller
/// (which has its own retry policy) instead of hanging while the cluster is down. Credentials
/// and TLS mode come from the first node (every node carries the same); our own CA and client
/// certificate, when configured, apply to every node the cluster reveals.
fn cluster_builder(
    endpoint: &Endpoint,
    nodes: &[redis::ConnectionInfo],
    settings: Settings,
) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .overall_response_timeout(Some(settings.response_timeout))
        .tcp_settings(
            nodes
                .first()
                .map(|n| n.tcp_settings().clone())
                .unwrap_or_default(),
        )
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200);
    match &endpoint.tls {
        Some(certs) => builder.certs(certs.as_ref().clone()),
        None => builder,
    }
}

/// Whether `host:port` answers a plain-text `PING` like a Redis server does (`+PONG`, or an
/// error such as `-NOAUTH`): the diagnosis of a `rediss://` URL that names a plain-TCP port.
async fn answers_plain_resp(host: &str, port: u16, settings: Settings) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        Some(matches!(first[0], b'+' | b'-'))
    };
    tokio::time::timeout(settings.connect_timeout + settings.response_timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The `version` field of a `HELLO` reply (a map in RESP3, a flat list of pairs in RESP2).
fn hello_version(reply: Value) -> Option<String> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        _ => return None,
    };
    pairs.into_iter().find_map(|(k, v)| {
        let key: String = redis::from_redis_value(k).ok()?;
        (key == "version").then(|| redis::from_redis_value(v).ok())?
    })
}

/// One connection to Redis or a Redis Cluster; use it like any redis-rs async connection
/// (`query_async`, `Script::invoke_async`, pipelines).
///
/// Cloning shares the socket (every variant is multiplexed, so a clone serves any number of
/// concurrent callers); a clone of a [`Connection::Pooled`] is a [`Connection::Multiplexed`]
/// that does not hold the pool slot.
pub enum Connection {
    /// Checked out of a single server's pool; goes back when dropped.
    Pooled(deadpool_redis::Connection),
    /// A multiplexed connection to the single server.
    Multiplexed(MultiplexedConnection),
    /// The cluster connection (one multiplexed connection per node, routed by key).
    Cluster(ClusterConnection),
}

impl Connection {
    /// Runs a keyless command (such as `SCAN`) where the keys of `key`'s hash tag live: on a
    /// cluster, on the master that owns the slot of `key` (routed by key, a keyless command
    /// would go to a random node and miss them); on a single server, on the server.
    pub async fn query_where<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> Result<T, redis::RedisError> {
        match self {
            Connection::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = conn.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            conn => cmd.query_async(conn).await,
        }
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        match self {
            Connection::Pooled(c) => Connection::Multiplexed(MultiplexedConnection::clone(c)),
            Connection::Multiplexed(c) => Connection::Multiplexed(c.clone()),
            Connection::Cluster(c) => Connection::Cluster(c.clone()),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Pooled(c) => c.req_packed_command(cmd),
            Connection::Multiplexed(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Pooled(c) => c.get_db(),
            Connection::Multiplexed(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_keys_share_one_hash_tag() {
        let prefix = key_prefix("blue");
        assert_eq!(prefix, "{sy:blue}");
        // Redis hashes only what is between the first `{` and the next `}`.
        for key in [
            format!("{prefix}:nodes"),
            format!("{prefix}:relay:ns:/chat"),
        ] {
            assert_eq!(key.split_once('}').map(|(tag, _)| tag), Some("{sy:blue"));
        }
    }

    #[test]
    fn hello_replies_give_the_version_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("7.0.15"),
            bulk("proto"),
            Value::Int(2),
        ]);
        assert_eq!(hello_version(resp2).as_deref(), Some("7.0.15"));
        let resp3 = Value::Map(vec![(bulk("version"), bulk("7.2.4"))]);
        assert_eq!(hello_version(resp3).as_deref(), Some("7.2.4"));
        assert_eq!(hello_version(Value::Nil), None);
    }
}
