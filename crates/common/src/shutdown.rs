//! One shutdown signal for every service.
//!
//! Services await [`signal`] in their top-level task and tell their own tasks through a
//! `tokio::sync::watch` channel, so each task decides how it winds down.

/// Completes on SIGTERM or Ctrl-C (SIGINT). If a handler cannot be installed, that signal is
/// simply never observed; the other still works.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// How long a service waits for its servers and tasks after telling them to stop.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The two servers of a service with an HTTP and a gRPC port (placement, relay), run until a
/// signal arrives or one of them stops on its own.
pub struct Servers<H, G> {
    pub http: tokio::task::JoinHandle<H>,
    pub grpc: tokio::task::JoinHandle<G>,
}

impl<H: std::fmt::Debug, G: std::fmt::Debug> Servers<H, G> {
    /// Completes on SIGTERM / Ctrl-C (`None`), or when a server stops by itself: `Some(reason)`,
    /// which the service reports as its failure after winding down.
    pub async fn until_signal(&mut self) -> Option<String> {
        tokio::select! {
            () = signal() => None,
            r = &mut self.http => Some(format!("HTTP server stopped: {r:?}")),
            r = &mut self.grpc => Some(format!("gRPC server stopped: {r:?}")),
        }
    }

    /// Once the service has told its tasks to stop: waits at most [`SHUTDOWN_GRACE`] for
    /// `tasks` and both servers, then turns `early` (from [`Servers::until_signal`]) into the
    /// service's result.
    pub async fn finish(
        self,
        service: &str,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        early: Option<String>,
    ) -> anyhow::Result<()> {
        let Servers { http, grpc } = self;
        let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for task in tasks {
                let _ = task.await;
            }
            if !http.is_finished() {
                let _ = http.await;
            }
            if !grpc.is_finished() {
                let _ = grpc.await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("servers did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        match early {
            Some(reason) => anyhow::bail!(reason),
            None => {
                tracing::info!("{service} stopped");
                Ok(())
            }
        }
    }
}
