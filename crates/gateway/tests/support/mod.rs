//! Support for the end-to-end tests: a three-gateway cluster started through
//! `switchyard_testkit`, placement's admin API, and the official Socket.IO client drivers
//! (`switchyard_testkit::driver`, re-exported here).
//!
//! Waiting is always "until a condition holds, or fail at a deadline": the deadlines are
//! correctness bounds (or generous guards against hanging), never performance measurements.

#![allow(dead_code, unused_imports)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use switchyard_proto::admin::v1 as admin;
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts, TEST_ADMIN_TOKEN,
};
pub use switchyard_testkit::driver::{
    COMMAND_TIMEOUT, Counts, Driver, bin, metric_value, repo_root, spread_evenly,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::wait::eventually;

/// Redis, placement, optionally one relay (history on), and some gateways linked to it: all
/// real processes, all stopped on drop.
pub struct Cluster {
    pub gateways: Vec<Gateway>,
    /// Empty unless started with [`Cluster::with_relay`].
    pub relays: Vec<Relay>,
    pub placement: Placement,
    pub redis: RedisServer,
}

impl Cluster {
    /// Redis, placement (Redis ledger) and `n` gateways named `gw-0..`, each with `gateway_args`.
    pub fn start(n: usize, gateway_args: &[&str]) -> anyhow::Result<Cluster> {
        Self::start_with(n, &[], gateway_args)
    }

    /// [`Cluster::start`] with extra placement flags too.
    ///
    /// Reports every [`REPORT_INTERVAL_MS`] unless the flags say otherwise: testkit's 200 ms
    /// (a 600 ms liveness window) is too tight on a 2-core machine while hundreds of clients
    /// assign at once, and placement then drops live gateways from the pick.
    pub fn start_with(
        n: usize,
        placement_args: &[&str],
        gateway_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::build(n, placement_args, gateway_args, None)
    }

    /// [`Cluster::start`] with one relay (history on, Redis-backed, `relay_args`) that every
    /// gateway links to. Use [`Cluster::wait_linked`] before relying on cross-gateway events.
    pub fn with_relay(
        n: usize,
        gateway_args: &[&str],
        relay_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::build(n, &[], gateway_args, Some(relay_args))
    }

    /// [`Cluster::with_relay`] with `relays` replicas sharing the cluster's Redis; every gateway
    /// links to all of them.
    pub fn with_relays(
        n: usize,
        relays: usize,
        gateway_args: &[&str],
        relay_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::build_with(n, &[], gateway_args, Some(relay_args), relays)
    }

    fn build(
        n: usize,
        placement_args: &[&str],
        gateway_args: &[&str],
        relay_args: Option<&[&str]>,
    ) -> anyhow::Result<Cluster> {
        Self::build_with(n, placement_args, gateway_args, relay_args, 1)
    }

    fn build_with(
        n: usize,
        placement_args: &[&str],
        gateway_args: &[&str],
        relay_args: Option<&[&str]>,
        replicas: usize,
    ) -> anyhow::Result<Cluster> {
        let redis = RedisServer::start()?;
        let placement = Placement::start(PlacementOpts {
            redis_url: Some(redis.url()),
            extra_args: with_report_interval(placement_args),
        })?;
        let mut relays = Vec::new();
        if let Some(relay_args) = relay_args {
            for _ in 0..replicas {
                relays.push(Relay::start(RelayOpts {
                    redis_url: Some(redis.url()),
                    extra_args: relay_args.iter().map(|a| (*a).to_owned()).collect(),
                })?);
            }
        }
        let mut gateways = Vec::new();
        for i in 0..n {
            let mut opts = GatewayOpts::new(&placement, format!("gw-{i}"));
            opts.relay_urls = relays.iter().map(|r| r.grpc_url().to_owned()).collect();
            opts.extra_args = with_report_interval(gateway_args);
            gateways.push(Gateway::start(opts)?);
        }
        Ok(Cluster {
            gateways,
            relays,
            placement,
            redis,
        })
    }

    /// The relay of a cluster started [`Cluster::with_relay`].
    pub fn relay(&self) -> anyhow::Result<&Relay> {
        self.relays
            .first()
            .ok_or_else(|| anyhow::anyhow!("this cluster was started without a relay"))
    }

    /// Waits until the relay lists every gateway of this cluster as linked for `/`.
    pub async fn wait_linked(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_relay_members(self.relay()?.grpc_url(), self.gateways.len(), timeout).await
    }

    /// The gateways' node ids.
    pub fn node_ids(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| g.node_id().to_owned())
            .collect()
    }

    /// An authenticated admin client on placement's gRPC port.
    pub async fn admin(&self) -> anyhow::Result<Admin> {
        Admin::connect(self.placement.grpc_url()).await
    }

    /// Waits until placement lists every gateway of this cluster as live, so assignments can
    /// go to all of them.
    pub async fn wait_registered(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        let want = self.node_ids();
        eventually(
            format!("gateways {want:?} to register"),
            timeout,
            async || {
                let nodes = admin.nodes().await?;
                ensure!(
                    want.iter().all(|id| nodes.contains_key(id)),
                    "placement lists {nodes:?}"
                );
                Ok(())
            },
        )
        .await
    }
}

/// The report interval the e2e clusters use (the services' own default).
pub const REPORT_INTERVAL_MS: &str = "1000";

/// Gateway arguments for the admin UI tests: anonymous clients (no assignment tokens to
/// fetch), the admin UI on with the bcrypt `hash` of its password.
pub fn admin_ui_args(hash: &str) -> [&str; 4] {
    [
        "--allow-anonymous",
        "--admin-ui",
        "--admin-ui-password-hash",
        hash,
    ]
}

fn with_report_interval(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    if !args.iter().any(|a| a.starts_with("--report-interval-ms")) {
        out.extend([
            "--report-interval-ms".to_owned(),
            REPORT_INTERVAL_MS.to_owned(),
        ]);
    }
    out
}

/// Placement's admin API with the test admin token.
pub struct Admin {
    client: admin::admin_client::AdminClient<tonic::transport::Channel>,
}

impl Admin {
    pub async fn connect(grpc_url: &str) -> anyhow::Result<Admin> {
        let client = admin::admin_client::AdminClient::connect(grpc_url.to_owned()).await?;
        Ok(Admin { client })
    }

    fn authed<T>(msg: T) -> anyhow::Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {TEST_ADMIN_TOKEN}").parse()?,
        );
        Ok(req)
    }

    /// Placement's view: node id -> node (connections, pending, draining, ...).
    pub async fn nodes(&mut self) -> anyhow::Result<BTreeMap<String, admin::Node>> {
        let res = self
            .client
            .list_nodes(Self::authed(admin::ListNodesRequest {})?)
            .await?
            .into_inner();
        Ok(res
            .nodes
            .into_iter()
            .map(|n| (n.node_id.clone(), n))
            .collect())
    }

    /// `ClusterStats`: totals over the ledger, and whether the answering replica holds the lease.
    pub async fn stats(&mut self) -> anyhow::Result<admin::ClusterStatsResponse> {
        Ok(self
            .client
            .cluster_stats(Self::authed(admin::ClusterStatsRequest {})?)
            .await?
            .into_inner())
    }

    /// Asks placement to drain `node_id` at `rate_per_sec` disconnects per second.
    pub async fn drain(&mut self, node_id: &str, rate_per_sec: u32) -> anyhow::Result<()> {
        self.client
            .drain_node(Self::authed(admin::DrainNodeRequest {
                node_id: node_id.to_owned(),
                rate_per_sec,
            })?)
            .await?;
        Ok(())
    }

    /// Polls placement's view until `pred` holds on `node -> connections`.
    pub async fn wait_connections(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        eventually(what, timeout, async || {
            let view: BTreeMap<String, usize> = self
                .nodes()
                .await?
                .into_iter()
                .map(|(id, n)| (id, usize::try_from(n.connections).unwrap_or(usize::MAX)))
                .collect();
            ensure!(pred(&view), "placement says {view:?}");
            Ok(view)
        })
        .await
    }
}

/// GET `<url>/metrics` of any service's HTTP port.
pub async fn metrics(http_url: &str) -> anyhow::Result<String> {
    let res = switchyard_testkit::reqwest::get(format!("{http_url}/metrics")).await?;
    Ok(res.error_for_status()?.text().await?)
}

/// Waits until the relay at `grpc` lists `n` gateways linked for `/` (its `Members`).
pub async fn wait_relay_members(grpc: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
    use switchyard_proto::relay::v1::{MembersRequest, relay_client::RelayClient};
    let mut client = RelayClient::connect(grpc.to_owned()).await?;
    eventually(
        format!("{n} gateways linked to the relay"),
        timeout,
        async || {
            let members = client
                .members(MembersRequest {
                    namespace: "/".into(),
                })
                .await?
                .into_inner();
            ensure!(
                members.node_ids.len() == n,
                "relay members {:?}",
                members.node_ids
            );
            Ok(())
        },
    )
    .await
}
