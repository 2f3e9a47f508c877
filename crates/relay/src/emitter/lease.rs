//! The emitter lease: which relay replica is the emitter's handler. One Redis key,
//! `{sy:<cluster>}:relay:emitter:lease`, holding the handler's random token with a TTL.
//!
//! [`Lease::acquire`] is `SET NX PX`; [`Lease::renew`] and [`Lease::release`] are scripts that
//! act only while the key still holds this replica's token. Each returns, on success, a local
//! **deadline**: the instant the command was sent plus the TTL, less a margin for clock rate
//! differences. Redis sets the expiry when it runs the command, which is after it was sent, so
//! the key outlives the deadline: as long as this replica acts only before its deadline, it
//! acts only while Redis still says the lease is its own. Two replicas' terms (acquire, then
//! renewals, until a renewal fails or the key expires) never overlap in Redis, because `SET NX`
//! succeeds only once the previous holder's key is gone. See `crate::emitter` for why this
//! makes emitted events exactly once.

use std::time::Duration;

use redis::Script;
use switchyard_redis::Pool;
use tokio::time::Instant;

use crate::bus::BusError;

/// Extends the lease if it is still ours.
///
/// KEYS[1] the lease; ARGV[1] this replica's token, ARGV[2] the TTL in ms.
/// Returns 1 renewed, 0 not ours (expired, or another replica's).
/// Invariant: only the holder moves the expiry. O(1).
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Gives the lease up if it is still ours, so a standby takes over at its next try.
///
/// KEYS[1] the lease; ARGV[1] this replica's token. Returns 1 released, 0 not ours. O(1).
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// One replica's side of the lease.
pub struct Lease {
    key: String,
    token: String,
    ttl: Duration,
    renew: Script,
    release: Script,
}

impl Lease {
    /// The lease of the cluster whose key prefix is `prefix` (`{sy:<cluster>}`), for the
    /// replica `relay_id`, expiring `ttl` after each acquire or renewal.
    pub fn new(prefix: &str, relay_id: &str, ttl: Duration) -> Self {
        Self {
            key: format!("{prefix}:relay:emitter:lease"),
            token: format!("{relay_id}:{}", uuid::Uuid::new_v4()),
            ttl,
            renew: Script::new(RENEW_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
        }
    }

    /// The TTL each acquire or renewal sets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The deadline of a command sent at `sent`: a tenth of the TTL before Redis's expiry.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.ttl / 10
    }

    /// Takes the lease if nobody holds it; `Some(deadline)` when taken.
    pub async fn acquire(&self, pool: &Pool) -> Result<Option<Instant>, BusError> {
        let sent = Instant::now();
        let mut conn = pool.get().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| self.deadline(sent)))
    }

    /// Extends the lease; `Some(new deadline)` while it is still ours, `None` once it is not.
    pub async fn renew(&self, pool: &Pool) -> Result<Option<Instant>, BusError> {
        let sent = Instant::now();
        let mut conn = pool.get().await?;
        let renewed: i64 = self
            .renew
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok((renewed == 1).then(|| self.deadline(sent)))
    }

    /// Gives the lease up if it is still ours.
    pub async fn release(&self, pool: &Pool) -> Result<(), BusError> {
        let mut conn = pool.get().await?;
        let _: i64 = self
            .release
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
