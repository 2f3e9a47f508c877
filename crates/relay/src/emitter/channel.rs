//! The channels of `@socket.io/redis-emitter` 5, for one `key` and the configured namespaces.
//!
//! The emitter PUBLISHes (classic pub/sub: it has no sharded mode) broadcasts on
//! `<key>#<namespace>#`, or `<key>#<namespace>#<room>#` when the emit names exactly one room,
//! and requests (`socketsJoin`, `socketsLeave`, `disconnectSockets`, `serverSideEmit`) on
//! `<key>-request#<namespace>#`. The relay subscribes to one pattern and one channel per
//! namespace ([`Channels::patterns`], [`Channels::requests`]); `switchyard_redis::acl::
//! emitter_rule` grants exactly these (a test below holds them equal), since Redis checks a
//! `PSUBSCRIBE` pattern literally against the ACL's channel patterns.

/// Characters a namespace may not contain here: glob metacharacters would widen the pattern
/// (and the ACL grant) beyond the namespace.
const GLOB: &[char] = &['*', '?', '[', ']', '\\'];

/// Where an emitter message was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A broadcast (`emit`) of `namespace`.
    Broadcast { namespace: String },
    /// A request of `namespace`.
    Request { namespace: String },
}

/// The emitter's channels for one key and a set of namespaces.
#[derive(Debug, Clone)]
pub struct Channels {
    key: String,
    namespaces: Vec<String>,
}

impl Channels {
    /// Checks the key (not empty, no glob metacharacter, no `#`) and each namespace (starts
    /// with `/`, no glob metacharacter); an empty list is refused.
    pub fn new(key: &str, namespaces: &[String]) -> Result<Self, String> {
        if key.is_empty() || key.contains(GLOB) || key.contains('#') {
            return Err(format!(
                "the key `{key}` must be non-empty, without `#` or any of {GLOB:?}"
            ));
        }
        let namespaces: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if namespaces.is_empty() {
            return Err("name at least one namespace".into());
        }
        for ns in &namespaces {
            crate::validate::check_namespace(ns).map_err(|e| format!("`{ns}`: {e}"))?;
            if ns.contains(GLOB) {
                return Err(format!("`{ns}` must not contain any of {GLOB:?}"));
            }
        }
        Ok(Self {
            key: key.to_owned(),
            namespaces,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// `PSUBSCRIBE` patterns: `<key>#<namespace>#*` (the namespace's channel and its room
    /// channels; `*` matches the empty string too).
    pub fn patterns(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|ns| format!("{}#{ns}#*", self.key))
            .collect()
    }

    /// `SUBSCRIBE` channels: `<key>-request#<namespace>#`.
    pub fn requests(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|ns| format!("{}-request#{ns}#", self.key))
            .collect()
    }

    /// Which namespace and kind a channel belongs to; `None` for a channel that is none of
    /// ours. When namespaces nest (`/` and `/a#b`), the longest one that fits wins.
    pub fn source(&self, channel: &str) -> Option<Source> {
        let best = |prefix: &str, need_room_tail: bool| {
            self.namespaces
                .iter()
                .filter(|ns| {
                    channel
                        .strip_prefix(prefix)
                        .and_then(|rest| rest.strip_prefix(ns.as_str()))
                        .and_then(|rest| rest.strip_prefix('#'))
                        .is_some_and(|tail| {
                            if need_room_tail {
                                tail.is_empty() || tail.ends_with('#')
                            } else {
                                tail.is_empty()
                            }
                        })
                })
                .max_by_key(|ns| ns.len())
                .cloned()
        };
        let request = format!("{}-request#", self.key);
        if let Some(namespace) = best(&request, false) {
            return Some(Source::Request { namespace });
        }
        let broadcast = format!("{}#", self.key);
        best(&broadcast, true).map(|namespace| Source::Broadcast { namespace })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels() -> Result<Channels, String> {
        Channels::new("socket.io", &["/".into(), "/chat".into()])
    }

    #[test]
    fn channels_name_their_namespace() -> Result<(), String> {
        let c = channels()?;
        let b = |ns: &str| {
            Some(Source::Broadcast {
                namespace: ns.into(),
            })
        };
        assert_eq!(c.source("socket.io#/#"), b("/"));
        assert_eq!(c.source("socket.io#/#room#"), b("/"));
        assert_eq!(c.source("socket.io#/#a#b#"), b("/"));
        assert_eq!(c.source("socket.io#/chat#"), b("/chat"));
        assert_eq!(c.source("socket.io#/chat#r#"), b("/chat"));
        assert_eq!(
            c.source("socket.io-request#/chat#"),
            Some(Source::Request {
                namespace: "/chat".into()
            })
        );
        assert_eq!(c.source("socket.io#/other#"), None);
        assert_eq!(c.source("socket.io#/#room"), None);
        assert_eq!(c.source("socket.io-request#/#x"), None);
        assert_eq!(c.source("other#/#"), None);
        Ok(())
    }

    #[test]
    fn keys_and_namespaces_that_would_widen_a_pattern_are_refused() {
        assert!(Channels::new("socket.io", &["/".into()]).is_ok());
        assert!(Channels::new("", &["/".into()]).is_err());
        assert!(Channels::new("a*", &["/".into()]).is_err());
        assert!(Channels::new("a#b", &["/".into()]).is_err());
        assert!(Channels::new("k", &["/x*".into()]).is_err());
        assert!(Channels::new("k", &["x".into()]).is_err());
        assert!(Channels::new("k", &[]).is_err());
    }

    /// Redis compares a PSUBSCRIBE pattern literally with the ACL's channel patterns, and
    /// matches a SUBSCRIBE channel against them: the documented rule must grant exactly what is
    /// subscribed.
    #[test]
    fn the_acl_rule_grants_what_is_subscribed() -> Result<(), String> {
        let c = channels()?;
        let rule = switchyard_redis::acl::emitter_rule(c.key(), c.namespaces());
        let granted: Vec<&str> = rule
            .split(' ')
            .filter_map(|w| w.strip_prefix('&'))
            .collect();
        let mut wanted = c.patterns();
        wanted.extend(c.requests());
        assert_eq!(
            granted,
            wanted.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(rule.contains("+psubscribe"));
        Ok(())
    }
}
