//! Where a namespace's history lives in Redis, for the scripts and the figures alike.
//!
//! `{sy:<cluster>}:history:<namespace>:` followed by `seq` (the offset counter), `stream` (the
//! log, entries `<offset>-0`), `epoch`, `retained` (the rooms' retained events), `ids` and
//! `ids-old` (publish ids, two generations). The cluster's hash tag puts them on one Cluster
//! slot with the namespace's channel, so one script can touch them all and publish.

use crate::bus::RedisBus;

/// The key `what` of `namespace`'s history.
pub(super) fn key(bus: &RedisBus, namespace: &str, what: &str) -> String {
    format!("{}{what}", prefix(bus, namespace))
}

/// What every key of `namespace`'s history starts with.
fn prefix(bus: &RedisBus, namespace: &str) -> String {
    format!("{}{namespace}:", namespaces_prefix(bus))
}

/// What every history key of the cluster starts with, the namespace next.
pub(super) fn namespaces_prefix(bus: &RedisBus) -> String {
    format!("{}:history:", bus.prefix)
}
