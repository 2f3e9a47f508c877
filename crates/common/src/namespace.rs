//! What a Socket.IO namespace name may be, once for every service.
//!
//! A gateway serves namespaces, registers them with placement, links for them to the relay and
//! checks the one an assignment names; placement assigns per namespace and keeps them in its
//! ledger; the relay routes frames and keeps history per namespace. A name one of them accepts
//! and another refuses would fail late and far from its cause (a gateway that starts but cannot
//! register, a relay frame no gateway serves), so every one of them checks with [`check`] (or
//! [`normalize`], where an empty name means the default namespace) and the same
//! [`MAX_LEN`].

/// The default namespace, which an empty name means where [`normalize`] is used.
pub const DEFAULT: &str = "/";

/// Longest namespace accepted, in bytes. It is part of Redis keys and channel names.
pub const MAX_LEN: usize = 256;

/// Why a namespace name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace must start with `/`")]
    NoSlash,
    #[error("namespace is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("namespace contains control characters")]
    Control,
}

/// A namespace starts with `/`, is at most [`MAX_LEN`] bytes and has no control characters
/// (it appears in logs, metrics and Redis key names).
pub fn check(ns: &str) -> Result<(), NamespaceError> {
    if !ns.starts_with('/') {
        return Err(NamespaceError::NoSlash);
    }
    if ns.len() > MAX_LEN {
        return Err(NamespaceError::TooLong);
    }
    if ns.chars().any(char::is_control) {
        return Err(NamespaceError::Control);
    }
    Ok(())
}

/// [`check`], where an empty name means [`DEFAULT`] (a client that names no namespace wants
/// the default one); returns the name to use.
pub fn normalize(ns: &str) -> Result<&str, NamespaceError> {
    if ns.is_empty() {
        return Ok(DEFAULT);
    }
    check(ns).map(|()| ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked_and_empty_means_the_default() {
        assert_eq!(normalize(""), Ok("/"));
        assert_eq!(normalize("/chat"), Ok("/chat"));
        assert_eq!(check(""), Err(NamespaceError::NoSlash));
        assert_eq!(check("chat"), Err(NamespaceError::NoSlash));
        assert_eq!(normalize("chat"), Err(NamespaceError::NoSlash));
        let longest = format!("/{}", "a".repeat(MAX_LEN - 1));
        assert_eq!(check(&longest), Ok(()));
        assert_eq!(check(&format!("{longest}a")), Err(NamespaceError::TooLong));
        assert_eq!(check("/a\nb"), Err(NamespaceError::Control));
        assert_eq!(check("/a\u{7f}"), Err(NamespaceError::Control));
        assert_eq!(check("/é/ü"), Ok(()));
    }

    proptest! {
        #[test]
        fn accepted_names_start_with_a_slash_are_short_and_printable(ns in "\\PC{0,300}|/[\\x00-\\x7f]{0,40}") {
            let ok = check(&ns).is_ok();
            prop_assert_eq!(
                ok,
                ns.starts_with('/') && ns.len() <= MAX_LEN && !ns.chars().any(char::is_control)
            );
            prop_assert_eq!(normalize(&ns).is_ok(), ok || ns.is_empty());
        }
    }
}
