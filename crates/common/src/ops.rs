//! The operator's HTTP endpoints, identical on every service.
//!
//! - `/healthz`: the process is up and its event loop answers.
//! - `/readyz`: the service wants traffic; `503` while starting or draining.
//! - `/metrics`: Prometheus text exposition.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

/// Prints `SWITCHYARD_READY k=v …` on stdout once a service serves: the one line tests,
/// `cargo xtask up` and benchmarks wait for, carrying the addresses actually bound (port 0
/// allowed).
pub fn announce_ready(fields: &[(&str, &dyn std::fmt::Display)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(out, "SWITCHYARD_READY")?;
    for (key, value) in fields {
        write!(out, " {key}={value}")?;
    }
    writeln!(out)?;
    out.flush()
}

/// A shared readiness flag; services flip it when they can serve and when they start draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct OpsState {
    ready: Readiness,
    metrics: PrometheusHandle,
}

/// Router with `/healthz`, `/readyz` and `/metrics`, to be merged into a service's HTTP router.
pub fn router(ready: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                if s.ready.get() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move {
                s.metrics.run_upkeep();
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(OpsState { ready, metrics })
}
