//! Where a namespace's history lives in Redis, for the scripts and the figures alike.
//!
//! `{sy:<cluster>}:history:<namespace>:` followed by `seq` (the offset counter), `stream` (the
//! log, entries `<offset>-0`), `epoch`, `retained` (the rooms' retained events), `ids` and
//! `ids-old` (publish ids, two generations). The cluster's hash tag puts them on one Cluster
//! slot with the namespace's channel, so one script can touch them all and publish.

use crate::bus::RedisBus;

/// Between the cluster's prefix and the namespace.
const HISTORY: &str = ":history:";

/// The key `what` of `namespace`'s history. Built in one allocation: every history call builds
/// four keys, and three `format!`s per key were 14% of a relay's instructions while it answered
/// a reconnect storm's head reads (callgrind).
pub(super) fn key(bus: &RedisBus, namespace: &str, what: &str) -> String {
    let mut key =
        String::with_capacity(bus.prefix.len() + HISTORY.len() + namespace.len() + 1 + what.len());
    key.push_str(&bus.prefix);
    key.push_str(HISTORY);
    key.push_str(namespace);
    key.push(':');
    key.push_str(what);
    key
}

/// What every history key of the cluster starts with, the namespace next.
pub(super) fn namespaces_prefix(bus: &RedisBus) -> String {
    format!("{}{HISTORY}", bus.prefix)
}
