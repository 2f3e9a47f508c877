//! Hooks: the gateway calls the application's own backend, in any language, at the moments a
//! Socket.IO handler would run. The contract (bodies, JSON Schemas, failure semantics) is
//! `docs/hooks.md`; this module is its one implementation:
//!
//! - [`contract`]: the request and answer bodies, and the checks every answer passes before
//!   any of it reaches a socket;
//! - [`binary`]: blobs as `{"$binary": "<base64>"}`;
//! - [`client`]: the calls, over HTTP or gRPC (`switchyard.hooks.v1.Hooks`, the same JSON
//!   documents), with timeout, bearer token, in-flight bound, breaker, metrics, a span per call
//!   with `traceparent`; [`breaker`] the circuit breaker's state machine;
//! - [`disconnects`]: the disconnect hook's bounded queue and retries.
//!
//! What the answers do to sockets (joins, acks, emits through the cluster) is applied by
//! [`crate::backend`] and [`crate::handler`]; this module knows nothing of sockets.

pub mod binary;
pub mod breaker;
pub mod client;
pub mod contract;
pub mod disconnects;

use std::sync::{Arc, Mutex, PoisonError};

use switchyard_common::tls::ClientTls;

use crate::rooms::glob_match;
use crate::settings::{ConnectFailure, HookSettings};
use client::{HookClient, HookSetupError};
use contract::{AnswerLimits, DisconnectRequest};
use disconnects::{DisconnectQueue, Disconnects};

/// The hooks of one gateway: the client, which events go to the backend, and the policies.
#[derive(Debug)]
pub struct Hooks {
    pub client: Arc<HookClient>,
    /// `--hook-events`: globs of the application events forwarded.
    events: Vec<String>,
    pub connect_failure: ConnectFailure,
    pub limits: AnswerLimits,
    disconnects: Disconnects,
    queue: Mutex<Option<DisconnectQueue>>,
}

impl Hooks {
    /// The hooks of `settings`; answers are held to `limits`, and read up to
    /// `max_answer_bytes`; `https://` and `grpcs://` backends are reached with `tls`. Nothing
    /// connects and nothing is spawned here.
    pub fn new(
        settings: &HookSettings,
        limits: AnswerLimits,
        max_answer_bytes: usize,
        tls: &ClientTls,
    ) -> Result<Self, HookSetupError> {
        let client = HookClient::new(
            &settings.url,
            settings.token.as_deref(),
            settings.timeout,
            settings.concurrency,
            max_answer_bytes,
            tls,
        )?;
        let (disconnects, queue) = Disconnects::new();
        Ok(Self {
            client: Arc::new(client),
            events: settings.events.clone(),
            connect_failure: settings.connect_failure,
            limits,
            disconnects,
            queue: Mutex::new(Some(queue)),
        })
    }

    /// Starts delivering disconnect hooks (once; later calls do nothing). Needs a runtime.
    pub fn start(&self) {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(queue) = queue {
            tokio::spawn(disconnects::deliver(self.client.clone(), queue));
        }
    }

    /// Whether the application event `event` goes to the event hook.
    pub fn forwards(&self, event: &str) -> bool {
        self.events.iter().any(|p| glob_match(p, event))
    }

    /// Queues a disconnect hook (never waits; see [`disconnects`]).
    pub fn disconnected(&self, req: DisconnectRequest) {
        self.disconnects.push(req);
    }

    /// At shutdown, after the sockets are closed: waits a bounded time for the queued
    /// disconnect hooks (see [`disconnects`]).
    pub async fn flush(&self) {
        self.disconnects.flush(disconnects::FLUSH_FOR).await;
    }
}
