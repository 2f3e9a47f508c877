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
