//! Deduplication of retransmitted frames: one high-water mark per origin.
//!
//! A gateway numbers its frames `seq = 1, 2, …` per incarnation (one run of the process;
//! incarnations grow across restarts). The relay accepts a frame only if `(incarnation, seq)`
//! is above the origin's mark and then raises the mark. A gateway that relinks (to this or
//! another replica) learns the mark from `Welcome.accepted_seq`, resends what lies above it in
//! the original order, and anything it resends twice anyway is dropped here.
//!
//! Guarantee: every `(origin, incarnation, seq)` is forwarded at most once cluster-wide, and
//! the frames accepted from one origin form an increasing sequence, so per-origin order holds
//! even if two links of one gateway race (an old link still draining while the new one resends).
//! With Redis the check, the raise and the PUBLISH happen in one script ([`ACCEPT_SCRIPT`]): a
//! relay that dies mid-frame either published it (and the mark says so) or did neither, so a
//! retransmission is never lost and never doubled. Without Redis the mark lives in this
//! process ([`LocalMarks`]), which is the whole cluster in that mode.
//!
//! Marks expire after [`MARK_TTL`] of silence from their origin; an origin idle that long has
//! nothing unacknowledged left to resend.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

/// How long a mark outlives its origin's last frame.
pub const MARK_TTL: Duration = Duration::from_secs(3600);

/// The outcome of offering a frame to the dedup check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: forwarded, and the mark raised to its seq.
    Accepted,
    /// At or below the mark: a retransmission, dropped.
    Duplicate,
    /// From an older incarnation than one already seen: a stale process, dropped.
    Stale,
}

/// Atomically: compare with the origin's mark, raise it, publish the frame.
///
/// KEYS[1]  the origin's mark, a hash `{inc, seq}` (`{sy:<cluster>}:relay:mark:<origin>`)
/// ARGV[1]  incarnation, ARGV[2] seq (decimal; both below 2^53 so Lua numbers are exact)
/// ARGV[3]  pub/sub channel, ARGV[4] the encoded frame, ARGV[5] mark TTL in ms,
/// ARGV[6]  the publish command: `SPUBLISH` (sharded) or `PUBLISH`
/// Returns  1 accepted (published), 0 duplicate, -1 stale incarnation.
/// Invariant: the mark only grows, and a frame is published iff it raised the mark.
/// Complexity: O(1) plus the publish's O(subscribers).
pub const ACCEPT_SCRIPT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'inc', 'seq')
local ci = tonumber(cur[1]) or 0
local cs = tonumber(cur[2]) or 0
local inc = tonumber(ARGV[1])
local seq = tonumber(ARGV[2])
if inc < ci then return -1 end
if inc == ci and seq <= cs then return 0 end
redis.call('HSET', KEYS[1], 'inc', ARGV[1], 'seq', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[6], ARGV[3], ARGV[4])
return 1
"#;

/// Reads the mark for a relinking gateway.
///
/// KEYS[1] the origin's mark; ARGV[1] the linking incarnation.
/// Returns the accepted seq of that incarnation (0 when newer or unknown), -1 when a newer
/// incarnation of the same node id already sent frames. O(1).
pub const MARK_SCRIPT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'inc', 'seq')
local ci = tonumber(cur[1]) or 0
local cs = tonumber(cur[2]) or 0
local inc = tonumber(ARGV[1])
if inc < ci then return -1 end
if inc == ci then return cs end
return 0
"#;

/// The marks of a relay without Redis. A `std` mutex: the critical section never awaits.
#[derive(Debug, Default)]
pub struct LocalMarks {
    marks: Mutex<HashMap<String, (u64, u64)>>,
}

impl LocalMarks {
    /// Checks `(incarnation, seq)` of `origin` against its mark and raises the mark if accepted.
    pub fn offer(&self, origin: &str, incarnation: u64, seq: u64) -> Verdict {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mark = marks.entry(origin.to_owned()).or_insert((0, 0));
        match verdict(*mark, incarnation, seq) {
            Verdict::Accepted => {
                *mark = (incarnation, seq);
                Verdict::Accepted
            }
            other => other,
        }
    }

    /// The accepted seq of `incarnation` of `origin`; `None` if a newer incarnation exists.
    pub fn accepted(&self, origin: &str, incarnation: u64) -> Option<u64> {
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        match marks.get(origin) {
            Some((inc, _)) if *inc > incarnation => None,
            Some((inc, seq)) if *inc == incarnation => Some(*seq),
            _ => Some(0),
        }
    }
}

/// The rule both implementations follow (the Lua scripts mirror it).
fn verdict(mark: (u64, u64), incarnation: u64, seq: u64) -> Verdict {
    let (inc, hwm) = mark;
    if incarnation < inc {
        Verdict::Stale
    } else if incarnation == inc && seq <= hwm {
        Verdict::Duplicate
    } else {
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_and_stale_incarnations_are_dropped() {
        let m = LocalMarks::default();
        assert_eq!(m.accepted("a", 5), Some(0));
        assert_eq!(m.offer("a", 5, 1), Verdict::Accepted);
        assert_eq!(m.offer("a", 5, 3), Verdict::Accepted);
        assert_eq!(m.offer("a", 5, 2), Verdict::Duplicate);
        assert_eq!(m.offer("a", 5, 3), Verdict::Duplicate);
        assert_eq!(m.accepted("a", 5), Some(3));
        assert_eq!(m.offer("a", 6, 1), Verdict::Accepted);
        assert_eq!(m.offer("a", 5, 4), Verdict::Stale);
        assert_eq!(m.accepted("a", 5), None);
        assert_eq!(m.accepted("b", 1), Some(0));
    }
}
