//! Serving: the listener, the readiness line, signals, and an orderly exit.
//!
//! Lifecycle of [`serve`]:
//! 1. serve `app` on the bound listener (CORS open, so browser pages on other origins can use
//!    long-polling), mark the gateway serving (`/readyz` 200), and print
//!    `SWITCHYARD_READY http=<addr> node=<id>` on stdout;
//! 2. on SIGTERM / Ctrl-C start the shutdown drain (a second signal skips the rest of it);
//!    placement's `Drain` directive starts the same drain;
//! 3. when the drain finishes (no clients left, or the deadline), close every socket still
//!    open, close the report stream (placement drops the node at once), stop accepting HTTP,
//!    give in-flight requests a moment, and return `Ok` — the binary exits 0.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use socketioxide::{SocketIo, adapter::Adapter};
use switchyard_common::http_server::HttpListener;
use tokio::sync::watch;
use tower_http::cors::CorsLayer;

use crate::gateway::{Running, Switchyard};

/// How long closing sockets and in-flight HTTP requests may take at exit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` until a drain that ends the process has finished. See the module docs.
///
/// `listener` carries the listener's limits (header-read timeout, pending connections) and
/// TLS, if any (`switchyard_common::http_server`).
pub async fn serve<A>(
    listener: HttpListener,
    app: Router,
    gateway: &Switchyard,
    io: SocketIo<A>,
    mut running: Running,
) -> anyhow::Result<()>
where
    A: Adapter,
{
    let addr = listener.local_addr().context("reading the bound address")?;
    let app = app.layer(CorsLayer::very_permissive());
    let (stop_http, mut stop_http_rx) = watch::channel(false);
    let mut server = tokio::spawn(listener.serve(app, async move {
        let _ = stop_http_rx.wait_for(|stop| *stop).await;
    }));

    // Install the signal handlers before announcing readiness: a SIGTERM sent right after the
    // READY line must start a drain, not kill the process with the default disposition.
    let mut signal = armed_signal().await;
    let drain = gateway.drain_state().clone();
    drain.set_serving(true);
    let node_id = &gateway.settings().node_id;
    tracing::info!(http = %addr, node_id = %node_id, public_url = %gateway.settings().public_url, "listening");
    switchyard_common::ops::announce_ready(&[("http", &addr), ("node", node_id)])
        .context("writing the readiness line")?;

    let mut signalled = false;
    let end = loop {
        tokio::select! {
            end = running.drained() => break end,
            _ = &mut signal => {
                signal = armed_signal().await;
                if signalled {
                    drain.hurry();
                } else {
                    signalled = true;
                    tracing::info!(connections = gateway.connections(), "draining before exit");
                    running.shutdown();
                }
            }
            res = &mut server => {
                drain.set_serving(false);
                running.stop().await;
                return match res {
                    Ok(()) => Err(anyhow::anyhow!("HTTP server stopped unexpectedly")),
                    Err(e) => Err(anyhow::Error::new(e).context("HTTP server task failed")),
                };
            }
        }
    };
    tracing::info!(?end, "drain finished; closing");
    drain.set_serving(false);
    if tokio::time::timeout(CLOSE_GRACE, io.close()).await.is_err() {
        tracing::warn!("closing sockets timed out");
    }
    running.stop().await;
    stop_http.send_replace(true);
    match tokio::time::timeout(CLOSE_GRACE, &mut server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!("open HTTP connections did not finish in time; closing them");
            server.abort();
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// [`switchyard_common::shutdown::signal`], polled once so its handlers are installed now.
async fn armed_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut signal: Pin<Box<dyn Future<Output = ()> + Send>> =
        Box::pin(switchyard_common::shutdown::signal());
    if futures::poll!(signal.as_mut()).is_ready() {
        // Already signalled (cannot happen on a first poll, but keep the event): ready again.
        return Box::pin(std::future::ready(()));
    }
    signal
}
