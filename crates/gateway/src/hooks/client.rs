//! [`HookClient`]: the calls to the backend, over HTTP (`POST {base}/{hook}`, JSON both ways)
//! or gRPC (`switchyard.hooks.v1.Hooks` for a `grpc://` or `grpcs://` base: the same JSON
//! documents in `bytes`), with the hooks' failure semantics in one place.
//!
//! Every call, in order: the circuit breaker ([`super::breaker`]) may refuse it at once; a
//! permit of the in-flight bound (`--hook-concurrency`, waited for at most the timeout) is
//! taken; the request goes out with `Authorization: Bearer <--hook-token>`, `traceparent`
//! of the call's `hook` span, and a whole-call timeout (`--hook-timeout-ms`); the answer is read
//! up to [`HookClient::max_answer_bytes`] and no further. The outcome is one of:
//!
//! - a 2xx whose body parses as the hook's answer: `Ok`;
//! - a 4xx with `{"error": "..."}`: [`HookError::Refused`] with that error (the backend's own
//!   refusal, passed on to the client);
//! - a timeout, a refused connection, a 5xx, an open breaker or no permit in time:
//!   [`HookError::Unavailable`] (the client sees `backend_unavailable`);
//! - anything else (a body that is not the answer, too large, a 4xx without an error, a 1xx or
//!   3xx): [`HookError::Invalid`].
//!
//! Over gRPC the status codes fall into the same classes (see `proto/switchyard/hooks/v1/
//! hooks.proto`): the codes of a backend that cannot serve are `Unavailable`, any other code
//! with a message is `Refused` with that message.
//!
//! A parsed answer or a 4xx with an error counts as the backend working for the breaker;
//! everything else but `overloaded` (this gateway's own bound) counts against it. Each outcome
//! is counted (`switchyard_gateway_hook_errors_total` by hook and reason) and timed
//! (`switchyard_gateway_hook_duration_seconds` by hook).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_common::bearer::Bearer;
use switchyard_common::tls::ClientTls;
use switchyard_proto::hooks::v1::{HookRequest, hooks_client::HooksClient};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::breaker::Breaker;
use super::contract::{ErrorBody, bounded_reason};
use crate::metrics;

/// The three hooks; the name is the URL path and the metrics' `hook` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Event,
    Disconnect,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Event => "event",
            Hook::Disconnect => "disconnect",
        }
    }
}

/// Why the backend gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The backend could not be used; the label says how (`timeout`, `connect`, `status_5xx`,
    /// `breaker_open`, `overloaded`, `transport`).
    #[error("backend unavailable ({0})")]
    Unavailable(&'static str),
    /// The backend refused with a 4xx and this error.
    #[error("backend refused: {0}")]
    Refused(String),
    /// The backend answered something that is not an answer (`bad_answer`, `too_large`,
    /// `bad_status`).
    #[error("invalid answer from the backend ({0})")]
    Invalid(&'static str),
}

impl HookError {
    /// The `reason` label of `switchyard_gateway_hook_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            HookError::Unavailable(r) | HookError::Invalid(r) => r,
            HookError::Refused(_) => "refused",
        }
    }

    /// What a client's ack carries as `error`.
    pub fn client_error(&self) -> String {
        match self {
            HookError::Unavailable(_) => "backend_unavailable".to_owned(),
            HookError::Refused(e) => e.clone(),
            HookError::Invalid(_) => "invalid_answer".to_owned(),
        }
    }
}

/// Building the client failed (a bad `--hooks-url`, `--hook-token` or CA bundle).
#[derive(Debug, thiserror::Error)]
pub enum HookSetupError {
    #[error("--hooks-url must be an http://, https://, grpc:// or grpcs:// URL, got {0:?}")]
    Url(String),
    #[error("--hooks-url: {0}")]
    Tls(#[from] switchyard_common::tls::TlsError),
    #[error("--hook-token: {0}")]
    Token(#[from] switchyard_common::bearer::UnsendableToken),
    #[error("hooks HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The client of one backend. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct HookClient {
    transport: Transport,
    permits: Arc<Semaphore>,
    breaker: Breaker,
    timeout: Duration,
    max_answer_bytes: usize,
}

/// How the calls travel.
#[derive(Debug)]
enum Transport {
    Http {
        http: reqwest::Client,
        base: String,
        authorization: Option<HeaderValue>,
    },
    /// Boxed: an endpoint is large, and a client holds one transport for its life.
    Grpc(Box<GrpcTransport>),
}

/// The gRPC transport of [`Transport`].
#[derive(Debug)]
struct GrpcTransport {
    endpoint: Endpoint,
    /// Made on the first call (a lazy channel needs the runtime, which `new` may not have);
    /// connects when first used, reconnects by itself.
    client: OnceLock<HooksClient<Channel>>,
    bearer: Bearer,
}

impl HookClient {
    /// A client of the backend at `base`: `http://` or `https://` (HTTP; `https://` trusts
    /// `tls`'s CA bundle when given, else the system roots), `grpc://` or `grpcs://` (gRPC, plain
    /// or with `tls`'s CA and client certificate). Nothing connects here.
    pub fn new(
        base: &str,
        token: Option<&str>,
        timeout: Duration,
        concurrency: usize,
        max_answer_bytes: usize,
        tls: &ClientTls,
    ) -> Result<Self, HookSetupError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        let token = token.filter(|t| !t.is_empty());
        let transport = if let Some(rest) = base
            .strip_prefix("grpc://")
            .map(|r| format!("http://{r}"))
            .or_else(|| {
                base.strip_prefix("grpcs://")
                    .map(|r| format!("https://{r}"))
            }) {
            let endpoint = tls
                .endpoint(&rest)?
                .timeout(timeout)
                .connect_timeout(timeout);
            Transport::Grpc(Box::new(GrpcTransport {
                endpoint,
                client: OnceLock::new(),
                bearer: Bearer::new(token)?,
            }))
        } else if base.starts_with("http://") || base.starts_with("https://") {
            let authorization = match token {
                Some(t) => {
                    let v = switchyard_common::bearer::header_value(t)?;
                    Some(
                        HeaderValue::from_bytes(v.as_bytes())
                            .map_err(|_| switchyard_common::bearer::UnsendableToken)?,
                    )
                }
                None => None,
            };
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .pool_max_idle_per_host(concurrency)
                .redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = tls.ca_pem() {
                builder = builder.tls_built_in_root_certs(false);
                for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                    builder = builder.add_root_certificate(cert);
                }
            }
            Transport::Http {
                http: builder.build()?,
                base,
                authorization,
            }
        } else {
            return Err(HookSetupError::Url(base));
        };
        Ok(Self {
            transport,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            // A call waits at most `timeout` for a permit, then at most `timeout` for its answer.
            breaker: Breaker::new(timeout * 2),
            timeout,
            max_answer_bytes,
        })
    }

    /// The largest answer body read; a longer one is `Invalid("too_large")`.
    pub fn max_answer_bytes(&self) -> usize {
        self.max_answer_bytes
    }

    /// Calls `hook` with `body` and parses the answer as `T`, in a `hook` span (a child of the
    /// current span) whose context goes to the backend as `traceparent`.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        hook: Hook,
        body: &B,
    ) -> Result<T, HookError> {
        let span = tracing::info_span!("hook", hook = hook.name(), outcome = tracing::field::Empty);
        let started = Instant::now();
        let result = self
            .attempt(hook, body, &span)
            .instrument(span.clone())
            .await;
        ::metrics::histogram!(metrics::HOOK_DURATION_SECONDS, "hook" => hook.name())
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                span.record("outcome", "ok");
            }
            Err(e) => {
                span.record("outcome", e.reason());
                ::metrics::counter!(metrics::HOOK_ERRORS_TOTAL, "hook" => hook.name(), "reason" => e.reason())
                    .increment(1);
                tracing::debug!(parent: &span, error = %e, "hook failed");
            }
        }
        result
    }

    async fn attempt<B: Serialize, T: DeserializeOwned>(
        &self,
        hook: Hook,
        body: &B,
        span: &tracing::Span,
    ) -> Result<T, HookError> {
        if !self.breaker.allow(Instant::now()) {
            return Err(HookError::Unavailable("breaker_open"));
        }
        let result = self.send(hook, body, span).await.and_then(|bytes| {
            // An empty body (a 204, say) reads as `null`: a disconnect's answer, not a
            // connect's or an event's.
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(bytes).map_err(|_| HookError::Invalid("bad_answer"))
        });
        // Only the backend's own health counts: `overloaded` is this gateway's bound.
        if !matches!(result, Err(HookError::Unavailable("overloaded"))) {
            let ok = matches!(result, Ok(_) | Err(HookError::Refused(_)));
            self.breaker.record(ok, Instant::now());
        }
        result
    }

    /// One call, within the in-flight bound; the answer's bytes.
    async fn send<B: Serialize>(
        &self,
        hook: Hook,
        body: &B,
        span: &tracing::Span,
    ) -> Result<Vec<u8>, HookError> {
        let _permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HookError::Unavailable("overloaded"))?
            .map_err(|_| HookError::Unavailable("overloaded"))?;
        match &self.transport {
            Transport::Http {
                http,
                base,
                authorization,
            } => {
                self.post(http, base, authorization.as_ref(), hook, body, span)
                    .await
            }
            Transport::Grpc(grpc) => {
                let client = grpc.client.get_or_init(|| {
                    HooksClient::new(grpc.endpoint.connect_lazy())
                        .max_decoding_message_size(self.max_answer_bytes)
                });
                self.rpc(client.clone(), &grpc.bearer, hook, body, span)
                    .await
            }
        }
    }

    /// One POST; the 2xx body's bytes.
    async fn post<B: Serialize>(
        &self,
        http: &reqwest::Client,
        base: &str,
        authorization: Option<&HeaderValue>,
        hook: Hook,
        body: &B,
        span: &tracing::Span,
    ) -> Result<Vec<u8>, HookError> {
        let mut req = http.post(format!("{base}/{}", hook.name())).json(body);
        if let Some(auth) = authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        for (k, v) in switchyard_common::trace_context::to_map(span) {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                req = req.header(k, v);
            }
        }
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(HookError::Unavailable("status_5xx"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > self.max_answer_bytes {
                return Err(HookError::Invalid("too_large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(bytes);
        }
        if status.is_client_error() {
            return match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) if !e.error.is_empty() => Err(HookError::Refused(bounded_reason(&e.error))),
                _ => Err(HookError::Invalid("bad_answer")),
            };
        }
        Err(HookError::Invalid("bad_status"))
    }

    /// One gRPC call; the reply's `json`.
    async fn rpc<B: Serialize>(
        &self,
        mut client: HooksClient<Channel>,
        bearer: &Bearer,
        hook: Hook,
        body: &B,
        span: &tracing::Span,
    ) -> Result<Vec<u8>, HookError> {
        let json = serde_json::to_vec(body).map_err(|_| HookError::Unavailable("transport"))?;
        let mut req = tonic::Request::new(HookRequest { json });
        req.set_timeout(self.timeout);
        bearer.apply(req.metadata_mut());
        switchyard_common::trace_context::inject_metadata(span, req.metadata_mut());
        let reply = match hook {
            Hook::Connect => client.on_connect(req).await,
            Hook::Event => client.on_event(req).await,
            Hook::Disconnect => client.on_disconnect(req).await,
        };
        match reply {
            Ok(reply) => Ok(reply.into_inner().json),
            Err(status) => Err(grpc_failure(&status)),
        }
    }
}

/// The class of a failed gRPC call (see the proto's comments).
fn grpc_failure(status: &tonic::Status) -> HookError {
    use tonic::Code;
    match status.code() {
        Code::DeadlineExceeded => HookError::Unavailable("timeout"),
        Code::Unavailable => HookError::Unavailable("connect"),
        Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::DataLoss => HookError::Unavailable("status_5xx"),
        // What tonic answers for a reply beyond `max_decoding_message_size`.
        Code::OutOfRange => HookError::Invalid("too_large"),
        _ if status.message().is_empty() => HookError::Invalid("bad_answer"),
        _ => HookError::Refused(bounded_reason(status.message())),
    }
}

fn transport(e: reqwest::Error) -> HookError {
    if e.is_timeout() {
        HookError::Unavailable("timeout")
    } else if e.is_connect() {
        HookError::Unavailable("connect")
    } else {
        HookError::Unavailable("transport")
    }
}
