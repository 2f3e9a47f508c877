//! The in-memory ledger: the embedded default for a single placement replica with no Redis.
//!
//! It mirrors the Redis scripts step by step (same validation, same eligibility rules, same
//! tie-break: lowest node id among equal scores), so the one behavioural suite holds for both.
//! The clock is the local system clock.
//!
//! Concurrency: the whole state sits behind one `std::sync::Mutex`, not tokio's, because the
//! critical section never awaits: each call locks, does a few map operations and unlocks. Like
//! a Lua script in Redis, the lock makes each call atomic, so no two assignments pick from the
//! same view.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_common::clock::now_ms;

use super::observe::observe;
use super::{
    FencingToken, Ledger, LedgerError, LedgerSettings, LoadReport, NodeRegistration, NodeView,
    Reservation, validate,
};

const BACKEND: &str = "memory";

/// `(connections + pending) / weight`, compared exactly (cross-multiplied in `u128`), so that
/// equal ratios tie and the tie goes to the lowest node id, as in a Redis sorted set.
#[derive(Debug, Clone, Copy)]
struct Score {
    load: u64,
    weight: u64,
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.load) * u128::from(other.weight))
            .cmp(&(u128::from(other.load) * u128::from(self.weight)))
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

#[derive(Debug)]
struct Node {
    /// Normalised by [`validate::registration`].
    registration: NodeRegistration,
    connections: u64,
    /// Set by an operator ([`Ledger::set_draining`]); kept apart from the gateway's own flag
    /// so that a report cannot undo an operator's drain.
    draining_admin: bool,
    draining_report: bool,
    /// The gateway's own word that it cannot take another socket (out of descriptors).
    full: bool,
    last_seen_ms: u64,
    /// Live reservation ids; their count is the node's pending.
    reservations: HashSet<String>,
    /// The score under which the node currently sits in its namespaces' candidate sets, if it
    /// does.
    indexed: Option<Score>,
}

impl Node {
    fn score(&self) -> Score {
        Score {
            load: self.load(),
            weight: u64::from(self.registration.weight.max(1)),
        }
    }

    fn load(&self) -> u64 {
        self.connections
            .saturating_add(self.reservations.len() as u64)
    }

    fn draining(&self) -> bool {
        self.draining_admin || self.draining_report
    }

    fn assignable(&self, now: u64, liveness_ms: u64) -> bool {
        let capacity = self.registration.capacity;
        !self.draining()
            && !self.full
            && (capacity == 0 || self.load() < capacity)
            && now.saturating_sub(self.last_seen_ms) <= liveness_ms
    }

    fn view(&self, now: u64) -> NodeView {
        NodeView {
            registration: self.registration.clone(),
            connections: self.connections,
            pending: self.reservations.len() as u64,
            draining: self.draining(),
            last_report_age_ms: now.saturating_sub(self.last_seen_ms),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<String, Node>,
    /// Per namespace, the assignable nodes ordered by score then id (the Redis `P:ns:*` zsets).
    candidates: HashMap<String, BTreeSet<(Score, String)>>,
    /// Reservation id -> node id.
    reservations: HashMap<String, String>,
    /// (expires_at_ms, reservation id), oldest first (the Redis `P:resv` zset).
    expiry: BTreeSet<(u64, String)>,
    /// The newest fencing token a reap was made with.
    newest_fence: u64,
}

impl State {
    /// Puts the node into its namespaces' candidate sets with its current score, or takes it
    /// out when it is not assignable.
    fn rescore(&mut self, id: &str, now: u64, liveness_ms: u64) {
        let Self {
            nodes, candidates, ..
        } = self;
        let Some(node) = nodes.get_mut(id) else {
            return;
        };
        if let Some(old) = node.indexed.take() {
            for ns in &node.registration.namespaces {
                if let Some(set) = candidates.get_mut(ns) {
                    set.remove(&(old, id.to_owned()));
                    if set.is_empty() {
                        candidates.remove(ns);
                    }
                }
            }
        }
        if node.assignable(now, liveness_ms) {
            let score = node.score();
            for ns in &node.registration.namespaces {
                candidates
                    .entry(ns.clone())
                    .or_default()
                    .insert((score, id.to_owned()));
            }
            node.indexed = Some(score);
        }
    }

    /// Forgets one reservation everywhere; returns the node it was on.
    fn drop_reservation(&mut self, rid: &str) -> Option<String> {
        let node_id = self.reservations.remove(rid)?;
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.reservations.remove(rid);
        }
        Some(node_id)
    }

    /// Drops every expired reservation and rescores its node. Amortised O(log n) per
    /// reservation ever made.
    fn purge_expired(&mut self, now: u64, liveness_ms: u64) {
        while let Some((expires, _)) = self.expiry.first() {
            if *expires > now {
                break;
            }
            let Some((_, rid)) = self.expiry.pop_first() else {
                break;
            };
            if let Some(node_id) = self.drop_reservation(&rid) {
                self.rescore(&node_id, now, liveness_ms);
            }
        }
    }

    fn remove_node(&mut self, id: &str) -> bool {
        let Some(node) = self.nodes.remove(id) else {
            return false;
        };
        if let Some(score) = node.indexed {
            for ns in &node.registration.namespaces {
                if let Some(set) = self.candidates.get_mut(ns) {
                    set.remove(&(score, id.to_owned()));
                    if set.is_empty() {
                        self.candidates.remove(ns);
                    }
                }
            }
        }
        // Their expiry entries stay and are skipped when they come due (drop_reservation
        // finds nothing).
        for rid in &node.reservations {
            self.reservations.remove(rid);
        }
        true
    }

    fn assign(
        &mut self,
        namespace: &str,
        now: u64,
        ttl_ms: u64,
        liveness_ms: u64,
    ) -> Option<Reservation> {
        loop {
            let (score, id) = self.candidates.get(namespace)?.first()?.clone();
            let picked = match self.nodes.get_mut(&id) {
                Some(node) if node.assignable(now, liveness_ms) => {
                    let reservation_id = uuid::Uuid::new_v4().to_string();
                    let expires_at_ms = now.saturating_add(ttl_ms);
                    node.reservations.insert(reservation_id.clone());
                    Some(Reservation {
                        node_id: id.clone(),
                        url: node.registration.url.clone(),
                        reservation_id,
                        expires_at_ms,
                    })
                }
                _ => None,
            };
            match picked {
                Some(reservation) => {
                    self.reservations
                        .insert(reservation.reservation_id.clone(), id.clone());
                    self.expiry.insert((
                        reservation.expires_at_ms,
                        reservation.reservation_id.clone(),
                    ));
                    self.rescore(&id, now, liveness_ms);
                    return Some(reservation);
                }
                None => {
                    // Stale (or otherwise not assignable): out of every set; a report puts
                    // it back. The explicit removal guarantees progress.
                    self.rescore(&id, now, liveness_ms);
                    if let Some(set) = self.candidates.get_mut(namespace) {
                        set.remove(&(score, id));
                    }
                }
            }
        }
    }
}

/// The embedded ledger for a single placement replica with no Redis.
#[derive(Debug)]
pub struct MemoryLedger {
    settings: LedgerSettings,
    state: Mutex<State>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryLedger {
    pub fn new(settings: LedgerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    pub fn settings(&self) -> &LedgerSettings {
        &self.settings
    }

    /// Locks the state. A poisoned lock is recovered: no code path panics while holding it,
    /// and every step leaves the maps consistent, so the state is still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn liveness_ms(&self) -> u64 {
        millis(self.settings.liveness)
    }

    fn update(
        &self,
        node_id: &str,
        change: impl FnOnce(&mut Node),
    ) -> Result<NodeView, LedgerError> {
        validate::node_id(node_id)?;
        let now = now_ms();
        let mut state = self.state();
        let node = state
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| LedgerError::UnknownNode(node_id.to_owned()))?;
        change(node);
        state.rescore(node_id, now, self.liveness_ms());
        state
            .nodes
            .get(node_id)
            .map(|node| node.view(now))
            .ok_or_else(|| LedgerError::UnknownNode(node_id.to_owned()))
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    #[tracing::instrument(level = "debug", skip_all, fields(node_id = %node.node_id))]
    async fn register(&self, node: &NodeRegistration) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = validate::registration(node).map(|registration| {
            let now = now_ms();
            let id = registration.node_id.clone();
            let mut state = self.state();
            state.remove_node(&id);
            state.nodes.insert(
                id.clone(),
                Node {
                    registration,
                    connections: 0,
                    draining_admin: false,
                    draining_report: false,
                    full: false,
                    last_seen_ms: now,
                    reservations: HashSet::new(),
                    indexed: None,
                },
            );
            state.rescore(&id, now, self.liveness_ms());
        });
        observe(BACKEND, "register", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, connections = load.connections))]
    async fn report(&self, node_id: &str, load: &LoadReport) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = validate::report(node_id, load).and_then(|()| {
            let now = now_ms();
            let liveness = self.liveness_ms();
            let mut state = self.state();
            if !state.nodes.contains_key(node_id) {
                return Err(LedgerError::UnknownNode(node_id.to_owned()));
            }
            state.purge_expired(now, liveness);
            for rid in &load.consumed {
                // Only this node's own live reservations stop counting.
                if state.reservations.get(rid).map(String::as_str) == Some(node_id) {
                    state.drop_reservation(rid);
                }
            }
            if let Some(node) = state.nodes.get_mut(node_id) {
                node.connections = load.connections;
                node.draining_report = load.draining;
                node.full = load.full;
                node.last_seen_ms = now;
            }
            state.rescore(node_id, now, liveness);
            Ok(())
        });
        observe(BACKEND, "report", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id))]
    async fn remove(&self, node_id: &str) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = validate::node_id(node_id).map(|()| {
            self.state().remove_node(node_id);
        });
        observe(BACKEND, "remove", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(namespace))]
    async fn assign(&self, namespace: &str) -> Result<Option<Reservation>, LedgerError> {
        let started = Instant::now();
        let result = validate::namespace(namespace).map(|()| {
            let now = now_ms();
            let liveness = self.liveness_ms();
            let mut state = self.state();
            state.purge_expired(now, liveness);
            state.assign(
                namespace,
                now,
                millis(self.settings.reservation_ttl),
                liveness,
            )
        });
        observe(BACKEND, "assign", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, draining))]
    async fn set_draining(&self, node_id: &str, draining: bool) -> Result<NodeView, LedgerError> {
        let started = Instant::now();
        let result = self.update(node_id, |node| node.draining_admin = draining);
        observe(BACKEND, "set_draining", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node_id, weight))]
    async fn set_weight(&self, node_id: &str, weight: u32) -> Result<NodeView, LedgerError> {
        let started = Instant::now();
        let result = validate::weight(weight)
            .and_then(|weight| self.update(node_id, |node| node.registration.weight = weight));
        observe(BACKEND, "set_weight", started, &result);
        result
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn nodes(&self) -> Result<Vec<NodeView>, LedgerError> {
        let started = Instant::now();
        let now = now_ms();
        let mut state = self.state();
        state.purge_expired(now, self.liveness_ms());
        let mut views: Vec<NodeView> = state.nodes.values().map(|n| n.view(now)).collect();
        drop(state);
        views.sort_by(|a, b| a.registration.node_id.cmp(&b.registration.node_id));
        let result = Ok(views);
        observe(BACKEND, "nodes", started, &result);
        result
    }

    /// There is no shared lease store behind this ledger: it refuses any token older than the
    /// newest one it has seen, which is the fencing rule for holders inside this process
    /// ([`crate::lease::LocalLease`] always holds token 1).
    #[tracing::instrument(level = "debug", skip_all, fields(fence = fence.0))]
    async fn reap(&self, fence: FencingToken) -> Result<Vec<String>, LedgerError> {
        let started = Instant::now();
        let now = now_ms();
        let liveness = self.liveness_ms();
        let result = {
            let mut state = self.state();
            if fence.0 < state.newest_fence {
                Err(LedgerError::Fenced(fence))
            } else {
                state.newest_fence = fence.0;
                let mut stale: Vec<String> = state
                    .nodes
                    .iter()
                    .filter(|(_, node)| now.saturating_sub(node.last_seen_ms) > liveness)
                    .map(|(id, _)| id.clone())
                    .collect();
                stale.sort();
                for id in &stale {
                    state.remove_node(id);
                }
                state.purge_expired(now, liveness);
                Ok(stale)
            }
        };
        observe(BACKEND, "reap", started, &result);
        result
    }
}
