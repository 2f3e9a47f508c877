//! `switchyard-relay`: parse the configuration, set up telemetry, serve.
//!
//! Exits 0 after a clean shutdown (SIGTERM, Ctrl-C), 2 on a configuration the relay refuses,
//! 1 when serving fails; the reason goes to stderr in one line.

use std::process::ExitCode;

use clap::Parser;
use switchyard_relay::{config::Config, server};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("switchyard-relay: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match config.runtime.build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("switchyard-relay: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let telemetry = match switchyard_common::telemetry::init("switchyard-relay", &config.telemetry)
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard-relay: cannot set up telemetry: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = server::run(config, telemetry.metrics.clone()).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "relay failed");
        eprintln!("switchyard-relay: {e:#}");
    }
    drop(telemetry);
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
