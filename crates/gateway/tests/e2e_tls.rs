//! A cluster that speaks TLS everywhere, as users see it: placement and the relay require
//! client certificates on gRPC (mutual TLS), the gateway serves HTTPS / WSS and reports and
//! links with its client certificate, and the official `socket.io-client` (trusting the test CA
//! through `NODE_EXTRA_CA_CERTS`) is assigned over HTTPS and connects over WSS.
//!
//! Needs every binary built (`cargo build --workspace --bins`) and `npm ci --prefix clients/js`.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;
use support::Driver;
use switchyard_common::tls::{ClientTls, ClientTlsArgs};
use switchyard_proto::relay::v1::{MembersRequest, relay_client::RelayClient};
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts,
};
use switchyard_testkit::tls::TestPki;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(20);

/// Trusts the test CA; presents the client certificate when `with_cert`.
fn tls_client(pki: &TestPki, with_cert: bool) -> anyhow::Result<ClientTls> {
    Ok(ClientTlsArgs {
        tls_ca: Some(pki.file("ca.pem")),
        tls_client_cert: with_cert.then(|| pki.file("client.pem")),
        tls_client_key: with_cert.then(|| pki.file("client-key.pem")),
    }
    .load()?)
}

/// The relay's `Members` for `/` over `tls`.
async fn members(tls: &ClientTls, relay: &Relay) -> anyhow::Result<Vec<String>> {
    let call = async {
        let channel = tls.endpoint(relay.grpc_url())?.connect().await?;
        let res = RelayClient::new(channel)
            .members(MembersRequest {
                namespace: "/".into(),
            })
            .await?;
        Ok::<_, anyhow::Error>(res.into_inner().node_ids)
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("Members did not finish within 10 s")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_reach_a_mutual_tls_cluster_over_https_and_wss() -> anyhow::Result<()> {
    let pki = TestPki::generate("e2e")?;
    let placement = Placement::start(PlacementOpts {
        redis_url: None,
        extra_args: pki.mutual_server_args(),
    })?;
    let relay = Relay::start(RelayOpts {
        redis_url: None,
        extra_args: pki.mutual_server_args(),
    })?;
    let mut opts = GatewayOpts::new(&placement, "tls-gw");
    opts.relay_urls = vec![relay.grpc_url().to_owned()];
    opts.extra_args = pki.server_args();
    opts.extra_args.extend(pki.client_args(Some("client")));
    let gateway = Gateway::start(opts)?;
    ensure!(gateway.url().starts_with("https://"), "{}", gateway.url());

    // The relay refuses a gRPC client without a certificate and sees the gateway's link.
    let refused = members(&tls_client(&pki, false)?, &relay).await;
    ensure!(refused.is_err(), "no client certificate: {refused:?}");
    let linked = tls_client(&pki, true)?;
    eventually(
        "the gateway to link to the relay over mutual TLS",
        WAIT,
        async || {
            let members = members(&linked, &relay).await?;
            ensure!(
                members.contains(&"tls-gw".to_owned()),
                "members {members:?}"
            );
            Ok(())
        },
    )
    .await?;

    let ca = pki.file("ca.pem");
    let mut driver = Driver::node_with_env(&[("NODE_EXTRA_CA_CERTS", ca.as_os_str())]).await?;
    let connect = json!({
        "placement": placement.http_url(),
        "namespace": "/",
        "transports": ["websocket"],
        "useHelper": false,
    });
    for id in ["a", "b"] {
        driver.connect(id, connect.clone()).await?;
        let connected = driver.connected(id, WAIT).await?;
        ensure!(
            connected["node_id"] == "tls-gw" && connected["url"] == gateway.url(),
            "{id} was assigned over HTTPS to the gateway's https URL: {connected}"
        );
    }
    for id in ["a", "b"] {
        let ack = driver.join(id, "lobby").await?;
        ensure!(ack["ok"] == true && ack["epoch"].is_string(), "{ack}");
    }
    let ack = driver
        .publish("a", "lobby", "hello", json!("over wss"))
        .await?;
    ensure!(
        ack["ok"] == true && ack["offset"].is_u64(),
        "stamped by the relay: {ack}"
    );
    driver
        .wait_event("b to receive hello", WAIT, |e| {
            e["id"] == "b" && e["event"] == "recv" && e["name"] == "hello"
        })
        .await?;
    driver.shutdown().await
}
