//! What every Switchyard service truly shares, and nothing else.
//!
//! - [`telemetry`]: tracing (JSON or text logs, OTLP export when an endpoint is set) and the
//!   Prometheus recorder.
//! - [`trace_context`]: W3C trace context in gRPC metadata, HTTP headers and relay frames.
//! - [`ops`]: the HTTP endpoints every service exposes (`/healthz`, `/readyz`, `/metrics`).
//! - [`grpc`]: gRPC health and reflection (v1 and v1alpha), and the bearer check for admin calls.
//! - [`http_server`]: the one serving path of every HTTP listener: header-read timeout,
//!   bounded pending connections per address and per listener, counted accept errors.
//! - [`bearer`]: the `authorization: Bearer <token>` header every token travels in.
//! - [`runtime`]: the async runtime every binary runs on (`--worker-threads`).
//! - [`shutdown`]: one signal future so every service reacts to SIGTERM and Ctrl-C alike.
//! - [`config`]: helpers for configuration values (redacting secrets in URLs).
//! - [`backoff`]: the one jittered exponential backoff policy used for every reconnect.
//! - [`clock`]: the wall clock in Unix milliseconds, read one way everywhere.
//! - [`iso8601`]: timestamps as JavaScript writes them, for Socket.IO's own tools.
//! - [`tls`]: TLS (rustls) for the HTTP and gRPC listeners, mutual TLS between services, and
//!   the trust and client certificate of outgoing gRPC connections.
//! - [`assignment`]: the signed token placement issues and gateways verify.
//! - [`namespace`]: what a Socket.IO namespace name may be, for every service.
//! - [`node_id`]: what a gateway's node id may be, for every service.

pub mod assignment;
pub mod backoff;
pub mod bearer;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod http_server;
pub mod iso8601;
pub mod namespace;
pub mod node_id;
pub mod ops;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
