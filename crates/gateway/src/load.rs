//! The gateway's load: how many sockets it holds, and which reservations it consumed.
//!
//! Both are what the next report to placement carries. The connection count is absolute (a
//! ledger lost with Redis is rebuilt from it); consumed reservation ids are a queue drained by
//! each report and put back when a report may not have reached placement.

use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use crate::metrics;

/// Connection gauge with a hard cap, and the consumed-reservation queue.
#[derive(Debug)]
pub struct Load {
    connections: AtomicU64,
    max_connections: u64,
    /// Reservation ids consumed since the last report. A std `Mutex`: the critical sections
    /// never await and are a push or a swap.
    consumed: Mutex<Vec<String>>,
}

impl Load {
    /// `max_connections == 0` means unlimited.
    pub fn new(max_connections: u64) -> Self {
        Self {
            connections: AtomicU64::new(0),
            max_connections,
            consumed: Mutex::new(Vec::new()),
        }
    }

    /// Sockets currently holding a seat (connected, or past admission and connecting).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    pub fn max_connections(&self) -> u64 {
        self.max_connections
    }

    /// Takes a seat if one is free. The cap is exact under concurrency (compare-and-swap), so
    /// `--max-connections N` never admits `N + 1`. The seat is released when the returned
    /// [`Seat`] is released or dropped.
    pub fn try_seat(self: &Arc<Self>) -> Option<Seat> {
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max_connections == 0 || n < self.max_connections).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        ::metrics::gauge!(metrics::CONNECTIONS).set(self.connections() as f64);
        Some(Seat(Arc::new(SeatInner {
            load: self.clone(),
            released: AtomicBool::new(false),
        })))
    }

    /// The consumed-reservation queue, recovered from a poisoned lock (the workspace's poison
    /// policy; see ARCHITECTURE.md, "Cross-cutting concerns").
    fn consumed(&self) -> MutexGuard<'_, Vec<String>> {
        self.consumed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a reservation was turned into a connection; the next report carries it.
    pub fn record_consumed(&self, reservation_id: String) {
        self.consumed().push(reservation_id);
    }

    /// Takes every consumed id recorded since the last call.
    pub fn take_consumed(&self) -> Vec<String> {
        std::mem::take(&mut *self.consumed())
    }

    /// Puts back ids whose report may not have reached placement, ahead of newer ones.
    pub fn put_back_consumed(&self, mut ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let mut q = self.consumed();
        ids.append(&mut q);
        *q = ids;
    }
}

/// One socket's place in the connection count. Cloned into the socket's extensions; the count
/// drops exactly once, on [`Seat::release`] (the disconnect handler) or when the last clone is
/// dropped (a socket refused by a later middleware, or an application that replaced the
/// disconnect handler).
#[derive(Debug, Clone)]
pub struct Seat(Arc<SeatInner>);

#[derive(Debug)]
struct SeatInner {
    load: Arc<Load>,
    released: AtomicBool,
}

impl Seat {
    /// Gives the seat back. Idempotent.
    pub fn release(&self) {
        self.0.release();
    }
}

impl SeatInner {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let now = self
                .load
                .connections
                .fetch_sub(1, Ordering::AcqRel)
                .saturating_sub(1);
            ::metrics::gauge!(metrics::CONNECTIONS).set(now as f64);
        }
    }
}

impl Drop for SeatInner {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_capped_and_released_once() {
        let load = Arc::new(Load::new(2));
        let a = load.try_seat();
        let b = load.try_seat();
        assert!(a.is_some() && b.is_some());
        assert!(load.try_seat().is_none());
        assert_eq!(load.connections(), 2);
        if let Some(a) = &a {
            a.release();
            a.release();
        }
        assert_eq!(load.connections(), 1);
        drop(a);
        assert_eq!(load.connections(), 1);
        let b2 = b.clone();
        drop(b);
        assert_eq!(load.connections(), 1, "a clone still holds the seat");
        drop(b2);
        assert_eq!(load.connections(), 0);
    }

    #[test]
    fn zero_means_unlimited() {
        let load = Arc::new(Load::new(0));
        let seats: Vec<_> = (0..100).filter_map(|_| load.try_seat()).collect();
        assert_eq!(seats.len(), 100);
    }

    #[test]
    fn put_back_ids_come_first() {
        let load = Load::new(0);
        load.record_consumed("r1".into());
        let taken = load.take_consumed();
        load.record_consumed("r2".into());
        load.put_back_consumed(taken);
        assert_eq!(load.take_consumed(), ["r1", "r2"]);
        assert!(load.take_consumed().is_empty());
    }
}
