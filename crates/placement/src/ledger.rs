//! The counter ledger: which gateways exist, how loaded each is, and the pending reservations
//! handed out but not yet turned into connections.
//!
//! One trait, two implementations: [`RedisLedger`] for any number of placement replicas, and
//! [`MemoryLedger`] for a single replica with no Redis (the embedded default). Both keep the
//! same guarantees, checked by one behavioural suite (`tests/ledger_suite.rs`):
//!
//! - [`Ledger::assign`] is atomic: it drops nodes whose last report is older than the liveness
//!   window and draining nodes, picks the least `(connections + pending) / weight`, and records
//!   a reservation that counts as pending until it is consumed or expires. No two calls pick
//!   from the same view, so with equal weights the spread stays at most 1.
//! - Reports carry absolute figures, so a ledger that lost its state (Redis restarted empty)
//!   is correct again after one report from each node (after re-registration when the node
//!   is unknown: [`LedgerError::UnknownNode`]).
//! - Writes made under the [`crate::lease`] carry its [`FencingToken`]; a stale token is refused
//!   ([`LedgerError::Fenced`]), so a paused ex-holder cannot corrupt the ledger.

use std::time::Duration;

use async_trait::async_trait;

mod memory;
mod observe;
mod redis;
pub(crate) mod validate;

pub use memory::MemoryLedger;
pub use redis::RedisLedger;
pub(crate) use redis::{build_pool, unavailable};
pub use validate::{
    MAX_CAPACITY, MAX_CONNECTIONS, MAX_CONSUMED_PER_REPORT, MAX_NAMESPACES, MAX_URL_LEN, MAX_WEIGHT,
};

/// A gateway as it registers on the report stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    pub node_id: String,
    /// The URL clients connect to, reported by the gateway itself.
    pub url: String,
    /// Relative share of new connections; 0 is treated as 1.
    pub weight: u32,
    /// Connections the node accepts at most; 0 means unlimited. A full node is not picked.
    pub capacity: u64,
    /// Socket.IO namespaces the node serves; an assignment for another namespace skips it.
    /// An empty list means the default namespace `/` only.
    pub namespaces: Vec<String>,
}

/// One absolute load report. Nothing in it is a delta, so a lost report costs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub connections: u64,
    /// Reservation ids the node has seen consumed by a successful connection since its last
    /// report; they stop counting as pending (the connection now counts instead).
    pub consumed: Vec<String>,
    pub draining: bool,
    /// The node cannot take another socket now (out of file descriptors): not assignable,
    /// like a node at its capacity, until a report clears it.
    pub full: bool,
}

/// A seat on one gateway, held for a new client until it connects or the reservation expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub node_id: String,
    pub url: String,
    pub reservation_id: String,
    /// Unix milliseconds, from the ledger's clock (Redis `TIME` for the Redis ledger).
    pub expires_at_ms: u64,
}

/// What the ledger knows about one node, for the admin API and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub registration: NodeRegistration,
    pub connections: u64,
    /// Unexpired, unconsumed reservations.
    pub pending: u64,
    /// Draining by an operator ([`Ledger::set_draining`]) or by the gateway's own report. The
    /// two are kept apart inside the ledger, so a report saying "not draining" does not undo
    /// an operator's drain; `set_draining(false)` clears only the operator's.
    pub draining: bool,
    /// Milliseconds since the node's last registration or report, by the ledger's clock.
    pub last_report_age_ms: u64,
}

/// The lease generation under which a singleton duty writes. Strictly increasing across
/// holders: a write carrying an older token than the current one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// Settings shared by both implementations.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// Cluster name; every Redis key lives under the hash tag `{sy:<cluster>}`.
    pub cluster: String,
    /// How long a reservation counts as pending if it is never consumed.
    pub reservation_ttl: Duration,
    /// A node with no report for this long is not picked and is reaped (3 report intervals).
    pub liveness: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The node is not in the ledger (never registered, reaped, or Redis lost its state); the
    /// caller should register it again.
    #[error("unknown node `{0}`")]
    UnknownNode(String),
    /// A write under the lease carried a fencing token older than the current one.
    #[error("stale fencing token {0:?}: another placement replica holds the lease")]
    Fenced(FencingToken),
    /// Input the ledger refuses (empty node id, absurd figures…; limits: the `MAX_*`
    /// constants re-exported here).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The backing store cannot be reached or answered with an error.
    #[error("ledger store unavailable: {0}")]
    Unavailable(String),
}

/// The ledger contract; see the module docs for the guarantees.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Adds the node, or replaces its registration (keeping nothing of the old load: the next
    /// report brings absolute figures).
    async fn register(&self, node: &NodeRegistration) -> Result<(), LedgerError>;
    /// Records an absolute load report and refreshes the node's liveness.
    async fn report(&self, node_id: &str, load: &LoadReport) -> Result<(), LedgerError>;
    /// Removes the node and its pending reservations (stream ended). Unknown nodes are fine.
    async fn remove(&self, node_id: &str) -> Result<(), LedgerError>;
    /// Picks the least-loaded live, non-draining node serving `namespace` and reserves a seat
    /// on it; `None` when no node qualifies.
    async fn assign(&self, namespace: &str) -> Result<Option<Reservation>, LedgerError>;
    /// Marks the node draining (no new assignments) or not.
    async fn set_draining(&self, node_id: &str, draining: bool) -> Result<NodeView, LedgerError>;
    async fn set_weight(&self, node_id: &str, weight: u32) -> Result<NodeView, LedgerError>;
    async fn nodes(&self) -> Result<Vec<NodeView>, LedgerError>;
    /// Removes every node whose last report is older than the liveness window, under the lease:
    /// refused with [`LedgerError::Fenced`] when `fence` is not the current token. Returns the
    /// ids removed.
    async fn reap(&self, fence: FencingToken) -> Result<Vec<String>, LedgerError>;
}
