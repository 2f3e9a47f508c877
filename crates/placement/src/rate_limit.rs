//! Per-client-address token buckets for `/v1/assign` and gRPC `Assign`.
//!
//! Each address gets a bucket of `rate` tokens refilled at `rate` per second (a burst of one
//! second's worth). Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked; when the
//! table is full, buckets idle long enough to be full again (they carry no information) are
//! dropped, and if every tracked address is still active, a new address is refused until room
//! frees up: under a flood of distinct addresses the ledger is protected first.
//!
//! A std `Mutex` guards the table, not tokio's: the critical section never awaits and is a
//! handful of arithmetic operations.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most client addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per client IP address; `rate == 0` allows everything.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    max_tracked: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32) -> Self {
        Self::with_capacity(rate_per_sec, MAX_TRACKED)
    }

    fn with_capacity(rate_per_sec: u32, max_tracked: usize) -> Self {
        Self {
            rate: f64::from(rate_per_sec),
            max_tracked,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token for `ip`; `false` means the request must be refused with 429.
    pub fn check(&self, ip: IpAddr) -> bool {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return true;
        }
        // A poisoned lock only means another request panicked mid-update of plain numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_tracked {
            let full_after = Duration::from_secs_f64(1.0);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
            if buckets.len() >= self.max_tracked {
                return false;
            }
        }
        let rate = self.rate;
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Addresses currently tracked (for tests and the metrics gauge).
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_refill() {
        let rl = RateLimiter::new(5);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| rl.check_at(ip, t0)).count(), 5);
        assert!(rl.check_at(ip, t0 + Duration::from_millis(250)));
        assert!(!rl.check_at(ip, t0 + Duration::from_millis(260)));
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(rl.check_at(other, t0), "buckets are per address");
    }

    #[test]
    fn zero_means_off() {
        let rl = RateLimiter::new(0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!((0..1000).all(|_| rl.check(ip)));
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn memory_stays_bounded_and_idle_entries_are_evicted() {
        let rl = RateLimiter::with_capacity(1, 4);
        let t0 = Instant::now();
        for i in 0..4u8 {
            assert!(rl.check_at([10, 0, 0, i].into(), t0));
        }
        assert!(
            !rl.check_at([10, 0, 1, 0].into(), t0),
            "table full of active clients"
        );
        assert_eq!(rl.tracked(), 4);
        let later = t0 + Duration::from_secs(2);
        assert!(
            rl.check_at([10, 0, 1, 0].into(), later),
            "idle entries were evicted"
        );
        assert_eq!(rl.tracked(), 1);
    }
}
