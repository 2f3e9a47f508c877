//! Every metric the gateway emits: its name, once, and its description (the `# HELP` line of
//! `/metrics`), in [`ALL`]. Emitting sites use these constants, so a name cannot drift between
//! the code, the description and `docs/operations.md`; the metrics test
//! (`tests/e2e_metrics.rs`) checks a scrape with `promtool` and every entry of [`ALL`] against
//! that page.

use switchyard_common::{
    http_server::{self, ListenerMetrics},
    telemetry::{self, Metric},
};

pub const CONNECTIONS: &str = "switchyard_gateway_connections";
pub const CONNECTS_TOTAL: &str = "switchyard_gateway_connects_total";
pub const DISCONNECTS_TOTAL: &str = "switchyard_gateway_disconnects_total";
pub const EVENTS_TOTAL: &str = "switchyard_gateway_events_total";
pub const PUBLISH_PAYLOAD_BYTES: &str = "switchyard_gateway_publish_payload_bytes";
pub const RESUMES_TOTAL: &str = "switchyard_gateway_resumes_total";
pub const HISTORY_EVENTS_TOTAL: &str = "switchyard_gateway_history_events_total";
pub const HEAD_READS_TOTAL: &str = "switchyard_gateway_head_reads_total";
pub const HEAD_READ_JOINS_TOTAL: &str = "switchyard_gateway_head_read_joins_total";
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
pub const INTEREST_ROOMS: &str = "switchyard_gateway_interest_rooms";
pub const RELAY_BACKLOG_DROPPED_TOTAL: &str = "switchyard_gateway_relay_backlog_dropped_total";
pub const ADMIN_UI_LOGINS_TOTAL: &str = "switchyard_gateway_admin_ui_logins_total";
pub const ADMIN_UI_COMMANDS_TOTAL: &str = "switchyard_gateway_admin_ui_commands_total";
pub const ADMIN_UI_EVENTS_DROPPED_TOTAL: &str = "switchyard_gateway_admin_ui_events_dropped_total";
pub const HOOK_DURATION_SECONDS: &str = "switchyard_gateway_hook_duration_seconds";
pub const HOOK_ERRORS_TOTAL: &str = "switchyard_gateway_hook_errors_total";
pub const HOOK_DISCONNECTS_DROPPED_TOTAL: &str =
    "switchyard_gateway_hook_disconnects_dropped_total";
pub const HOOK_EVENTS_REFUSED_TOTAL: &str = "switchyard_gateway_hook_events_refused_total";
pub const FILE_DESCRIPTORS: &str = "switchyard_gateway_file_descriptors";
pub const FILE_DESCRIPTOR_LIMIT: &str = "switchyard_gateway_file_descriptor_limit";
pub const FULL: &str = "switchyard_gateway_full";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_gateway_tls_handshake_failures_total";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "switchyard_gateway_http_connections_closed_total";
pub const HTTP_PENDING_CONNECTIONS: &str = "switchyard_gateway_http_pending_connections";
pub const HTTP_ACCEPT_ERRORS_TOTAL: &str = "switchyard_gateway_http_accept_errors_total";

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
    Metric::histogram(
        HOOK_DURATION_SECONDS,
        "Duration of hook calls to the application's backend, in seconds, by hook.",
    ),
    Metric::counter(
        HOOK_ERRORS_TOTAL,
        "Hook calls that gave no usable answer, by hook and reason.",
    ),
    Metric::counter(
        HOOK_DISCONNECTS_DROPPED_TOTAL,
        "Disconnect hooks never delivered, by cause.",
    ),
    Metric::counter(
        HOOK_EVENTS_REFUSED_TOTAL,
        "Forwarded events refused before the hook because the socket's queue was full.",
    ),
    Metric::gauge(
        INTEREST_ROOMS,
        "Rooms with local members this gateway declared to the relays, by namespace.",
    ),
    Metric::gauge(CONNECTIONS, "Sockets connected, all namespaces."),
    Metric::counter(
        CONNECTS_TOTAL,
        "CONNECT attempts by outcome and refusal reason.",
    ),
    Metric::counter(DISCONNECTS_TOTAL, "Socket disconnects by reason."),
    Metric::counter(ADMIN_UI_LOGINS_TOTAL, "Admin UI connections by outcome."),
    Metric::counter(
        ADMIN_UI_COMMANDS_TOTAL,
        "Admin UI commands carried out cluster-wide, by op.",
    ),
    Metric::counter(
        ADMIN_UI_EVENTS_DROPPED_TOTAL,
        "Development-mode admin UI events dropped because their queue was full.",
    ),
    Metric::counter(EVENTS_TOTAL, "Built-in client events by event and outcome."),
    Metric::histogram(
        PUBLISH_PAYLOAD_BYTES,
        "Estimated size of published data, in bytes.",
    ),
    Metric::counter(RESUMES_TOTAL, "Resume attempts by outcome."),
    Metric::counter(
        HISTORY_EVENTS_TOTAL,
        "Events with a history position applied to local sockets.",
    ),
    Metric::counter(
        HEAD_READS_TOTAL,
        "Head reads sent to the relays (each serves every join of its namespace waiting then).",
    ),
    Metric::counter(
        HEAD_READ_JOINS_TOTAL,
        "Joins answered by head reads; divided by the reads, the joins one read served.",
    ),
    Metric::counter(
        HISTORY_SKIPPED_TOTAL,
        "Stamped events skipped because the socket already had them.",
    ),
    Metric::counter(
        HISTORY_SEVERED_TOTAL,
        "Sockets severed because a stamped event could not reach them.",
    ),
    Metric::counter(
        EVENTS_UNDECODABLE_TOTAL,
        "Events whose data did not decode, dropped, by path.",
    ),
    Metric::counter(
        BACKEND_EVENTS_TOTAL,
        "Backend events (relay Publish) emitted to local sockets.",
    ),
    Metric::counter(
        ADAPTER_BAD_FRAMES_TOTAL,
        "Relay frames the adapter could not decode.",
    ),
    Metric::gauge(DRAINING, "1 while the gateway drains."),
    Metric::gauge(DRAIN_REMAINING, "Sockets left to move during a drain."),
    Metric::counter(
        DRAIN_DISCONNECTS_TOTAL,
        "Clients told to re-assign, by cause.",
    ),
    Metric::counter(DRAINS_TOTAL, "Drains started, by cause."),
    Metric::counter(REPORTS_TOTAL, "Load reports sent to placement."),
    Metric::gauge(REPORT_STREAM_UP, "1 while registered with placement."),
    Metric::counter(REPORT_STREAM_ERRORS_TOTAL, "Report stream failures."),
    Metric::counter(
        DIRECTIVES_TOTAL,
        "Directives received from placement, by kind.",
    ),
    Metric::gauge(RELAY_LINK_UP, "1 while linked to that relay."),
    Metric::counter(RELAY_LINK_ERRORS_TOTAL, "Relay link failures."),
    Metric::counter(
        RELAY_GAPS_TOTAL,
        "Gaps ended: a relay link came up after every link was down.",
    ),
    Metric::gauge(
        RELAY_MEMBERS,
        "Gateways of the namespace according to the relay.",
    ),
    Metric::counter(RELAY_FRAMES_SENT_TOTAL, "Frames sent to the relay."),
    Metric::counter(
        RELAY_FRAMES_RESENT_TOTAL,
        "Unacknowledged frames resent after a relink.",
    ),
    Metric::counter(
        RELAY_FRAMES_RECEIVED_TOTAL,
        "Frames received from the relay, duplicates excluded.",
    ),
    Metric::counter(
        RELAY_FRAMES_DUPLICATE_TOTAL,
        "Received frames dropped as duplicates.",
    ),
    Metric::counter(
        RELAY_FRAMES_OVERSIZED_TOTAL,
        "Frames not sent, or refused by the relay, because they exceed the relay's frame limit.",
    ),
    Metric::counter(
        RELAY_FRAMES_OVERFLOW_TOTAL,
        "Frames from the relay dropped because the namespace's adapter queue was full.",
    ),
    Metric::counter(
        RELAY_BACKLOG_DROPPED_TOTAL,
        "Unacknowledged frames dropped because the resend backlog was full.",
    ),
    Metric::counter(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out on the HTTP listener, by reason.",
    ),
    Metric::gauge(
        FILE_DESCRIPTORS,
        "File descriptors the gateway holds, sampled before each report.",
    ),
    Metric::gauge(FILE_DESCRIPTOR_LIMIT, "The gateway's soft RLIMIT_NOFILE."),
    Metric::gauge(
        FULL,
        "1 while the gateway reports itself full to placement for lack of file descriptors.",
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
/// the first client. Idempotent.
pub fn describe() {
    telemetry::describe(ALL);
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::gauge!(DRAINING).set(0.0);
    metrics::gauge!(REPORT_STREAM_UP).set(0.0);
}
