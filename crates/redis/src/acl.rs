//! The least privilege Switchyard needs on Redis, as one ACL rule.
//!
//! Managed Redis offerings give each application an ACL user; this is what that user needs,
//! no more. [`rule`] is the text to put after `ACL SETUSER <user> on ><password>` (or in an
//! ACL file / the provider's console); the TLS tests run placement and the relay as a user
//! created with exactly this rule, on a single server and on a Redis Cluster, and fail with the
//! server's `ACL LOG` when anything needs more.
//!
//! - **Keys** `~{sy:<cluster>}:*`: every key of one Switchyard cluster starts with its hash tag
//!   (`{sy:<cluster>}:nodes`, `…:lease`, `…:history:<ns>:stream`, …). A pattern ending in `}`
//!   such as `~{sy:*}` would match none of them.
//! - **Channels** `&{sy:<cluster>}:*`: the relay's pub/sub between replicas
//!   (`{sy:<cluster>}:relay:ns:<namespace>` and `{sy:<cluster>}:relay:membership`), classic
//!   and sharded alike.
//! - **Commands** `-@all` and then each command by name ([`commands`]), rather than
//!   categories: `+@all -@dangerous` still grants some two hundred commands Switchyard never
//!   sends (every read and write on the user's keys, `FUNCTION`, `FCALL`, …), and categories
//!   grow with every Redis version. Commands a Lua script calls are checked against the same
//!   rule, so the list includes what the scripts run.
//!
//! Not needed (and not granted): `INFO`, `CONFIG`, `CLIENT` (redis-rs's `CLIENT SETINFO` on
//! connect is optional and its refusal ignored — on Redis 7.2 or newer add `+client|setinfo`
//! to keep it out of `ACL LOG`), `EVAL` (scripts go by `EVALSHA`, loaded with `SCRIPT LOAD` on
//! `NOSCRIPT`), `FUNCTION`, `KEYS`, `SELECT` (unless the URL names a database other than 0:
//! then add `+select`), `READONLY`. `AUTH` and `HELLO` need no permission.

/// Commands placement runs: the ledger's and the lease's scripts, directly or inside them.
pub const PLACEMENT_COMMANDS: &[&str] = &[
    // Calling scripts: by digest, loading one after NOSCRIPT (Redis restarted empty).
    "evalsha",
    "script|load",
    // Inside the ledger's and the lease's scripts.
    "time",
    "exists",
    "get",
    "set",
    "del",
    "incr",
    "pexpire",
    "hset",
    "hget",
    "hmget",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "sadd",
    "srem",
    "smembers",
    "scard",
];

/// Commands the relay runs: its scripts (dedup marks, membership, history), pub/sub between
/// replicas and the read-only history figures of its admin API.
pub const RELAY_COMMANDS: &[&str] = &[
    "evalsha",
    "script|load",
    // Pub/sub between replicas: sharded on Redis 7 (`--pubsub auto` or `sharded`), classic
    // otherwise; the scripts publish with the same command.
    "publish",
    "subscribe",
    "spublish",
    "ssubscribe",
    // Inside the dedup, membership and history scripts.
    "time",
    "get",
    "set",
    "del",
    "incr",
    "rename",
    "pexpire",
    "hset",
    "hget",
    "hmget",
    "hlen",
    "zadd",
    "zrem",
    "zrange",
    "zremrangebyscore",
    "xadd",
    "xrange",
    // History figures for `RelayAdmin` (`syctl history`): one MULTI/EXEC snapshot per
    // namespace, and SCAN to find namespaces.
    "xlen",
    "multi",
    "exec",
    "scan",
];

/// Commands of the connections themselves, for both services: the pool's health check on
/// checkout (`UNWATCH` + `PING`), the relay's subscription probe (`PING`), and on a Redis
/// Cluster the slot map (`CLUSTER SLOTS`).
pub const CONNECTION_COMMANDS: &[&str] = &["ping", "unwatch", "cluster|slots"];

/// Every command of [`PLACEMENT_COMMANDS`], [`RELAY_COMMANDS`] and [`CONNECTION_COMMANDS`],
/// once each, in that order: what one user shared by both services needs.
pub fn commands() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in CONNECTION_COMMANDS
        .iter()
        .chain(PLACEMENT_COMMANDS)
        .chain(RELAY_COMMANDS)
    {
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

/// The ACL rule (everything after `ACL SETUSER <user> on ><password>`) for a user shared by
/// placement and the relay of Switchyard cluster `cluster` (`--cluster`, default
/// `switchyard`): its keys, its channels and [`commands`], nothing else.
pub fn rule(cluster: &str) -> String {
    let prefix = crate::key_prefix(cluster);
    let mut rule = format!("resetkeys ~{prefix}:* resetchannels &{prefix}:* -@all");
    for c in commands() {
        rule.push_str(" +");
        rule.push_str(c);
    }
    rule
}

/// What the relay's `--emitter` adds to [`rule`] (append it, space first): the channels of
/// `@socket.io/redis-emitter` with key `key` for `namespaces`, which live outside the
/// cluster's hash tag, and `PSUBSCRIBE`. Redis checks a `PSUBSCRIBE` pattern literally
/// against the user's channel patterns, so the grant is the exact pattern the relay subscribes
/// to, `&<key>#<namespace>#*` (a namespace's broadcasts and its room channels), then the exact
/// request channel `&<key>-request#<namespace>#` per namespace. Keys are untouched: the relay's
/// emitter lease is a key of the cluster (`{sy:<cluster>}:relay:emitter:lease`).
pub fn emitter_rule(key: &str, namespaces: &[String]) -> String {
    let mut rule = String::new();
    for ns in namespaces {
        rule.push_str(&format!(" &{key}#{ns}#*"));
    }
    for ns in namespaces {
        rule.push_str(&format!(" &{key}-request#{ns}#"));
    }
    rule.push_str(" +psubscribe");
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_confines_keys_and_channels_to_the_clusters_hash_tag() {
        let rule = rule("switchyard");
        assert!(rule.starts_with(
            "resetkeys ~{sy:switchyard}:* resetchannels &{sy:switchyard}:* -@all +ping"
        ));
        assert!(!rule.contains("+@"), "commands by name only: {rule}");
        let cmds = commands();
        let mut dedup = cmds.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), cmds.len());
    }

    /// docs/deploy.md shows the rule an operator should create; it must be this one.
    #[test]
    fn the_documented_rule_is_this_one() -> Result<(), std::io::Error> {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy.md"),
        )?;
        let emitter = emitter_rule("socket.io", &["/".to_owned()]);
        assert!(
            docs.contains(&emitter),
            "docs/deploy.md must show the emitter's addition exactly:\n{emitter}"
        );
        let rule = rule("switchyard");
        assert!(
            docs.contains(&rule),
            "docs/deploy.md must show the ACL rule exactly:\n{rule}"
        );
        Ok(())
    }

    /// Every command a Lua script of placement or the relay calls by name is granted to that
    /// service (the two commands a script takes from its arguments are PUBLISH / SPUBLISH,
    /// granted to the relay). The managed-Redis tests prove the same by running the scripts;
    /// this catches a new call before a test happens to run it.
    #[test]
    fn every_command_a_script_calls_is_granted() -> Result<(), std::io::Error> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (dir, granted) in [
            ("crates/placement/src", PLACEMENT_COMMANDS),
            ("crates/relay/src", RELAY_COMMANDS),
        ] {
            let mut called = std::collections::BTreeSet::new();
            let mut pending = vec![root.join(dir)];
            while let Some(path) = pending.pop() {
                if path.is_dir() {
                    for entry in std::fs::read_dir(&path)? {
                        pending.push(entry?.path());
                    }
                    continue;
                }
                let is_source = path.extension().is_some_and(|e| e == "lua" || e == "rs");
                if !is_source {
                    continue;
                }
                let text = std::fs::read_to_string(&path)?;
                for call in ["redis.call(", "redis.pcall("] {
                    for rest in text.split(call).skip(1) {
                        let Some(quoted) = rest.strip_prefix(['\'', '"']) else {
                            continue; // a command name from ARGV (PUBLISH / SPUBLISH)
                        };
                        let name: String = quoted
                            .chars()
                            .take_while(|c| c.is_ascii_alphabetic())
                            .collect();
                        called.insert(name.to_ascii_lowercase());
                    }
                }
            }
            assert!(called.len() > 5, "no scripts found under {dir}");
            let missing: Vec<&String> = called
                .iter()
                .filter(|c| !granted.contains(&c.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "{dir}: scripts call {missing:?}, not granted"
            );
        }
        Ok(())
    }
}
