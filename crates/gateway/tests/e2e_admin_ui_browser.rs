//! The official Socket.IO admin dashboard (`@socket.io/admin-ui`'s `ui/dist`, unchanged) in
//! headless Debian Chromium, driven by playwright-core (`clients/js/tools/admin-ui-check.mjs`),
//! against three gateways with `--admin-ui` and a relay: it logs in through its own form,
//! shows the three gateways and every client socket of the cluster, and the "disconnect" button
//! of one socket on another gateway disconnects that client and takes it off the page.
//! Screenshots stay in `target/testkit-logs/admin-ui*.png`.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use support::{Cluster, Driver, repo_root};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "dashboard-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_dashboard_sees_and_acts_on_every_gateway() -> anyhow::Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        bail!(
            "{chromium} is missing: `apt-get install -y chromium` (cargo xtask test installs it)"
        );
    }
    let root = repo_root();
    for dir in [
        "clients/js/node_modules/playwright-core",
        "clients/socketio-tools/node_modules/@socket.io/admin-ui",
    ] {
        if !root.join(dir).is_dir() {
            bail!("{dir} is missing: run `cargo xtask prereqs`");
        }
    }
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let cluster = Cluster::with_relay(3, &support::admin_ui_args(&hash), &[])?;
    cluster.wait_linked(WAIT).await?;

    // Four clients: two on gw-0, one on each other gateway.
    let mut d = Driver::node().await?;
    let mut sids = Vec::new();
    for (i, gw) in [0, 0, 1, 2].into_iter().enumerate() {
        let id = format!("c{i}");
        d.connect_raw(
            &id,
            cluster.gateways[gw].url(),
            None,
            json!({"transports": ["websocket"]}),
        )
        .await?;
        let sid = d.connected(&id, WAIT).await?["sid"]
            .as_str()
            .context("sid")?
            .to_owned();
        sids.push(sid);
    }
    // The victim lives on gw-2; the dashboard talks to gw-0.
    let victim = sids[3].clone();

    let shot = switchyard_testkit::process::log_dir()?.join("admin-ui.png");
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(root.join("clients/js/tools/admin-ui-check.mjs"))
            .args(["--server", cluster.gateways[0].url()])
            .args(["--username", "admin", "--password", PASSWORD])
            .args(["--servers", &cluster.node_ids().join(",")])
            .args(["--sockets", &sids.join(",")])
            .args(["--disconnect", &victim])
            .args(["--chromium", &chromium])
            .arg("--screenshot")
            .arg(&shot)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("admin UI check hung")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "admin UI check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // The click reached the client on gw-2, and only it.
    let gone = d
        .wait_event("c3 disconnected from the dashboard", WAIT, |e| {
            e["id"] == "c3" && e["event"] == "disconnect"
        })
        .await?;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
    for id in ["c0", "c1", "c2"] {
        assert!(
            d.events_of(id, "disconnect").is_empty(),
            "{id} was disconnected too"
        );
    }
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    d.shutdown().await?;
    Ok(())
}
