//! Every metric the gateway emits: its name, once, and its description (the `# HELP` line of
//! `/metrics`). Emitting sites use these constants, so a name cannot drift between the code,
//! the description and `docs/operations.md` (a test checks that every name is documented there).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const CONNECTIONS: &str = "switchyard_gateway_connections";
pub const CONNECTS_TOTAL: &str = "switchyard_gateway_connects_total";
pub const DISCONNECTS_TOTAL: &str = "switchyard_gateway_disconnects_total";
pub const EVENTS_TOTAL: &str = "switchyard_gateway_events_total";
pub const PUBLISH_PAYLOAD_BYTES: &str = "switchyard_gateway_publish_payload_bytes";
pub const RESUMES_TOTAL: &str = "switchyard_gateway_resumes_total";
pub const HISTORY_EVENTS_TOTAL: &str = "switchyard_gateway_history_events_total";
pub const HISTORY_SKIPPED_TOTAL: &str = "switchyard_gateway_history_skipped_total";
pub const HISTORY_SEVERED_TOTAL: &str = "switchyard_gateway_history_severed_total";
pub const EVENTS_UNDECODABLE_TOTAL: &str = "switchyard_gateway_events_undecodable_total";
pub const BACKEND_EVENTS_TOTAL: &str = "switchyard_gateway_backend_events_total";
pub const ADAPTER_BAD_FRAMES_TOTAL: &str = "switchyard_gateway_adapter_bad_frames_total";
pub const DRAINING: &str = "switchyard_gateway_draining";
pub const DRAIN_REMAINING: &str = "switchyard_gateway_drain_remaining";
pub const DRAIN_DISCONNECTS_TOTAL: &str = "switchyard_gateway_drain_disconnects_total";
pub const DRAINS_TOTAL: &str = "switchyard_gateway_drains_total";
pub const REPORTS_TOTAL: &str = "switchyard_gateway_reports_total";
pub const REPORT_STREAM_UP: &str = "switchyard_gateway_report_stream_up";
pub const REPORT_STREAM_ERRORS_TOTAL: &str = "switchyard_gateway_report_stream_errors_total";
pub const DIRECTIVES_TOTAL: &str = "switchyard_gateway_directives_total";
pub const RELAY_LINK_UP: &str = "switchyard_gateway_relay_link_up";
pub const RELAY_LINK_ERRORS_TOTAL: &str = "switchyard_gateway_relay_link_errors_total";
pub const RELAY_GAPS_TOTAL: &str = "switchyard_gateway_relay_gaps_total";
pub const RELAY_MEMBERS: &str = "switchyard_gateway_relay_members";
pub const RELAY_FRAMES_SENT_TOTAL: &str = "switchyard_gateway_relay_frames_sent_total";
pub const RELAY_FRAMES_RESENT_TOTAL: &str = "switchyard_gateway_relay_frames_resent_total";
pub const RELAY_FRAMES_RECEIVED_TOTAL: &str = "switchyard_gateway_relay_frames_received_total";
pub const RELAY_FRAMES_DUPLICATE_TOTAL: &str = "switchyard_gateway_relay_frames_duplicate_total";
pub const RELAY_FRAMES_OVERSIZED_TOTAL: &str = "switchyard_gateway_relay_frames_oversized_total";
pub const RELAY_FRAMES_OVERFLOW_TOTAL: &str = "switchyard_gateway_relay_frames_overflow_total";
pub const RELAY_BACKLOG_DROPPED_TOTAL: &str = "switchyard_gateway_relay_backlog_dropped_total";

/// Describes every metric and sets the gauges to zero, so dashboards see each series before
/// the first client. Idempotent.
pub fn describe() {
    describe_gauge!(CONNECTIONS, "Sockets connected (all namespaces).");
    describe_counter!(
        CONNECTS_TOTAL,
        "CONNECT attempts by outcome and refusal reason."
    );
    describe_counter!(DISCONNECTS_TOTAL, "Socket disconnects by reason.");
    describe_counter!(EVENTS_TOTAL, "Built-in events by event and outcome.");
    describe_histogram!(
        PUBLISH_PAYLOAD_BYTES,
        "Estimated size of published data, in bytes."
    );
    describe_counter!(
        RESUMES_TOTAL,
        "Resume attempts by outcome (recovered, or lost: the client re-syncs)."
    );
    describe_counter!(
        HISTORY_EVENTS_TOTAL,
        "Stamped events (with a history position) applied to local sockets."
    );
    describe_counter!(
        HISTORY_SKIPPED_TOTAL,
        "Stamped events a socket's gate held back because the socket already had them."
    );
    describe_counter!(
        HISTORY_SEVERED_TOTAL,
        "Sockets severed because a stamped event could not reach them; they resume."
    );
    describe_counter!(
        EVENTS_UNDECODABLE_TOTAL,
        "Events whose data did not decode, dropped, by path (live, retained, replay)."
    );
    describe_counter!(
        BACKEND_EVENTS_TOTAL,
        "Backend events (relay Publish) emitted to local sockets."
    );
    describe_counter!(
        ADAPTER_BAD_FRAMES_TOTAL,
        "Relay frames the adapter could not decode."
    );
    describe_gauge!(DRAINING, "1 while the gateway drains.");
    describe_gauge!(DRAIN_REMAINING, "Sockets left to move during a drain.");
    describe_counter!(
        DRAIN_DISCONNECTS_TOTAL,
        "Clients told to re-assign, by cause."
    );
    describe_counter!(DRAINS_TOTAL, "Drains started, by cause.");
    describe_counter!(REPORTS_TOTAL, "Load reports sent to placement.");
    describe_gauge!(REPORT_STREAM_UP, "1 while registered with placement.");
    describe_counter!(REPORT_STREAM_ERRORS_TOTAL, "Report stream failures.");
    describe_counter!(
        DIRECTIVES_TOTAL,
        "Directives received from placement, by kind."
    );
    describe_gauge!(RELAY_LINK_UP, "1 while the link to a relay is up.");
    describe_counter!(RELAY_LINK_ERRORS_TOTAL, "Relay links lost.");
    describe_counter!(
        RELAY_GAPS_TOTAL,
        "Gaps ended: a relay link came up after every link was down (gated sockets resume)."
    );
    describe_gauge!(RELAY_MEMBERS, "Gateways linked for a namespace.");
    describe_counter!(RELAY_FRAMES_SENT_TOTAL, "Frames queued to the relay.");
    describe_counter!(RELAY_FRAMES_RESENT_TOTAL, "Frames resent after a relink.");
    describe_counter!(
        RELAY_FRAMES_RECEIVED_TOTAL,
        "Frames from the relay handed to the adapter."
    );
    describe_counter!(
        RELAY_FRAMES_DUPLICATE_TOTAL,
        "Frames from the relay dropped as duplicates."
    );
    describe_counter!(
        RELAY_FRAMES_OVERSIZED_TOTAL,
        "Frames not sent (or refused by the relay) as larger than the relay frame limit."
    );
    describe_counter!(
        RELAY_FRAMES_OVERFLOW_TOTAL,
        "Frames from the relay dropped because the namespace's adapter queue was full (the link is cut)."
    );
    describe_counter!(
        RELAY_BACKLOG_DROPPED_TOTAL,
        "Unacknowledged frames dropped because a link's backlog was full."
    );
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::gauge!(DRAINING).set(0.0);
    metrics::gauge!(REPORT_STREAM_UP).set(0.0);
}
