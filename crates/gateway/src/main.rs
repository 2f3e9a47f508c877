//! `switchyard-gateway`: parse flags, set up telemetry, bind, mount Switchyard, serve.

use anyhow::Context;
use clap::Parser;
use socketioxide::SocketIo;
use switchyard_gateway::{Switchyard, config::Cli, server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
