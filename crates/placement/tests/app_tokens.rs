//! Application tokens on `/v1/assign`: placement verifies the JWT a client brings (HS256 or
//! RS256, as a bearer header or a `token` query parameter), copies `sub` and `rooms` into the
//! assignment, and with `--require-app-token` refuses clients without a valid one (401).

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchyard_common::assignment::TokenKey;
use switchyard_common::clock::now_ms;
use switchyard_testkit::wait::eventually;
use switchyard_testkit::{
    cluster::{Gateway, GatewayOpts, Placement, PlacementOpts, TEST_TOKEN_SECRET},
    reqwest,
};

const APP_SECRET: &str = "application-secret-for-tests";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn claims(sub: &str, rooms: Option<&[&str]>) -> Value {
    let mut c = json!({"sub": sub, "exp": now_ms() / 1000 + 3600});
    if let Some(rooms) = rooms {
        c["rooms"] = json!(rooms);
    }
    c
}

fn hs256(secret: &str, claims: &Value) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn rs256(claims: &Value) -> anyhow::Result<String> {
    let pem = std::fs::read(fixture("app-rs256-private.pem"))?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem)?,
    )?)
}

/// `GET /v1/assign` with an optional bearer header and query token: (status, body).
async fn assign(
    placement: &Placement,
    bearer: Option<&str>,
    query_token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .get(format!("{}/v1/assign", placement.http_url()))
        .query(&[("namespace", "/")]);
    if let Some(t) = query_token {
        req = req.query(&[("token", t)]);
    }
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await?))
}

/// Placement requiring app tokens (both key kinds) with one real gateway registered.
async fn cluster() -> anyhow::Result<(Placement, Gateway)> {
    let public = fixture("app-rs256-public.pem");
    let placement = Placement::start(PlacementOpts {
        redis_url: None,
        extra_args: vec![
            "--app-jwt-hs256-secret".into(),
            APP_SECRET.into(),
            "--app-jwt-rs256-public-key-file".into(),
            public.display().to_string(),
            "--require-app-token".into(),
        ],
    })?;
    let gateway = Gateway::start(GatewayOpts::new(&placement, "gw-app"))?;
    // Wait until the gateway's first report made it assignable.
    let token = hs256(APP_SECRET, &claims("probe", None))?;
    eventually(
        "the gateway to become assignable",
        Duration::from_secs(15),
        async || {
            let (status, body) = assign(&placement, Some(&token), None).await?;
            anyhow::ensure!(status == 200, "{status} {body}");
            Ok(())
        },
    )
    .await?;
    Ok((placement, gateway))
}

fn assignment_claims(
    body: &Value,
) -> anyhow::Result<switchyard_common::assignment::AssignmentClaims> {
    let token = body["token"]
        .as_str()
        .context("no token in the assignment")?;
    Ok(TokenKey::new(TEST_TOKEN_SECRET.as_bytes()).verify(token)?)
}

#[tokio::test]
async fn valid_app_tokens_put_uid_and_rooms_into_the_assignment() -> anyhow::Result<()> {
    let (placement, _gateway) = cluster().await?;

    let hs = hs256(APP_SECRET, &claims("alice", Some(&["chat:*"])))?;
    let (status, body) = assign(&placement, Some(&hs), None).await?;
    assert_eq!(status, 200, "{body}");
    let c = assignment_claims(&body)?;
    assert_eq!(c.uid.as_deref(), Some("alice"));
    assert_eq!(c.rooms, Some(vec!["chat:*".to_owned()]));

    // RS256 through the query parameter; no `rooms` claim leaves the gateway's own patterns.
    let rs = rs256(&claims("bob", None))?;
    let (status, body) = assign(&placement, None, Some(&rs)).await?;
    assert_eq!(status, 200, "{body}");
    let c = assignment_claims(&body)?;
    assert_eq!(c.uid.as_deref(), Some("bob"));
    assert_eq!(c.rooms, None);
    Ok(())
}

#[tokio::test]
async fn missing_or_invalid_app_tokens_are_refused_with_401() -> anyhow::Result<()> {
    let (placement, _gateway) = cluster().await?;

    let (status, body) = assign(&placement, None, None).await?;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("app_token_required")),
        "{body}"
    );

    let forged = hs256("not-the-secret", &claims("mallory", Some(&["*"])))?;
    let expired = hs256(APP_SECRET, &json!({"sub": "old", "exp": 1_000}))?;
    // An HS256 token "signed" with the RS256 public key must not pass (algorithm confusion).
    let public = std::fs::read_to_string(fixture("app-rs256-public.pem"))?;
    let confused = hs256(&public, &claims("mallory", Some(&["*"])))?;
    for bad in [
        forged.as_str(),
        expired.as_str(),
        confused.as_str(),
        "not-a-jwt",
    ] {
        let (status, body) = assign(&placement, Some(bad), None).await?;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("invalid_app_token")),
            "{body}"
        );
        let (status, body) = assign(&placement, None, Some(bad)).await?;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("invalid_app_token")),
            "{body}"
        );
    }
    Ok(())
}

#[test]
fn require_app_token_without_a_key_is_a_configuration_error() -> anyhow::Result<()> {
    let err = Placement::start(PlacementOpts {
        redis_url: None,
        extra_args: vec!["--require-app-token".into()],
    });
    let msg = format!("{:#}", err.err().context("placement started")?);
    assert!(msg.contains("--require-app-token needs"), "{msg}");
    Ok(())
}
