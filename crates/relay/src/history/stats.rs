//! What the admin API reports about histories ([`History::stats`]): read-only, never creates
//! an epoch (unlike `Head`), so looking does not change what clients would see.

use std::collections::BTreeSet;

use switchyard_proto::admin::v1::NamespaceHistory;

use super::{History, MemoryHistory, RedisHistory};
use crate::bus::BusError;

impl History {
    /// Figures of `namespaces`, or of every namespace that has a history when empty; sorted.
    pub async fn stats(&self, namespaces: &[String]) -> Result<Vec<NamespaceHistory>, BusError> {
        match self {
            History::Memory(m) => Ok(m.stats(namespaces)),
            History::Redis(r) => r.stats(namespaces).await,
        }
    }
}

/// Epoch, head, stream length and the oldest entry (`[id, [field, value, ...]]`).
type Snapshot = (
    Option<String>,
    Option<u64>,
    u64,
    Vec<(String, Vec<Vec<u8>>)>,
);

impl RedisHistory {
    async fn stats(&self, namespaces: &[String]) -> Result<Vec<NamespaceHistory>, BusError> {
        let mut conn = self.bus.pool.get().await?;
        let namespaces: BTreeSet<String> = if namespaces.is_empty() {
            // Every namespace with an epoch; SCAN does not block Redis like KEYS would.
            let prefix = format!("{}:history:", self.bus.prefix);
            let prefix = prefix.as_str();
            let pattern = format!("{prefix}*:epoch");
            let mut found = BTreeSet::new();
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                // On a Redis Cluster, on the master that holds the cluster's hash tag.
                let (next, keys): (u64, Vec<String>) =
                    conn.query_where(&scan, &self.bus.prefix).await?;
                found.extend(keys.iter().filter_map(|k| {
                    k.strip_prefix(prefix)?
                        .strip_suffix(":epoch")
                        .map(str::to_owned)
                }));
                if next == 0 {
                    break found;
                }
                cursor = next;
            }
        } else {
            namespaces.iter().cloned().collect()
        };
        let mut out = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            // One MULTI/EXEC: the four figures describe the same moment.
            let (epoch, head, length, oldest): Snapshot = redis::pipe()
                .atomic()
                .get(self.key(&ns, "epoch"))
                .get(self.key(&ns, "seq"))
                .cmd("XLEN")
                .arg(self.key(&ns, "stream"))
                .cmd("XRANGE")
                .arg(self.key(&ns, "stream"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let limits = self.settings.limits(&ns);
            let oldest_offset = oldest
                .first()
                .and_then(|(id, _)| id.split('-').next()?.parse().ok())
                .unwrap_or(0);
            let has_epoch = epoch.is_some();
            out.push(NamespaceHistory {
                namespace: ns,
                epoch: epoch.unwrap_or_default(),
                length: if has_epoch { length } else { 0 },
                head_offset: if has_epoch { head.unwrap_or(0) } else { 0 },
                oldest_offset: if has_epoch { oldest_offset } else { 0 },
                max_len: limits.max_len,
                ttl_ms: limits.ttl.as_millis() as u64,
            });
        }
        Ok(out)
    }
}

impl MemoryHistory {
    fn stats(&self, namespaces: &[String]) -> Vec<NamespaceHistory> {
        let all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let names: BTreeSet<String> = if namespaces.is_empty() {
            all.keys().cloned().collect()
        } else {
            namespaces.iter().cloned().collect()
        };
        names
            .into_iter()
            .map(|ns| {
                let limits = self.settings.limits(&ns);
                let mut out = NamespaceHistory {
                    namespace: ns.clone(),
                    max_len: limits.max_len,
                    ttl_ms: limits.ttl.as_millis() as u64,
                    ..NamespaceHistory::default()
                };
                // An idle namespace past its TTL is as good as gone (the next call replaces it).
                if let Some(h) = all.get(&ns).filter(|h| h.touched.elapsed() <= limits.ttl) {
                    out.epoch = h.epoch.clone();
                    out.length = h.ring.len() as u64;
                    out.head_offset = h.head;
                    out.oldest_offset = h.ring.front().map_or(0, |e| e.offset);
                }
                out
            })
            .collect()
    }
}
