//! Assignment of a new client to a gateway: the one operation behind HTTP `GET /v1/assign` and
//! gRPC `Placement/Assign`.
//!
//! [`Assigner::assign`] validates the namespace, applies the per-address rate limit, asks the
//! ledger for a reservation (one atomic pick, see [`crate::ledger`]) and signs the assignment
//! token. Both front ends only translate [`AssignError`] into their own status codes, so HTTP
//! and gRPC can never disagree.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use switchyard_common::assignment::{AssignmentClaims, TokenKey};
use switchyard_common::clock::now_ms;
use switchyard_common::{bearer, namespace};
use tracing::Instrument;

use crate::{
    app_token::{AppTokenError, AppTokenVerifier},
    ledger::{Ledger, LedgerError},
    rate_limit::RateLimiter,
};

/// A successful assignment, as both front ends return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub url: String,
    pub node_id: String,
    pub token: String,
    pub expires_in_ms: u64,
}

/// Why no assignment was made. `code()` is the `error` field of the HTTP JSON body.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("rate limited")]
    RateLimited,
    #[error("no gateway available")]
    NoGateway,
    #[error("ledger unavailable: {0}")]
    LedgerUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Unauthorized(#[from] AppTokenError),
}

impl AssignError {
    pub fn code(&self) -> &'static str {
        match self {
            AssignError::BadRequest(_) => "bad_request",
            AssignError::RateLimited => "rate_limited",
            AssignError::NoGateway => "no_gateway_available",
            AssignError::LedgerUnavailable(_) => "ledger_unavailable",
            AssignError::Internal(_) => "internal",
            AssignError::Unauthorized(e) => e.code(),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            AssignError::BadRequest(d) | AssignError::LedgerUnavailable(d) => Some(d.clone()),
            AssignError::Internal(_) => Some("see the placement logs".into()),
            AssignError::Unauthorized(e) => Some(e.to_string()),
            AssignError::RateLimited | AssignError::NoGateway => None,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            AssignError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AssignError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            AssignError::NoGateway | AssignError::LedgerUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AssignError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AssignError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<AssignError> for tonic::Status {
    fn from(e: AssignError) -> Self {
        let msg = match e.detail() {
            Some(d) => format!("{}: {d}", e.code()),
            None => e.code().to_owned(),
        };
        match e {
            AssignError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            AssignError::RateLimited => tonic::Status::resource_exhausted(msg),
            AssignError::NoGateway | AssignError::LedgerUnavailable(_) => {
                tonic::Status::unavailable(msg)
            }
            AssignError::Internal(_) => tonic::Status::internal(msg),
            AssignError::Unauthorized(_) => tonic::Status::unauthenticated(msg),
        }
    }
}

impl IntoResponse for AssignError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code() });
        if let Some(detail) = self.detail() {
            body["detail"] = serde_json::Value::String(detail);
        }
        (self.http_status(), Json(body)).into_response()
    }
}

/// Assignments per second over a sliding minute, for `ClusterStats`. One bucket per second;
/// a std `Mutex` because the critical section is a few integer operations and never awaits.
#[derive(Debug, Default)]
pub struct AssignmentRate {
    start: Option<Instant>,
    buckets: Mutex<VecDeque<(u64, u64)>>,
}

const RATE_WINDOW_SECS: u64 = 60;

impl AssignmentRate {
    pub fn new() -> Self {
        Self {
            start: Some(Instant::now()),
            buckets: Mutex::default(),
        }
    }

    fn second(&self) -> u64 {
        self.start.map_or(0, |s| s.elapsed().as_secs())
    }

    pub fn record(&self) {
        let now = self.second();
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match b.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => b.push_back((now, 1)),
        }
        while b
            .front()
            .is_some_and(|(sec, _)| sec + RATE_WINDOW_SECS <= now)
        {
            b.pop_front();
        }
    }

    /// Mean per second over the last minute (or since start, when younger than a minute).
    pub fn per_sec(&self) -> f64 {
        let now = self.second();
        let b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: u64 = b
            .iter()
            .filter(|(sec, _)| sec + RATE_WINDOW_SECS > now)
            .map(|(_, n)| n)
            .sum();
        let window = (now + 1).min(RATE_WINDOW_SECS);
        total as f64 / window as f64
    }
}

/// Everything an assignment needs; shared by the HTTP handler and the gRPC service.
pub struct Assigner {
    ledger: Arc<dyn Ledger>,
    key: TokenKey,
    limiter: RateLimiter,
    rate: AssignmentRate,
    app_tokens: AppTokenVerifier,
}

impl Assigner {
    pub fn new(ledger: Arc<dyn Ledger>, key: TokenKey, rate_limit: u32) -> Self {
        Self {
            ledger,
            key,
            limiter: RateLimiter::new(rate_limit),
            rate: AssignmentRate::new(),
            app_tokens: AppTokenVerifier::disabled(),
        }
    }

    /// Verifies the application tokens clients bring with `verifier` (default: ignored).
    pub fn with_app_tokens(mut self, verifier: AppTokenVerifier) -> Self {
        self.app_tokens = verifier;
        self
    }

    /// Assignments per second over the last minute on this replica.
    pub fn assignments_per_sec(&self) -> f64 {
        self.rate.per_sec()
    }

    /// The span every assignment runs in. Front ends create it, set its parent from the
    /// caller's trace context (HTTP headers, gRPC metadata), then pass it to
    /// [`Assigner::assign_in`].
    pub fn span() -> tracing::Span {
        tracing::info_span!(
            "assign",
            namespace = tracing::field::Empty,
            node_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            uid = tracing::field::Empty,
        )
    }

    /// The one assignment operation. `client` is the caller's address for the rate limit
    /// (`None` when unknown: not limited).
    pub async fn assign(
        &self,
        namespace: &str,
        client: Option<IpAddr>,
    ) -> Result<Assignment, AssignError> {
        self.assign_in(Self::span(), namespace, client, None).await
    }

    /// [`Assigner::assign`] inside `span` (from [`Assigner::span`]), for a client that may
    /// bring an application token (see [`crate::app_token`]).
    pub async fn assign_in(
        &self,
        span: tracing::Span,
        namespace: &str,
        client: Option<IpAddr>,
        app_token: Option<&str>,
    ) -> Result<Assignment, AssignError> {
        let started = Instant::now();
        let result = self
            .assign_inner(namespace, client, app_token, &span)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        span.record("outcome", outcome);
        ::metrics::counter!(crate::metrics::ASSIGNMENTS_TOTAL, "outcome" => outcome).increment(1);
        ::metrics::histogram!(crate::metrics::ASSIGN_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            self.rate.record();
        }
        result
    }

    async fn assign_inner(
        &self,
        namespace: &str,
        client: Option<IpAddr>,
        app_token: Option<&str>,
        span: &tracing::Span,
    ) -> Result<Assignment, AssignError> {
        if let Some(ip) = client
            && !self.limiter.check(ip)
        {
            return Err(AssignError::RateLimited);
        }
        let ns =
            namespace::normalize(namespace).map_err(|e| AssignError::BadRequest(e.to_string()))?;
        span.record("namespace", ns);
        // Before the ledger: a refused client must not hold a reservation.
        let identity = self.app_tokens.verify(app_token)?.unwrap_or_default();
        if let Some(uid) = &identity.uid {
            span.record("uid", uid.as_str());
        }
        // An info-level span of its own (the ledger's are debug) so the Redis round trip shows
        // up as a child of the assignment in exported traces.
        let ledger_span = tracing::info_span!("ledger_assign", namespace = %ns);
        let reservation = match self.ledger.assign(ns).instrument(ledger_span).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(AssignError::NoGateway),
            Err(LedgerError::Unavailable(detail)) => {
                tracing::warn!(%detail, "ledger unavailable; assignment refused");
                return Err(AssignError::LedgerUnavailable(detail));
            }
            Err(LedgerError::Invalid(detail)) => return Err(AssignError::BadRequest(detail)),
            Err(e) => {
                tracing::error!(error = %e, "unexpected ledger error on assign");
                return Err(AssignError::Internal(e.to_string()));
            }
        };
        span.record("node_id", reservation.node_id.as_str());
        let exp_ms = reservation.expires_at_ms;
        let claims = AssignmentClaims {
            sub: reservation.node_id.clone(),
            ns: ns.to_owned(),
            rid: reservation.reservation_id,
            exp: exp_ms.div_ceil(1000),
            exp_ms,
            uid: identity.uid,
            rooms: identity.rooms,
        };
        let token = self.key.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing an assignment token failed");
            AssignError::Internal(e.to_string())
        })?;
        Ok(Assignment {
            url: reservation.url,
            node_id: reservation.node_id,
            token,
            expires_in_ms: exp_ms.saturating_sub(now_ms()),
        })
    }
}

/// The HTTP route `GET /v1/assign`, without CORS (the server adds it).
pub fn router(assigner: Arc<Assigner>) -> Router {
    Router::new()
        .route("/v1/assign", get(http_assign))
        .with_state(assigner)
}

#[derive(Debug, Deserialize)]
struct AssignQuery {
    namespace: Option<String>,
    /// The application token, for clients that cannot set headers (browsers' `EventSource`,
    /// plain links). `Authorization: Bearer` wins when both are present.
    token: Option<String>,
}

async fn http_assign(
    State(assigner): State<Arc<Assigner>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<AssignQuery>, QueryRejection>,
) -> Result<Json<Assignment>, AssignError> {
    let span = Assigner::span();
    switchyard_common::trace_context::set_parent_from_headers(&span, &headers);
    let Query(query) = query.map_err(|e| AssignError::BadRequest(e.body_text()))?;
    // Absent means the default namespace; present but empty is a mistake in the URL.
    let ns = query.namespace.unwrap_or_else(|| namespace::DEFAULT.into());
    if ns.is_empty() {
        return Err(AssignError::BadRequest(
            "namespace must not be empty".into(),
        ));
    }
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let app_token = header.and_then(bearer::token_of).or(query.token.as_deref());
    assigner
        .assign_in(span, &ns, Some(peer.ip()), app_token)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_contract() {
        assert_eq!(
            AssignError::NoGateway.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(AssignError::NoGateway.code(), "no_gateway_available");
        assert_eq!(
            AssignError::RateLimited.http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let s: tonic::Status = AssignError::LedgerUnavailable("down".into()).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("ledger_unavailable"));
    }

    /// Properties of `GET /v1/assign` over arbitrary query strings and headers: the answer is
    /// always one of the documented statuses with a JSON body, never a panic or a 500.
    mod properties {
        use super::*;
        use crate::ledger::{LedgerSettings, MemoryLedger, NodeRegistration};
        use axum::body::Body;
        use proptest::prelude::*;
        use std::time::Duration;
        use tower::ServiceExt;

        /// An assigner over a memory ledger with one live gateway, and a low rate limit so
        /// that 429 is reachable too.
        fn app(rt: &tokio::runtime::Runtime) -> Result<Router, TestCaseError> {
            let ledger = MemoryLedger::new(LedgerSettings {
                cluster: "prop".into(),
                reservation_ttl: Duration::from_millis(50),
                liveness: Duration::from_secs(600),
            });
            rt.block_on(ledger.register(&NodeRegistration {
                node_id: "gw-1".into(),
                url: "http://127.0.0.1:1".into(),
                weight: 1,
                capacity: 0,
                namespaces: vec!["/".into(), "/chat".into()],
            }))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let assigner = Assigner::new(Arc::new(ledger), TokenKey::new(b"s"), 5);
            Ok(router(Arc::new(assigner)))
        }

        fn any_query() -> impl Strategy<Value = String> {
            prop_oneof![
                // Anything URI-safe, percent escapes (valid or not) included.
                "[A-Za-z0-9=&%/._~+;:@!$'()*,?-]{0,300}",
                "namespace=[A-Za-z0-9%/._~+-]{0,300}",
                "namespace=%2F[a-z]{0,8}&token=[A-Za-z0-9._%-]{0,64}",
                ("namespace=", proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                    |(k, v)| format!(
                        "{k}{}",
                        v.iter().map(|b| format!("%{b:02X}")).collect::<String>()
                    )
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn any_query_gets_a_documented_status_with_a_json_error(
                queries in proptest::collection::vec(any_query(), 1..8),
                auth in proptest::option::of("[ -~]{0,80}"),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let app = app(&rt)?;
                for query in queries {
                    let mut req = http::Request::get(format!("/v1/assign?{query}"));
                    if let Some(auth) = &auth {
                        req = req.header(http::header::AUTHORIZATION, auth.as_str());
                    }
                    let mut req = req.body(Body::empty()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    req.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
                    let res = rt
                        .block_on(app.clone().oneshot(req))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let status = res.status().as_u16();
                    let body = rt
                        .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let json: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| TestCaseError::fail(format!("{query}: not JSON: {e}")))?;
                    prop_assert!([200, 400, 429, 503].contains(&status), "{query}: {status} {json}");
                    if status == 200 {
                        prop_assert!(json["token"].is_string(), "{json}");
                    } else {
                        prop_assert!(json["error"].is_string(), "{query}: {json}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_rate_counts_recent_assignments() {
        let r = AssignmentRate::new();
        for _ in 0..10 {
            r.record();
        }
        assert!(r.per_sec() > 0.0);
    }
}
