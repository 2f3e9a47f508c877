//! Latency samples and the figures the benchmarks report.

use std::time::Duration;

use serde::Serialize;

/// What one run of one system measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// Timed assignments (warm-up excluded).
    pub assignments: u64,
    pub assigns_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// max − min over nodes of connections + pending once the run is over (warm-up included).
    pub max_spread: u64,
    /// Calls that failed (not counted as assignments; a run with more than 1% fails).
    pub errors: u64,
    /// lock_baseline only: times the lock's ttl ran out while its holder still worked, i.e.
    /// mutual exclusion was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_expired_while_held: Option<u64>,
}

impl RunFigures {
    /// `latencies` in any order; `elapsed` is the wall time of the timed phase.
    pub fn new(
        mut latencies: Vec<Duration>,
        elapsed: Duration,
        errors: u64,
        max_spread: u64,
    ) -> Self {
        latencies.sort_unstable();
        let n = latencies.len() as u64;
        Self {
            assignments: n,
            assigns_per_sec: n as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            p50_ms: percentile_ms(&latencies, 50.0),
            p99_ms: percentile_ms(&latencies, 99.0),
            max_spread,
            errors,
            lock_expired_while_held: None,
        }
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// `a / b`, or 0 when `b` is 0 (a figure that was not measured).
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A system's summary over its repeats: the median of each figure, except `max_spread`, which
/// is the worst run's (a balance guarantee is only as good as its worst case).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub assigns_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_spread: u64,
    /// Timed assignments per run.
    pub assignments: u64,
    /// Every run, in order.
    pub runs: Vec<RunFigures>,
}

impl Summary {
    pub fn of(runs: Vec<RunFigures>) -> Self {
        Self {
            assigns_per_sec: median(runs.iter().map(|r| r.assigns_per_sec).collect()),
            p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
            max_spread: runs.iter().map(|r| r.max_spread).max().unwrap_or(0),
            assignments: runs.iter().map(|r| r.assignments).min().unwrap_or(0),
            runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert!((percentile_ms(&samples, 50.0) - 50.0).abs() < 1e-9);
        assert!((percentile_ms(&samples, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile_ms(&samples[..1], 99.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert!((median(vec![4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < 1e-9);
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
    }
}
