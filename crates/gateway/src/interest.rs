//! [`Interest`]: the rooms this gateway has local members in, as the relay links must learn
//! them (interest routing, `Hello.interest_routing`). A synchronous state machine, held under the
//! link's state lock ([`crate::link`]) and tested without a runtime.
//!
//! Each relay replica forwards a frame that targets rooms only to the links that declared one of
//! them, so what this gateway declares must always cover every room it has a local member in.
//! A superset costs only bandwidth; a missing room loses frames. Hence:
//!
//! - **Adds** ([`Interest::joined`]) are made after the socket joined locally, for every room
//!   that has a local member at that moment.
//! - **Removes** ([`Interest::left`]) are made only for a room whose local membership, checked
//!   under the same lock, is empty. A join that adds its socket locally after that check takes
//!   the lock after the remove and adds the room again; one that added it before is seen by the
//!   check. So the declared set never misses a room joined through a path that announces.
//! - **Versions.** Every change bumps one version. A link task sends the changes of its link
//!   ([`Interest::take_changes`]) tagged with the version; the relay acknowledges a version once
//!   it filters by it. A link's [`Interest::hello`] carries the whole set: its relay applies it
//!   before forwarding anything on that link, so the link counts as acknowledged at that version.
//! - **Settled** ([`Interest::settled`]): every link that is linking or up acknowledged at least
//!   the version. The join waits for it before reading the position the socket starts from (the
//!   argument is in [`crate::link`]).
//!
//! Every queue here is bounded by the rooms the gateway has members in: a link's pending changes
//! are a set of rooms (the latest state of each is sent), never a log of joins and leaves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use switchyard_proto::relay::v1::Interest as InterestMsg;

/// Whether a namespace's room has a local member other than `except` (a socket disconnecting).
pub type MemberCheck = Box<dyn Fn(&str, Option<&str>) -> bool + Send + Sync>;

/// One relay link's view of the declared set.
#[derive(Debug, Default)]
struct LinkState {
    /// Between its Hello and its end: the relay filters by what it was told.
    registered: bool,
    /// Highest version the relay acknowledged (or the Hello carried).
    acked: u64,
    /// `(namespace, room)` changed since the link last sent its changes.
    dirty: HashSet<(String, String)>,
}

/// The declared rooms, per namespace, and where each link stands. See the module docs.
#[derive(Debug, Default)]
pub struct Interest {
    rooms: HashMap<String, BTreeSet<String>>,
    version: u64,
    links: Vec<LinkState>,
}

impl Interest {
    /// Interest for `links` relay links.
    pub fn new(links: usize) -> Interest {
        Interest {
            links: (0..links).map(|_| LinkState::default()).collect(),
            ..Interest::default()
        }
    }

    /// The version of the latest change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Rooms declared for `namespace`.
    pub fn rooms(&self, namespace: &str) -> usize {
        self.rooms.get(namespace).map_or(0, BTreeSet::len)
    }

    /// Whether `room` of `namespace` is declared to the relays.
    fn is_declared(&self, namespace: &str, room: &str) -> bool {
        self.rooms
            .get(namespace)
            .is_some_and(|set| set.contains(room))
    }

    fn changed(&mut self, namespace: &str, room: &str) {
        self.version += 1;
        for link in &mut self.links {
            if link.registered {
                link.dirty.insert((namespace.to_owned(), room.to_owned()));
            }
        }
    }

    /// Declares each of `rooms` that has a local member now (`has_member`) and is not declared
    /// yet. True when anything changed (the links have something to send).
    pub fn joined(
        &mut self,
        namespace: &str,
        rooms: &[String],
        has_member: impl Fn(&str) -> bool,
    ) -> bool {
        let mut changed = false;
        for room in rooms {
            let declared = self.is_declared(namespace, room);
            if !declared && has_member(room) {
                self.rooms
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(room.clone());
                self.changed(namespace, room);
                changed = true;
            }
        }
        changed
    }

    /// After a remote join (`Frame.joins`): the relays made this gateway interested in `rooms`
    /// when they forwarded it. Declares those with a local member ([`Interest::joined`]) and
    /// withdraws the others from the relays (they were never declared here). True when the
    /// links have something to send.
    pub fn joined_remotely(
        &mut self,
        namespace: &str,
        rooms: &[String],
        has_member: impl Fn(&str) -> bool,
    ) -> bool {
        let mut changed = self.joined(namespace, rooms, &has_member);
        for room in rooms {
            let declared = self.is_declared(namespace, room);
            if !declared {
                self.changed(namespace, room);
                changed = true;
            }
        }
        changed
    }

    /// Withdraws each of `rooms` that is declared and has no local member now (`has_member`).
    /// True when anything changed.
    pub fn left(
        &mut self,
        namespace: &str,
        rooms: &[String],
        has_member: impl Fn(&str) -> bool,
    ) -> bool {
        let mut changed = false;
        for room in rooms {
            let declared = self.is_declared(namespace, room);
            if declared && !has_member(room) {
                if let Some(set) = self.rooms.get_mut(namespace) {
                    set.remove(room);
                    if set.is_empty() {
                        self.rooms.remove(namespace);
                    }
                }
                self.changed(namespace, room);
                changed = true;
            }
        }
        changed
    }

    /// The whole set for link `index`'s Hello; from now on the link is registered at the current
    /// version with nothing pending.
    pub fn hello(&mut self, index: usize) -> Vec<InterestMsg> {
        let version = self.version;
        if let Some(link) = self.links.get_mut(index) {
            link.registered = true;
            link.acked = version;
            link.dirty.clear();
        }
        self.rooms
            .iter()
            .map(|(namespace, rooms)| InterestMsg {
                version,
                namespace: namespace.clone(),
                add: rooms.iter().cloned().collect(),
                remove: Vec::new(),
            })
            .collect()
    }

    /// What link `index` has not sent yet, one message per namespace, tagged with the current
    /// version (each room as it stands now).
    pub fn take_changes(&mut self, index: usize) -> Vec<InterestMsg> {
        let Some(link) = self.links.get_mut(index) else {
            return Vec::new();
        };
        let mut by_ns: BTreeMap<String, InterestMsg> = BTreeMap::new();
        for (namespace, room) in link.dirty.drain() {
            let msg = by_ns
                .entry(namespace.clone())
                .or_insert_with(|| InterestMsg {
                    version: self.version,
                    namespace: namespace.clone(),
                    ..InterestMsg::default()
                });
            if self
                .rooms
                .get(&namespace)
                .is_some_and(|set| set.contains(&room))
            {
                msg.add.push(room);
            } else {
                msg.remove.push(room);
            }
        }
        by_ns.into_values().collect()
    }

    /// The relay of link `index` filters by `version` now.
    pub fn acked(&mut self, index: usize, version: u64) {
        if let Some(link) = self.links.get_mut(index) {
            link.acked = link.acked.max(version);
        }
    }

    /// Link `index` ended: nothing waits for it (its next Hello carries the whole set).
    pub fn down(&mut self, index: usize) {
        if let Some(link) = self.links.get_mut(index) {
            link.registered = false;
            link.dirty.clear();
        }
    }

    /// Registered links that have not acknowledged `version`.
    pub fn unsettled(&self, version: u64) -> Vec<usize> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, link)| link.registered && link.acked < version)
            .map(|(index, _)| index)
            .collect()
    }

    /// Every registered link acknowledged `version` (true with no link registered: a link
    /// registering later starts from the whole set).
    pub fn settled(&self, version: u64) -> bool {
        self.links
            .iter()
            .all(|link| !link.registered || link.acked >= version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_rooms_with_members_are_declared_and_removed_only_when_empty() {
        let mut i = Interest::new(1);
        i.hello(0);
        assert!(i.joined("/", &r(&["a", "b"]), |room| room == "a"));
        assert_eq!(i.rooms("/"), 1);
        assert!(!i.joined("/", &r(&["a"]), |_| true), "already declared");
        assert!(!i.left("/", &r(&["a"]), |_| true), "still a member");
        assert!(i.left("/", &r(&["a"]), |_| false));
        assert_eq!(i.rooms("/"), 0);
    }

    #[test]
    fn a_link_sends_each_changed_room_as_it_stands() {
        let mut i = Interest::new(2);
        i.hello(0);
        i.joined("/", &r(&["a", "b"]), |_| true);
        i.left("/", &r(&["b"]), |_| false);
        let mut sent = i.take_changes(0);
        assert_eq!(sent.len(), 1);
        let msg = sent.remove(0);
        assert_eq!(msg.version, 3);
        assert_eq!(msg.add, r(&["a"]));
        assert_eq!(msg.remove, r(&["b"]));
        assert!(i.take_changes(0).is_empty());
        assert!(i.take_changes(1).is_empty(), "link 1 never said Hello");
    }

    #[test]
    fn a_remote_join_declares_rooms_with_members_and_withdraws_the_others() {
        let mut i = Interest::new(1);
        i.hello(0);
        assert!(i.joined_remotely("/", &r(&["a", "b"]), |room| room == "a"));
        let sent = i.take_changes(0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].add, r(&["a"]));
        assert_eq!(sent[0].remove, r(&["b"]));
    }

    #[test]
    fn settled_waits_for_every_registered_link() {
        let mut i = Interest::new(2);
        i.hello(0);
        i.hello(1);
        i.joined("/", &r(&["a"]), |_| true);
        let v = i.version();
        assert!(!i.settled(v));
        i.acked(0, v);
        assert!(!i.settled(v));
        assert_eq!(i.unsettled(v), [1]);
        i.down(1);
        assert!(i.settled(v), "a link that ended is not waited for");
        let hello = i.hello(1);
        assert_eq!(hello.len(), 1);
        assert_eq!(hello[0].add, r(&["a"]));
        assert!(i.settled(v), "a Hello carries the whole set");
    }
}
