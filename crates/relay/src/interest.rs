//! Interest routing: the rooms one link's gateway has local members in, and which frames that
//! makes it want.
//!
//! A gateway that says `Hello.interest_routing` tells the relay which rooms of its namespaces
//! it has local members in (the whole set in `Hello.interests`, then `Interest` changes on the
//! link). A BROADCAST frame that targets rooms ([`frame_rooms`]) is forwarded to such a link only
//! when one of those rooms is in its set; every other frame (namespace-wide broadcasts,
//! requests that need every gateway's answer, responses) reaches it as before. Each replica
//! filters by the interests of its own links only; the bus between replicas carries every frame.
//!
//! # Why a join loses nothing
//!
//! The gateway's side of the argument is in the gateway's `link.rs`: a join waits until every
//! link of its gateway either acknowledged (`InterestAck`) the interest change or started
//! with it in its Hello, and only then reads the position the socket starts from. Here, what
//! the relay guarantees for it: a link's set changes only in [`LinkInterest::apply`], called by
//! the link's reader in link order under the hub's lock, and the acknowledgement is queued
//! after that; [`crate::hub::Hub::deliver`] decides under the same lock. So a frame this
//! replica delivers after the acknowledgement was sent is filtered by a set that contains the
//! room; and a stamped event whose offset is above a position read after the acknowledgement
//! was stamped after it, so it reaches this replica's hub after it too (it comes out of the
//! same Redis, through the bus, after the stamp).
//!
//! # Remote joins
//!
//! A `socketsJoin` (an AddSockets frame, `Frame.joins`) makes sockets join rooms on the gateways
//! it reaches; the frames its origin sends next must reach them, in order, before any gateway
//! could declare the rooms. So forwarding such a frame to a link adds its rooms to the link's
//! set, under the same lock as every delivery decision; the gateway then withdraws the rooms it
//! has no member in (a superset in between is safe).
//!
//! # Bounds
//!
//! A link's set holds at most [`MAX_ROOMS_PER_LINK`] rooms. A gateway that declares more is not
//! refused: its link falls back to every frame (a superset is always safe) until it relinks.

use std::collections::{HashMap, HashSet};

use switchyard_proto::relay::v1::{Frame, FrameKind};

/// Rooms one link may declare before it falls back to receiving every frame.
pub const MAX_ROOMS_PER_LINK: usize = 1_000_000;

/// One link's interest.
#[derive(Debug, Default)]
pub struct LinkInterest {
    /// `None`: no interest routing (or over the bound): every frame.
    rooms: Option<HashMap<String, HashSet<String>>>,
    count: usize,
}

impl LinkInterest {
    /// A link that receives every frame of its namespaces.
    pub fn everything() -> LinkInterest {
        LinkInterest::default()
    }

    /// A link that receives room frames only for the rooms it declares (none yet).
    pub fn routed() -> LinkInterest {
        LinkInterest {
            rooms: Some(HashMap::new()),
            count: 0,
        }
    }

    /// Adds then removes rooms of `namespace` (empty room names are ignored: no frame targets
    /// them). Past [`MAX_ROOMS_PER_LINK`] the link receives everything from then on.
    pub fn apply(&mut self, namespace: &str, add: Vec<String>, remove: &[String]) {
        let Some(rooms) = self.rooms.as_mut() else {
            return;
        };
        let set = rooms.entry(namespace.to_owned()).or_default();
        for room in add {
            if !room.is_empty() && set.insert(room) {
                self.count += 1;
            }
        }
        for room in remove {
            if set.remove(room) {
                self.count -= 1;
            }
        }
        if set.is_empty() {
            rooms.remove(namespace);
        }
        if self.count > MAX_ROOMS_PER_LINK {
            tracing::warn!(
                rooms = self.count,
                "a gateway declared more rooms than a link keeps; it now receives every frame"
            );
            self.rooms = None;
            self.count = 0;
        }
    }

    /// Whether a frame of `namespace` that targets `rooms` (empty: none in particular) is for
    /// this link.
    pub fn wants(&self, namespace: &str, rooms: &[String]) -> bool {
        match &self.rooms {
            None => true,
            Some(_) if rooms.is_empty() => true,
            Some(by_ns) => by_ns
                .get(namespace)
                .is_some_and(|set| rooms.iter().any(|r| set.contains(r))),
        }
    }

    /// Rooms declared (0 without interest routing).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The rooms a frame targets, for routing: a BROADCAST frame's backend event's rooms (stamped
/// room events, `Publish`), else its `rooms`. Empty (every gateway) for requests and responses,
/// which need every gateway's answer or name their receiver.
pub fn frame_rooms(frame: &Frame) -> &[String] {
    if frame.kind != FrameKind::Broadcast as i32 {
        return &[];
    }
    match &frame.event {
        Some(event) => &event.rooms,
        None => &frame.rooms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::relay::v1::BackendEvent;

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_routed_link_wants_only_its_rooms_and_everything_without_rooms() {
        let mut i = LinkInterest::routed();
        assert!(!i.wants("/", &rooms(&["a"])));
        assert!(i.wants("/", &[]));
        i.apply("/", rooms(&["a", "b"]), &[]);
        assert!(i.wants("/", &rooms(&["x", "a"])));
        assert!(!i.wants("/chat", &rooms(&["a"])));
        i.apply("/", vec![], &rooms(&["a"]));
        assert!(!i.wants("/", &rooms(&["a"])));
        assert!(i.wants("/", &rooms(&["b"])));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn a_link_without_routing_wants_everything() {
        let i = LinkInterest::everything();
        assert!(i.wants("/", &rooms(&["a"])));
    }

    #[test]
    fn only_broadcasts_are_routed_by_room() {
        let mut f = Frame {
            kind: FrameKind::Broadcast as i32,
            rooms: rooms(&["a"]),
            ..Frame::default()
        };
        assert_eq!(frame_rooms(&f), rooms(&["a"]).as_slice());
        f.event = Some(BackendEvent {
            rooms: rooms(&["b"]),
            ..BackendEvent::default()
        });
        assert_eq!(frame_rooms(&f), rooms(&["b"]).as_slice());
        f.kind = FrameKind::Request as i32;
        assert!(frame_rooms(&f).is_empty());
    }
}
