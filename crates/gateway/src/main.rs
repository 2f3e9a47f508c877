//! `switchyard-gateway`: parse flags, set up telemetry, bind, mount Switchyard, serve.
//!
//! Exits 0 after a drain or a clean shutdown, 1 when starting or serving fails; the reason goes
//! to stderr in one line (no backtrace, whatever `RUST_BACKTRACE` says).

use anyhow::Context;
use clap::Parser;
use socketioxide::SocketIo;
use switchyard_gateway::{Switchyard, config::Cli, server};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let telemetry = switchyard_common::telemetry::init("switchyard-gateway", &cli.telemetry)?;
    let listener = tokio::net::TcpListener::bind(cli.gateway.listen)
        .await
        .with_context(|| format!("binding {}", cli.gateway.listen))?;
    let bound = listener.local_addr()?;
    let gateway = Switchyard::new(cli.gateway.settings(bound))?;

    let (layer, io) = gateway.configure(SocketIo::builder()).build_layer();
    gateway.mount(&io);
    let running = gateway.start(io.clone())?;
    let app = axum::Router::new()
        .merge(gateway.ops_router(telemetry.metrics.clone()))
        .layer(layer);
    server::serve(listener, app, &gateway, io, running).await
}
