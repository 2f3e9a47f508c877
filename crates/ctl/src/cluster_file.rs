//! Finding a local cluster: `.switchyard/cluster.json`, written by `cargo xtask up`.
//!
//! syctl looks for the file in the current directory and then in each parent, so it works from
//! anywhere inside the checkout. Only the fields syctl needs are read and every field is
//! optional, so files written by older or newer versions of xtask still parse:
//!
//! ```json
//! {"placement":[{"http":"http://127.0.0.1:7000","grpc":"http://127.0.0.1:7001","pid":1}],
//!  "relays":[{"grpc":"http://127.0.0.1:7101"}],"gateways":[...],"redis":"redis://...",
//!  "admin_token":"...","publish_token":"..."}
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CtlError;

/// Where the file sits, relative to a directory that may hold it.
pub const RELATIVE_PATH: &str = ".switchyard/cluster.json";

/// The parts of `cluster.json` syctl uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterFile {
    #[serde(default)]
    pub placement: Vec<PlacementEntry>,
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub relays: Vec<RelayEntry>,
    #[serde(default)]
    pub publish_token: Option<String>,
}

/// One relay replica of the local cluster.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RelayEntry {
    /// The relay's gRPC endpoint.
    #[serde(default)]
    pub grpc: String,
}

/// One placement replica of the local cluster.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PlacementEntry {
    /// Placement's gRPC endpoint, `http://127.0.0.1:7001` or `127.0.0.1:7001`.
    #[serde(default)]
    pub grpc: String,
}

/// A cluster file that was found, with the path it was read from (quoted in error messages).
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub file: ClusterFile,
}

impl Found {
    /// The placement gRPC endpoints, normalized, in file order; empty entries are skipped.
    pub fn placement_endpoints(&self) -> Vec<String> {
        self.file
            .placement
            .iter()
            .map(|p| p.grpc.trim())
            .filter(|g| !g.is_empty())
            .map(normalize_endpoint)
            .collect()
    }

    /// The relay gRPC endpoints, normalized, in file order; empty entries are skipped.
    pub fn relay_endpoints(&self) -> Vec<String> {
        self.file
            .relays
            .iter()
            .map(|r| r.grpc.trim())
            .filter(|g| !g.is_empty())
            .map(normalize_endpoint)
            .collect()
    }

    /// The relays' publish token, when the file has a non-empty one.
    pub fn publish_token(&self) -> Option<&str> {
        self.file.publish_token.as_deref().filter(|t| !t.is_empty())
    }

    /// The admin token, when the file has a non-empty one.
    pub fn admin_token(&self) -> Option<&str> {
        self.file.admin_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// Searches `start` and its ancestors for `.switchyard/cluster.json`. `Ok(None)` when there is
/// none; an error when one exists but cannot be read or parsed (a broken file should be
/// reported, not silently skipped in favour of one further up).
pub fn discover(start: &Path) -> Result<Option<Found>, CtlError> {
    for dir in start.ancestors() {
        let path = dir.join(RELATIVE_PATH);
        if path.is_file() {
            return read(&path).map(Some);
        }
    }
    Ok(None)
}

/// Reads and parses one cluster file.
pub fn read(path: &Path) -> Result<Found, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Config(format!("cannot read {}: {e}", path.display())))?;
    let file: ClusterFile = serde_json::from_str(&text).map_err(|e| {
        CtlError::Config(format!(
            "{} is not a valid cluster file: {e}",
            path.display()
        ))
    })?;
    Ok(Found {
        path: path.to_path_buf(),
        file,
    })
}

/// Adds `http://` to an endpoint given without a scheme (`127.0.0.1:7001`), and drops a trailing
/// slash, so addresses from flags, the environment and `cluster.json` compare equal.
pub fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7001"),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint(" http://127.0.0.1:7001/ "),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint("https://p.example:443"),
            "https://p.example:443"
        );
    }

    #[test]
    fn parses_the_xtask_file_and_ignores_unknown_fields() -> Result<(), serde_json::Error> {
        let file: ClusterFile = serde_json::from_str(
            r#"{"placement":[{"http":"http://127.0.0.1:7000","grpc":"127.0.0.1:7001","pid":7},
                            {"http":"h","grpc":"","pid":8}],
                "relays":[],"gateways":[{"node_id":"gw-1","url":"http://127.0.0.1:4000","pid":9}],
                "redis":null,"admin_token":"tok","xtask_pid":3}"#,
        )?;
        let found = Found {
            path: PathBuf::from("x"),
            file,
        };
        assert_eq!(found.placement_endpoints(), ["http://127.0.0.1:7001"]);
        assert_eq!(found.admin_token(), Some("tok"));
        let empty: ClusterFile = serde_json::from_str("{}")?;
        assert!(empty.placement.is_empty() && empty.admin_token.is_none());
        Ok(())
    }
}
