//! The lease: which placement replica runs the singleton duties (reaping dead nodes, later
//! rebalancing), with a fencing token so that a holder that lost the lease cannot write.
//!
//! How a holder uses it: `acquire` until it returns a token; then `renew` well before the ttl
//! runs out (a third of it is a good period); when `renew` answers `false` the lease is lost:
//! stop the duties and go back to `acquire`. Every ledger write made under the lease carries the
//! token ([`crate::ledger::Ledger::reap`]) and the ledger refuses it once a newer holder exists
//! ([`LedgerError::Fenced`]), even if the old holder was paused and never noticed the loss.
//! `release` on shutdown lets another replica take over at once instead of after the ttl.
//!
//! Two implementations: [`RedisLease`] for replicas sharing a Redis, [`LocalLease`] for the
//! single replica on the in-memory ledger.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use switchyard_redis::{Connection, Endpoint, Pool, key_prefix};

use crate::ledger::{FencingToken, LedgerError, build_pool, unavailable};

/// A fenced lease on the singleton duties.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease if it is free (or already ours, which extends it); `None` while another
    /// holder has it.
    async fn acquire(&self) -> Result<Option<FencingToken>, LedgerError>;
    /// Extends the lease if it is still held under `token`; `false` means it is lost.
    async fn renew(&self, token: FencingToken) -> Result<bool, LedgerError>;
    /// Gives the lease up if it is still held under `token`; a lost lease is not an error.
    async fn release(&self, token: FencingToken) -> Result<(), LedgerError>;
}

/// The lease in Redis: key `{sy:<cluster>}:lease` holds `"<holder>|<fence>"` with a ttl, and
/// `{sy:<cluster>}:fence` is the counter the fencing tokens come from (the one
/// `reap.lua` checks). Scripts and their invariants: `lease/*.lua`.
///
/// On a Redis Cluster both keys share the hash tag, so each script runs on the one master that
/// owns the slot.
///
/// Tokens are large numbers (the counter starts at Redis `TIME` in ms, so that tokens stay
/// increasing even across a Redis that lost its data); only their order means anything.
pub struct RedisLease {
    pool: Pool,
    lease_key: String,
    fence_key: String,
    holder_id: String,
    ttl: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("lease_key", &self.lease_key)
            .field("holder_id", &self.holder_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    /// A lease over its own connection pool. Does not connect (Redis may be down; calls fail
    /// with [`LedgerError::Unavailable`] until it is back).
    /// `holder_id` must be unique per process (e.g. host name + a UUID).
    pub fn new(
        endpoint: &Endpoint,
        cluster: &str,
        holder_id: String,
        ttl: Duration,
    ) -> Result<Self, LedgerError> {
        Ok(Self::with_pool(
            build_pool(endpoint)?,
            cluster,
            holder_id,
            ttl,
        ))
    }

    /// A lease sharing a pool, e.g. [`crate::ledger::RedisLedger::pool`].
    pub fn with_pool(pool: Pool, cluster: &str, holder_id: String, ttl: Duration) -> Self {
        let prefix = key_prefix(cluster);
        Self {
            pool,
            lease_key: format!("{prefix}:lease"),
            fence_key: format!("{prefix}:fence"),
            holder_id,
            ttl,
            acquire: Script::new(include_str!("lease/acquire.lua")),
            renew: Script::new(include_str!("lease/renew.lua")),
            release: Script::new(include_str!("lease/release.lua")),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn holder_id(&self) -> &str {
        &self.holder_id
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The value the lease key holds while `token` is ours.
    fn value(&self, token: FencingToken) -> String {
        format!("{}|{}", self.holder_id, token.0)
    }

    async fn conn(&self) -> Result<Connection, LedgerError> {
        self.pool.get().await.map_err(unavailable)
    }
}

#[async_trait]
impl Lease for RedisLease {
    #[tracing::instrument(level = "debug", skip_all, fields(holder = %self.holder_id))]
    async fn acquire(&self) -> Result<Option<FencingToken>, LedgerError> {
        let mut conn = self.conn().await?;
        let fence: Option<u64> = self
            .acquire
            .key(&self.lease_key)
            .key(&self.fence_key)
            .arg(&self.holder_id)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if let Some(fence) = fence {
            tracing::debug!(fence, "lease held");
        }
        Ok(fence.map(FencingToken))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(holder = %self.holder_id, fence = token.0))]
    async fn renew(&self, token: FencingToken) -> Result<bool, LedgerError> {
        let mut conn = self.conn().await?;
        let renewed: i64 = self
            .renew
            .key(&self.lease_key)
            .arg(self.value(token))
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(renewed == 1)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(holder = %self.holder_id, fence = token.0))]
    async fn release(&self, token: FencingToken) -> Result<(), LedgerError> {
        let mut conn = self.conn().await?;
        let _released: i64 = self
            .release
            .key(&self.lease_key)
            .arg(self.value(token))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The lease for a single replica on the in-memory ledger: always held, token 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalLease;

#[async_trait]
impl Lease for LocalLease {
    async fn acquire(&self) -> Result<Option<FencingToken>, LedgerError> {
        Ok(Some(FencingToken(1)))
    }

    async fn renew(&self, _token: FencingToken) -> Result<bool, LedgerError> {
        Ok(true)
    }

    async fn release(&self, _token: FencingToken) -> Result<(), LedgerError> {
        Ok(())
    }
}
