//! The singleton duty: reaping nodes whose reports stopped, under the [`Lease`].
//!
//! Every tick (the shorter of one report interval and a third of the lease TTL) the reaper
//! acquires the lease when it does not hold it; when it does, it first reaps with its
//! [`FencingToken`] and then renews. Reaping before renewing is deliberate: the fencing token,
//! not the local clock, is what keeps a holder that was paused (GC, SIGSTOP, a VM migration)
//! from writing after another replica took over; its first write after waking is refused by
//! the ledger ([`LedgerError::Fenced`]), and it steps down cleanly, logging it and counting it
//! in `switchyard_placement_reap_total{outcome="fenced"}`.
//!
//! The lease is lost cleanly (never a crash) when a renewal answers "not the holder" or when
//! renewals have failed for a whole TTL (Redis unreachable: another replica may hold it by
//! now). `switchyard_placement_lease_holder` is 1 while this replica holds it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::Instrument;

use crate::{
    lease::Lease,
    ledger::{FencingToken, Ledger, LedgerError},
};

/// Whether this replica holds the lease, shared with the admin API (`ClusterStats`).
#[derive(Debug, Clone, Default)]
pub struct LeaseStatus(Arc<AtomicBool>);

impl LeaseStatus {
    pub fn is_holder(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, holder: bool) {
        self.0.store(holder, Ordering::Release);
        ::metrics::gauge!(crate::metrics::LEASE_HOLDER).set(if holder { 1.0 } else { 0.0 });
    }
}

/// The reaper's timing.
#[derive(Debug, Clone)]
pub struct ReaperSettings {
    pub report_interval: Duration,
    pub lease_ttl: Duration,
}

impl ReaperSettings {
    /// Often enough to renew well before expiry and to reap within an interval of liveness.
    pub fn tick(&self) -> Duration {
        self.report_interval
            .min(self.lease_ttl / 3)
            .max(Duration::from_millis(10))
    }
}

struct Held {
    fence: FencingToken,
    renewed_at: Instant,
}

/// Runs until `shutdown` turns true, then releases the lease if held.
pub async fn run(
    ledger: Arc<dyn Ledger>,
    lease: Arc<dyn Lease>,
    settings: ReaperSettings,
    status: LeaseStatus,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(settings.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Held> = None;
    status.set(false);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        held = match held {
            None => acquire(lease.as_ref()).await,
            Some(h) => {
                let span = tracing::info_span!("reap", fence = h.fence.0);
                work_then_renew(ledger.as_ref(), lease.as_ref(), &settings, h)
                    .instrument(span)
                    .await
            }
        };
        status.set(held.is_some());
    }
    if let Some(h) = held {
        match lease.release(h.fence).await {
            Ok(()) => tracing::info!(fence = h.fence.0, "lease released on shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "releasing the lease failed; it expires on its own")
            }
        }
    }
    status.set(false);
}

async fn acquire(lease: &dyn Lease) -> Option<Held> {
    match lease.acquire().await {
        Ok(Some(fence)) => {
            tracing::info!(fence = fence.0, "lease acquired: this replica reaps");
            Some(Held {
                fence,
                renewed_at: Instant::now(),
            })
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "acquiring the lease failed");
            None
        }
    }
}

async fn work_then_renew(
    ledger: &dyn Ledger,
    lease: &dyn Lease,
    settings: &ReaperSettings,
    mut held: Held,
) -> Option<Held> {
    let fence = held.fence;
    match ledger.reap(fence).await {
        Ok(ids) => {
            ::metrics::counter!(crate::metrics::REAP_TOTAL, "outcome" => "ok").increment(1);
            if !ids.is_empty() {
                ::metrics::counter!(crate::metrics::REAPED_NODES_TOTAL).increment(ids.len() as u64);
                tracing::info!(nodes = ?ids, "reaped nodes that stopped reporting");
            }
        }
        Err(LedgerError::Fenced(stale)) => {
            ::metrics::counter!(crate::metrics::REAP_TOTAL, "outcome" => "fenced").increment(1);
            tracing::warn!(
                fence = stale.0,
                "reap refused: another replica holds the lease (fenced); stepping down"
            );
            return None;
        }
        Err(e) => {
            ::metrics::counter!(crate::metrics::REAP_TOTAL, "outcome" => "error").increment(1);
            tracing::warn!(error = %e, "reaping failed");
        }
    }
    match lease.renew(fence).await {
        Ok(true) => {
            held.renewed_at = Instant::now();
            Some(held)
        }
        Ok(false) => {
            tracing::warn!(fence = fence.0, "lease lost: another replica holds it now");
            None
        }
        Err(e) if held.renewed_at.elapsed() >= settings.lease_ttl => {
            tracing::warn!(error = %e, "lease renewals failed for a whole TTL; stepping down");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing the lease failed; retrying");
            Some(held)
        }
    }
}
