//! A gateway refuses a CONNECT whose assignment is garbage, expired or for another node, with a
//! machine-readable reason the official clients can read (`connect_error` data), and a token
//! refused elsewhere stays good for its own node.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, Driver};
use switchyard_common::assignment::{AssignmentClaims, TokenKey};
use switchyard_common::clock::now_ms;
use switchyard_testkit::assign::assign;
use switchyard_testkit::cluster::TEST_TOKEN_SECRET;

const WAIT: Duration = Duration::from_secs(20);

fn signed(secret: &str, node: &str, exp_ms: u64) -> anyhow::Result<String> {
    Ok(TokenKey::new(secret.as_bytes()).sign(&AssignmentClaims {
        sub: node.to_owned(),
        ns: "/".to_owned(),
        rid: format!("test-{exp_ms}"),
        exp: exp_ms / 1000,
        exp_ms,
        uid: None,
        rooms: None,
    })?)
}

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or("")
}

/// Connects `token` to `url` through `driver` as client `id` and returns the refusal reason.
async fn refusal(
    driver: &mut Driver,
    id: &str,
    url: &str,
    token: &str,
    transports: &[&str],
) -> anyhow::Result<String> {
    driver
        .connect_raw(id, url, Some(token), json!({"transports": transports}))
        .await?;
    let e = driver.refused(id, WAIT).await?;
    Ok(reason(&e).to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_other_node_tokens_are_refused_with_their_reason() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, &[])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut node = Driver::node().await?;

    for transports in [&["websocket"][..], &["polling"][..]] {
        let t = transports[0];
        assert_eq!(
            refusal(
                &mut node,
                &format!("garbage-{t}"),
                a.url(),
                "not-a-token",
                transports
            )
            .await?,
            "bad_token"
        );
        let forged = signed(
            "some-other-secret-0123456789abcdef",
            a.node_id(),
            now_ms() + 60_000,
        )?;
        assert_eq!(
            refusal(
                &mut node,
                &format!("forged-{t}"),
                a.url(),
                &forged,
                transports
            )
            .await?,
            "bad_token"
        );
        let expired = signed(
            TEST_TOKEN_SECRET,
            a.node_id(),
            now_ms().saturating_sub(60_000),
        )?;
        assert_eq!(
            refusal(
                &mut node,
                &format!("expired-{t}"),
                a.url(),
                &expired,
                transports
            )
            .await?,
            "token_expired"
        );
        let for_b = signed(TEST_TOKEN_SECRET, b.node_id(), now_ms() + 60_000)?;
        assert_eq!(
            refusal(
                &mut node,
                &format!("other-{t}"),
                a.url(),
                &for_b,
                transports
            )
            .await?,
            "wrong_node"
        );
    }

    // No token at all: refused as a bad token (never admitted silently).
    node.connect_raw("anonymous", a.url(), None, json!({}))
        .await?;
    let e = node.refused("anonymous", WAIT).await?;
    assert_eq!(reason(&e), "bad_token", "{e}");
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_elsewhere_stays_good_for_its_own_node() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, &[])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let assignment = assign(cluster.placement.http_url(), "/").await?;
    let other = cluster
        .gateways
        .iter()
        .find(|g| g.node_id() != assignment.node_id)
        .ok_or_else(|| anyhow::anyhow!("no other gateway"))?;

    let mut node = Driver::node().await?;
    assert_eq!(
        refusal(
            &mut node,
            "elsewhere",
            other.url(),
            &assignment.token,
            &["websocket"]
        )
        .await?,
        "wrong_node"
    );
    node.connect_raw(
        "home",
        &assignment.url,
        Some(&assignment.token),
        json!({"transports": ["websocket"]}),
    )
    .await?;
    node.connected("home", WAIT).await?;
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_reads_the_refusal_reason() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, &[])?;
    cluster.wait_registered(Duration::from_secs(10)).await?;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut py = Driver::python().await?;
    for transports in [&["websocket"][..], &["polling"][..]] {
        let t = transports[0];
        assert_eq!(
            refusal(
                &mut py,
                &format!("garbage-{t}"),
                a.url(),
                "garbage",
                transports
            )
            .await?,
            "bad_token"
        );
        let expired = signed(
            TEST_TOKEN_SECRET,
            a.node_id(),
            now_ms().saturating_sub(60_000),
        )?;
        assert_eq!(
            refusal(
                &mut py,
                &format!("expired-{t}"),
                a.url(),
                &expired,
                transports
            )
            .await?,
            "token_expired"
        );
        let for_b = signed(TEST_TOKEN_SECRET, b.node_id(), now_ms() + 60_000)?;
        assert_eq!(
            refusal(&mut py, &format!("other-{t}"), a.url(), &for_b, transports).await?,
            "wrong_node"
        );
    }
    py.shutdown().await
}
