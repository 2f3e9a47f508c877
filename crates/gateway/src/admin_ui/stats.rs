//! `server_stats`: what each gateway tells every admin UI about itself every
//! [`STATS_INTERVAL`], as `@socket.io/admin-ui`'s `initStatsEmitter` does.
//!
//! `aggregatedEvents` are counts per second and type, taken and cleared at each emit
//! ([`EventBuffer`]): `rawConnection`, `rawDisconnection` (by reason), `packetsIn` (events
//! a client sent, as far as the gateway sees them) and, in development mode, `packetsOut` and
//! `bytesOut` (events delivered to client sockets and their encoded size, reported by every
//! delivery path: [`crate::observe`]). `bytesIn` is not counted, nor are packets other than
//! events (acks, pings): socketioxide has no hook on every packet it writes or reads.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often every gateway emits `server_stats` (the package's interval).
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Distinct `(second, type, subType)` counts kept between two emits; beyond, new keys are
/// dropped (an admin view, not an audit log).
pub const MAX_BUCKETS: usize = 4096;

/// One aggregated count, as the admin UI's `NamespaceEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceEvent {
    /// The second it counts, in ms since the epoch.
    pub timestamp: u64,
    #[serde(rename = "type")]
    pub ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<&'static str>,
    pub count: u64,
}

/// `(second in ms, type, subType)`.
type Bucket = (u64, &'static str, Option<&'static str>);

/// Counts per second and type, between two emits. A `std` mutex: nothing under it awaits.
#[derive(Debug, Default)]
pub struct EventBuffer {
    buckets: Mutex<BTreeMap<Bucket, u64>>,
}

impl EventBuffer {
    /// Counts one `ty` (with `sub_type`) at `now_ms`.
    pub fn push(&self, now_ms: u64, ty: &'static str, sub_type: Option<&'static str>) {
        self.add(now_ms, ty, sub_type, 1);
    }

    /// Adds `n` to `ty` (with `sub_type`) at `now_ms`: a count of bytes, or of several events
    /// (the package's `push(type, subType, count)`).
    pub fn add(&self, now_ms: u64, ty: &'static str, sub_type: Option<&'static str>, n: u64) {
        self.add_all(now_ms, &[(ty, sub_type, n)]);
    }

    /// [`EventBuffer::add`] for each `(type, subType, n)`, in one step: one emit takes all of
    /// them or none (a packet and its bytes are counted together).
    pub fn add_all(&self, now_ms: u64, counts: &[(&'static str, Option<&'static str>, u64)]) {
        let second = now_ms - now_ms % 1000;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for &(ty, sub_type, n) in counts {
            let full = buckets.len() >= MAX_BUCKETS;
            match buckets.get_mut(&(second, ty, sub_type)) {
                Some(count) => *count = count.saturating_add(n),
                None if !full => {
                    buckets.insert((second, ty, sub_type), n);
                }
                None => {}
            }
        }
    }

    /// Everything counted since the last call, oldest first; empties the buffer.
    pub fn take(&self) -> Vec<NamespaceEvent> {
        let buckets =
            std::mem::take(&mut *self.buckets.lock().unwrap_or_else(PoisonError::into_inner));
        buckets
            .into_iter()
            .map(|((timestamp, ty, sub_type), count)| NamespaceEvent {
                timestamp,
                ty,
                sub_type,
                count,
            })
            .collect()
    }
}

/// A namespace and its local socket count.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceDetails {
    pub name: String,
    pub sockets_count: usize,
}

/// The payload of `server_stats` (the package's `ServerStats` plus `aggregatedEvents`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    /// The gateway's node id.
    pub server_id: String,
    pub hostname: String,
    pub pid: u32,
    /// Seconds since the gateway started.
    pub uptime: f64,
    /// Client sockets holding a seat (admin UI connections are not client load).
    pub clients_count: u64,
    /// Sockets of any namespace on the polling transport.
    pub polling_clients_count: usize,
    pub aggregated_events: Vec<NamespaceEvent>,
    pub namespaces: Vec<NamespaceDetails>,
}

/// The part of the stats that never changes, and the start instant.
#[derive(Debug, Clone)]
pub struct Identity {
    pub server_id: String,
    pub hostname: String,
    pub pid: u32,
    pub started: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_by_second_and_type_and_are_taken_once() {
        let b = EventBuffer::default();
        b.push(1_500, "rawConnection", None);
        b.push(1_999, "rawConnection", None);
        b.push(2_000, "rawConnection", None);
        b.push(2_100, "rawDisconnection", Some("transport close"));
        let taken = b.take();
        assert_eq!(
            taken,
            vec![
                NamespaceEvent {
                    timestamp: 1_000,
                    ty: "rawConnection",
                    sub_type: None,
                    count: 2
                },
                NamespaceEvent {
                    timestamp: 2_000,
                    ty: "rawConnection",
                    sub_type: None,
                    count: 1
                },
                NamespaceEvent {
                    timestamp: 2_000,
                    ty: "rawDisconnection",
                    sub_type: Some("transport close"),
                    count: 1
                },
            ]
        );
        assert!(b.take().is_empty());
        b.add_all(3_000, &[("packetsOut", None, 1), ("bytesOut", None, 40)]);
        b.add(3_500, "bytesOut", None, 2);
        assert_eq!(
            b.take().iter().map(|e| (e.ty, e.count)).collect::<Vec<_>>(),
            vec![("bytesOut", 42), ("packetsOut", 1)]
        );
        let json = serde_json::to_value(&taken[0]).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"timestamp": 1000, "type": "rawConnection", "count": 2})
        );
    }
}
