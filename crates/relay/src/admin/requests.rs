//! Asking every gateway of a namespace and gathering their answers, for the admin API.
//!
//! The relay holds no socket state: it asks the gateways, speaking the protocol their adapters
//! already speak to each other (see `crates/gateway/src/adapter.rs`). A request is a
//! socketioxide-core `RequestOut` (MessagePack) in a `REQUEST` frame of the namespace, from the
//! relay's own origin (`relay:<relay_id>`, see `crate::origin`); every gateway of the namespace
//! applies it through its `RemoteRequestHandler` and answers with a `RESPONSE` frame targeted at
//! that origin, carrying the request's id in `Frame.request_id` and the `Response` (MessagePack)
//! as its payload. The hub hands those
//! frames to [`Requests`] (through the callback [`Requests::install`] gives it) instead of a
//! link. A request waits for every gateway the membership listed when it was sent, or the
//! timeout, whichever comes first; gateways that did not answer are reported as missing, so the
//! answer is partial, never late.

use std::{
    collections::{BTreeSet, HashMap},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use prost::bytes::Bytes;
use serde::de::DeserializeOwned;
use socketioxide_core::{
    Sid, Uid,
    adapter::{
        BroadcastOptions,
        remote_packet::{RequestOut, RequestTypeOut, Response},
    },
};
use switchyard_proto::{
    admin::v1::Coverage,
    relay::v1::{Frame, FrameKind},
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{metrics, state::RelayState};

/// Where the answers to one request go, as `(gateway node id, Response bytes)`.
type Answers = mpsc::UnboundedSender<(String, Bytes)>;

/// This replica's outstanding requests to gateways, and how to send new ones.
pub struct Requests {
    /// The socketioxide server id this relay speaks as (`RequestOut.node_id`); gateways map it
    /// to the frame's origin to address their responses.
    pub(super) uid: Uid,
    /// Request id -> where its responses go. A `std` mutex: nothing under it awaits, and it is
    /// taken under no other lock (the hub calls its inbox under none).
    pending: Mutex<HashMap<Sid, Answers>>,
}

impl Requests {
    /// Creates the table and routes the responses addressed to this replica's origin to it,
    /// through the hub's inbox.
    pub fn install(state: &RelayState) -> Arc<Requests> {
        let requests = Arc::new(Requests {
            uid: Uid::new(),
            pending: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&requests);
        state.hub.set_inbox(
            state.origin.name().to_owned(),
            Box::new(move |frame| {
                if let Some(r) = weak.upgrade() {
                    r.on_response(frame);
                }
            }),
        );
        requests
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Sid, Answers>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A response frame addressed to this replica: to its pending request, if still waiting.
    fn on_response(&self, frame: &Frame) {
        let Ok(req_id) = Sid::from_str(&frame.request_id) else {
            tracing::warn!(origin = %frame.origin, "response to an admin request without a valid request id");
            return;
        };
        if let Some(tx) = self.pending().get(&req_id) {
            let _ = tx.send((frame.origin.clone(), frame.payload.clone()));
        }
    }

    /// Sends one adapter request to every gateway of `namespace` (a `REQUEST` frame when
    /// answers are expected, else a `BROADCAST`), from the relay's origin.
    pub(super) async fn send(
        &self,
        state: &RelayState,
        namespace: &str,
        req: &RequestOut<'_>,
        kind: FrameKind,
    ) -> Result<(), Status> {
        let payload = rmp_serde::to_vec_named(req)
            .map_err(|e| Status::internal(format!("encoding an adapter request: {e}")))?;
        let frame = Frame {
            namespace: namespace.to_owned(),
            kind: kind as i32,
            payload: Bytes::from(payload),
            ..Frame::default()
        };
        state.origin.send(&state.bus, frame).await?;
        metrics::admin_request();
        Ok(())
    }

    /// Sends `ty` with `opts` to every gateway of `namespace` and gathers their responses
    /// until each answered or `timeout` passed.
    pub(super) async fn gather<D: DeserializeOwned>(
        &self,
        state: &RelayState,
        namespace: &str,
        ty: RequestTypeOut<'_>,
        opts: &BroadcastOptions,
        timeout: Duration,
    ) -> Result<Gathered<D>, Status> {
        let gateways: BTreeSet<String> = state
            .membership
            .members(namespace)
            .await?
            .into_iter()
            .collect();
        let mut gathered = Gathered {
            gateways: gateways.clone(),
            missing: gateways.clone(),
            answers: Vec::new(),
        };
        if gateways.is_empty() {
            return Ok(gathered);
        }
        // Answers travel on the namespace's channel: this replica must hear it even when none
        // of its own links serves the namespace.
        state.bus.ensure_subscribed(&[namespace.to_owned()]).await?;
        let req = RequestOut::new(self.uid, ty, opts);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending().insert(req.id, tx);
        let _forget = Forget(self, req.id);
        self.send(state, namespace, &req, FrameKind::Request)
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while !gathered.missing.is_empty() {
            let Ok(Some((node, body))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            if !gathered.missing.remove(&node) {
                continue; // not expected, or a second answer
            }
            match rmp_serde::from_slice::<Response<D>>(&body) {
                Ok(res) => gathered.answers.push((node, res)),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "undecodable answer to an admin request")
                }
            }
        }
        if !gathered.missing.is_empty() {
            metrics::admin_gateways_missing(gathered.missing.len());
            tracing::info!(%namespace, missing = ?gathered.missing, "gateways did not answer in time");
        }
        Ok(gathered)
    }
}

/// Removes a request from the table when its gathering ends (or is cancelled).
struct Forget<'a>(&'a Requests, Sid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending().remove(&self.1);
    }
}

/// The answers to one request.
pub(super) struct Gathered<D> {
    /// Every gateway asked: the namespace's members when it was sent.
    pub(super) gateways: BTreeSet<String>,
    /// Those that did not answer in time.
    pub(super) missing: BTreeSet<String>,
    /// `(gateway node id, its answer)`.
    pub(super) answers: Vec<(String, Response<D>)>,
}

/// Coverage of several requests: every gateway asked, and every one that missed any of them.
#[derive(Default)]
pub(super) struct Covered {
    gateways: BTreeSet<String>,
    pub(super) missing: BTreeSet<String>,
}

impl Covered {
    pub(super) fn add<D>(&mut self, g: &Gathered<D>) {
        self.gateways.extend(g.gateways.iter().cloned());
        self.missing.extend(g.missing.iter().cloned());
    }

    pub(super) fn merge(&mut self, other: Covered) {
        self.gateways.extend(other.gateways);
        self.missing.extend(other.missing);
    }

    pub(super) fn into_proto(self) -> Coverage {
        Coverage {
            gateways: self.gateways.into_iter().collect(),
            missing: self.missing.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reaches_the_request_its_request_id_names() -> anyhow::Result<()> {
        let requests = Requests {
            uid: Uid::new(),
            pending: Mutex::new(HashMap::new()),
        };
        let id = Sid::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        requests.pending().insert(id, tx);
        let response = |request_id: String| Frame {
            origin: "gw-1".into(),
            kind: FrameKind::Response as i32,
            request_id,
            payload: Bytes::from_static(b"answer"),
            ..Frame::default()
        };
        for other in [Sid::new().to_string(), "not an id".into(), String::new()] {
            requests.on_response(&response(other));
        }
        assert!(rx.try_recv().is_err(), "only its own id reaches a request");
        requests.on_response(&response(id.to_string()));
        assert_eq!(
            rx.try_recv()?,
            ("gw-1".to_owned(), Bytes::from_static(b"answer"))
        );
        Ok(())
    }
}
