//! Drain: move every client off this gateway, at a bounded rate, and (usually) exit.
//!
//! A drain starts on SIGTERM, on placement's `Drain` directive, on `Superseded` (another
//! process registered this node id), or when placement says at registration that the node is
//! marked draining. From that instant:
//!
//! - `/readyz` answers 503 and the next report says `draining = true`;
//! - admission refuses every new client with `draining`;
//! - the `DrainController` disconnects clients at the drain rate (per second, spread over
//!   20 ticks a second, never all at once). Each client first receives the event
//!   [`DRAIN_EVENT`] with `{"reason": "drain" | "shed" | "shutdown", "reassign": true}`, then a
//!   server-side namespace disconnect, which Socket.IO clients report as the disconnect reason
//!   `"io server disconnect"` (the official clients do **not** reconnect by themselves after
//!   it; Switchyard's client helper re-assigns through placement on any disconnect);
//! - a drain that should end the process finishes when the last client is gone, or at the
//!   deadline (`--drain-deadline-ms`), when every remaining client is disconnected at once
//!   (same signal). The server then closes and the process exits 0.
//!
//! A drain because the ledger marks the node draining at registration does not end the
//! process (an exiting pod that restarts under the same name would otherwise loop); it holds
//! the node empty and unready until `Undrain`. `Undrain` cancels any drain that placement
//! started; it never cancels a SIGTERM. `Shed` disconnects a number of clients at a rate without
//! draining (rebalancing).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use serde::Serialize;
use socketioxide::{SocketIo, adapter::Adapter, extract::SocketRef};
use switchyard_common::ops::Readiness;
use tokio::sync::{Notify, mpsc, watch};

use crate::load::Load;
use crate::metrics;
use crate::observe::{SentEvent, outgoing_observer};

/// The event every client receives just before the gateway disconnects it to move it elsewhere.
pub const DRAIN_EVENT: &str = "switchyard:drain";

/// Why a drain started. Logged, counted, and sent to clients in [`DrainNotice::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainCause {
    /// SIGTERM or Ctrl-C: the process is going away.
    Shutdown,
    /// Placement's `Drain` directive (an operator's drain).
    Directive,
    /// Another process registered with this node id.
    Superseded,
    /// Placement reported at registration that the ledger marks this node draining.
    Ledger,
}

impl DrainCause {
    fn label(self) -> &'static str {
        match self {
            DrainCause::Shutdown => "shutdown",
            DrainCause::Directive => "directive",
            DrainCause::Superseded => "superseded",
            DrainCause::Ledger => "ledger",
        }
    }

    fn notice_reason(self) -> &'static str {
        match self {
            DrainCause::Shutdown | DrainCause::Superseded => "shutdown",
            DrainCause::Directive | DrainCause::Ledger => "drain",
        }
    }

    /// Whether the process exits once the drain completes.
    fn exits(self) -> bool {
        !matches!(self, DrainCause::Ledger)
    }
}

/// What a client receives as the argument of [`DRAIN_EVENT`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DrainNotice {
    pub reason: &'static str,
    /// Always true: the client should ask placement for a new gateway.
    pub reassign: bool,
}

/// How a drain that ends the process finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every client left.
    Empty,
    /// The deadline passed; the remaining clients were disconnected at once.
    Deadline,
}

#[derive(Debug)]
enum Command {
    Drain {
        cause: DrainCause,
        rate_per_sec: u32,
    },
    Undrain,
    Shed {
        count: u64,
        rate_per_sec: u32,
    },
    /// A second SIGTERM: stop being polite.
    Hurry,
}

/// The shared drain flag, readiness, and the way to ask the controller for work.
#[derive(Debug)]
pub struct DrainState {
    draining: AtomicBool,
    serving: AtomicBool,
    /// Out of file descriptors, as the reporter last found (`descriptors`).
    full: AtomicBool,
    readiness: Readiness,
    commands: mpsc::UnboundedSender<Command>,
    default_rate: u32,
    /// Wakes the reporter when `draining` flips, so placement hears it before the next tick.
    changed: Notify,
}

impl DrainState {
    /// A state and the receiving half the [`DrainController`] consumes.
    pub(crate) fn new(default_rate: u32) -> (Arc<Self>, DrainInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Self {
            draining: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            full: AtomicBool::new(false),
            readiness: Readiness::default(),
            commands: tx,
            default_rate,
            changed: Notify::new(),
        });
        (state, DrainInbox(rx))
    }

    /// True while new clients are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The flag `/readyz` reads: serving, not draining and not full.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Called once the HTTP listener serves.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
        self.refresh_readiness();
    }

    /// Whether the gateway is out of file descriptors (the reporter's word, before each
    /// report); a full gateway is not ready, and placement assigns it nothing.
    pub fn set_full(&self, full: bool) {
        if self.full.swap(full, Ordering::AcqRel) != full {
            if full {
                tracing::warn!("out of file descriptors: reporting full to placement");
            } else {
                tracing::info!("file descriptors available again: no longer full");
            }
        }
        ::metrics::gauge!(metrics::FULL).set(if full { 1.0 } else { 0.0 });
        self.refresh_readiness();
    }

    /// Starts a drain. `rate_per_sec == 0` uses `--drain-rate`. The flag flips immediately,
    /// before this returns, so admission refuses from now on.
    pub fn drain(&self, cause: DrainCause, rate_per_sec: u32) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
        self.refresh_readiness();
        ::metrics::gauge!(metrics::DRAINING).set(1.0);
        let rate_per_sec = if rate_per_sec == 0 {
            self.default_rate
        } else {
            rate_per_sec
        };
        let _ = self.commands.send(Command::Drain {
            cause,
            rate_per_sec,
        });
    }

    /// Cancels a drain placement started (not a shutdown).
    pub fn undrain(&self) {
        let _ = self.commands.send(Command::Undrain);
    }

    /// Disconnects `count` clients at `rate_per_sec` (0: `--drain-rate`) without draining.
    pub fn shed(&self, count: u64, rate_per_sec: u32) {
        let rate_per_sec = if rate_per_sec == 0 {
            self.default_rate
        } else {
            rate_per_sec
        };
        let _ = self.commands.send(Command::Shed {
            count,
            rate_per_sec,
        });
    }

    /// Skips the rest of a shutdown drain: remaining clients are disconnected now.
    pub fn hurry(&self) {
        let _ = self.commands.send(Command::Hurry);
    }

    /// Completes when the draining flag flipped since the last call (one waiter: the reporter).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::AcqRel) != draining {
            self.changed.notify_one();
        }
        ::metrics::gauge!(metrics::DRAINING).set(if draining { 1.0 } else { 0.0 });
        self.refresh_readiness();
    }

    fn refresh_readiness(&self) {
        self.readiness.set(
            self.serving.load(Ordering::Acquire)
                && !self.draining.load(Ordering::Acquire)
                && !self.full.load(Ordering::Acquire),
        );
    }
}

/// The receiving end of drain commands, handed to `DrainController::spawn`.
#[derive(Debug)]
pub struct DrainInbox(mpsc::UnboundedReceiver<Command>);

/// Disconnects clients at a bounded rate. One task per gateway.
pub(crate) struct DrainController<A: Adapter> {
    io: SocketIo<A>,
    state: Arc<DrainState>,
    load: Arc<Load>,
    deadline: Duration,
    finished: watch::Sender<Option<DrainEnd>>,
}

/// An active disconnect job: a drain or a shed.
#[derive(Debug)]
struct Job {
    reason: &'static str,
    rate_per_sec: f64,
    /// Disconnects allowed but not yet made (fractional, accrues with time).
    allowance: f64,
    /// `None` for a drain (until empty); `Some(n)` for a shed of `n` more clients.
    remaining: Option<u64>,
}

const TICK: Duration = Duration::from_millis(50);

impl<A: Adapter> DrainController<A> {
    pub(crate) fn spawn(
        io: SocketIo<A>,
        state: Arc<DrainState>,
        inbox: DrainInbox,
        load: Arc<Load>,
        deadline: Duration,
    ) -> (
        tokio::task::JoinHandle<()>,
        watch::Receiver<Option<DrainEnd>>,
    ) {
        let (finished, finished_rx) = watch::channel(None);
        let controller = Self {
            io,
            state,
            load,
            deadline,
            finished,
        };
        (tokio::spawn(controller.run(inbox.0)), finished_rx)
    }

    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        let mut drain: Option<(DrainCause, Job, Instant)> = None;
        let mut shed: Option<Job> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = inbox.recv() => {
                    let Some(cmd) = cmd else { return };
                    match cmd {
                        Command::Drain { cause, rate_per_sec } => {
                            // A shutdown outranks any other drain; otherwise the latest wins.
                            let keep_existing = matches!(&drain, Some((c, _, _)) if c.exits() && !cause.exits());
                            if !keep_existing {
                                tracing::info!(cause = cause.label(), rate_per_sec, connections = self.load.connections(), "drain started");
                                ::metrics::counter!(metrics::DRAINS_TOTAL, "cause" => cause.label()).increment(1);
                                let started = drain.as_ref().map(|(_, _, s)| *s).unwrap_or_else(Instant::now);
                                drain = Some((cause, Job::new(cause.notice_reason(), rate_per_sec, None), started));
                            }
                            self.state.set_draining(true);
                        }
                        Command::Undrain => match &drain {
                            Some((DrainCause::Shutdown | DrainCause::Superseded, _, _)) => {
                                tracing::warn!("undrain ignored: the gateway is shutting down");
                            }
                            _ => {
                                tracing::info!("undrain: taking new clients again");
                                drain = None;
                                self.state.set_draining(false);
                            }
                        },
                        Command::Shed { count, rate_per_sec } => {
                            tracing::info!(count, rate_per_sec, "shedding clients");
                            shed = Some(Job::new("shed", rate_per_sec, Some(count)));
                        }
                        Command::Hurry => {
                            if let Some((cause, _, _)) = &drain && cause.exits() {
                                tracing::warn!("second signal: disconnecting every remaining client now");
                                let n = self.disconnect(usize::MAX, cause.notice_reason());
                                ::metrics::counter!(metrics::DRAIN_DISCONNECTS_TOTAL, "cause" => "deadline").increment(n as u64);
                                self.finish(DrainEnd::Deadline);
                                drain = None;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    // Set once a process-ending drain is over; the controller then idles.
                    let mut ended = false;
                    if let Some((cause, job, started)) = &mut drain {
                        let n = job.due(TICK);
                        if n > 0 {
                            let done = self.disconnect(n, job.reason);
                            ::metrics::counter!(metrics::DRAIN_DISCONNECTS_TOTAL, "cause" => cause.label()).increment(done as u64);
                        }
                        let left = self.load.connections();
                        ::metrics::gauge!(metrics::DRAIN_REMAINING).set(left as f64);
                        if cause.exits() {
                            if left == 0 {
                                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drain complete: no clients left");
                                self.finish(DrainEnd::Empty);
                                ended = true;
                            } else if started.elapsed() >= self.deadline {
                                tracing::warn!(left, "drain deadline reached: disconnecting the remaining clients at once");
                                let n = self.disconnect(usize::MAX, job.reason);
                                ::metrics::counter!(metrics::DRAIN_DISCONNECTS_TOTAL, "cause" => "deadline").increment(n as u64);
                                self.finish(DrainEnd::Deadline);
                                ended = true;
                            }
                        }
                    } else if let Some(job) = &mut shed {
                        let n = job.due(TICK);
                        if n > 0 {
                            let done = self.disconnect(n, job.reason);
                            ::metrics::counter!(metrics::DRAIN_DISCONNECTS_TOTAL, "cause" => "shed")
                                .increment(done as u64);
                            let remaining = job.remaining.unwrap_or(0).saturating_sub(done as u64);
                            job.remaining = Some(remaining);
                            // Done when the count is reached or no client is left to shed.
                            if remaining == 0 || done < n {
                                shed = None;
                            }
                        }
                    }
                    if ended {
                        // The flag stays up (admission keeps refusing) while the server closes.
                        drain = None;
                        shed = None;
                    }
                }
            }
        }
    }

    fn finish(&self, end: DrainEnd) {
        self.finished.send_replace(Some(end));
    }

    /// Tells up to `n` clients to re-assign and disconnects them; returns how many.
    fn disconnect(&self, n: usize, reason: &'static str) -> usize {
        let notice = DrainNotice {
            reason,
            reassign: true,
        };
        let mut done = 0;
        // Every namespace, not only the configured ones: an embedding application may add more.
        for op in self.io.nsps() {
            if done >= n {
                break;
            }
            let sockets: Vec<SocketRef<A>> = op.local().sockets();
            // Skip sockets already closing: they stay listed until their disconnect handler ran.
            for s in sockets.into_iter().filter(|s| s.connected()).take(n - done) {
                // The notice is queued before the disconnect packet on the same socket, so a
                // client sees it first. Both can fail only when the socket is already gone.
                if s.emit(DRAIN_EVENT, &notice).is_ok()
                    && let Some(observer) = outgoing_observer(&s)
                {
                    let args = [serde_json::to_value(&notice).unwrap_or_default()];
                    observer.sent(s.ns(), [s.id], &SentEvent::of_args(DRAIN_EVENT, args));
                }
                let _ = s.disconnect();
                done += 1;
            }
        }
        done
    }
}

impl Job {
    fn new(reason: &'static str, rate_per_sec: u32, remaining: Option<u64>) -> Self {
        Self {
            reason,
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            allowance: 0.0,
            remaining,
        }
    }

    /// How many disconnects are due after `elapsed`, capped by a shed's remaining count.
    fn due(&mut self, elapsed: Duration) -> usize {
        // Cap the carried allowance at one second's worth so a stall never releases a burst.
        self.allowance = (self.allowance + self.rate_per_sec * elapsed.as_secs_f64())
            .min(self.rate_per_sec.max(1.0));
        let mut n = self.allowance.floor() as u64;
        if let Some(r) = self.remaining {
            n = n.min(r);
        }
        self.allowance -= n as f64;
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_releases_its_rate_spread_over_ticks() {
        let mut job = Job::new("drain", 50, None);
        let total: usize = (0..20).map(|_| job.due(TICK)).sum();
        assert!((49..=50).contains(&total), "{total}");
        let mut slow = Job::new("drain", 2, None);
        let per_tick: Vec<usize> = (0..20).map(|_| slow.due(TICK)).collect();
        assert!(per_tick.iter().all(|&n| n <= 1));
        assert!((1..=2).contains(&per_tick.iter().sum::<usize>()));
    }

    #[test]
    fn a_stall_never_releases_more_than_one_second_of_work() {
        let mut job = Job::new("drain", 10, None);
        assert!(job.due(Duration::from_secs(60)) <= 10);
    }

    #[test]
    fn a_shed_stops_at_its_count() {
        let mut job = Job::new("shed", 1000, Some(3));
        assert_eq!(job.due(Duration::from_secs(1)), 3);
    }

    #[test]
    fn drain_flips_the_flag_and_readiness_at_once() {
        let (state, _inbox) = DrainState::new(50);
        state.set_serving(true);
        assert!(state.readiness().get());
        state.drain(DrainCause::Shutdown, 0);
        assert!(state.is_draining());
        assert!(!state.readiness().get());
    }
}
