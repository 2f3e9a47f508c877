//! `switchyard-placement`: parse the configuration, set up telemetry, serve.
//!
//! Exits 0 after a clean shutdown (SIGTERM, Ctrl-C), 2 on a configuration placement refuses,
//! 1 when serving fails; the reason goes to stderr in one line (no backtrace, whatever
//! `RUST_BACKTRACE` says: an operator reads it, not a debugger).

use std::process::ExitCode;

use clap::Parser;
use switchyard_placement::{config::Config, server};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("switchyard-placement: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match config.runtime.build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("switchyard-placement: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let telemetry =
        match switchyard_common::telemetry::init("switchyard-placement", &config.telemetry) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("switchyard-placement: cannot set up telemetry: {e:#}");
                return ExitCode::from(2);
            }
        };
    let result = server::run(config, telemetry.metrics.clone()).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "placement failed");
        eprintln!("switchyard-placement: {e:#}");
    }
    drop(telemetry);
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
