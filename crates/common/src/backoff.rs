//! The one reconnect policy: exponential backoff with full jitter.
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling) is what keeps the
//! clients or gateways that lost the same peer at the same instant from returning in one wave.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter. `next_delay` grows the ceiling; `reset` after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[0, min(max, base * 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling to at most 5 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_growing_capped_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        for attempt in 0..40u32 {
            let ceiling = (10u64 << attempt.min(20)).min(100);
            assert!(b.next_delay() <= Duration::from_millis(ceiling));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
