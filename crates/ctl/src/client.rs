//! Which placement to talk to, and the authenticated admin client.
//!
//! [`Target::resolve`] decides the endpoint and token from the flags (or their environment
//! variables) and, failing those, from `.switchyard/cluster.json`. [`Admin::connect`] dials the
//! endpoints in order and keeps the first that answers; every call then carries
//! `authorization: Bearer <token>` and is bounded by `--timeout`.
//!
//! The token from `cluster.json` is only ever sent to an endpoint listed in the same file, so
//! pointing `--placement` at another cluster never leaks the local cluster's token.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use switchyard_common::{bearer::Bearer, tls::ClientTls};
use switchyard_proto::admin::v1::{
    ClusterStatsRequest, ClusterStatsResponse, DrainNodeRequest, ListNodesRequest, Node,
    RebalanceRequest, RebalanceResponse, SetWeightRequest, UndrainNodeRequest,
    admin_client::AdminClient,
};
use tonic::{
    Request, Response, Status, service::interceptor::InterceptedService, transport::Channel,
};

use crate::{
    cluster_file::{self, Found},
    error::{CtlError, error_chain},
};

/// Where the placement address came from; quoted in connection errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--placement` or `SWITCHYARD_PLACEMENT_URL`.
    Flag,
    /// A discovered `.switchyard/cluster.json`.
    ClusterFile(PathBuf),
}

/// The placement endpoints to try, in order, and the token to present.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub origin: Origin,
}

impl Target {
    /// Resolves the target from the flags, falling back to the cluster file found from `cwd`.
    pub fn resolve(
        placement: Option<&str>,
        admin_token: Option<&str>,
        cwd: &Path,
    ) -> Result<Target, CtlError> {
        let flag_token = admin_token.filter(|t| !t.is_empty()).map(str::to_owned);
        if let Some(placement) = placement.map(str::trim).filter(|p| !p.is_empty()) {
            let endpoint = cluster_file::normalize_endpoint(placement);
            let token = match flag_token {
                Some(t) => Some(t),
                // A broken or absent cluster file is irrelevant when the address was given.
                None => cluster_file::discover(cwd)
                    .ok()
                    .flatten()
                    .filter(|f| f.placement_endpoints().contains(&endpoint))
                    .and_then(|f| f.admin_token().map(str::to_owned)),
            };
            return Ok(Target {
                endpoints: vec![endpoint],
                token,
                origin: Origin::Flag,
            });
        }
        let Some(found) = cluster_file::discover(cwd)? else {
            return Err(CtlError::Config(format!(
                "no placement address: pass --placement <url>, set SWITCHYARD_PLACEMENT_URL, or \
                 start a local cluster with `cargo xtask up` (no {} in {} or any parent)",
                cluster_file::RELATIVE_PATH,
                cwd.display()
            )));
        };
        Self::from_cluster_file(found, flag_token)
    }

    fn from_cluster_file(found: Found, flag_token: Option<String>) -> Result<Target, CtlError> {
        let endpoints = found.placement_endpoints();
        if endpoints.is_empty() {
            return Err(CtlError::Config(format!(
                "{} lists no placement gRPC endpoint; pass --placement <url>",
                found.path.display()
            )));
        }
        let token = flag_token.or_else(|| found.admin_token().map(str::to_owned));
        Ok(Target {
            endpoints,
            token,
            origin: Origin::ClusterFile(found.path),
        })
    }
}

/// The token sender for calls with `token` (what it is for is named in the refusal): a
/// configuration error when the token cannot travel in a gRPC header.
pub fn bearer(token: Option<&str>, purpose: &str) -> Result<Bearer, CtlError> {
    Bearer::new(token).map_err(|e| CtlError::Config(format!("the {purpose} token: {e}")))
}

/// Connects to the first of `endpoints` that accepts a connection within `timeout`, and returns
/// its channel and that endpoint. `https://` endpoints use `tls` (trust, client certificate).
/// When none does, the error says why for each: "cannot connect to `service` (…)`hint`".
pub async fn connect_first<'a>(
    endpoints: &'a [String],
    timeout: Duration,
    tls: &ClientTls,
    service: &str,
    hint: &str,
) -> Result<(Channel, &'a str), CtlError> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        let ep = tls
            .endpoint(endpoint)
            .map_err(|e| CtlError::Config(e.to_string()))?
            .connect_timeout(timeout);
        match tokio::time::timeout(timeout, ep.connect()).await {
            Ok(Ok(channel)) => return Ok((channel, endpoint)),
            Ok(Err(e)) => failures.push(format!("{endpoint}: {}", error_chain(&e))),
            Err(_) => failures.push(format!("{endpoint}: no connection within {timeout:?}")),
        }
    }
    Err(CtlError::Unavailable(format!(
        "cannot connect to {service} ({}){hint}",
        failures.join("; ")
    )))
}

/// An authenticated client of one placement replica's `switchyard.admin.v1.Admin`.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<InterceptedService<Channel, Bearer>>,
    endpoint: String,
    timeout: Duration,
}

impl Admin {
    /// Connects to the first endpoint of `target` that accepts a connection within `timeout`.
    /// `https://` endpoints use `tls` (trust, client certificate).
    pub async fn connect(
        target: &Target,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Admin, CtlError> {
        let bearer = bearer(target.token.as_deref(), "admin")?;
        let hint = match &target.origin {
            Origin::Flag => String::new(),
            Origin::ClusterFile(path) => format!(
                "\nhint: the address comes from {}; is `cargo xtask up` still running?",
                path.display()
            ),
        };
        let (channel, endpoint) =
            connect_first(&target.endpoints, timeout, tls, "placement", &hint).await?;
        Ok(Admin {
            client: AdminClient::with_interceptor(channel, bearer),
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    /// Bounds a call by the timeout and converts its failure.
    async fn finish<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CtlError::from_status(&status, &self.endpoint)),
            Err(_) => Err(CtlError::Unavailable(format!(
                "placement at {} did not answer within {:?}; raise --timeout or check that it is \
                 healthy",
                self.endpoint, self.timeout
            ))),
        }
    }

    /// A request carrying the timeout as `grpc-timeout`, so placement can give up too.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        req
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(ListNodesRequest {});
        Ok(self.finish(client.list_nodes(req)).await?.nodes)
    }

    pub async fn drain(&self, node_id: &str, rate_per_sec: u32) -> Result<Node, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(DrainNodeRequest {
            node_id: node_id.to_owned(),
            rate_per_sec,
        });
        let response = self.finish(client.drain_node(req)).await?;
        self.node_of(response.node)
    }

    pub async fn undrain(&self, node_id: &str) -> Result<Node, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(UndrainNodeRequest {
            node_id: node_id.to_owned(),
        });
        let response = self.finish(client.undrain_node(req)).await?;
        self.node_of(response.node)
    }

    pub async fn set_weight(&self, node_id: &str, weight: u32) -> Result<Node, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(SetWeightRequest {
            node_id: node_id.to_owned(),
            weight,
        });
        let response = self.finish(client.set_weight(req)).await?;
        self.node_of(response.node)
    }

    pub async fn rebalance(
        &self,
        target_spread: u64,
        rate_per_sec: u32,
    ) -> Result<RebalanceResponse, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(RebalanceRequest {
            target_spread,
            rate_per_sec,
        });
        self.finish(client.rebalance(req)).await
    }

    pub async fn stats(&self) -> Result<ClusterStatsResponse, CtlError> {
        let mut client = self.client.clone();
        let req = self.request(ClusterStatsRequest {});
        self.finish(client.cluster_stats(req)).await
    }

    /// A `NodeResponse` without its node breaks the admin contract.
    fn node_of(&self, node: Option<Node>) -> Result<Node, CtlError> {
        node.ok_or_else(|| {
            CtlError::Other(format!(
                "placement at {} answered without the node it changed",
                self.endpoint
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "syctl-unit-{name}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(dir.join(".switchyard"))?;
        Ok(dir)
    }

    fn nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    #[test]
    fn a_flag_wins_and_gets_the_file_token_only_for_a_listed_endpoint()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("flag")?;
        std::fs::write(
            dir.join(cluster_file::RELATIVE_PATH),
            r#"{"placement":[{"grpc":"http://127.0.0.1:7001"}],"admin_token":"local"}"#,
        )?;
        let nested = dir.join("a").join("b");
        std::fs::create_dir_all(&nested)?;

        let t = Target::resolve(Some("127.0.0.1:7001"), None, &nested)?;
        assert_eq!(t.endpoints, ["http://127.0.0.1:7001"]);
        assert_eq!(t.token.as_deref(), Some("local"));
        assert_eq!(t.origin, Origin::Flag);

        let t = Target::resolve(Some("http://10.0.0.1:7001"), None, &nested)?;
        assert_eq!(t.token, None, "the local token never goes elsewhere");

        let t = Target::resolve(None, Some("mine"), &nested)?;
        assert_eq!(t.token.as_deref(), Some("mine"));
        assert!(matches!(t.origin, Origin::ClusterFile(_)));

        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn no_address_anywhere_is_a_config_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("none")?;
        let err = Target::resolve(None, None, &dir).err();
        // Unless some parent of the temp dir has a cluster file, which would be surprising.
        if let Some(err) = err {
            assert_eq!(err.exit_code(), 1);
            assert!(err.to_string().contains("--placement"), "{err}");
        }
        std::fs::write(dir.join(cluster_file::RELATIVE_PATH), "not json")?;
        let err = Target::resolve(None, None, &dir)
            .err()
            .map(|e| e.exit_code());
        assert_eq!(err, Some(1));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        assert!(bearer(Some("ok-token"), "admin").is_ok());
        assert!(bearer(None, "admin").is_ok());
        let err = bearer(Some("bad\ntoken"), "admin")
            .err()
            .map(|e| e.exit_code());
        assert_eq!(err, Some(1));
    }
}
