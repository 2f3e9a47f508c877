//! What a gateway's node id may be, once for every service.
//!
//! The id names a gateway to placement (its ledger entry, the `sub` of its assignment tokens)
//! and to the relay (its link, its frames' origin and responses' target), and appears in logs,
//! metrics labels and Redis keys. A gateway checks its own at startup with [`check`], and
//! placement and the relay check what they are sent the same way, so an id one of them takes
//! is never refused by the other.

/// Longest node id accepted, in bytes (a Kubernetes pod name, the usual id, is at most 63).
pub const MAX_LEN: usize = 128;

/// Why a node id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("the node id must not be empty")]
    Empty,
    #[error("the node id is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the node id must not contain whitespace or control characters")]
    Unprintable,
}

/// A node id is 1 to [`MAX_LEN`] bytes with no whitespace or control characters.
pub fn check(id: &str) -> Result<(), NodeIdError> {
    if id.is_empty() {
        return Err(NodeIdError::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(NodeIdError::TooLong);
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NodeIdError::Unprintable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_short_and_printable() {
        assert_eq!(check("gw-1"), Ok(()));
        assert_eq!(check(&"g".repeat(MAX_LEN)), Ok(()));
        assert_eq!(check(""), Err(NodeIdError::Empty));
        assert_eq!(check(&"g".repeat(MAX_LEN + 1)), Err(NodeIdError::TooLong));
        assert_eq!(check("gw 1"), Err(NodeIdError::Unprintable));
        assert_eq!(check("gw-1\n"), Err(NodeIdError::Unprintable));
    }

    proptest! {
        #[test]
        fn accepted_ids_are_exactly_the_short_printable_ones(id in ".{0,200}") {
            let printable = !id.chars().any(|c| c.is_control() || c.is_whitespace());
            prop_assert_eq!(check(&id).is_ok(), !id.is_empty() && id.len() <= MAX_LEN && printable);
        }
    }
}
