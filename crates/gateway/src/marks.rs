//! [`StampedMarks`]: the first arrival of each stamped event, across relay links.
//!
//! A gateway linked to several relay replicas receives every stamped room event once per link
//! (each replica forwards what it hears on the bus to its own links), and stamped frames are
//! deduplicated by offset, not by the origin's sequence. Sockets holding a gate for the room
//! drop a repeat at their floor ([`crate::gates`]); a member without a gate (joined by
//! application code, a remote `socketsJoin`, the relay's emitter) has no floor, so the repeat
//! must go before delivery: that is this filter.
//!
//! Each link delivers a namespace's stamped events in offset order, so the highest offset seen
//! per `(namespace, epoch)` is enough: anything at or below it arrived already, on the link that
//! raised it. Epochs are random ids that cannot be ordered, so the last [`EPOCHS`] epochs of a
//! namespace keep their marks, which covers a frame of the old epoch still in flight on one
//! link after another link moved on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Epochs remembered per namespace.
pub const EPOCHS: usize = 4;

/// Highest stamped offset seen per namespace and epoch. A `std` mutex: nothing under it awaits.
#[derive(Debug, Default)]
pub struct StampedMarks {
    marks: Mutex<HashMap<String, VecDeque<(String, u64)>>>,
}

impl StampedMarks {
    /// True iff `(epoch, offset)` of `ns` is seen for the first time; records it.
    pub fn first_arrival(&self, ns: &str, epoch: &str, offset: u64) -> bool {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let epochs = marks.entry(ns.to_owned()).or_default();
        match epochs.iter_mut().find(|(e, _)| e == epoch) {
            Some((_, high)) if offset <= *high => false,
            Some((_, high)) => {
                *high = offset;
                true
            }
            None => {
                if epochs.len() == EPOCHS {
                    epochs.pop_front();
                }
                epochs.push_back((epoch.to_owned(), offset));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_from_a_second_link_is_not_a_first_arrival() {
        let m = StampedMarks::default();
        // Link A: 1, 2; link B: 1, 2, 3; then A: 3, 4.
        assert!(m.first_arrival("/", "e1", 1));
        assert!(m.first_arrival("/", "e1", 2));
        assert!(!m.first_arrival("/", "e1", 1));
        assert!(!m.first_arrival("/", "e1", 2));
        assert!(m.first_arrival("/", "e1", 3));
        assert!(!m.first_arrival("/", "e1", 3));
        assert!(m.first_arrival("/", "e1", 4));
        // Namespaces are apart; a new epoch starts afresh, the old one keeps its mark.
        assert!(m.first_arrival("/chat", "e1", 1));
        assert!(m.first_arrival("/", "e2", 1));
        assert!(!m.first_arrival("/", "e1", 4));
        assert!(!m.first_arrival("/", "e2", 1));
    }
}
