//! The wall clock, read one way everywhere: milliseconds since the Unix epoch.
//!
//! Used where a time crosses a process boundary (token expiry, a gateway's incarnation, "linked
//! since" in the admin API). Durations inside a process use `Instant`, and placement's Redis
//! scripts read Redis `TIME`, so no two replicas disagree about expiry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the local clock; 0 for a clock set before 1970, and
/// saturating far in the future rather than wrapping.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_reads_after_2020() {
        // 2020-01-01T00:00:00Z.
        assert!(now_ms() > 1_577_836_800_000);
    }
}
