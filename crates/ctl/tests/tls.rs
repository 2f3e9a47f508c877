//! `syctl` against a placement that requires client certificates (mutual TLS): the real binary
//! and the real `switchyard-placement` (build it first with `cargo build -p
//! switchyard-placement --bins`), certificates from a throwaway CA ([`TestPki`]).

use std::time::Duration;

use anyhow::{Context, ensure};
use switchyard_testkit::{
    cluster::{Placement, PlacementOpts, TEST_ADMIN_TOKEN},
    tls::TestPki,
};

/// Runs `syctl --placement <grpc> --admin-token <token> <tls> nodes --json`; (exit code, stdout,
/// stderr). The developer's `SWITCHYARD_*` variables are removed.
async fn nodes(p: &Placement, tls: &[String]) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_syctl"));
    cmd.args([
        "--placement",
        p.grpc_url(),
        "--admin-token",
        TEST_ADMIN_TOKEN,
        "--timeout",
        "10s",
    ])
    .args(tls)
    .args(["nodes", "--json"])
    .kill_on_drop(true);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHYARD_")) {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("syctl did not exit within 60 s")??;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn syctl_presents_its_client_certificate_to_a_mutual_tls_placement() -> anyhow::Result<()> {
    let pki = TestPki::generate("syctl")?;
    let p = Placement::start(PlacementOpts {
        redis_url: None,
        extra_args: pki.mutual_server_args(),
    })?;

    let (code, stdout, stderr) = nodes(&p, &pki.client_args(Some("client"))).await?;
    ensure!(
        code == Some(0),
        "exit {code:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout)?;
    ensure!(json["nodes"].is_array(), "{json}");

    // Without a certificate placement refuses the connection: syctl fails and prints no nodes.
    // (With TLS 1.3 the client learns it at its first call, so the exit code is that call's.)
    let (code, stdout, stderr) = nodes(&p, &pki.client_args(None)).await?;
    ensure!(
        code != Some(0) && stdout.is_empty() && !stderr.is_empty(),
        "exit {code:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    Ok(())
}
