//! Placement's input limits and checks, in one place: both ledgers run them, so they refuse
//! exactly the same things, and the report stream and the admin API use the same functions and
//! constants for what they take from the network before it reaches a ledger.
//!
//! The figures come from gateways over the network: a buggy or hostile peer must get a clear
//! [`LedgerError::Invalid`] (a gRPC `INVALID_ARGUMENT`), never a corrupted ledger or a Lua
//! error.

use super::{LedgerError, LoadReport, NodeRegistration};

/// More connections than this on one gateway is not a real figure.
pub const MAX_CONNECTIONS: u64 = 100_000_000;
/// Capacity above this is refused for the same reason (0 still means unlimited).
pub const MAX_CAPACITY: u64 = 100_000_000;
/// Weights are relative shares; ten thousand to one is already absurd.
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest URL accepted (bytes). Node ids and namespaces follow the rules every service shares
/// ([`switchyard_common::node_id`], [`switchyard_common::namespace`]).
pub const MAX_URL_LEN: usize = 2048;
/// Most namespaces one node may serve.
pub const MAX_NAMESPACES: usize = 64;
/// Most consumed reservation ids in one report.
pub const MAX_CONSUMED_PER_REPORT: usize = 100_000;
/// Longest reservation id accepted in a report (ours are 36-byte UUIDs).
pub const MAX_RESERVATION_ID_LEN: usize = 128;

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// [`switchyard_common::node_id::check`], refused as [`LedgerError::Invalid`].
pub(crate) fn node_id(id: &str) -> Result<(), LedgerError> {
    switchyard_common::node_id::check(id).map_err(|e| invalid(e.to_string()))
}

/// [`switchyard_common::namespace::check`], refused as [`LedgerError::Invalid`].
pub(crate) fn namespace(ns: &str) -> Result<(), LedgerError> {
    switchyard_common::namespace::check(ns).map_err(|e| invalid(e.to_string()))
}

/// 0 is treated as 1 (documented on [`NodeRegistration::weight`]).
pub(crate) fn weight(weight: u32) -> Result<u32, LedgerError> {
    if weight > MAX_WEIGHT {
        return Err(invalid(format!("weight {weight} above {MAX_WEIGHT}")));
    }
    Ok(weight.max(1))
}

/// Checks a registration and returns it normalised: weight at least 1, and an empty namespace
/// list meaning the default namespace `/`.
pub(crate) fn registration(node: &NodeRegistration) -> Result<NodeRegistration, LedgerError> {
    node_id(&node.node_id)?;
    if node.url.is_empty() || node.url.len() > MAX_URL_LEN {
        return Err(invalid(format!("url must be 1..={MAX_URL_LEN} bytes")));
    }
    if node.url.chars().any(char::is_control) {
        return Err(invalid("url contains control characters"));
    }
    if node.capacity > MAX_CAPACITY {
        return Err(invalid(format!(
            "capacity {} above {MAX_CAPACITY}",
            node.capacity
        )));
    }
    if node.namespaces.len() > MAX_NAMESPACES {
        return Err(invalid(format!("more than {MAX_NAMESPACES} namespaces")));
    }
    let mut namespaces = Vec::with_capacity(node.namespaces.len().max(1));
    for ns in &node.namespaces {
        namespace(ns)?;
        if !namespaces.contains(ns) {
            namespaces.push(ns.clone());
        }
    }
    if namespaces.is_empty() {
        namespaces.push("/".to_owned());
    }
    Ok(NodeRegistration {
        node_id: node.node_id.clone(),
        url: node.url.clone(),
        weight: weight(node.weight)?,
        capacity: node.capacity,
        namespaces,
    })
}

pub(crate) fn report(id: &str, load: &LoadReport) -> Result<(), LedgerError> {
    node_id(id)?;
    if load.connections > MAX_CONNECTIONS {
        return Err(invalid(format!(
            "connections {} above {MAX_CONNECTIONS}",
            load.connections
        )));
    }
    if load.consumed.len() > MAX_CONSUMED_PER_REPORT {
        return Err(invalid(format!(
            "more than {MAX_CONSUMED_PER_REPORT} consumed reservations in one report"
        )));
    }
    if load
        .consumed
        .iter()
        .any(|rid| rid.is_empty() || rid.len() > MAX_RESERVATION_ID_LEN)
    {
        return Err(invalid("malformed consumed reservation id"));
    }
    Ok(())
}
