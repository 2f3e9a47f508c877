//! The circuit breaker in front of the backend: a synchronous state machine (tested without a
//! runtime; the caller passes the time in).
//!
//! Closed, it counts failures in a row; [`FAILURES_TO_OPEN`] of them open it. Open, every call
//! is refused at once (`breaker_open`, the client's answer is `backend_unavailable`) until
//! [`OPEN_FOR`] has passed; then exactly one call goes through as a probe (half-open): its
//! success closes the breaker, its failure opens it for another period. A probe that never
//! reports (it found no in-flight permit, which is this gateway's bound and says nothing of the
//! backend, or its call was dropped) is given up after the probe deadline, and the next call is
//! the probe: the breaker cannot stay half-open for good. A success at any time resets the
//! count. So a backend that is down costs the gateway one call per period instead
//! of a timeout per event, and one that comes back is used again within a period.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses before it lets one probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else is refused until it ends or `until` passes.
    Probing {
        until: Instant,
    },
}

/// The breaker of one backend. A std `Mutex`: no critical section awaits.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    /// How long a probe may take before another call becomes the probe: the longest a call
    /// can last (its wait for a permit and its own timeout).
    probe_for: Duration,
}

impl Breaker {
    /// A closed breaker whose probes are given up after `probe_for`.
    pub fn new(probe_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            probe_for,
        }
    }

    /// Whether a call may go out at `now` (when it may, and the breaker was open or its probe
    /// was given up, this call is the probe).
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *s {
            State::Closed { .. } => true,
            State::Open { until } | State::Probing { until } if now >= until => {
                *s = State::Probing {
                    until: now + self.probe_for,
                };
                true
            }
            State::Open { .. } | State::Probing { .. } => false,
        }
    }

    /// A call that went out ended; `ok` when the backend answered (any answer that is not a
    /// failure of the backend: 2xx, 4xx).
    pub fn record(&self, ok: bool, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *s = match (*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < FAILURES_TO_OPEN => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: now + OPEN_FOR,
            },
        };
    }

    /// True while calls are refused.
    pub fn is_open(&self, now: Instant) -> bool {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Closed { .. } => false,
            State::Open { until } | State::Probing { until } => now < until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_FOR: Duration = Duration::from_secs(10);

    #[test]
    fn a_probe_that_never_reports_is_given_up_and_the_next_call_probes() {
        let b = Breaker::new(PROBE_FOR);
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN {
            b.record(false, t0);
        }
        let probe = t0 + OPEN_FOR;
        assert!(b.allow(probe), "the probe");
        // It reports nothing (no permit, or dropped).
        assert!(!b.allow(probe + PROBE_FOR / 2), "still waiting for it");
        assert!(b.is_open(probe + PROBE_FOR / 2));
        let given_up = probe + PROBE_FOR;
        assert!(!b.is_open(given_up));
        assert!(b.allow(given_up), "a new probe");
        assert!(!b.allow(given_up), "only one");
        b.record(true, given_up);
        assert!(b.allow(given_up), "closed after the new probe answered");
    }

    #[test]
    fn opens_after_failures_in_a_row_and_probes_once_per_period() {
        let b = Breaker::new(PROBE_FOR);
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert!(b.allow(t0), "still closed one failure short");
        b.record(false, t0);
        assert!(!b.allow(t0), "open");
        assert!(b.is_open(t0));
        let later = t0 + OPEN_FOR;
        assert!(b.allow(later), "the probe");
        assert!(!b.allow(later), "only one probe");
        b.record(false, later);
        assert!(!b.allow(later + OPEN_FOR / 2), "failed probe: open again");
        let again = later + OPEN_FOR;
        assert!(b.allow(again));
        b.record(true, again);
        assert!(
            b.allow(again) && b.allow(again),
            "closed after a good probe"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(PROBE_FOR);
        let t = Instant::now();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record(false, t);
        }
        b.record(true, t);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record(false, t);
        }
        assert!(b.allow(t));
    }
}
