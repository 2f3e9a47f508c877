//! The gateway report stream (`Placement/Report`): registration, liveness and directives.
//!
//! Protocol, as this module enforces it:
//! - The first message must be `Register` (else `INVALID_ARGUMENT`); it is validated
//!   ([`validate_registration`]) and written to the ledger; the reply is `Registered` with the
//!   liveness window, the effective weight and the ledger's draining flag.
//! - Every later message is a `Load` with absolute figures. When the ledger does not know the
//!   node ([`LedgerError::UnknownNode`]: reaped, or Redis restarted empty), the stream
//!   registers it again from the stored registration and reports again: this is how a lost
//!   ledger heals without any gateway reconnecting. Other ledger errors (Redis down) are
//!   logged and counted and the stream stays open: Redis may come back.
//! - A stream that sends nothing for the liveness window (3 report intervals) is closed with
//!   `DEADLINE_EXCEEDED`; a stream that ends or fails leaves the ledger at once.
//! - Two streams claiming one node id on this replica: the newer wins, the older receives
//!   `Superseded` and is closed, and its end does not remove the node (the [`StreamRegistry`]
//!   only lets the current stream of an id remove it). With several placement replicas the
//!   older stream on another replica keeps reporting the same absolute figures: harmless.
//!
//! Directives from the admin API ([`crate::admin`]) reach a node through the
//! [`StreamRegistry`] when its stream is on this replica. For a node on another replica the
//! ledger's draining flag is the source of truth: every [`DRAIN_SYNC_EVERY`] reports each
//! stream reads its node's flag and, when it changed under it (a `DrainNode` answered by
//! another replica), sends `Drain` (at the default `--drain-rate`) or `Undrain` itself. So
//! assignment stops at once everywhere, and the gateway is told within a few intervals.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use switchyard_common::namespace;
use switchyard_proto::placement::v1::{
    Directive, Drain, GatewayReport, Load, Register, Registered, Superseded, Undrain, directive,
    gateway_report,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::ledger::{
    Ledger, LedgerError, LoadReport, MAX_NAMESPACES, NodeRegistration, NodeView, validate,
};

/// How many reports between two reads of the node's draining flag in the ledger.
pub const DRAIN_SYNC_EVERY: u32 = 5;
/// Directives buffered per stream before new ones are dropped (they are rare and idempotent).
const DIRECTIVE_BUFFER: usize = 32;

/// What the report stream needs from the configuration.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Silence longer than this closes a stream (3 report intervals).
    pub liveness: Duration,
    /// Disconnects per second asked of a gateway told to drain by a ledger flag change.
    pub drain_rate: u32,
}

/// A message for the task serving one stream.
#[derive(Debug)]
enum Control {
    Directive(Directive),
    Supersede,
}

#[derive(Debug)]
struct Entry {
    stream_id: u64,
    control: mpsc::Sender<Control>,
}

/// Where a directive went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued on the node's stream on this replica.
    Local,
    /// The node has no stream on this replica (it may be on another one).
    NotLocal,
}

/// The live report streams of this replica, one per node id.
///
/// A std `Mutex`: every critical section is a map operation and never awaits.
#[derive(Debug, Default)]
pub struct StreamRegistry {
    streams: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

impl StreamRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a new stream the current one for `node_id`, superseding any older one.
    fn claim(&self, node_id: &str, control: mpsc::Sender<Control>) -> u64 {
        let stream_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let old = self
            .lock()
            .insert(node_id.to_owned(), Entry { stream_id, control });
        if let Some(old) = old {
            tracing::warn!(
                node_id,
                "a newer stream registered the same node id; superseding"
            );
            // Full buffer or an already finished task: the old task ends anyway once its
            // control sender is dropped here.
            let _ = old.control.try_send(Control::Supersede);
        }
        ::metrics::gauge!(crate::metrics::REPORT_STREAMS).set(self.len() as f64);
        stream_id
    }

    /// Forgets the stream if it is still the current one for `node_id`; `true` if it was.
    fn release(&self, node_id: &str, stream_id: u64) -> bool {
        let mut streams = self.lock();
        let current = streams
            .get(node_id)
            .is_some_and(|e| e.stream_id == stream_id);
        if current {
            streams.remove(node_id);
        }
        let len = streams.len();
        drop(streams);
        ::metrics::gauge!(crate::metrics::REPORT_STREAMS).set(len as f64);
        current
    }

    /// Sends a directive to the node's stream if it is on this replica.
    pub fn send(&self, node_id: &str, directive: Directive) -> Delivery {
        let streams = self.lock();
        match streams.get(node_id) {
            Some(e) => match e.control.try_send(Control::Directive(directive)) {
                Ok(()) => Delivery::Local,
                Err(err) => {
                    tracing::warn!(node_id, error = %err, "directive dropped: stream busy or closing");
                    Delivery::NotLocal
                }
            },
            None => Delivery::NotLocal,
        }
    }

    /// Node ids with a stream on this replica.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ledger's refusal of invalid input, as the stream's status.
fn invalid(e: LedgerError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Validates a `Register` message into a ledger registration: the ledger's own checks
/// ([`validate::registration`]) plus what only a stream knows (the URL must be an absolute
/// http(s) URL, the report interval must fit the liveness window, namespaces are normalised).
pub fn validate_registration(r: Register, liveness: Duration) -> Result<NodeRegistration, Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    validate::node_id(&r.node_id).map_err(invalid)?;
    match r.url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
        _ => return bad(format!("url `{}` is not an absolute http(s) URL", r.url)),
    }
    let liveness_ms = u32::try_from(liveness.as_millis()).unwrap_or(u32::MAX);
    if r.report_interval_ms != 0 && !(10..=liveness_ms).contains(&r.report_interval_ms) {
        return bad(format!(
            "report_interval_ms must be 10..={liveness_ms} (placement's liveness window)"
        ));
    }
    if r.namespaces.len() > MAX_NAMESPACES {
        return bad(format!("at most {MAX_NAMESPACES} namespaces"));
    }
    let mut namespaces = Vec::with_capacity(r.namespaces.len().max(1));
    for ns in &r.namespaces {
        let ns = namespace::normalize(ns).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !namespaces.iter().any(|n| n == ns) {
            namespaces.push(ns.to_owned());
        }
    }
    validate::registration(&NodeRegistration {
        node_id: r.node_id,
        url: r.url,
        weight: r.weight,
        capacity: r.capacity,
        namespaces,
    })
    .map_err(invalid)
}

/// Validates a `Load` message of node `node_id` with the ledger's checks ([`validate::report`]).
fn validate_load(node_id: &str, l: Load) -> Result<LoadReport, Status> {
    let load = LoadReport {
        connections: l.connections,
        consumed: l.consumed_reservations,
        draining: l.draining,
        full: l.full,
    };
    validate::report(node_id, &load).map_err(invalid)?;
    Ok(load)
}

fn directive(kind: directive::Kind) -> Directive {
    Directive { kind: Some(kind) }
}

/// Serves report streams; one per replica, shared by every stream.
pub struct ReportStreams {
    ledger: Arc<dyn Ledger>,
    registry: Arc<StreamRegistry>,
    settings: StreamSettings,
    shutdown: watch::Receiver<bool>,
}

/// Why a stream's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ended,
    Failed,
    Silent,
    Invalid,
    Superseded,
    Shutdown,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Ended => "ended",
            End::Failed => "failed",
            End::Silent => "silent",
            End::Invalid => "invalid",
            End::Superseded => "superseded",
            End::Shutdown => "shutdown",
        }
    }
}

impl ReportStreams {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        registry: Arc<StreamRegistry>,
        settings: StreamSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            ledger,
            registry,
            settings,
            shutdown,
        }
    }

    fn liveness_ms(&self) -> u32 {
        u32::try_from(self.settings.liveness.as_millis()).unwrap_or(u32::MAX)
    }

    async fn view(&self, node_id: &str) -> Option<NodeView> {
        match self.ledger.nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .find(|n| n.registration.node_id == node_id),
            Err(e) => {
                tracing::debug!(error = %e, "reading the ledger view failed");
                None
            }
        }
    }

    /// Accepts a new stream: reads and validates `Register`, registers the node, answers
    /// `Registered`, and spawns the task that serves the rest of the stream.
    pub async fn open(
        self: &Arc<Self>,
        mut inbound: Streaming<GatewayReport>,
    ) -> Result<ReceiverStream<Result<Directive, Status>>, Status> {
        let first = match tokio::time::timeout(self.settings.liveness, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Register within the liveness window",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream ended before Register")),
            Ok(Ok(Some(m))) => m,
        };
        let Some(gateway_report::Kind::Register(register)) = first.kind else {
            ::metrics::counter!(crate::metrics::REGISTRATIONS_TOTAL, "outcome" => "invalid")
                .increment(1);
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        let registration =
            validate_registration(register, self.settings.liveness).inspect_err(|_| {
                ::metrics::counter!(crate::metrics::REGISTRATIONS_TOTAL, "outcome" => "invalid")
                    .increment(1);
            })?;
        let span = tracing::info_span!(
            "report_stream",
            node_id = %registration.node_id,
            url = %registration.url,
        );
        let (out_tx, out_rx) = mpsc::channel(DIRECTIVE_BUFFER);
        let (ctl_tx, ctl_rx) = mpsc::channel(DIRECTIVE_BUFFER);
        let stream_id = self.registry.claim(&registration.node_id, ctl_tx);
        let registered = async {
            match self.ledger.register(&registration).await {
                Ok(()) => {
                    tracing::info!(weight = registration.weight, "gateway registered");
                    ::metrics::counter!(crate::metrics::REGISTRATIONS_TOTAL, "outcome" => "ok")
                        .increment(1);
                    true
                }
                Err(e) => {
                    // Keep the stream: the next report retries the registration.
                    tracing::warn!(error = %e, "registering the gateway failed; retrying on its next report");
                    ::metrics::counter!(crate::metrics::REGISTRATIONS_TOTAL, "outcome" => "ledger_error")
                        .increment(1);
                    false
                }
            }
        }
        .instrument(span.clone())
        .await;
        let view = if registered {
            self.view(&registration.node_id).await
        } else {
            None
        };
        let draining = view.as_ref().is_some_and(|v| v.draining);
        let weight = view
            .as_ref()
            .map_or(registration.weight, |v| v.registration.weight);
        let reply = directive(directive::Kind::Registered(Registered {
            liveness_ms: self.liveness_ms(),
            weight,
            draining,
        }));
        // The channel is fresh and empty: this cannot fail for lack of room.
        let _ = out_tx.try_send(Ok(reply));
        let task = StreamTask {
            streams: Arc::clone(self),
            registration,
            stream_id,
            needs_register: !registered,
            known_draining: draining,
            reports: 0,
            ledger_failing: !registered,
        };
        tokio::spawn(task.run(inbound, out_tx, ctl_rx).instrument(span));
        Ok(ReceiverStream::new(out_rx))
    }
}

/// The state of one stream after `Register`.
struct StreamTask {
    streams: Arc<ReportStreams>,
    registration: NodeRegistration,
    stream_id: u64,
    /// The registration has not reached the ledger yet (it was unavailable).
    needs_register: bool,
    /// The draining flag the gateway was last told about (by `Registered`, `Drain`, `Undrain`).
    known_draining: bool,
    reports: u32,
    /// The last report could not be written (logged once per outage).
    ledger_failing: bool,
}

impl StreamTask {
    fn node_id(&self) -> &str {
        &self.registration.node_id
    }

    async fn run(
        mut self,
        mut inbound: Streaming<GatewayReport>,
        out: mpsc::Sender<Result<Directive, Status>>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let liveness = self.streams.settings.liveness;
        let mut shutdown = self.streams.shutdown.clone();
        let mut deadline = tokio::time::Instant::now() + liveness;
        let end = loop {
            if *shutdown.borrow() {
                break End::Shutdown;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break End::Shutdown;
                    }
                    continue;
                }
                ctl = control.recv() => match ctl {
                    Some(Control::Directive(d)) => self.forward(&out, d),
                    Some(Control::Supersede) | None => {
                        let _ = out.try_send(Ok(directive(directive::Kind::Superseded(Superseded {}))));
                        break End::Superseded;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let _ = out.try_send(Err(Status::deadline_exceeded(
                        "no report for 3 intervals: the node left the ledger",
                    )));
                    break End::Silent;
                }
                () = out.closed() => break End::Ended,
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        deadline = tokio::time::Instant::now() + liveness;
                        if let Err(status) = self.handle(m, &out).await {
                            tracing::warn!(%status, "closing a stream that sent invalid input");
                            let _ = out.try_send(Err(status));
                            break End::Invalid;
                        }
                    }
                    Ok(None) => break End::Ended,
                    Err(status) => {
                        tracing::debug!(%status, "report stream failed");
                        break End::Failed;
                    }
                },
            }
        };
        self.finish(end).await;
    }

    fn forward(&mut self, out: &mpsc::Sender<Result<Directive, Status>>, d: Directive) {
        match &d.kind {
            Some(directive::Kind::Drain(_)) => self.known_draining = true,
            Some(directive::Kind::Undrain(_)) => self.known_draining = false,
            _ => {}
        }
        if out.try_send(Ok(d)).is_err() {
            tracing::warn!("directive dropped: the gateway is not reading its stream");
        }
    }

    async fn handle(
        &mut self,
        msg: GatewayReport,
        out: &mpsc::Sender<Result<Directive, Status>>,
    ) -> Result<(), Status> {
        let load = match msg.kind {
            Some(gateway_report::Kind::Load(l)) => validate_load(self.node_id(), l)?,
            Some(gateway_report::Kind::Register(_)) => {
                return Err(Status::invalid_argument(
                    "Register is only valid as the first message",
                ));
            }
            None => return Err(Status::invalid_argument("empty report")),
        };
        let outcome = match self.record(&load).await {
            Ok(outcome) => {
                if self.ledger_failing {
                    tracing::info!("the ledger answers again");
                    self.ledger_failing = false;
                }
                outcome
            }
            Err(LedgerError::Invalid(detail)) => return Err(Status::invalid_argument(detail)),
            Err(e) => {
                // Once per outage, not once per report: Redis may stay away for a while.
                if !self.ledger_failing {
                    tracing::warn!(error = %e, "recording reports fails; keeping the stream");
                    self.ledger_failing = true;
                }
                "ledger_error"
            }
        };
        ::metrics::counter!(crate::metrics::REPORTS_TOTAL, "outcome" => outcome).increment(1);
        self.reports = self.reports.wrapping_add(1);
        if outcome != "ledger_error" && self.reports.is_multiple_of(DRAIN_SYNC_EVERY) {
            self.sync_draining(&load, out).await;
        }
        Ok(())
    }

    /// Tells the gateway about a draining flag changed in the ledger by another replica.
    async fn sync_draining(
        &mut self,
        load: &LoadReport,
        out: &mpsc::Sender<Result<Directive, Status>>,
    ) {
        if load.draining {
            // The gateway drains on its own (SIGTERM): nothing to tell it.
            return;
        }
        let Some(view) = self.streams.view(self.node_id()).await else {
            return;
        };
        if view.draining == self.known_draining {
            return;
        }
        let d = if view.draining {
            tracing::info!("ledger says draining: telling the gateway");
            directive(directive::Kind::Drain(Drain {
                rate_per_sec: self.streams.settings.drain_rate,
            }))
        } else {
            tracing::info!("ledger says not draining: telling the gateway");
            directive(directive::Kind::Undrain(Undrain {}))
        };
        self.forward(out, d);
    }

    /// Writes one report, registering the node first when the ledger does not know it
    /// (reaped, or Redis restarted empty) or when its registration never reached the ledger.
    async fn record(&mut self, load: &LoadReport) -> Result<&'static str, LedgerError> {
        let ledger = &self.streams.ledger;
        if self.needs_register {
            ledger.register(&self.registration).await?;
            tracing::info!("gateway registered after the ledger came back");
            self.needs_register = false;
        }
        match ledger.report(self.node_id(), load).await {
            Ok(()) => Ok("ok"),
            Err(LedgerError::UnknownNode(_)) => {
                ledger.register(&self.registration).await?;
                ledger.report(self.node_id(), load).await?;
                tracing::info!("gateway unknown to the ledger: registered it again");
                Ok("reregistered")
            }
            Err(e) => Err(e),
        }
    }

    async fn finish(self, end: End) {
        ::metrics::counter!(crate::metrics::STREAMS_CLOSED_TOTAL, "reason" => end.as_str())
            .increment(1);
        let current = self
            .streams
            .registry
            .release(self.node_id(), self.stream_id);
        // On shutdown the node stays: its gateway reconnects to another replica, and the
        // reaper removes it if it does not.
        if current && end != End::Shutdown && end != End::Superseded {
            match self.streams.ledger.remove(self.node_id()).await {
                Ok(()) => tracing::info!(reason = end.as_str(), "gateway left the ledger"),
                Err(e) => {
                    tracing::warn!(error = %e, "removing the gateway failed; the reaper will")
                }
            }
        } else {
            tracing::info!(reason = end.as_str(), "report stream closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Register {
        Register {
            node_id: "gw-1".into(),
            url: "http://127.0.0.1:4001".into(),
            weight: 0,
            capacity: 0,
            namespaces: vec![],
            report_interval_ms: 1000,
        }
    }

    #[test]
    fn registrations_are_validated_and_defaulted() -> Result<(), Status> {
        let live = Duration::from_secs(3);
        let r = validate_registration(reg(), live)?;
        assert_eq!(r.weight, 1);
        assert_eq!(r.namespaces, vec!["/".to_owned()]);
        let bad = [
            Register {
                node_id: String::new(),
                ..reg()
            },
            Register {
                node_id: "x".repeat(129),
                ..reg()
            },
            Register {
                node_id: "a b".into(),
                ..reg()
            },
            Register {
                url: "ftp://x".into(),
                ..reg()
            },
            Register {
                url: "not a url".into(),
                ..reg()
            },
            Register {
                url: "/relative".into(),
                ..reg()
            },
            Register {
                report_interval_ms: 60_000,
                ..reg()
            },
            Register {
                namespaces: vec!["chat".into()],
                ..reg()
            },
            Register {
                weight: crate::ledger::MAX_WEIGHT + 1,
                ..reg()
            },
        ];
        for b in bad {
            let shown = format!("{b:?}");
            assert!(validate_registration(b, live).is_err(), "{shown}");
        }
        Ok(())
    }

    #[test]
    fn absurd_loads_are_refused() {
        let ok = Load {
            connections: 5,
            consumed_reservations: vec!["r".into()],
            draining: false,
            full: false,
        };
        assert!(validate_load("gw", ok).is_ok());
        let bad = Load {
            connections: crate::ledger::MAX_CONNECTIONS + 1,
            ..Default::default()
        };
        assert!(validate_load("gw", bad).is_err());
    }

    #[test]
    fn the_newer_stream_wins_and_only_it_may_release() {
        let reg = StreamRegistry::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        let first = reg.claim("gw", tx1);
        let second = reg.claim("gw", tx2);
        assert!(matches!(rx1.try_recv(), Ok(Control::Supersede)));
        assert!(!reg.release("gw", first));
        assert_eq!(reg.len(), 1);
        assert!(reg.release("gw", second));
        assert!(reg.is_empty());
    }
}
