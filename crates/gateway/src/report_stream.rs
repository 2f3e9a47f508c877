//! The report stream: this gateway's one long-lived gRPC stream to placement.
//!
//! Each session sends `Register`, waits for `Registered`, then sends a `Load` at once and every
//! report interval: absolute `connections`, the reservation ids consumed since the previous
//! report, and `draining`. Placement answers with directives, applied here: `Drain` and
//! `Undrain` and `Shed` go to [`crate::drain`]; `Superseded` (another process registered this
//! node id) ends reporting for good and drains this process away.
//!
//! When placement is unreachable or the stream breaks, sockets keep being served; the reporter
//! retries with [`Backoff`] (full jitter, so a fleet that lost placement does not return in one
//! wave). Reports carry no per-message acknowledgement, so consumed ids sent during the last
//! liveness window (three intervals) of a broken stream are put back and sent again on the next
//! stream: a consumed id is delivered at least once. Consuming a reservation twice is harmless
//! on placement's side (the second finds nothing pending), losing one would leave a phantom
//! pending seat until its TTL.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_common::backoff::Backoff;
use switchyard_proto::placement::v1::{
    GatewayReport, Load as LoadMsg, Register, directive, gateway_report,
    placement_client::PlacementClient,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::descriptors::Headroom;
use crate::drain::{DrainCause, DrainState};
use crate::load::Load;
use crate::metrics;
use crate::settings::Settings;

/// What the reporter tells placement about this gateway.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    pub placement_url: String,
    pub node_id: String,
    pub public_url: String,
    pub weight: u32,
    pub capacity: u64,
    /// Descriptors kept in reserve before the reports say `full` (`descriptors`).
    pub fd_reserve: u64,
    pub namespaces: Vec<String>,
    pub interval: Duration,
    /// Trust and client certificate for an `https://` placement URL.
    pub tls: switchyard_common::tls::ClientTls,
}

impl ReporterConfig {
    pub fn from_settings(s: &Settings, placement_url: String) -> Self {
        Self {
            placement_url,
            node_id: s.node_id.clone(),
            public_url: s.public_url.clone(),
            weight: s.weight,
            capacity: s.max_connections,
            fd_reserve: s.fd_reserve,
            namespaces: s.namespaces.clone(),
            interval: s.report_interval,
            tls: s.tls.clone(),
        }
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("invalid placement URL: {0}")]
    Url(String),
    #[error("cannot reach placement: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("report stream refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("placement closed the report stream")]
    Closed,
    #[error("placement did not answer the registration")]
    NoRegistered,
}

enum SessionEnd {
    /// Asked to stop (process exit): stream closed on purpose.
    Stopped,
    /// Another process owns this node id now.
    Superseded,
}

/// Spawns the reporter; it runs until `stop` turns true or placement supersedes this node.
pub fn spawn(
    config: ReporterConfig,
    load: Arc<Load>,
    drain: Arc<DrainState>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(config, load, drain, stop))
}

async fn run(
    config: ReporterConfig,
    load: Arc<Load>,
    drain: Arc<DrainState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return;
        }
        let mut unconfirmed = Unconfirmed::new(config.interval * 3);
        let span = tracing::info_span!("report_stream", node_id = %config.node_id, placement = %config.placement_url);
        let result = tracing::Instrument::instrument(
            session(
                &config,
                &load,
                &drain,
                &mut stop,
                &mut unconfirmed,
                &mut backoff,
            ),
            span,
        )
        .await;
        ::metrics::gauge!(metrics::REPORT_STREAM_UP).set(0.0);
        match result {
            Ok(SessionEnd::Stopped) => return,
            Ok(SessionEnd::Superseded) => {
                tracing::error!(node_id = %config.node_id, "superseded: another gateway registered this node id; draining");
                drain.drain(DrainCause::Superseded, 0);
                return;
            }
            Err(e) => {
                ::metrics::counter!(metrics::REPORT_STREAM_ERRORS_TOTAL).increment(1);
                let ids = unconfirmed.take_all();
                if !ids.is_empty() {
                    tracing::debug!(
                        count = ids.len(),
                        "re-queueing consumed reservations of the broken stream"
                    );
                }
                load.put_back_consumed(ids);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "report stream down; still serving sockets");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

async fn session(
    config: &ReporterConfig,
    load: &Load,
    drain: &DrainState,
    stop: &mut watch::Receiver<bool>,
    unconfirmed: &mut Unconfirmed,
    backoff: &mut Backoff,
) -> Result<SessionEnd, SessionError> {
    let endpoint = config
        .tls
        .endpoint(&config.placement_url)
        .map_err(|e| SessionError::Url(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await?;
    let mut client = PlacementClient::new(channel);

    let (tx, rx) = mpsc::channel::<GatewayReport>(8);
    let register = GatewayReport {
        kind: Some(gateway_report::Kind::Register(Register {
            node_id: config.node_id.clone(),
            url: config.public_url.clone(),
            weight: config.weight,
            capacity: config.capacity,
            namespaces: config.namespaces.clone(),
            report_interval_ms: u32::try_from(config.interval.as_millis()).unwrap_or(u32::MAX),
        })),
    };
    tx.send(register).await.map_err(|_| SessionError::Closed)?;
    let mut directives = client.report(ReceiverStream::new(rx)).await?.into_inner();

    // The first directive must be `Registered`; give placement a few intervals to say so.
    let first = tokio::time::timeout(
        config.interval * 5 + Duration::from_secs(2),
        directives.message(),
    )
    .await
    .map_err(|_| SessionError::NoRegistered)??
    .ok_or(SessionError::Closed)?;
    match first.kind {
        Some(directive::Kind::Registered(r)) => {
            tracing::info!(
                liveness_ms = r.liveness_ms,
                weight = r.weight,
                draining = r.draining,
                "registered with placement"
            );
            ::metrics::gauge!(metrics::REPORT_STREAM_UP).set(1.0);
            backoff.reset();
            if r.draining && !drain.is_draining() {
                tracing::warn!(
                    "placement marks this node draining; holding it empty until undrained"
                );
                drain.drain(DrainCause::Ledger, 0);
            }
        }
        other => {
            if let Some(end) = apply(other, drain) {
                return Ok(end);
            }
            return Err(SessionError::NoRegistered);
        }
    }

    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                send_load(&tx, config, load, drain, unconfirmed).await?;
            }
            _ = drain.changed() => {
                // Draining started or stopped: tell placement now, not at the next tick.
                send_load(&tx, config, load, drain, unconfirmed).await?;
            }
            msg = directives.message() => {
                match msg? {
                    Some(d) => {
                        if let Some(end) = apply(d.kind, drain) {
                            return Ok(end);
                        }
                    }
                    None => return Err(SessionError::Closed),
                }
            }
            _ = stop.changed() => {
                // Dropping the sender ends our half of the stream; placement removes the node.
                tracing::info!("closing the report stream");
                return Ok(SessionEnd::Stopped);
            }
        }
    }
}

/// Sends one `Load` report with absolute figures and the consumed ids taken from the queue,
/// and whether the gateway is full for lack of file descriptors (sampled now).
async fn send_load(
    tx: &mpsc::Sender<GatewayReport>,
    config: &ReporterConfig,
    load: &Load,
    drain: &DrainState,
    unconfirmed: &mut Unconfirmed,
) -> Result<(), SessionError> {
    let full = Headroom::is_full(config.fd_reserve);
    drain.set_full(full);
    let consumed = load.take_consumed();
    let report = GatewayReport {
        kind: Some(gateway_report::Kind::Load(LoadMsg {
            connections: load.connections(),
            consumed_reservations: consumed.clone(),
            draining: drain.is_draining(),
            full,
        })),
    };
    if tx.send(report).await.is_err() {
        load.put_back_consumed(consumed);
        return Err(SessionError::Closed);
    }
    unconfirmed.push(consumed);
    ::metrics::counter!(metrics::REPORTS_TOTAL).increment(1);
    Ok(())
}

/// Applies one directive; `Some` ends the session.
fn apply(kind: Option<directive::Kind>, drain: &DrainState) -> Option<SessionEnd> {
    let label = match &kind {
        Some(directive::Kind::Registered(_)) => "registered",
        Some(directive::Kind::Drain(_)) => "drain",
        Some(directive::Kind::Undrain(_)) => "undrain",
        Some(directive::Kind::Superseded(_)) => "superseded",
        Some(directive::Kind::Shed(_)) => "shed",
        None => "unknown",
    };
    ::metrics::counter!(metrics::DIRECTIVES_TOTAL, "kind" => label).increment(1);
    match kind {
        Some(directive::Kind::Drain(d)) => {
            tracing::info!(
                rate_per_sec = d.rate_per_sec,
                "placement asks this gateway to drain"
            );
            drain.drain(DrainCause::Directive, d.rate_per_sec);
        }
        Some(directive::Kind::Undrain(_)) => drain.undrain(),
        Some(directive::Kind::Shed(s)) => drain.shed(s.count, s.rate_per_sec),
        Some(directive::Kind::Superseded(_)) => return Some(SessionEnd::Superseded),
        Some(directive::Kind::Registered(_)) | None => {}
    }
    None
}

/// Consumed ids sent recently on the current stream, which placement may not have applied yet.
#[derive(Debug)]
struct Unconfirmed {
    window: Duration,
    batches: VecDeque<(Instant, Vec<String>)>,
}

impl Unconfirmed {
    fn new(window: Duration) -> Self {
        Self {
            window,
            batches: VecDeque::new(),
        }
    }

    /// Records a sent batch and forgets batches older than the window: a stream that stayed
    /// up that long after a report was, by placement's liveness rule, being read.
    fn push(&mut self, ids: Vec<String>) {
        self.push_at(ids, Instant::now());
    }

    fn push_at(&mut self, ids: Vec<String>, now: Instant) {
        while let Some((at, _)) = self.batches.front() {
            if now.saturating_duration_since(*at) > self.window {
                self.batches.pop_front();
            } else {
                break;
            }
        }
        if !ids.is_empty() {
            self.batches.push_back((now, ids));
        }
    }

    fn take_all(&mut self) -> Vec<String> {
        self.batches.drain(..).flat_map(|(_, ids)| ids).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfirmed_keeps_only_the_last_window_in_order() {
        let start = Instant::now();
        let mut u = Unconfirmed::new(Duration::from_secs(3));
        u.push_at(vec!["a".into()], start);
        u.push_at(vec![], start + Duration::from_secs(1));
        u.push_at(vec!["b".into()], start + Duration::from_secs(2));
        u.push_at(vec!["c".into()], start + Duration::from_secs(4));
        assert_eq!(u.take_all(), ["b", "c"]);
        assert!(u.take_all().is_empty());
    }

    #[test]
    fn directives_reach_the_drain_state() {
        let (drain, _inbox) = DrainState::new(10);
        assert!(
            apply(
                Some(directive::Kind::Drain(
                    switchyard_proto::placement::v1::Drain { rate_per_sec: 5 }
                )),
                &drain
            )
            .is_none()
        );
        assert!(drain.is_draining());
        assert!(matches!(
            apply(
                Some(directive::Kind::Superseded(
                    switchyard_proto::placement::v1::Superseded {}
                )),
                &drain
            ),
            Some(SessionEnd::Superseded)
        ));
    }
}
