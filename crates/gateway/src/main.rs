//! `switchyard-gateway`: parse flags, set up telemetry, bind, mount Switchyard, serve.
//!
//! With `--relay-urls` the namespaces use the cluster adapter (rooms span every gateway);
//! without, socketioxide's local adapter.

use anyhow::Context;
use clap::Parser;
use socketioxide::{SocketIo, SocketIoBuilder, adapter::Adapter};
use socketioxide_core::adapter::DefinedAdapter;
use switchyard_common::http_server::HttpListener;
use switchyard_gateway::{ClusterAdapter, Switchyard, config::Cli, server};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime
        .build()
        .context("starting the async runtime")?
        .block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let telemetry = switchyard_common::telemetry::init("switchyard-gateway", &cli.telemetry)?;
    let tls = cli.gateway.tls.server.load()?;
    let listener = HttpListener::bind(
        cli.gateway.listen,
        tls.as_ref(),
        &cli.gateway.http,
        switchyard_gateway::metrics::HTTP_LISTENER,
    )
    .await
    .with_context(|| format!("binding {}", cli.gateway.listen))?;
    let bound = listener.local_addr()?;
    let gateway = Switchyard::new(cli.gateway.settings(bound)?)?;
    let metrics = telemetry.metrics.clone();
    match gateway.cluster_state()? {
        Some(state) => {
            let builder = SocketIo::builder().with_adapter::<ClusterAdapter<_>>(state);
            run(listener, gateway, builder, metrics).await
        }
        None => run(listener, gateway, SocketIo::builder(), metrics).await,
    }
}

async fn run<A: Adapter + DefinedAdapter>(
    listener: HttpListener,
    gateway: Switchyard,
    builder: SocketIoBuilder<A>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let (layer, io) = gateway.configure(builder).build_layer();
    gateway.mount(&io);
    let running = gateway.start(io.clone())?;
    let app = axum::Router::new()
        .merge(gateway.ops_router(metrics))
        .layer(layer);
    server::serve(listener, app, &gateway, io, running).await
}
