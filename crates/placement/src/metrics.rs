//! Every metric placement emits: its name, once, and its description (the `# HELP` line of
//! `/metrics`). Emitting sites use these constants, so a name cannot drift between the code,
//! the description and `docs/operations.md` (a test checks that every name is documented there).

use metrics::{describe_counter, describe_gauge, describe_histogram};

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

/// Describes every metric and sets the gauges to zero, so dashboards see each series before
/// the first event. Idempotent.
pub fn describe() {
    describe_counter!(
        ASSIGNMENTS_TOTAL,
        "Assignment requests (HTTP /v1/assign and gRPC Assign) by outcome."
    );
    describe_histogram!(
        ASSIGN_DURATION_SECONDS,
        "Time to answer one assignment, ledger round trip and signing included."
    );
    describe_counter!(
        LEDGER_CALLS_TOTAL,
        "Ledger operations by backend, operation and outcome."
    );
    describe_histogram!(
        LEDGER_CALL_SECONDS,
        "Latency of one ledger operation, by backend and operation."
    );
    describe_counter!(
        REGISTRATIONS_TOTAL,
        "Gateways registering on a report stream, by outcome."
    );
    describe_counter!(
        REPORTS_TOTAL,
        "Load reports received from gateways, by outcome."
    );
    describe_gauge!(
        REPORT_STREAMS,
        "Report streams (registered gateways) open on this replica."
    );
    describe_counter!(
        STREAMS_CLOSED_TOTAL,
        "Report streams that ended, by reason; each removes its gateway from the ledger."
    );
    describe_gauge!(
        LEASE_HOLDER,
        "1 on the replica holding the singleton lease, 0 elsewhere."
    );
    describe_counter!(REAP_TOTAL, "Reaper passes over the ledger, by outcome.");
    describe_counter!(REAPED_NODES_TOTAL, "Dead gateways removed by the reaper.");
    describe_counter!(ADMIN_TOTAL, "Admin calls that changed something, by call.");
    metrics::gauge!(REPORT_STREAMS).set(0.0);
    metrics::gauge!(LEASE_HOLDER).set(0.0);
}
