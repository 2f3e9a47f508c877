//! Which rooms a client may join or publish to.
//!
//! A client's grant comes from its assignment token's `rooms` claim when the token carries one,
//! and otherwise from the gateway's configured patterns (`--rooms`, default `*`). Patterns are
//! simple globs: `*` matches any run of characters (including none); every other character
//! matches itself. `chat:*` allows `chat:lobby` and `chat:`; `*` allows everything; an empty
//! pattern list allows nothing.

use std::sync::Arc;

/// The longest room name the built-in events accept, in bytes. Longer names are a
/// `bad_request`: rooms are keys in every gateway's memory, in relay frames and in history.
pub const MAX_ROOM_LEN: usize = 256;

/// The room patterns one client may use. Cheap to clone (stored per socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant {
    patterns: Arc<[String]>,
}

impl RoomGrant {
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    /// True when some pattern matches `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, room))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
///
/// Greedy matching with a single backtrack point (the classic wildcard algorithm): at most
/// `O(pattern * text)` steps even for adversarial inputs, and no recursion.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position of the last `*` seen in the pattern, and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((spi, sti)) = star {
            // Let the last star swallow one more character and retry after it.
            pi = spi + 1;
            ti = sti + 1;
            star = Some((spi, sti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_of_characters() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything at all"));
        assert!(glob_match("chat:*", "chat:lobby"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chatlobby"));
        assert!(glob_match("*:admin", "team:admin"));
        assert!(!glob_match("*:admin", "team:admins"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("a**", "a"));
    }

    #[test]
    fn without_star_only_the_exact_name_matches() {
        assert!(glob_match("lobby", "lobby"));
        assert!(!glob_match("lobby", "lobby2"));
        assert!(!glob_match("lobby", "lobb"));
        assert!(!glob_match("", "x"));
        assert!(glob_match("", ""));
    }

    #[test]
    fn adversarial_patterns_finish() {
        let text = "a".repeat(2000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
    }

    #[test]
    fn a_grant_allows_what_any_of_its_patterns_allows() {
        let grant = RoomGrant::new(["chat:*", "news"]);
        assert!(grant.allows("chat:1"));
        assert!(grant.allows("news"));
        assert!(!grant.allows("news:1"));
        assert!(!RoomGrant::new(Vec::<String>::new()).allows("x"));
    }
}
