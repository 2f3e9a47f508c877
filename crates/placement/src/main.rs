//! `switchyard-placement`: parse the configuration, set up telemetry, serve.

use clap::Parser;
use switchyard_placement::{config::Config, server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    let telemetry = switchyard_common::telemetry::init("switchyard-placement", &config.telemetry)?;
    let result = server::run(config, telemetry.metrics.clone()).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "placement failed");
    }
    drop(telemetry);
    result
}
