//! Every metric the relay emits: its name and its HELP text, once, and the one function that
//! emits it.
//!
//! Modules never name a metric themselves: they call the function here (`metrics::link_cut`),
//! so a name, its type and its labels exist in one place, [`describe`] gives every one of them
//! a HELP line, and `docs/operations.md` lists each (a test below checks the list).

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

const LINKS: &str = "switchyard_relay_links";
const MEMBERS: &str = "switchyard_relay_members";
const FRAMES_IN: &str = "switchyard_relay_frames_in_total";
const FRAMES_OUT: &str = "switchyard_relay_frames_out_total";
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

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// `(name, type, HELP)` of every metric above.
const ALL: &[(&str, Kind, &str)] = &[
    (LINKS, Kind::Gauge, "Gateways linked to this replica"),
    (
        MEMBERS,
        Kind::Gauge,
        "Gateways linked for a namespace, cluster-wide",
    ),
    (
        FRAMES_IN,
        Kind::Counter,
        "Frames received from gateways on links of this replica",
    ),
    (
        FRAMES_OUT,
        Kind::Counter,
        "Frames queued towards gateways linked to this replica",
    ),
    (
        FRAMES_DUPLICATE,
        Kind::Counter,
        "Retransmitted frames dropped by the per-origin high-water mark",
    ),
    (
        LINK_QUEUE_DEPTH,
        Kind::Histogram,
        "Depth of a link's queue right after a message was queued",
    ),
    (
        LINKS_CUT,
        Kind::Counter,
        "Links cut by the relay, by reason (queue_full, superseded, frame_too_large, ...)",
    ),
    (
        LINKS_REFUSED,
        Kind::Counter,
        "Links (before Hello) and gateway history calls (Stamp, Head, Replay) refused, by reason \
         (token: missing or wrong --link-token)",
    ),
    (
        LINK_STAMPS,
        Kind::Counter,
        "Stamps asked for on links (StampCall), by outcome: ok, error, busy (too many in flight)",
    ),
    (
        SUBMIT_SECONDS,
        Kind::Histogram,
        "Time to dedup and hand one frame to the bus",
    ),
    (
        BUS_FRAMES_IN,
        Kind::Counter,
        "Frames received from Redis pub/sub",
    ),
    (
        BUS_DISCONNECTS,
        Kind::Counter,
        "Times the Redis pub/sub subscription was lost",
    ),
    (
        PUBLISH,
        Kind::Counter,
        "Backend events accepted by Publish, by path (history: one room, stamped; live: \
         fan-out only)",
    ),
    (
        HISTORY_STAMPED,
        Kind::Counter,
        "Room events stamped with an offset and appended to history",
    ),
    (
        HISTORY_STAMP_DUPLICATES,
        Kind::Counter,
        "Stamps whose publish id was already stamped (a retry): answered, not stamped again",
    ),
    (
        HISTORY_STAMP_SECONDS,
        Kind::Histogram,
        "Time to stamp, record and publish one history event (waiting for its batch included)",
    ),
    (
        HISTORY_STAMP_BATCH_EVENTS,
        Kind::Histogram,
        "Events stamped by one Redis round trip (stamp.lua run) of one namespace",
    ),
    (
        HISTORY_REPLAYS,
        Kind::Counter,
        "Replays by outcome (recovered, lost)",
    ),
    (ADMIN_CALLS, Kind::Counter, "RelayAdmin calls by operation"),
    (
        ADMIN_REQUESTS,
        Kind::Counter,
        "Adapter requests the relay sent to gateways for admin calls",
    ),
    (
        ADMIN_GATEWAYS_MISSING,
        Kind::Counter,
        "Gateways that did not answer an admin request in time (partial answers)",
    ),
    (
        ADMIN_DISCONNECTS,
        Kind::Counter,
        "Sockets an admin call asked the gateways to disconnect",
    ),
];

/// Gives every relay metric its HELP line on `/metrics`; call once, at startup.
pub fn describe() {
    for &(name, kind, help) in ALL {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_for_the_relay_and_listed_in_the_operations_guide() {
        let guide = include_str!("../../../docs/operations.md");
        let mut names = std::collections::BTreeSet::new();
        for &(name, _, help) in ALL {
            assert!(name.starts_with("switchyard_relay_"), "{name}");
            assert!(!help.is_empty(), "{name} has no HELP");
            assert!(names.insert(name), "{name} is listed twice");
            assert!(
                guide.contains(&format!("`{name}`")),
                "{name} is missing from docs/operations.md"
            );
        }
    }
}
