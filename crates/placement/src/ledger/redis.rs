//! The Redis ledger: shared by any number of placement replicas.
//!
//! Every operation is one Lua script (the `.lua` files beside this one; each starts with a
//! header giving its keys, arguments, the invariant it keeps and its complexity). A script runs
//! atomically, so it is the critical section: there is no lock on the assignment path. All keys
//! live under the hash tag `{sy:<cluster>}` (layout in `common.lua`), so the same scripts run
//! on Redis Cluster. The clock is Redis `TIME`, so replicas with skewed clocks agree.
//!
//! Scripts are sent with `EVALSHA` and loaded on `NOSCRIPT` (a Redis that restarted empty
//! forgets them); see [`redis::Script`].
//!
//! Redis being down is not fatal: [`RedisLedger::connect`] only builds a pool, and each call
//! fails with [`LedgerError::Unavailable`] until Redis is back, after which the next reports
//! rebuild the ledger (see [`LedgerError::UnknownNode`]).
//!
//! The [`Endpoint`] names one server or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`,
//! `rediss+cluster://…` over TLS; see `switchyard_redis`): every script's keys share the
//! cluster's hash tag, so each call is routed by its first key to the one master that owns
//! the slot. Every command the scripts run is in `switchyard_redis::acl::PLACEMENT_COMMANDS`,
//! which a least-privilege ACL user is given; a script calling anything else fails with
//! `NOPERM` in the managed-Redis tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};
use switchyard_redis::{Connection, Endpoint, Pool, key_prefix};

use super::observe::observe;
use super::{
    FencingToken, Ledger, LedgerError, LedgerSettings, LoadReport, NodeRegistration, NodeView,
    Reservation, validate,
};

const BACKEND: &str = "redis";

/// Connections in the pool. The ledger itself keeps only [`SHARED_CONNECTIONS`] in use (each
/// multiplexed, so they serve any number of callers); the rest cover a lease sharing the pool
/// and the replacement of broken connections.
const POOL_SIZE: usize = 8;
/// Connections the ledger keeps in use at once (see [`SharedConnections`]).
const SHARED_CONNECTIONS: usize = 4;
/// How long a call waits for a pooled connection before it reports `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(3);
/// Opening a connection: Redis on another host answers well within this, a dead one is
/// reported quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One script's round trip. Every script is O(log n) and runs in microseconds; this only
/// catches a Redis that hangs (paused, swapping) and is generous so that a loaded machine is
/// not mistaken for an outage.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds the connection pool (a single server's or a cluster's). Never connects: connections
/// are opened on first use, so this succeeds while Redis is down.
pub(crate) fn build_pool(endpoint: &Endpoint) -> Result<Pool, LedgerError> {
    let settings = switchyard_redis::Settings {
        pool_size: POOL_SIZE,
        pool_wait: POOL_WAIT,
        connect_timeout: CONNECT_TIMEOUT,
        response_timeout: RESPONSE_TIMEOUT,
    };
    Pool::new(endpoint, settings).map_err(|e| LedgerError::Invalid(e.to_string()))
}

/// Maps any Redis or pool failure to `Unavailable`, keeping the cause for the log.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

/// How a script call failed: no connection at all, or an error from Redis (kept whole so that
/// the caller can recognise a script's own error reply, e.g. `FENCED`).
enum CallError {
    Pool(LedgerError),
    Redis(RedisError),
}

impl From<CallError> for LedgerError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Pool(e) => e,
            CallError::Redis(e) => unavailable(e),
        }
    }
}

/// Multiplexed connections taken from the pool and shared by all calls.
///
/// A redis-rs multiplexed connection pipelines concurrent requests on one socket, so a few of
/// them serve any number of concurrent callers. Checking a connection out of deadpool for every
/// call would cost a health-check round trip (`PING`) each time, doubling the round trips of
/// an assignment; instead each slot keeps a clone of a pooled connection and goes back to the
/// pool (which health-checks and reconnects) only after a connection-level error. So the pool
/// still owns connecting, health checks and reconnection after an outage. On a Redis Cluster
/// every slot holds a clone of the one cluster connection, which multiplexes per node and
/// reconnects by itself.
struct SharedConnections {
    slots: Box<[Mutex<Option<Connection>>]>,
    next: AtomicUsize,
}

impl SharedConnections {
    fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn slot(&self, i: usize) -> MutexGuard<'_, Option<Connection>> {
        // The guarded section is a clone or an assignment; nothing can leave it half done.
        self.slots[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next slot, round-robin.
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// The slot's connection, or a checked one from the pool when the slot is empty. The flag
    /// says whether it came from the slot (and so may have died since its last use).
    async fn get(&self, i: usize, pool: &Pool) -> Result<(Connection, bool), CallError> {
        if let Some(conn) = self.slot(i).clone() {
            return Ok((conn, true));
        }
        let pooled = pool
            .get()
            .await
            .map_err(|e| CallError::Pool(unavailable(e)))?;
        // A clone shares the socket without holding the pool slot (see `Connection`).
        let conn = pooled.clone();
        *self.slot(i) = Some(conn.clone());
        Ok((conn, false))
    }

    /// Forgets the slot's connection after an error that may mean it is dead (the next call
    /// on that slot takes a checked one from the pool) and says whether it did. Errors replied
    /// by Redis or a script leave it alone.
    fn discard_if_broken(&self, i: usize, e: &RedisError) -> bool {
        let broken = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error();
        if broken {
            *self.slot(i) = None;
        }
        broken
    }
}

/// The ledger's scripts, each `common.lua` + its own body, hashed once.
struct Scripts {
    assign: Script,
    report: Script,
    register: Script,
    remove: Script,
    update: Script,
    nodes: Script,
    reap: Script,
}

macro_rules! ledger_script {
    ($file:literal) => {
        Script::new(concat!(include_str!("common.lua"), include_str!($file)))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            assign: ledger_script!("assign.lua"),
            report: ledger_script!("report.lua"),
            register: ledger_script!("register.lua"),
            remove: ledger_script!("remove.lua"),
            update: ledger_script!("update.lua"),
            nodes: ledger_script!("nodes.lua"),
            reap: ledger_script!("reap.lua"),
        }
    }
}

/// The shared ledger in Redis, for any number of placement replicas.
pub struct RedisLedger {
    pool: Pool,
    connections: SharedConnections,
    settings: LedgerSettings,
    prefix: String,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One node as `common.lua`'s `view` returns it.
type ViewRow = (
    String, // id
    String, // url
    u32,    // weight
    u64,    // capacity
    String, // namespaces joined by "\n"
    u64,    // connections
    u64,    // pending
    u8,     // draining_admin
    u8,     // draining_report
    u64,    // last report age ms
);

fn view_from_row(row: ViewRow) -> NodeView {
    let (id, url, weight, capacity, namespaces, connections, pending, d_admin, d_report, age) = row;
    NodeView {
        registration: NodeRegistration {
            node_id: id,
            url,
            weight,
            capacity,
            namespaces: namespaces.split('\n').map(str::to_owned).collect(),
        },
        connections,
        pending,
        draining: d_admin != 0 || d_report != 0,
        last_report_age_ms: age,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisLedger {
    /// Builds the connection pool. Does not fail when Redis is down (calls do, with
    /// [`LedgerError::Unavailable`], until it is back); the endpoint was checked when it was
    /// built (`switchyard_redis::RedisArgs::endpoint`).
    pub async fn connect(
        endpoint: &Endpoint,
        settings: LedgerSettings,
    ) -> Result<Self, LedgerError> {
        Ok(Self::with_pool(build_pool(endpoint)?, settings))
    }

    /// A ledger over an existing pool (e.g. one shared with [`crate::lease::RedisLease`]).
    pub fn with_pool(pool: Pool, settings: LedgerSettings) -> Self {
        Self {
            pool,
            connections: SharedConnections::new(SHARED_CONNECTIONS),
            prefix: key_prefix(&settings.cluster),
            settings,
            scripts: Scripts::new(),
        }
    }

    /// The pool, to share with a [`crate::lease::RedisLease`].
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn settings(&self) -> &LedgerSettings {
        &self.settings
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    fn liveness_ms(&self) -> u64 {
        millis(self.settings.liveness)
    }

    /// Runs one script on a shared connection (see [`SharedConnections`]).
    ///
    /// When a kept connection turns out to be dead (Redis restarted since its last use), the
    /// call is sent once more on a fresh, health-checked one, so that recovery after an outage
    /// does not cost every slot one failed call. A timeout is not retried: the script may still
    /// run. A retried call whose first attempt did reach Redis can at worst leave one extra
    /// reservation, which expires.
    async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, CallError> {
        let slot = self.connections.pick();
        let (mut conn, kept) = self.connections.get(slot, &self.pool).await?;
        match invocation.invoke_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let broken = self.connections.discard_if_broken(slot, &e);
                if !(kept && broken && !e.is_timeout()) {
                    return Err(CallError::Redis(e));
                }
                let (mut conn, _) = self.connections.get(slot, &self.pool).await?;
                invocation.invoke_async(&mut conn).await.map_err(|e| {
                    self.connections.discard_if_broken(slot, &e);
                    CallError::Redis(e)
                })
            }
        }
    }

    async fn update(&self, id: &str, field: &str, value: u32) -> Result<NodeView, LedgerError> {
        let row: Option<ViewRow> = self
            .run(
                self.scripts
                    .update
                    .key(self.node_key(id))
                    .arg(&self.prefix)
                    .arg(id)
                    .arg(field)
                    .arg(value)
                    .arg(self.liveness_ms()),
            )
            .await?;
        row.map(view_from_row)
            .ok_or_else(|| LedgerError::UnknownNode(id.to_owned()))
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    #[tracing::instrument(level = "debug", skip_all, fields(node_id = %node.node_id))]
    async fn register(&self, node: &NodeRegistration) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = async {
            let node = validate::registration(node)?;
            self.run::<i64>(
                self.scripts
                    .register
                    .key(self.node_key(&node.node_id))
                    .key(self.key("nodes"))
                    .arg(&self.prefix)
                    .arg(&node.node_id)
                    .arg(&node.url)
                    .arg(node.weight)
                    .arg(node.capacity)
                    .arg(node.namespaces.join("\n"))
                    .arg(self.liveness_ms()),
            )
            .await?;
            Ok(())
        }
        .await;
        observe(BACKEND, "register", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, connections = load.connections))]
    async fn report(&self, node_id: &str, load: &LoadReport) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = async {
            validate::report(node_id, load)?;
            let known: i64 = self
                .run(
                    self.scripts
                        .report
                        .key(self.node_key(node_id))
                        .key(self.key("nodes"))
                        .key(self.key("resv"))
                        .arg(&self.prefix)
                        .arg(node_id)
                        .arg(load.connections)
                        .arg(u8::from(load.draining))
                        .arg(self.liveness_ms())
                        .arg(u8::from(load.full))
                        .arg(&load.consumed),
                )
                .await?;
            if known == 0 {
                return Err(LedgerError::UnknownNode(node_id.to_owned()));
            }
            Ok(())
        }
        .await;
        observe(BACKEND, "report", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id))]
    async fn remove(&self, node_id: &str) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = async {
            validate::node_id(node_id)?;
            self.run::<i64>(
                self.scripts
                    .remove
                    .key(self.node_key(node_id))
                    .key(self.key("nodes"))
                    .arg(&self.prefix)
                    .arg(node_id),
            )
            .await?;
            Ok(())
        }
        .await;
        observe(BACKEND, "remove", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(namespace))]
    async fn assign(&self, namespace: &str) -> Result<Option<Reservation>, LedgerError> {
        let started = Instant::now();
        let result = async {
            validate::namespace(namespace)?;
            let rid = uuid::Uuid::new_v4().to_string();
            let picked: Option<(String, String, String, u64)> = self
                .run(
                    self.scripts
                        .assign
                        .key(self.key(&format!("ns:{namespace}")))
                        .key(self.key("resv"))
                        .arg(&self.prefix)
                        .arg(&rid)
                        .arg(millis(self.settings.reservation_ttl))
                        .arg(self.liveness_ms()),
                )
                .await?;
            Ok(picked.map(
                |(node_id, url, reservation_id, expires_at_ms)| Reservation {
                    node_id,
                    url,
                    reservation_id,
                    expires_at_ms,
                },
            ))
        }
        .await;
        observe(BACKEND, "assign", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, draining))]
    async fn set_draining(&self, node_id: &str, draining: bool) -> Result<NodeView, LedgerError> {
        let started = Instant::now();
        let result = async {
            validate::node_id(node_id)?;
            self.update(node_id, "draining_admin", u32::from(draining))
                .await
        }
        .await;
        observe(BACKEND, "set_draining", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, weight))]
    async fn set_weight(&self, node_id: &str, weight: u32) -> Result<NodeView, LedgerError> {
        let started = Instant::now();
        let result = async {
            validate::node_id(node_id)?;
            let weight = validate::weight(weight)?;
            self.update(node_id, "weight", weight).await
        }
        .await;
        observe(BACKEND, "set_weight", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn nodes(&self) -> Result<Vec<NodeView>, LedgerError> {
        let started = Instant::now();
        let result = async {
            let rows: Vec<ViewRow> = self
                .run(
                    self.scripts
                        .nodes
                        .key(self.key("nodes"))
                        .arg(&self.prefix)
                        .arg(self.liveness_ms()),
                )
                .await?;
            let mut views: Vec<NodeView> = rows.into_iter().map(view_from_row).collect();
            views.sort_by(|a, b| a.registration.node_id.cmp(&b.registration.node_id));
            Ok(views)
        }
        .await;
        observe(BACKEND, "nodes", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(fence = fence.0))]
    async fn reap(&self, fence: FencingToken) -> Result<Vec<String>, LedgerError> {
        let started = Instant::now();
        let result = async {
            let reaped: Vec<String> = self
                .run(
                    self.scripts
                        .reap
                        .key(self.key("fence"))
                        .key(self.key("nodes"))
                        .arg(&self.prefix)
                        .arg(fence.0)
                        .arg(self.liveness_ms()),
                )
                .await
                .map_err(|e| match e {
                    CallError::Redis(e) if e.code() == Some("FENCED") => LedgerError::Fenced(fence),
                    e => e.into(),
                })?;
            Ok(reaped)
        }
        .await;
        observe(BACKEND, "reap", started, &result);
        result
    }
}
