//! The disconnect hook's delivery: at least once, with retries, off the socket's path.
//!
//! A socket's disconnect only puts its [`DisconnectRequest`] on a bounded queue
//! ([`DISCONNECT_QUEUE`]; `try_send`, never waiting): when the queue is full the request is
//! dropped and counted (`switchyard_gateway_hook_disconnects_dropped_total{cause="queue_full"}`),
//! so a backend that is down never holds a disconnect up or grows memory. One task takes
//! requests off the queue and runs each in a task of its own, at most [`DISCONNECT_IN_FLIGHT`]
//! at once (so at most that many more wait beyond the queue). Each is retried with the one
//! backoff policy while the backend is unavailable, up to [`DISCONNECT_ATTEMPTS`] times, then
//! dropped and counted (`cause="gave_up"`). Any answer the backend gives (2xx, 4xx, or a body
//! that is not JSON) means it received the request: no retry. The backend may get a request
//! twice (an answer lost after it was handled), so it should treat `sid` as the key.
//!
//! A gateway that stops [`Disconnects::flush`]es after closing its sockets: it waits, up to
//! [`FLUSH_FOR`], until every queued disconnect (those of the sockets just closed among them)
//! is delivered or given up, and counts what is left as `cause="shutdown"`. So a drain or a
//! rolling restart loses no disconnect of a reachable backend, and any it does lose is counted.

use std::sync::Arc;
use std::time::Duration;

use switchyard_common::backoff::Backoff;
use tokio::sync::{Semaphore, mpsc, watch};

use super::client::{Hook, HookClient, HookError};
use super::contract::DisconnectRequest;
use crate::metrics;

/// Disconnect requests waiting for the backend, per gateway.
pub const DISCONNECT_QUEUE: usize = 10_000;
/// Disconnect requests being delivered (or retried) at once.
pub const DISCONNECT_IN_FLIGHT: usize = 64;
/// Tries per request before it is dropped.
pub const DISCONNECT_ATTEMPTS: u32 = 8;
/// How long a stopping gateway waits for its queued disconnects.
pub const FLUSH_FOR: Duration = Duration::from_secs(5);

/// The sending half: where sockets put their disconnects.
#[derive(Debug, Clone)]
pub struct Disconnects {
    queue: mpsc::Sender<DisconnectRequest>,
    /// Requests queued and not yet delivered or dropped.
    outstanding: Arc<watch::Sender<usize>>,
}

/// The receiving half, until [`deliver`] takes it.
#[derive(Debug)]
pub struct DisconnectQueue {
    queue: mpsc::Receiver<DisconnectRequest>,
    outstanding: Arc<watch::Sender<usize>>,
}

impl Disconnects {
    pub fn new() -> (Self, DisconnectQueue) {
        let (tx, rx) = mpsc::channel(DISCONNECT_QUEUE);
        let outstanding = Arc::new(watch::Sender::new(0));
        (
            Self {
                queue: tx,
                outstanding: outstanding.clone(),
            },
            DisconnectQueue {
                queue: rx,
                outstanding,
            },
        )
    }

    /// Queues `req`, or drops and counts it when the queue is full. Never waits.
    pub fn push(&self, req: DisconnectRequest) {
        // Counted before it is queued, so delivery cannot finish it before it is counted.
        self.outstanding.send_modify(|n| *n += 1);
        if self.queue.try_send(req).is_err() {
            self.outstanding.send_modify(|n| *n -= 1);
            dropped("queue_full", 1);
        }
    }

    /// Waits up to `deadline` until every queued request is delivered or dropped; counts what is
    /// left as dropped at `shutdown`.
    pub async fn flush(&self, deadline: Duration) {
        let mut outstanding = self.outstanding.subscribe();
        if tokio::time::timeout(deadline, outstanding.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            let left = *outstanding.borrow();
            tracing::warn!(left, "disconnect hooks still queued at shutdown");
            dropped("shutdown", left as u64);
        }
    }
}

fn dropped(cause: &'static str, n: u64) {
    tracing::warn!(cause, n, "disconnect hook dropped");
    ::metrics::counter!(metrics::HOOK_DISCONNECTS_DROPPED_TOTAL, "cause" => cause).increment(n);
}

/// Delivers what arrives on `queue` until every sender is gone. Spawn it once.
pub async fn deliver(client: Arc<HookClient>, queue: DisconnectQueue) {
    let DisconnectQueue {
        mut queue,
        outstanding,
    } = queue;
    let in_flight = Arc::new(Semaphore::new(DISCONNECT_IN_FLIGHT));
    while let Some(req) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (client, outstanding) = (client.clone(), outstanding.clone());
        tokio::spawn(async move {
            let _permit = permit;
            deliver_one(&client, req).await;
            outstanding.send_modify(|n| *n -= 1);
        });
    }
}

async fn deliver_one(client: &HookClient, req: DisconnectRequest) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for _ in 0..DISCONNECT_ATTEMPTS {
        match client
            .call::<_, serde::de::IgnoredAny>(Hook::Disconnect, &req)
            .await
        {
            Ok(_) | Err(HookError::Refused(_) | HookError::Invalid(_)) => return,
            Err(HookError::Unavailable(_)) => tokio::time::sleep(backoff.next_delay()).await,
        }
    }
    dropped("gave_up", 1);
}
