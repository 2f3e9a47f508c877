//! TLS on placement's listeners, as its clients see it: the real `switchyard-placement` binary
//! (build it first with `cargo build -p switchyard-placement --bins`) serving certificates from
//! a throwaway CA ([`TestPki`]), reached by reqwest over HTTPS and by tonic over TLS through the
//! same client code the gateway and syctl use (`switchyard_common::tls::ClientTls`).

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use switchyard_common::tls::{ClientTls, ClientTlsArgs};
use switchyard_proto::{
    admin::v1::{ListNodesRequest, Node, admin_client::AdminClient},
    placement::v1::{
        Directive, GatewayReport, Load, Register, directive, gateway_report,
        placement_client::PlacementClient,
    },
};
use switchyard_testkit::{
    assign::assign_with,
    cluster::{Placement, PlacementOpts, TEST_ADMIN_TOKEN},
    tls::TestPki,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

fn placement(extra_args: Vec<String>) -> anyhow::Result<Placement> {
    Placement::start(PlacementOpts {
        redis_url: None,
        extra_args,
    })
}

/// Trusts the test CA; presents the certificate `cert` (`client`, `stranger`) when given.
fn tls_client(pki: &TestPki, cert: Option<&str>) -> anyhow::Result<ClientTls> {
    Ok(ClientTlsArgs {
        tls_ca: Some(pki.file("ca.pem")),
        tls_client_cert: cert.map(|c| pki.file(&format!("{c}.pem"))),
        tls_client_key: cert.map(|c| pki.file(&format!("{c}-key.pem"))),
    }
    .load()?)
}

/// An HTTPS client that trusts the test CA and nothing else.
fn https_client(pki: &TestPki) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pki.ca_pem()?)?)
        .build()?)
}

/// `ListNodes` with the admin token over `tls`; the error carries the whole chain.
async fn list_nodes(tls: &ClientTls, grpc_url: &str) -> anyhow::Result<Vec<Node>> {
    let call = async {
        let channel = tls.endpoint(grpc_url)?.connect().await?;
        let mut req = Request::new(ListNodesRequest {});
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {TEST_ADMIN_TOKEN}").parse()?,
        );
        let nodes = AdminClient::new(channel).list_nodes(req).await?;
        Ok::<_, anyhow::Error>(nodes.into_inner().nodes)
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("ListNodes did not finish within 10 s")?
}

/// A report stream over `tls` that registers `node_id` and keeps it alive; ends when dropped.
struct Reporter(JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn register(tls: &ClientTls, grpc_url: &str, node_id: &str) -> anyhow::Result<Reporter> {
    let channel = tls.endpoint(grpc_url)?.connect().await?;
    let mut client = PlacementClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(GatewayReport {
        kind: Some(gateway_report::Kind::Register(Register {
            node_id: node_id.to_owned(),
            url: format!("https://{node_id}.test:4000"),
            weight: 1,
            capacity: 0,
            namespaces: vec!["/".into()],
            report_interval_ms: 100,
        })),
    })
    .await?;
    let mut directives = client.report(ReceiverStream::new(rx)).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(10), directives.message()).await {
        Ok(Ok(Some(Directive {
            kind: Some(directive::Kind::Registered(_)),
        }))) => {}
        other => bail!("expected Registered, got {other:?}"),
    }
    Ok(Reporter(tokio::spawn(async move {
        let _keep = (client, directives);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let load = GatewayReport {
                kind: Some(gateway_report::Kind::Load(Load::default())),
            };
            if tx.send(load).await.is_err() {
                return;
            }
        }
    })))
}

#[tokio::test]
async fn placement_serves_https_and_grpc_over_tls_to_clients_trusting_its_ca() -> anyhow::Result<()>
{
    let pki = TestPki::generate("placement")?;
    let p = placement(pki.server_args())?;
    ensure!(p.http_url().starts_with("https://"), "{}", p.http_url());
    let tls = tls_client(&pki, None)?;

    // gRPC over TLS: a gateway registers, an operator lists it.
    let _reporter = register(&tls, p.grpc_url(), "tls-gw-1").await?;
    let nodes = list_nodes(&tls, p.grpc_url()).await?;
    ensure!(
        nodes.iter().any(|n| n.node_id == "tls-gw-1"),
        "ListNodes over TLS: {nodes:?}"
    );

    // HTTPS: the assignment names the registered gateway.
    let a = assign_with(&https_client(&pki)?, p.http_url(), "/").await?;
    ensure!(
        a.node_id == "tls-gw-1" && a.url == "https://tls-gw-1.test:4000",
        "{a:?}"
    );

    // Plain HTTP to the TLS port gets no answer.
    let plain_url = p.http_url().replacen("https://", "http://", 1);
    let plain = reqwest::Client::new()
        .get(format!("{plain_url}/readyz"))
        .send()
        .await;
    ensure!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client that does not trust the CA refuses the server.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()?
        .get(format!("{}/readyz", p.http_url()))
        .send()
        .await;
    ensure!(
        untrusting.is_err(),
        "unverified server accepted: {untrusting:?}"
    );
    // The same for gRPC: the system roots do not know the test CA, and plaintext fails.
    let system_roots = list_nodes(&ClientTls::default(), p.grpc_url()).await;
    ensure!(system_roots.is_err(), "{system_roots:?}");
    let plain_grpc = p.grpc_url().replacen("https://", "http://", 1);
    let plaintext = list_nodes(&tls, &plain_grpc).await;
    ensure!(plaintext.is_err(), "{plaintext:?}");
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_grpc_clients_without_a_certificate_from_its_ca() -> anyhow::Result<()> {
    let pki = TestPki::generate("placement-mtls")?;
    let p = placement(pki.mutual_server_args())?;

    let without = list_nodes(&tls_client(&pki, None)?, p.grpc_url()).await;
    ensure!(without.is_err(), "no client certificate: {without:?}");
    let stranger = list_nodes(&tls_client(&pki, Some("stranger"))?, p.grpc_url()).await;
    ensure!(
        stranger.is_err(),
        "certificate from another CA: {stranger:?}"
    );
    let with = list_nodes(&tls_client(&pki, Some("client"))?, p.grpc_url()).await;
    ensure!(with.is_ok(), "client certificate from the CA: {with:?}");

    // HTTP serves browsers: it never asks for a client certificate.
    let ready = https_client(&pki)?
        .get(format!("{}/readyz", p.http_url()))
        .send()
        .await?;
    ensure!(ready.status() == 200, "{ready:?}");
    Ok(())
}
