//! Placement: the counter ledger, the fenced lease and least-loaded assignment of new
//! connections.
//!
//! **Reading order**, which is also the import order (a module uses only modules after it):
//! [`server`] (listeners, wiring, shutdown) → [`admin`] (the operator API) → [`report_stream`]
//! (gateway registration, liveness, directives) and [`reaper`] (the fenced singleton duty) →
//! [`assign`] (HTTP and gRPC assignment) and [`lease`] (the fenced lease) → [`config`] →
//! [`ledger`] (one trait, the Redis and in-memory implementations, the Lua scripts beside them,
//! and [`ledger::validate`]: every input limit, once) → [`app_token`], [`rate_limit`],
//! [`metrics`] (every metric name and its description, once).
//!
//! **Locks.** Every lock is a `std::sync::Mutex` whose critical section never awaits; a
//! poisoned one is recovered (the poison policy in ARCHITECTURE.md, "Cross-cutting concerns").
//! No lock is held while another is taken.

pub mod admin;
pub mod app_token;
pub mod assign;
pub mod config;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod rate_limit;
pub mod reaper;
pub mod report_stream;
pub mod server;
