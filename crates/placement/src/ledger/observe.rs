//! Metrics and logs for every ledger call, the same for both backends.

use std::time::Instant;

use super::LedgerError;

/// Records a call's outcome (`switchyard_placement_ledger_calls_total{backend,op,outcome}`)
/// and latency (`switchyard_placement_ledger_call_seconds{backend,op}`), and logs failures at
/// debug level (callers decide what deserves a warning).
pub(crate) fn observe<T>(
    backend: &'static str,
    op: &'static str,
    started: Instant,
    result: &Result<T, LedgerError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(LedgerError::UnknownNode(_)) => "unknown_node",
        Err(LedgerError::Fenced(_)) => "fenced",
        Err(LedgerError::Invalid(_)) => "invalid",
        Err(LedgerError::Unavailable(_)) => "unavailable",
    };
    ::metrics::counter!(
        crate::metrics::LEDGER_CALLS_TOTAL,
        "backend" => backend,
        "op" => op,
        "outcome" => outcome
    )
    .increment(1);
    ::metrics::histogram!(
        crate::metrics::LEDGER_CALL_SECONDS,
        "backend" => backend,
        "op" => op
    )
    .record(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        tracing::debug!(backend, op, error = %e, "ledger call failed");
    }
}
