//! How placement and the relay reach Redis: one server, or a Redis Cluster.
//!
//! Both services take one URL (`--redis-url`):
//!
//! - `redis://host:port[/db]`, `rediss://…`, `redis+unix://…`, `unix://…`: one Redis server,
//!   reached through a deadpool pool of multiplexed connections (health-checked on checkout,
//!   reconnected after an outage).
//! - `redis+cluster://[user[:password]@]host:port[,host:port…]`: a Redis Cluster, given by one
//!   or more of its nodes (the rest, and the slot map, are discovered). One redis-rs
//!   `ClusterConnection` serves every caller: it keeps a multiplexed connection per node,
//!   routes each command by its first key (scripts by their first key), follows `MOVED`/`ASK`
//!   and reconnects to nodes by itself. Needs Redis 6 or newer (RESP3, for pub/sub pushes).
//!
//! Every key of one Switchyard cluster carries the hash tag `{sy:<cluster>}`, so every script
//! touches one slot and runs unchanged on a Redis Cluster; the code above this crate does not
//! know which of the two it talks to, except for pub/sub subscriptions ([`Pool::push_connection`]).
//!
//! Nothing here connects at construction: [`Pool::new`] fails only on a malformed URL, and
//! each [`Pool::get`] fails with [`Error`] while Redis is unreachable. This is its own crate,
//! not a module of `switchyard-common`, because common never talks to Redis and the gateway
//! and `syctl` must not link a Redis client.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisFuture, Value,
};
use tokio::sync::mpsc::UnboundedSender;

/// The URL scheme that names a Redis Cluster (see the crate docs).
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The URL schemes `--redis-url` accepts.
pub const SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "redis+unix://",
    "unix://",
    CLUSTER_SCHEME,
];

/// Whether `url` starts with one of the accepted [`SCHEMES`] (for config validation).
pub fn is_supported_url(url: &str) -> bool {
    SCHEMES.iter().any(|s| url.starts_with(s))
}

/// How connections are opened and how long a caller waits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections a single-server pool holds at most (unused for a cluster, where one
    /// multiplexed connection per node serves everyone).
    pub pool_size: usize,
    /// How long a checkout waits for a free pooled connection.
    pub pool_wait: Duration,
    /// Opening one TCP connection (to the server or to one cluster node).
    pub connect_timeout: Duration,
    /// One command's round trip (for a cluster: one whole call, redirects and retries included).
    pub response_timeout: Duration,
}

/// Redis unreachable, answering an error, or a URL that names no Redis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis cluster: no connection within {0:?}")]
    ConnectTimeout(Duration),
}

/// Connections to one Redis server or to a Redis Cluster. Cheap to clone (clones share).
#[derive(Clone)]
pub struct Pool {
    inner: Inner,
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
            .field("cluster", &self.is_cluster())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `TCP_NODELAY` on: every script call is one small round trip, and Nagle plus delayed ACKs
/// would add tens of milliseconds to each.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The nodes named by a `redis+cluster://` URL, each as `redis://[userinfo@]host:port`.
fn cluster_nodes(url: &str) -> Result<Vec<redis::ConnectionInfo>, Error> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| Error::InvalidUrl(format!("not a {CLUSTER_SCHEME} url")))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, rest),
    };
    if hosts.contains(['/', '?', '#']) {
        return Err(Error::InvalidUrl(format!(
            "{CLUSTER_SCHEME} takes only host:port[,host:port…] (no database, path or options)"
        )));
    }
    let nodes = hosts
        .split(',')
        .map(|host| {
            if host
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
            {
                return Err(Error::InvalidUrl(format!(
                    "cluster node `{host}` is not host:port"
                )));
            }
            let node = match userinfo {
                Some(user) => format!("redis://{user}@{host}"),
                None => format!("redis://{host}"),
            };
            node.into_connection_info()
                .map(|info| info.set_tcp_settings(tcp_settings()))
                .map_err(|e| Error::InvalidUrl(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(nodes)
}

impl Pool {
    /// Parses `url` (see the crate docs) and prepares the connections without opening any.
    /// Fails only on a malformed URL ([`Error::InvalidUrl`]).
    pub fn new(url: &str, settings: Settings) -> Result<Self, Error> {
        let inner = if url.starts_with(CLUSTER_SCHEME) {
            let nodes = cluster_nodes(url)?;
            let client = cluster_builder(&nodes, settings)
                .build()
                .map_err(|e| Error::InvalidUrl(e.to_string()))?;
            Inner::Cluster(Arc::new(Cluster {
                nodes,
                client,
                conn: tokio::sync::Mutex::new(None),
            }))
        } else {
            let info = url
                .into_connection_info()
                .map_err(|e| Error::InvalidUrl(e.to_string()))?
                .set_tcp_settings(tcp_settings());
            let manager =
                deadpool_redis::Manager::new_with_config(info.clone(), connection_config(settings))
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
                info: Box::new(info),
            }
        };
        Ok(Self { inner, settings })
    }

    /// Whether this talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
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

    /// The major version of the Redis server (of any node of a cluster), 0 if it says none.
    pub async fn server_major_version(&self) -> Result<u32, Error> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let text: String = match self.get().await? {
            Connection::Cluster(mut conn) => {
                let reply = conn
                    .route_command(info, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?;
                redis::from_redis_value(reply).map_err(redis::RedisError::from)?
            }
            mut conn => info.query_async(&mut conn).await?,
        };
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.trim().split('.').next())
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0))
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
                let client = cluster_builder(&cluster.nodes, self.settings)
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
/// (which has its own retry policy) instead of hanging while the cluster is down.
fn cluster_builder(nodes: &[redis::ConnectionInfo], settings: Settings) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .overall_response_timeout(Some(settings.response_timeout))
        .tcp_settings(tcp_settings())
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
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
    fn cluster_urls_name_their_nodes() -> Result<(), Error> {
        let nodes = cluster_nodes("redis+cluster://u:pw@10.0.0.1:7000,h2:7001/")?;
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:7000", "h2:7001"]);
        assert!(
            nodes
                .iter()
                .all(|n| n.redis_settings().password() == Some("pw"))
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://h1",
            "redis+cluster://h1:1,",
            "redis+cluster://h1:1/0",
            "redis://h1:1",
        ] {
            assert!(cluster_nodes(bad).is_err(), "{bad} must be refused");
        }
        Ok(())
    }

    #[test]
    fn supported_schemes() {
        assert!(is_supported_url("redis+cluster://h:1"));
        assert!(is_supported_url("redis://h:1"));
        assert!(!is_supported_url("http://h:1"));
    }
}
