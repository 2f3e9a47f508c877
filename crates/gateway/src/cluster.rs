//! [`ClusterState`]: what makes one gateway part of a cluster, owned in one place.
//!
//! The relay links ([`crate::link`]), the relay history client ([`crate::history`]) with the
//! joins' shared head reads ([`crate::heads`]) and the per-socket gates ([`crate::gates`])
//! exist together or not at all: `ClusterState::start`
//! is the only way to make one, so an adapter without history (whose room events would lose
//! their positions) cannot be built. The gateway holds it ([`crate::Switchyard::cluster_state`])
//! and hands clones to socketioxide as the state of every namespace's
//! [`crate::adapter::ClusterAdapter`]; the built-in events reach history and gates through it.
//!
//! Wiring kept here: at the end of a gap of the relay links, and when an adapter's queue
//! overflows, the links run a handler that severs every gated socket (they resume). The link
//! knows nothing of history; it only runs the handler it was given.
//!
//! It also holds, per namespace, where the cluster adapter finds the admin UI's observer of
//! outgoing events ([`ClusterState::outgoing`]): the adapter is made before the admin UI starts,
//! and knows sockets only by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::gates::Gates;
use crate::heads::HeadReads;
use crate::history::{History, HistoryError};
use crate::link::{LinkConfig, RelayLink};
use crate::observe::{Observer, OutgoingWatch};

/// The relay links, the history client and the gates of one gateway. Cheap to clone (clones
/// share).
#[derive(Debug, Clone)]
pub struct ClusterState {
    link: RelayLink,
    history: Arc<History>,
    /// The joins' head reads, shared per namespace.
    heads: Arc<HeadReads>,
    gates: Arc<Gates>,
    /// Per namespace: the observer of outgoing events, once a watched socket was admitted.
    outgoing: Arc<Mutex<HashMap<String, OutgoingWatch>>>,
}

impl ClusterState {
    /// Starts one link per relay URL of `cfg`, the history client of the same relays
    /// (publish ids prefixed `<node_id>:<incarnation>`) and empty gates, wired together (see the
    /// module docs). Needs a tokio runtime. Fails when a relay URL or the link token cannot be
    /// used.
    pub(crate) fn start(cfg: LinkConfig) -> Result<ClusterState, HistoryError> {
        let publisher = format!("{}:{}", cfg.node_id, cfg.incarnation);
        let urls = cfg.urls.clone();
        let tls = cfg.tls.clone();
        let token = cfg.token.clone();
        let link = RelayLink::spawn(cfg);
        let history = History::new(&urls, publisher, &tls, link.stamper(), token.as_deref())?;
        let gates = Arc::new(Gates::default());
        let severs = Arc::downgrade(&gates);
        link.on_gap(move || {
            if let Some(gates) = severs.upgrade() {
                gates.sever_all();
            }
        });
        let history = Arc::new(history);
        Ok(ClusterState {
            link,
            heads: Arc::new(HeadReads::new(Arc::clone(&history))),
            history,
            gates,
            outgoing: Arc::default(),
        })
    }

    /// Where the deliveries to namespace `ns` find the admin UI's observer of outgoing events
    /// (empty until [`ClusterState::watch`]); the cluster adapter of `ns` keeps it.
    pub fn outgoing(&self, ns: &str) -> OutgoingWatch {
        let mut all = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
        match all.get(ns) {
            Some(w) => w.clone(),
            None => all.entry(ns.to_owned()).or_default().clone(),
        }
    }

    /// A socket of `ns` carrying `observer` was admitted: deliveries to `ns` report outgoing
    /// events to it from now on, if it wants them (the admin UI in development mode). Every
    /// socket of `ns` that can receive anything was admitted, so none is missed.
    pub fn watch(&self, ns: &str, observer: &Observer) {
        if observer.outgoing() {
            self.outgoing(ns).watch(observer);
        }
    }

    pub fn link(&self) -> &RelayLink {
        &self.link
    }

    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    pub fn heads(&self) -> &HeadReads {
        &self.heads
    }

    pub fn gates(&self) -> &Arc<Gates> {
        &self.gates
    }
}
