//! Rendering: aligned tables for people, JSON for scripts.
//!
//! The JSON shapes mirror the admin proto's field names (snake_case), so a script can be written
//! against `admin.proto`:
//!
//! - `nodes`: `{"nodes":[Node...]}`
//! - `drain`, `undrain`, `weight`: `{"node":Node}`
//! - `rebalance`: `{"shed":{"<node_id>":count}}`
//! - `stats`: the fields of `ClusterStatsResponse`.
//!
//! where `Node` is `{"node_id","url","connections","pending","weight","capacity","draining",
//! "last_report_age_ms","namespaces"}`.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_proto::admin::v1::{ClusterStatsResponse, Node};

use crate::error::CtlError;

/// One node, as printed in JSON.
#[derive(Debug, Serialize)]
pub struct NodeJson<'a> {
    pub node_id: &'a str,
    pub url: &'a str,
    pub connections: u64,
    pub pending: u64,
    pub weight: u32,
    /// 0 means unlimited.
    pub capacity: u64,
    pub draining: bool,
    pub last_report_age_ms: u64,
    pub namespaces: &'a [String],
}

impl<'a> From<&'a Node> for NodeJson<'a> {
    fn from(n: &'a Node) -> Self {
        NodeJson {
            node_id: &n.node_id,
            url: &n.url,
            connections: n.connections,
            pending: n.pending,
            weight: n.weight,
            capacity: n.capacity,
            draining: n.draining,
            last_report_age_ms: n.last_report_age_ms,
            namespaces: &n.namespaces,
        }
    }
}

/// `ClusterStatsResponse`, as printed in JSON.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub nodes: u64,
    pub live_nodes: u64,
    pub draining_nodes: u64,
    pub connections: u64,
    pub pending_reservations: u64,
    pub assignments_per_sec: f64,
    pub lease_holder: bool,
}

impl From<&ClusterStatsResponse> for StatsJson {
    fn from(s: &ClusterStatsResponse) -> Self {
        StatsJson {
            nodes: s.nodes,
            live_nodes: s.live_nodes,
            draining_nodes: s.draining_nodes,
            connections: s.connections,
            pending_reservations: s.pending_reservations,
            assignments_per_sec: s.assignments_per_sec,
            lease_holder: s.lease_holder,
        }
    }
}

/// Serializes `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CtlError::Other(format!("cannot encode the answer as JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `{"nodes":[...]}`.
pub fn nodes_json(nodes: &[Node]) -> serde_json::Value {
    let nodes: Vec<NodeJson<'_>> = nodes.iter().map(NodeJson::from).collect();
    serde_json::json!({ "nodes": nodes })
}

/// `{"node":{...}}`.
pub fn node_json(node: &Node) -> serde_json::Value {
    serde_json::json!({ "node": NodeJson::from(node) })
}

/// `{"shed":{...}}`, keys sorted.
pub fn shed_json(shed: &BTreeMap<&str, u64>) -> serde_json::Value {
    serde_json::json!({ "shed": shed })
}

/// The `syctl nodes` table: NODE, URL, CONNS, PENDING, WEIGHT, CAPACITY, DRAINING, AGE.
pub fn nodes_table(nodes: &[Node]) -> String {
    let header = [
        "NODE", "URL", "CONNS", "PENDING", "WEIGHT", "CAPACITY", "DRAINING", "AGE",
    ];
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                n.url.clone(),
                n.connections.to_string(),
                n.pending.to_string(),
                n.weight.to_string(),
                if n.capacity == 0 {
                    "unlimited".to_owned()
                } else {
                    n.capacity.to_string()
                },
                if n.draining { "yes" } else { "no" }.to_owned(),
                format_age(n.last_report_age_ms),
            ]
        })
        .collect();
    // Numbers read best right-aligned; names and URLs left-aligned.
    table(
        &header,
        &rows,
        &[false, false, true, true, true, true, false, true],
    )
}

/// The `syctl rebalance` table: NODE, SHED.
pub fn shed_table(shed: &BTreeMap<&str, u64>) -> String {
    let rows: Vec<Vec<String>> = shed
        .iter()
        .map(|(node, count)| vec![(*node).to_owned(), count.to_string()])
        .collect();
    table(&["NODE", "SHED"], &rows, &[false, true])
}

/// The `syctl stats` listing, one figure per line.
pub fn stats_table(s: &ClusterStatsResponse) -> String {
    let rows = vec![
        vec!["nodes".to_owned(), s.nodes.to_string()],
        vec!["live nodes".to_owned(), s.live_nodes.to_string()],
        vec!["draining nodes".to_owned(), s.draining_nodes.to_string()],
        vec!["connections".to_owned(), s.connections.to_string()],
        vec![
            "pending reservations".to_owned(),
            s.pending_reservations.to_string(),
        ],
        vec![
            "assignments/s (1 min)".to_owned(),
            format!("{:.2}", s.assignments_per_sec),
        ],
        vec![
            "lease holder".to_owned(),
            if s.lease_holder { "yes" } else { "no" }.to_owned(),
        ],
    ];
    table(&["FIGURE", "VALUE"], &rows, &[false, true])
}

/// Milliseconds since the last report, short and human: `250ms`, `3.2s`, `4m05s`, `2h10m`.
pub fn format_age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1_000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// Columns padded to their widest cell, separated by two spaces, no trailing spaces.
/// `right[i]` right-aligns column `i`. Widths count characters, which is right for the ASCII
/// node ids and URLs a ledger holds.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&format!("{cell:>width$}"));
            } else {
                line.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, conns: u64, draining: bool) -> Node {
        Node {
            node_id: id.into(),
            url: format!("http://127.0.0.1:4000/{id}"),
            connections: conns,
            pending: 1,
            weight: 2,
            capacity: 0,
            draining,
            last_report_age_ms: 120,
            namespaces: vec!["/".into()],
        }
    }

    #[test]
    fn tables_align_columns() {
        let text = nodes_table(&[node("gw-1", 5, false), node("gateway-22", 1234, true)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NODE        URL"), "{text}");
        let url_col = lines[0].find("URL");
        assert_eq!(lines[1].find("http"), url_col, "{text}");
        assert_eq!(lines[2].find("http"), url_col, "{text}");
        // Right-aligned numbers end in the same column as their header.
        let conns_end = lines[0].find("CONNS").map(|i| i + "CONNS".len());
        assert_eq!(lines[2].find("1234").map(|i| i + 4), conns_end, "{text}");
        assert!(
            lines[2].contains("yes") && lines[1].contains("unlimited"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(250), "250ms");
        assert_eq!(format_age(3_240), "3.2s");
        assert_eq!(format_age(245_000), "4m05s");
        assert_eq!(format_age(7_800_000), "2h10m");
    }

    #[test]
    fn json_uses_the_proto_field_names() {
        let v = nodes_json(&[node("gw-1", 5, true)]);
        assert_eq!(v["nodes"][0]["node_id"], "gw-1");
        assert_eq!(v["nodes"][0]["connections"], 5);
        assert_eq!(v["nodes"][0]["draining"], true);
        assert_eq!(v["nodes"][0]["last_report_age_ms"], 120);
        assert_eq!(node_json(&node("x", 0, false))["node"]["weight"], 2);
    }
}
