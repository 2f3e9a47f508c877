//! `syctl publish` against a real `switchyard-relay` (build it first with `cargo build -p
//! switchyard-relay -p switchyard-placement -p switchyard-gateway --bins`): the event goes to
//! every linked gateway, the publish token is checked, and a local cluster is found through
//! `.switchyard/cluster.json`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts, TEST_PUBLISH_TOKEN,
};
use switchyard_testkit::wait::{eventually_blocking, give_up};

/// The variables syctl reads; removed from every run so the developer's shell cannot leak in.
const SYCTL_ENV: &[&str] = &[
    "SWITCHYARD_PLACEMENT_URL",
    "SWITCHYARD_ADMIN_TOKEN",
    "SWITCHYARD_RELAY_URL",
    "SWITCHYARD_PUBLISH_TOKEN",
    "SWITCHYARD_JSON",
    "SWITCHYARD_TIMEOUT",
];

/// Runs syctl in `cwd` (a scratch directory by default, so no real cluster file is found):
/// (exit code, stdout, stderr).
fn syctl(args: &[&str], cwd: &Path) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_syctl"));
    for var in SYCTL_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.args(args).current_dir(cwd).output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("syctl-publish-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn publish_reaches_the_linked_gateways_and_checks_the_token() -> anyhow::Result<()> {
    let relay = Relay::start(RelayOpts::default())?;
    let placement = Placement::start(PlacementOpts::default())?;
    let mut opts = GatewayOpts::new(&placement, "gw-pub");
    opts.relay_urls = vec![relay.grpc_url().to_owned()];
    let _gateway = Gateway::start(opts)?;
    let cwd = scratch("flags")?;

    let args = [
        "publish",
        "news",
        r#"{"text":"hello"}"#,
        "--room",
        "chat:1",
        "--relay",
        relay.grpc_url(),
        "--publish-token",
        TEST_PUBLISH_TOKEN,
        "--json",
    ];
    // The gateway links to the relay shortly after it is ready.
    eventually_blocking("the gateway to link", Duration::from_secs(15), || {
        let (code, stdout, stderr) = syctl(&args, &cwd)?;
        if code != Some(0) {
            let failed = anyhow::anyhow!("syctl publish exited {code:?}: {stdout} {stderr}");
            return Err(give_up(failed));
        }
        let answer: Value = serde_json::from_str(&stdout).context(stdout.clone())?;
        anyhow::ensure!(answer["gateways"] == 1, "syctl publish answered {answer}");
        Ok(())
    })?;

    let (code, _, stderr) = syctl(
        &[
            "publish",
            "news",
            "--relay",
            relay.grpc_url(),
            "--publish-token",
            "wrong",
        ],
        &cwd,
    )?;
    assert_eq!(code, Some(3), "a wrong token is exit code 3: {stderr}");
    assert!(stderr.contains("SWITCHYARD_PUBLISH_TOKEN"), "{stderr}");

    let (code, _, stderr) = syctl(
        &["publish", "news", "not json", "--relay", relay.grpc_url()],
        &cwd,
    )?;
    assert_eq!(
        code,
        Some(1),
        "data that is not JSON is a usage error: {stderr}"
    );

    let (code, _, stderr) = syctl(&["publish", "news"], &cwd)?;
    assert_eq!(
        code,
        Some(1),
        "no relay anywhere is a configuration error: {stderr}"
    );
    assert!(stderr.contains("--relay"), "{stderr}");
    std::fs::remove_dir_all(&cwd)?;
    Ok(())
}

#[test]
fn publish_finds_the_relay_and_token_in_cluster_json() -> anyhow::Result<()> {
    let relay = Relay::start(RelayOpts::default())?;
    let dir = scratch("file")?;
    std::fs::create_dir_all(dir.join(".switchyard"))?;
    std::fs::write(
        dir.join(".switchyard/cluster.json"),
        serde_json::json!({
            "placement": [],
            "relays": [{"grpc": relay.grpc_url(), "pid": 1}],
            "publish_token": TEST_PUBLISH_TOKEN,
        })
        .to_string(),
    )?;
    let nested = dir.join("some/sub/dir");
    std::fs::create_dir_all(&nested)?;
    let (code, stdout, stderr) = syctl(&["publish", "news", "42"], &nested)?;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("Published `news`"), "{stdout}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
