//! Test and benchmark support for Switchyard.
//!
//! Everything here runs the real thing: [`redis::RedisServer`] starts its own `redis-server` on a
//! free port ([`redis_cluster::RedisCluster`]: a three-master Redis Cluster; either one plain,
//! or TLS-only with an ACL user as managed Redis runs, [`redis::RedisOptions`]),
//! [`process::Service`] spawns the service binaries that `cargo build` produced, and
//! [`cluster`] wraps the two services with settings suited to fast tests. Nothing is mocked.
//!
//! The process API is synchronous on purpose: spawning, waiting for readiness and killing all
//! work from plain `#[test]`s, from `#[tokio::test]`s and from `Drop`. Waiting for readiness
//! blocks the calling thread for at most the ready timeout; a process never depends on the test's
//! own runtime to get ready, so this does not deadlock. Only [`assign`] is async (it is HTTP).
//! [`tls::TestPki`] writes throwaway certificates for the TLS tests. [`driver::Driver`] runs the
//! official Socket.IO clients (Node's `socket.io-client`, `python-socketio`) as child processes;
//! [`feed`] publishes a numbered room feed and checks that every subscriber got each acknowledged
//! event exactly once. [`wait::eventually`] is the one way a test waits for something to happen.
//! [`metrics_check::check`] holds a service's `/metrics` against `promtool` and
//! `docs/operations.md`. [`cargo::command`] runs a nested cargo with a plain shell's environment.
//!
//! Every child process is killed when its handle is dropped, so a failing test leaves nothing
//! running. Logs of every process go to `target/testkit-logs/`.

pub mod assign;
pub mod cargo;
pub mod cluster;
pub mod driver;
pub mod feed;
pub mod metrics_check;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
mod resp;
pub mod tls;
pub mod tools;
pub mod wait;

/// Re-exported so tests can build a shared [`reqwest::Client`] for [`assign::assign_with`]
/// without depending on reqwest themselves.
pub use reqwest;
