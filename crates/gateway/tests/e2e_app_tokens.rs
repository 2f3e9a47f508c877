//! Application tokens end to end: a client brings its application's JWT to placement, which
//! copies the user id and room claims into the assignment; the gateway then lets a real
//! Socket.IO client join only the rooms its token grants (the claims replace `--rooms`).

mod support;

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Cluster, Driver};
use switchyard_common::clock::now_ms;
use switchyard_testkit::reqwest;

const WAIT: Duration = Duration::from_secs(20);
const APP_SECRET: &str = "application-secret-for-tests";

fn app_token(sub: &str, rooms: Option<&[&str]>) -> anyhow::Result<String> {
    let mut claims = json!({"sub": sub, "exp": now_ms() / 1000 + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )?)
}

/// `GET /v1/assign` with `Authorization: Bearer <app token>`: (status, body).
async fn assign(placement: &str, app_token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new().get(format!("{placement}/v1/assign?namespace=/"));
    if let Some(t) = app_token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = req.send().await?;
    Ok((res.status().as_u16(), res.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_rooms_decide_what_a_client_may_join() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(
        1,
        &["--app-jwt-hs256-secret", APP_SECRET, "--require-app-token"],
        &["--rooms", "public"],
    )?;
    cluster.wait_registered(WAIT).await?;
    let placement = cluster.placement.http_url().to_owned();

    let (status, body) = assign(&placement, None).await?;
    assert_eq!(status, 401, "no app token: {body}");

    let mut js = Driver::node().await?;
    // alice's token grants `chat:*` only: the gateway's `public` no longer applies to her.
    // bob's token has no rooms claim: the gateway's `--rooms public` applies.
    for (id, rooms) in [("alice", Some(&["chat:*"][..])), ("bob", None)] {
        let (status, body) = assign(&placement, Some(&app_token(id, rooms)?)).await?;
        assert_eq!(status, 200, "{id}: {body}");
        let url = body["url"].as_str().context("no url")?;
        let token = body["token"].as_str().context("no token")?;
        js.connect_raw(id, url, Some(token), json!({"transports": ["websocket"]}))
            .await?;
        js.connected(id, WAIT).await?;
    }

    let ack = js.join("alice", "chat:1").await?;
    assert_eq!(ack["ok"], true, "alice may join chat:1: {ack}");
    let ack = js.join("alice", "public").await?;
    assert_eq!(
        ack["ok"], false,
        "alice's claims do not grant public: {ack}"
    );
    let ack = js.join("bob", "public").await?;
    assert_eq!(
        ack["ok"], true,
        "bob falls back to the gateway's rooms: {ack}"
    );
    let ack = js.join("bob", "chat:1").await?;
    assert_eq!(
        ack["ok"], false,
        "the gateway's rooms do not grant chat:1: {ack}"
    );
    js.shutdown().await
}
