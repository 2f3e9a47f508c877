//! [`Shared`]: the state every socket handler, the reporter and the drain controller share,
//! owned by [`crate::gateway::Switchyard`].

use std::sync::{Arc, Mutex, OnceLock};

use crate::admission::Admission;
use crate::cluster::ClusterState;
use crate::drain::{DrainInbox, DrainState};
use crate::events::EventLimits;
use crate::hooks::Hooks;
use crate::load::Load;
use crate::observe::Observer;
use crate::settings::Settings;

/// State shared by every socket handler, the reporter and the drain controller.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) admission: Admission,
    pub(crate) load: Arc<Load>,
    pub(crate) drain: Arc<DrainState>,
    pub(crate) limits: EventLimits,
    /// The hooks to the application's backend (`--hooks-url`); `None`: off.
    pub(crate) hooks: Option<Arc<Hooks>>,
    pub(crate) drain_inbox: Mutex<Option<DrainInbox>>,
    /// Set once by [`Switchyard::cluster_state`]: `Some` with relay URLs.
    pub(crate) cluster: OnceLock<Option<ClusterState>>,
    /// Set once by [`Switchyard::start`] when the admin UI is on: given to every admitted
    /// socket (see [`crate::observe`]).
    pub(crate) observer: OnceLock<Observer>,
}

impl Shared {
    /// The cluster (relay links, history, gates), once [`Switchyard::cluster_state`] made it;
    /// `None` for a single gateway.
    pub(crate) fn cluster(&self) -> Option<ClusterState> {
        self.cluster.get().cloned().flatten()
    }
}
