//! The relay as an operator sees it: ops endpoints, health, shutdown.

mod support;

use std::time::Duration;

use support::*;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn serves_ops_endpoints_and_grpc_health() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let http = http_url(&relay)?;
    for path in ["/healthz", "/readyz"] {
        let status = switchyard_testkit::reqwest::get(format!("{http}{path}"))
            .await?
            .status();
        assert_eq!(status, 200, "{path}");
    }
    let _a = Gw::link(&relay, "a", &["/"]).await?;
    assert!(metrics(&relay).await?.contains("switchyard_relay_links 1"));
    let channel = tonic::transport::Channel::from_shared(grpc_url(&relay)?)?
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "switchyard.relay.v1.Relay".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_links_with_unavailable_and_exits_zero() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    relay.terminate()?;
    let (status, _) = a.next_error().await?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let exit = relay.wait_exit(Duration::from_secs(20))?;
    assert!(exit.success(), "{exit:?}");
    Ok(())
}

#[test]
fn a_bad_cluster_name_is_refused_with_a_clear_message() -> anyhow::Result<()> {
    let err = start_relay(None, &["--cluster", "no spaces"])
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("--cluster"), "{err}");
    Ok(())
}
