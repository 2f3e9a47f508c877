//! Every metric the relay emits: its name and its HELP text, once, and the one function that
//! emits it.
//!
//! Modules never name a metric themselves: they call the function here (`metrics::link_cut`),
//! so a name, its type and its labels exist in one place, [`describe`] gives every one of them
//! a HELP line from [`ALL`], and `docs/operations.md` lists each (the metrics test, in the
//! gateway crate's `tests/e2e_metrics.rs`, which runs every service, checks a scrape with
//! `promtool` and [`ALL`] against that page). The one exception is the TLS handshake counter,
//! which the listener in `switchyard-common` counts under the name given here.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use switchyard_common::{
    http_server::{self, ListenerMetrics},
    telemetry::{self, Metric},
};

const LINKS: &str = "switchyard_relay_links";
const MEMBERS: &str = "switchyard_relay_members";
const FRAMES_IN: &str = "switchyard_relay_frames_in_total";
const FRAMES_OUT: &str = "switchyard_relay_frames_out_total";
const FRAMES_SAVED: &str = "switchyard_relay_frames_saved_total";
const LINK_INTEREST_ROOMS: &str = "switchyard_relay_link_interest_rooms";
const FRAMES_DUPLICATE: &str = "switchyard_relay_frames_duplicate_total";
const LINK_QUEUE_DEPTH: &str = "switchyard_relay_link_queue_depth";
const LINKS_CUT: &str = "switchyard_relay_links_cut_total";
const LINKS_REFUSED: &str = "switchyard_relay_links_refused_total";
const LINK_STAMPS: &str = "switchyard_relay_link_stamps_total";
const SUBMIT_SECONDS: &str = "switchyard_relay_submit_seconds";
const BUS_FRAMES_IN: &str = "switchyard_relay_bus_frames_in_total";
const BUS_DISCONNECTS: &str = "switchyard_relay_bus_disconnects_total";
const PUBLISH: &str = "switchyard_relay_publish_total";
const HISTORY_STAMPED: &str = "switchyard_relay_history_stamped_total";
const HISTORY_STAMP_DUPLICATES: &str = "switchyard_relay_history_stamp_duplicates_total";
const HISTORY_STAMP_SECONDS: &str = "switchyard_relay_history_stamp_seconds";
const HISTORY_STAMP_BATCH_EVENTS: &str = "switchyard_relay_history_stamp_batch_events";
const HISTORY_REPLAYS: &str = "switchyard_relay_history_replays_total";
const ADMIN_CALLS: &str = "switchyard_relay_admin_calls_total";
const ADMIN_REQUESTS: &str = "switchyard_relay_admin_requests_total";
const ADMIN_GATEWAYS_MISSING: &str = "switchyard_relay_admin_gateways_missing_total";
const ADMIN_DISCONNECTS: &str = "switchyard_relay_admin_disconnects_total";
const EMITTER_MESSAGES: &str = "switchyard_relay_emitter_messages_total";
const EMITTER_HANDLER: &str = "switchyard_relay_emitter_handler";

pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_relay_tls_handshake_failures_total";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "switchyard_relay_http_connections_closed_total";
pub const HTTP_PENDING_CONNECTIONS: &str = "switchyard_relay_http_pending_connections";
pub const HTTP_ACCEPT_ERRORS_TOTAL: &str = "switchyard_relay_http_accept_errors_total";

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
    Metric::gauge(LINKS, "Gateways linked to this replica."),
    Metric::gauge(MEMBERS, "Gateways linked for a namespace, cluster-wide."),
    Metric::counter(
        FRAMES_IN,
        "Frames received from gateways on links of this replica.",
    ),
    Metric::counter(
        FRAMES_OUT,
        "Frames queued towards gateways linked to this replica.",
    ),
    Metric::counter(
        FRAMES_SAVED,
        "Frames not queued towards a gateway linked to this replica because it has no local \
         member in any room they target.",
    ),
    Metric::gauge(
        LINK_INTEREST_ROOMS,
        "Rooms a gateway linked to this replica has local members in, by node_id.",
    ),
    Metric::counter(
        FRAMES_DUPLICATE,
        "Retransmitted frames dropped by the per-origin high-water mark.",
    ),
    Metric::histogram(
        LINK_QUEUE_DEPTH,
        "Depth of a link's outbound queue right after a message was queued.",
    ),
    Metric::counter(LINKS_CUT, "Links the relay cut, by reason."),
    Metric::counter(
        LINKS_REFUSED,
        "Links refused before Hello, and gateway history calls (Stamp, Head, Replay) refused, \
         by reason.",
    ),
    Metric::counter(
        LINK_STAMPS,
        "Stamps gateways asked for on their links (StampCall), by outcome.",
    ),
    Metric::histogram(
        SUBMIT_SECONDS,
        "Time to deduplicate one frame and hand it to the bus.",
    ),
    Metric::counter(BUS_FRAMES_IN, "Frames received from Redis pub/sub."),
    Metric::counter(
        BUS_DISCONNECTS,
        "Times the Redis pub/sub subscription was lost.",
    ),
    Metric::counter(PUBLISH, "Backend events accepted by Publish, by path."),
    Metric::counter(
        HISTORY_STAMPED,
        "Room events stamped with an offset and appended to history.",
    ),
    Metric::counter(
        HISTORY_STAMP_DUPLICATES,
        "Stamps whose publish id was already stamped.",
    ),
    Metric::histogram(
        HISTORY_STAMP_SECONDS,
        "Time to stamp and record one event in history, including the wait for its batch.",
    ),
    Metric::histogram(
        HISTORY_STAMP_BATCH_EVENTS,
        "Events of one namespace stamped by one Redis round trip.",
    ),
    Metric::counter(
        HISTORY_REPLAYS,
        "History replays asked by gateways for resuming clients, by outcome.",
    ),
    Metric::counter(
        ADMIN_CALLS,
        "RelayAdmin calls that passed the admin token check, by operation.",
    ),
    Metric::counter(
        ADMIN_REQUESTS,
        "Adapter requests the relay sent to gateways for admin calls.",
    ),
    Metric::counter(
        ADMIN_GATEWAYS_MISSING,
        "Gateways that did not answer an admin request in time.",
    ),
    Metric::counter(
        ADMIN_DISCONNECTS,
        "Sockets an admin call asked the gateways to disconnect.",
    ),
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
    Metric::counter(
        EMITTER_MESSAGES,
        "Messages of @socket.io/redis-emitter handled by this replica, by outcome.",
    ),
    Metric::gauge(
        EMITTER_HANDLER,
        "1 while this replica holds the emitter lease and is subscribed to the emitter's channels.",
    ),
];

/// Gives every relay metric its HELP line on `/metrics`; call once, at startup.
pub fn describe() {
    telemetry::describe(ALL);
}

/// Links on this replica, after one joined or left.
pub fn links(count: usize) {
    gauge!(LINKS).set(count as f64);
}

/// The cluster-wide member count of `namespace`, whenever it is pushed to the links.
pub fn members(namespace: &str, count: usize) {
    gauge!(MEMBERS, "namespace" => namespace.to_owned()).set(count as f64);
}

/// A frame read from a gateway's link.
pub fn frame_in() {
    counter!(FRAMES_IN).increment(1);
}

/// A frame queued towards a gateway.
pub fn frame_out() {
    counter!(FRAMES_OUT).increment(1);
}

/// A frame not queued towards a link whose gateway has no member in any of its rooms.
pub fn frame_saved() {
    counter!(FRAMES_SAVED).increment(1);
}

/// The rooms a link's gateway declared (0 once the link is gone).
pub fn link_interest_rooms(node_id: &str, rooms: usize) {
    gauge!(LINK_INTEREST_ROOMS, "node_id" => node_id.to_owned()).set(rooms as f64);
}

/// A retransmitted frame dropped by the dedup mark.
pub fn frame_duplicate() {
    counter!(FRAMES_DUPLICATE).increment(1);
}

/// A link's queue depth right after a message was queued.
pub fn link_queue_depth(depth: usize) {
    histogram!(LINK_QUEUE_DEPTH).record(depth as f64);
}

/// A link the relay ended, and why.
pub fn link_cut(reason: &'static str) {
    counter!(LINKS_CUT, "reason" => reason).increment(1);
}

/// A link or a gateway history call refused, and why.
pub fn link_refused(reason: &'static str) {
    counter!(LINKS_REFUSED, "reason" => reason).increment(1);
}

/// A `StampCall` answered: `ok`, `error` or `busy`.
pub fn link_stamp(outcome: &'static str) {
    counter!(LINK_STAMPS, "outcome" => outcome).increment(1);
}

/// Time one frame took through dedup to the bus.
pub fn submit_time(elapsed: Duration) {
    histogram!(SUBMIT_SECONDS).record(elapsed);
}

/// A frame received from Redis pub/sub.
pub fn bus_frame_in() {
    counter!(BUS_FRAMES_IN).increment(1);
}

/// The Redis pub/sub subscription was lost.
pub fn bus_disconnect() {
    counter!(BUS_DISCONNECTS).increment(1);
}

/// A backend event accepted by `Publish`: `path` is `history` or `live`.
pub fn published(path: &'static str) {
    counter!(PUBLISH, "path" => path).increment(1);
}

/// One stamp answered by a history after `elapsed`: a new event, or a retry of an
/// already stamped publish id (`duplicate`).
pub fn history_stamp(elapsed: Duration, duplicate: bool) {
    histogram!(HISTORY_STAMP_SECONDS).record(elapsed);
    if duplicate {
        counter!(HISTORY_STAMP_DUPLICATES).increment(1);
    } else {
        counter!(HISTORY_STAMPED).increment(1);
    }
}

/// A stamp that failed after `elapsed` (counted in the latency only).
pub fn history_stamp_failed(elapsed: Duration) {
    histogram!(HISTORY_STAMP_SECONDS).record(elapsed);
}

/// Events carried by one `stamp.lua` run.
pub fn history_stamp_batch(events: usize) {
    histogram!(HISTORY_STAMP_BATCH_EVENTS).record(events as f64);
}

/// A replay answered: recovered, or lost (the client re-syncs).
pub fn history_replay(recovered: bool) {
    let outcome = if recovered { "recovered" } else { "lost" };
    counter!(HISTORY_REPLAYS, "outcome" => outcome).increment(1);
}

/// A `RelayAdmin` call that passed the admin token check.
pub fn admin_call(op: &'static str) {
    counter!(ADMIN_CALLS, "op" => op).increment(1);
}

/// An adapter request sent to the gateways for an admin call.
pub fn admin_request() {
    counter!(ADMIN_REQUESTS).increment(1);
}

/// Gateways that did not answer an admin request in time.
pub fn admin_gateways_missing(count: usize) {
    counter!(ADMIN_GATEWAYS_MISSING).increment(count as u64);
}

/// Sockets an admin call asked the gateways to disconnect.
pub fn admin_disconnects(count: usize) {
    counter!(ADMIN_DISCONNECTS).increment(count as u64);
}

/// A message of `@socket.io/redis-emitter`, and what became of it.
pub fn emitter_message(outcome: &'static str) {
    counter!(EMITTER_MESSAGES, "outcome" => outcome).increment(1);
}

/// Whether this replica is the emitter's handler right now.
pub fn emitter_handler(active: bool) {
    gauge!(EMITTER_HANDLER).set(if active { 1.0 } else { 0.0 });
}
