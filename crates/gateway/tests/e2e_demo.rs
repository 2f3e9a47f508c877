//! The demo chat page (`clients/js/demo`) works in a real browser: headless Debian Chromium,
//! driven by playwright-core (`clients/js/tools/demo-check.mjs`), opens two pages that assign
//! through placement (CORS), land on two different gateways, join a room, and see each other's
//! message: a chat across gateways, through the relay.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use support::{Cluster, repo_root};

/// Two gateways behind one relay: placement puts the two pages on different ones.
const GATEWAYS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_chat_page_delivers_a_message_between_two_browser_pages() -> anyhow::Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        bail!(
            "{chromium} is missing: `apt-get install -y chromium` (cargo xtask test installs it)"
        );
    }
    let js = repo_root().join("clients/js");
    if !js.join("node_modules/playwright-core").is_dir() {
        bail!("clients/js/node_modules is missing: run `npm ci --prefix clients/js`");
    }
    let cluster = Cluster::with_relay(GATEWAYS, &[], &[])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    cluster.wait_linked(Duration::from_secs(10)).await?;

    let shot = switchyard_testkit::process::log_dir()?.join("demo-chat.png");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(js.join("tools/demo-check.mjs"))
            .args(["--placement", cluster.placement.http_url()])
            .args(["--chromium", &chromium])
            .arg("--distinct-nodes")
            .arg("--screenshot")
            .arg(&shot)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("demo check hung")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .with_context(|| format!("demo check output: {stdout}"))?;
    assert_eq!(result["ok"], true, "{result}");
    Ok(())
}
