//! Every metric placement emits: its name, once, and its description (the `# HELP` line of
//! `/metrics`), in [`ALL`]. Emitting sites use these constants, so a name cannot drift between
//! the code, the description and `docs/operations.md`; the metrics test (in the gateway crate,
//! `tests/e2e_metrics.rs`, which runs every service) checks a scrape with `promtool` and every
//! entry of [`ALL`] against that page.

use switchyard_common::{
    http_server::{self, ListenerMetrics},
    telemetry::{self, Metric},
};

pub const ASSIGNMENTS_TOTAL: &str = "switchyard_placement_assignments_total";
pub const ASSIGN_DURATION_SECONDS: &str = "switchyard_placement_assign_duration_seconds";
pub const LEDGER_CALLS_TOTAL: &str = "switchyard_placement_ledger_calls_total";
pub const LEDGER_CALL_SECONDS: &str = "switchyard_placement_ledger_call_seconds";
pub const REGISTRATIONS_TOTAL: &str = "switchyard_placement_registrations_total";
pub const REPORTS_TOTAL: &str = "switchyard_placement_reports_total";
pub const REPORT_STREAMS: &str = "switchyard_placement_report_streams";
pub const STREAMS_CLOSED_TOTAL: &str = "switchyard_placement_streams_closed_total";
pub const LEASE_HOLDER: &str = "switchyard_placement_lease_holder";
pub const REAP_TOTAL: &str = "switchyard_placement_reap_total";
pub const REAPED_NODES_TOTAL: &str = "switchyard_placement_reaped_nodes_total";
pub const ADMIN_TOTAL: &str = "switchyard_placement_admin_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_placement_tls_handshake_failures_total";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str =
    "switchyard_placement_http_connections_closed_total";
pub const HTTP_PENDING_CONNECTIONS: &str = "switchyard_placement_http_pending_connections";
pub const HTTP_ACCEPT_ERRORS_TOTAL: &str = "switchyard_placement_http_accept_errors_total";

/// The HTTP listener's metrics, counted by `switchyard_common::http_server` (named here,
/// passed to it).
pub const HTTP_LISTENER: ListenerMetrics = ListenerMetrics {
    tls_handshake_failures: TLS_HANDSHAKE_FAILURES_TOTAL,
    connections_closed: HTTP_CONNECTIONS_CLOSED_TOTAL,
    pending_connections: HTTP_PENDING_CONNECTIONS,
    accept_errors: HTTP_ACCEPT_ERRORS_TOTAL,
};

/// Every metric above, with its type and HELP text (the first sentence of its row in
/// `docs/operations.md`).
pub const ALL: &[Metric] = &[
    Metric::counter(
        ASSIGNMENTS_TOTAL,
        "Assignment requests (HTTP /v1/assign and gRPC Assign) by outcome.",
    ),
    Metric::histogram(
        ASSIGN_DURATION_SECONDS,
        "Time to answer one assignment, ledger round trip and signing included.",
    ),
    Metric::counter(
        LEDGER_CALLS_TOTAL,
        "Ledger operations by backend, operation and outcome.",
    ),
    Metric::histogram(LEDGER_CALL_SECONDS, "Latency of one ledger operation."),
    Metric::counter(
        REGISTRATIONS_TOTAL,
        "Gateways registering on a report stream, by outcome.",
    ),
    Metric::counter(REPORTS_TOTAL, "Load reports received from gateways."),
    Metric::gauge(
        REPORT_STREAMS,
        "Report streams (registered gateways) open on this replica.",
    ),
    Metric::counter(
        STREAMS_CLOSED_TOTAL,
        "Report streams that ended, by reason; each removes its gateway from the ledger.",
    ),
    Metric::gauge(
        LEASE_HOLDER,
        "1 on the replica holding the singleton lease (reaping, rebalancing), 0 elsewhere.",
    ),
    Metric::counter(REAP_TOTAL, "Reaper passes over the ledger, by outcome."),
    Metric::counter(REAPED_NODES_TOTAL, "Dead gateways removed by the reaper."),
    Metric::counter(ADMIN_TOTAL, "Admin calls that changed something, by call."),
    Metric::counter(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out on the HTTP listener, by reason.",
    ),
    Metric::counter(
        HTTP_CONNECTIONS_CLOSED_TOTAL,
        http_server::CONNECTIONS_CLOSED_HELP,
    ),
    Metric::gauge(
        HTTP_PENDING_CONNECTIONS,
        http_server::PENDING_CONNECTIONS_HELP,
    ),
    Metric::counter(HTTP_ACCEPT_ERRORS_TOTAL, http_server::ACCEPT_ERRORS_HELP),
];

/// Describes every metric and sets the gauges to zero, so dashboards see each series before
/// the first event. Idempotent.
pub fn describe() {
    telemetry::describe(ALL);
    metrics::gauge!(REPORT_STREAMS).set(0.0);
    metrics::gauge!(LEASE_HOLDER).set(0.0);
}
