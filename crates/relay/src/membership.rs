//! Exact membership: which gateways are linked for a namespace, cluster-wide.
//!
//! The adapter needs this for `server_count` (how many answers a request waits for), so the
//! count must not include dead gateways for long, and must include every live one.
//!
//! Without Redis the answer is this replica's [`Hub`]. With Redis each replica keeps, per
//! namespace, a sorted set `{sy:<cluster>}:relay:members:<namespace>` of
//! `<relay_id>/<node_id>` scored by an expiry (Redis clock, so replicas with skewed clocks
//! agree). Every interval (`--membership-interval-ms`) and on every local change, a replica
//! re-adds its own entries with a fresh expiry (3 intervals), removes the entries of links that
//! closed, announces the change on `{sy:<cluster>}:relay:membership`, re-reads the sets of the
//! namespaces it serves and pushes `Members` down its links when a set changed. A replica
//! that dies stops refreshing and its gateways fall out within 3 intervals; they have relinked
//! elsewhere by then, since their streams broke at once.
//!
//! The member list is the distinct node ids of live entries: a gateway briefly linked to two
//! replicas (while relinking) counts once.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use redis::Script;
use switchyard_proto::relay::v1::{LinkMessage, Members, link_message::Kind};
use tokio::sync::watch;

use crate::{
    bus::{BusError, RedisBus},
    hub::Hub,
    metrics,
};

/// Refreshes entries of one replica in one namespace set.
///
/// KEYS[1] the namespace's member set; ARGV[1] TTL in ms; ARGV[2..] members to (re)add.
/// Invariant: an entry's score is the Redis time at which it stops counting. O(n log n).
const REFRESH_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], exp, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// The live entries of one namespace set (expired ones are dropped on the way).
///
/// KEYS[1] the namespace's member set. Returns the entries. O(log n + m).
const READ_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#;

/// Keeps membership current and answers membership questions.
pub struct Membership {
    hub: Arc<Hub>,
    relay_id: String,
    interval: Duration,
    redis: Option<Arc<RedisBus>>,
    refresh: Script,
    read: Script,
}

impl Membership {
    pub fn new(
        hub: Arc<Hub>,
        relay_id: String,
        interval: Duration,
        redis: Option<Arc<RedisBus>>,
    ) -> Self {
        Self {
            hub,
            relay_id,
            interval,
            redis,
            refresh: Script::new(REFRESH_SCRIPT),
            read: Script::new(READ_SCRIPT),
        }
    }

    fn set_key(redis: &RedisBus, namespace: &str) -> String {
        format!("{}:relay:members:{namespace}", redis.prefix)
    }

    fn entry(&self, node_id: &str) -> String {
        format!("{}/{node_id}", self.relay_id)
    }

    /// The node ids linked for `namespace` on every replica, sorted and distinct.
    pub async fn members(&self, namespace: &str) -> Result<Vec<String>, BusError> {
        let Some(redis) = &self.redis else {
            return Ok(self
                .hub
                .local_members()
                .remove(namespace)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default());
        };
        let mut conn = redis.pool.get().await?;
        let entries: Vec<String> = self
            .read
            .key(Self::set_key(redis, namespace))
            .invoke_async(&mut conn)
            .await?;
        let nodes: BTreeSet<String> = entries
            .into_iter()
            .filter_map(|e| e.split_once('/').map(|(_, node)| node.to_owned()))
            .collect();
        Ok(nodes.into_iter().collect())
    }

    /// Writes this replica's entries: re-adds `local`, removes what left since `previous`.
    async fn write(
        &self,
        redis: &RedisBus,
        local: &HashMap<String, BTreeSet<String>>,
        previous: &HashMap<String, BTreeSet<String>>,
    ) -> Result<(), BusError> {
        let mut conn = redis.pool.get().await?;
        let ttl_ms = (self.interval * 3).as_millis() as u64;
        for (ns, nodes) in local {
            let mut inv = self.refresh.key(Self::set_key(redis, ns));
            inv.arg(ttl_ms);
            for node in nodes {
                inv.arg(self.entry(node));
            }
            let _: i64 = inv.invoke_async(&mut conn).await?;
        }
        for (ns, nodes) in previous {
            let still = local.get(ns);
            let gone: Vec<String> = nodes
                .iter()
                .filter(|n| still.is_none_or(|s| !s.contains(*n)))
                .map(|n| self.entry(n))
                .collect();
            if !gone.is_empty() {
                let _: i64 = redis::cmd("ZREM")
                    .arg(Self::set_key(redis, ns))
                    .arg(gone)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs until `shutdown`, then removes this replica's entries.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let notice = self
            .redis
            .as_ref()
            .map(|r| Arc::clone(&r.membership_notice));
        let mut written: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut pushed: HashMap<String, Vec<String>> = HashMap::new();
        let mut pushed_local: HashMap<String, BTreeSet<String>> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.hub.changed.notified() => {}
                _ = async {
                    match &notice {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let local = self.hub.local_members();
            if let Some(redis) = &self.redis {
                match self.write(redis, &local, &written).await {
                    Ok(()) => {
                        if local != written
                            && let Err(e) = redis.announce_membership().await
                        {
                            tracing::warn!(error = %e, "cannot announce a membership change");
                        }
                        written = local.clone();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot refresh membership in Redis"),
                }
            }
            for (ns, nodes) in &local {
                let view = match self.members(ns).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "cannot read membership");
                        continue;
                    }
                };
                // A local join or leave forces a push even if the view looks the same, so a new
                // link always gets its first `Members`.
                let local_changed = pushed_local.get(ns) != Some(nodes);
                if local_changed || pushed.get(ns) != Some(&view) {
                    metrics::members(ns, view.len());
                    let msg = LinkMessage {
                        kind: Some(Kind::Members(Members {
                            namespace: ns.clone(),
                            node_ids: view.clone(),
                        })),
                    };
                    self.hub.send_to_namespace(ns, &msg);
                    pushed.insert(ns.clone(), view);
                    pushed_local.insert(ns.clone(), nodes.clone());
                }
            }
            pushed.retain(|ns, _| local.contains_key(ns));
            pushed_local.retain(|ns, _| local.contains_key(ns));
        }
        if let Some(redis) = &self.redis
            && let Err(e) = self.write(redis, &HashMap::new(), &written).await
        {
            tracing::warn!(error = %e, "cannot remove membership entries on shutdown");
        }
    }
}
