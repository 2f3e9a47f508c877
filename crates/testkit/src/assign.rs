//! The one client for `GET /v1/assign` in tests and benchmarks.
//!
//! [`assign`] and [`try_assign`] build a client per call, which is right for a handful of calls
//! and safe across test runtimes; loops of thousands should share one [`reqwest::Client`] through
//! [`assign_with`] / [`try_assign_with`].

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A successful assignment, as placement's HTTP contract returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResponse {
    /// The gateway's public URL; connect Socket.IO here.
    pub url: String,
    /// The gateway's node id (equals the token's `sub`).
    pub node_id: String,
    /// The signed assignment token; send it as `auth.token` on CONNECT.
    pub token: String,
    /// How long the token (and the reservation behind it) stays valid.
    pub expires_in_ms: u64,
}

/// `GET {http_url}/v1/assign?namespace=...`; an error unless the answer is 200 with a body that
/// parses (the error quotes status and body).
pub async fn assign(http_url: &str, namespace: &str) -> anyhow::Result<AssignResponse> {
    assign_with(&reqwest::Client::new(), http_url, namespace).await
}

/// [`assign`] over a caller's client (connection reuse for bulk assignment).
pub async fn assign_with(
    client: &reqwest::Client,
    http_url: &str,
    namespace: &str,
) -> anyhow::Result<AssignResponse> {
    let (status, body) = try_assign_with(client, http_url, namespace).await?;
    if status != 200 {
        bail!("assign at {http_url} (namespace {namespace:?}) answered {status}: {body}");
    }
    serde_json::from_value(body.clone())
        .with_context(|| format!("assign answered 200 with an unexpected body: {body}"))
}

/// `GET {http_url}/v1/assign?namespace=...` whatever the outcome: the status code and the body
/// as JSON (`Value::Null` for an empty body, a JSON string for a non-JSON one). Errors only when
/// no HTTP answer came at all.
pub async fn try_assign(
    http_url: &str,
    namespace: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    try_assign_with(&reqwest::Client::new(), http_url, namespace).await
}

/// [`try_assign`] over a caller's client.
pub async fn try_assign_with(
    client: &reqwest::Client,
    http_url: &str,
    namespace: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let url = format!("{}/v1/assign", http_url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .query(&[("namespace", namespace)])
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the body of GET {url}"))?;
    let body = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_placement_is_an_error() {
        let port = crate::ports::free_port();
        let err = assign(&format!("http://127.0.0.1:{port}"), "/").await;
        assert!(err.is_err());
    }
}
