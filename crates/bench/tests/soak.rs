//! One minute of the soak (`switchyard-bench soak`, what `cargo xtask soak` runs for longer) on
//! the debug builds: with connection churn and numbered publishes, no subscriber may miss, double
//! or reorder an acknowledged event, and nothing may fail. Memory slope is reported, not asserted
//! (a minute of a loaded 2-core machine is too noisy for it).

use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

#[test]
fn a_minute_of_churn_and_publishes_loses_nothing_and_fails_nothing() -> anyhow::Result<()> {
    let out = switchyard_testkit::process::log_dir()?
        .join(format!("soak-test-{}.json", std::process::id()));
    let profile = std::env::var("SWITCHYARD_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    let run = Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
        .args(["soak", "--minutes", "1", "--sample-secs", "2", "--out"])
        .arg(&out)
        .env("SWITCHYARD_PROFILE", profile)
        .output()
        .context("running switchyard-bench soak")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}");
    ensure!(
        run.status.success(),
        "soak failed with {}:\n{stdout}\n{stderr}",
        run.status
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    for zero in ["lost", "duplicated", "out_of_order", "errors"] {
        ensure!(report[zero] == 0, "{zero} is {}: {report}", report[zero]);
    }
    for positive in ["publishes_acked", "deliveries_received", "churn_cycles"] {
        ensure!(
            report[positive].as_u64().is_some_and(|n| n > 0),
            "{positive} is {}",
            report[positive]
        );
    }
    ensure!(
        report["deliveries_received"] == report["deliveries_expected"],
        "{report}"
    );
    let processes = report["processes"].as_array().context("processes")?;
    ensure!(
        processes.len() == 6,
        "placement, relay, 3 gateways and redis sampled: {processes:?}"
    );
    Ok(())
}
