//! The operator API, `switchyard.admin.v1.Admin`. Mounted behind
//! [`switchyard_common::grpc::AdminAuth`] by the server, so every call here is authenticated.
//!
//! Writes go to the ledger first (so every replica stops assigning to a drained node at once),
//! then a directive goes to the node's report stream through the [`StreamRegistry`] when the
//! stream is on this replica; otherwise the stream's replica notices the ledger flag within a
//! few reports (see [`crate::report_stream`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use switchyard_proto::{
    admin::v1::{
        ClusterStatsRequest, ClusterStatsResponse, DrainNodeRequest, ListNodesRequest,
        ListNodesResponse, Node, NodeResponse, RebalanceRequest, RebalanceResponse,
        SetWeightRequest, UndrainNodeRequest, admin_server::Admin,
    },
    placement::v1::{Directive, Drain, Shed, Undrain, directive},
};
use tonic::{Request, Response, Status};

use crate::{
    assign::Assigner,
    ledger::{Ledger, LedgerError, NodeView},
    ledger::{MAX_WEIGHT, validate},
    reaper::LeaseStatus,
    report_stream::{Delivery, StreamRegistry},
};

/// The admin service of one placement replica.
pub struct AdminService {
    pub ledger: Arc<dyn Ledger>,
    pub registry: Arc<StreamRegistry>,
    pub assigner: Arc<Assigner>,
    pub lease: LeaseStatus,
    /// Default disconnects per second (`--drain-rate`).
    pub drain_rate: u32,
    /// Nodes silent for longer are not live (3 report intervals).
    pub liveness: Duration,
}

fn to_proto(v: NodeView) -> Node {
    Node {
        node_id: v.registration.node_id,
        url: v.registration.url,
        connections: v.connections,
        pending: v.pending,
        weight: v.registration.weight,
        capacity: v.registration.capacity,
        draining: v.draining,
        last_report_age_ms: v.last_report_age_ms,
        namespaces: v.registration.namespaces,
    }
}

fn ledger_status(e: LedgerError) -> Status {
    match e {
        LedgerError::UnknownNode(id) => Status::not_found(format!("no node `{id}` in the ledger")),
        LedgerError::Invalid(d) => Status::invalid_argument(d),
        LedgerError::Unavailable(d) => Status::unavailable(format!("ledger unavailable: {d}")),
        LedgerError::Fenced(_) => Status::internal(e.to_string()),
    }
}

fn check_node_id(id: &str) -> Result<(), Status> {
    validate::node_id(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn send(registry: &StreamRegistry, node_id: &str, kind: directive::Kind) -> Delivery {
    let delivery = registry.send(node_id, Directive { kind: Some(kind) });
    if delivery == Delivery::NotLocal {
        tracing::info!(
            node_id,
            "node's stream is not on this replica; its replica relays the ledger's flag"
        );
    }
    delivery
}

/// How many clients each node should shed so that every node ends at most its fair share,
/// rounded up: `ceil(total * weight / total_weight)`. Only live, non-draining nodes take part
/// (draining nodes shed everything anyway). Empty when the spread of `connections / weight`
/// is already within `target_spread`.
pub fn shed_plan(
    nodes: &[NodeView],
    target_spread: u64,
    liveness: Duration,
) -> HashMap<String, u64> {
    let live: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| !n.draining && u128::from(n.last_report_age_ms) <= liveness.as_millis())
        .collect();
    let target = target_spread.max(1) as f64;
    let load = |n: &NodeView| n.connections as f64 / f64::from(n.registration.weight.max(1));
    let (min, max) = live
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), n| {
            (lo.min(load(n)), hi.max(load(n)))
        });
    if live.len() < 2 || max - min <= target {
        return HashMap::new();
    }
    let total: u64 = live.iter().map(|n| n.connections).sum();
    let total_weight: u64 = live
        .iter()
        .map(|n| u64::from(n.registration.weight.max(1)))
        .sum();
    live.iter()
        .filter_map(|n| {
            let fair = (total as f64 * f64::from(n.registration.weight.max(1))
                / total_weight as f64)
                .ceil() as u64;
            let excess = n.connections.saturating_sub(fair);
            (excess > 0).then(|| (n.registration.node_id.clone(), excess))
        })
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let mut nodes = self.ledger.nodes().await.map_err(ledger_status)?;
        nodes.sort_by(|a, b| a.registration.node_id.cmp(&b.registration.node_id));
        Ok(Response::new(ListNodesResponse {
            nodes: nodes.into_iter().map(to_proto).collect(),
        }))
    }

    async fn drain_node(
        &self,
        req: Request<DrainNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        let req = req.into_inner();
        check_node_id(&req.node_id)?;
        let rate = if req.rate_per_sec == 0 {
            self.drain_rate
        } else {
            req.rate_per_sec
        };
        let view = self
            .ledger
            .set_draining(&req.node_id, true)
            .await
            .map_err(ledger_status)?;
        let delivery = send(
            &self.registry,
            &req.node_id,
            directive::Kind::Drain(Drain { rate_per_sec: rate }),
        );
        tracing::info!(node_id = %req.node_id, rate, ?delivery, "admin: drain");
        ::metrics::counter!(crate::metrics::ADMIN_TOTAL, "call" => "drain").increment(1);
        Ok(Response::new(NodeResponse {
            node: Some(to_proto(view)),
        }))
    }

    async fn undrain_node(
        &self,
        req: Request<UndrainNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        let req = req.into_inner();
        check_node_id(&req.node_id)?;
        let view = self
            .ledger
            .set_draining(&req.node_id, false)
            .await
            .map_err(ledger_status)?;
        let delivery = send(
            &self.registry,
            &req.node_id,
            directive::Kind::Undrain(Undrain {}),
        );
        tracing::info!(node_id = %req.node_id, ?delivery, "admin: undrain");
        ::metrics::counter!(crate::metrics::ADMIN_TOTAL, "call" => "undrain").increment(1);
        Ok(Response::new(NodeResponse {
            node: Some(to_proto(view)),
        }))
    }

    async fn set_weight(
        &self,
        req: Request<SetWeightRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        let req = req.into_inner();
        check_node_id(&req.node_id)?;
        if !(1..=MAX_WEIGHT).contains(&req.weight) {
            return Err(Status::invalid_argument(format!(
                "weight must be 1..={MAX_WEIGHT}"
            )));
        }
        let view = self
            .ledger
            .set_weight(&req.node_id, req.weight)
            .await
            .map_err(ledger_status)?;
        tracing::info!(node_id = %req.node_id, weight = req.weight, "admin: set weight");
        ::metrics::counter!(crate::metrics::ADMIN_TOTAL, "call" => "set_weight").increment(1);
        Ok(Response::new(NodeResponse {
            node: Some(to_proto(view)),
        }))
    }

    async fn rebalance(
        &self,
        req: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceResponse>, Status> {
        let req = req.into_inner();
        let rate = if req.rate_per_sec == 0 {
            self.drain_rate
        } else {
            req.rate_per_sec
        };
        let nodes = self.ledger.nodes().await.map_err(ledger_status)?;
        let shed = shed_plan(&nodes, req.target_spread, self.liveness);
        for (node_id, count) in &shed {
            send(
                &self.registry,
                node_id,
                directive::Kind::Shed(Shed {
                    count: *count,
                    rate_per_sec: rate,
                }),
            );
        }
        tracing::info!(?shed, rate, "admin: rebalance");
        ::metrics::counter!(crate::metrics::ADMIN_TOTAL, "call" => "rebalance").increment(1);
        Ok(Response::new(RebalanceResponse { shed }))
    }

    async fn cluster_stats(
        &self,
        _req: Request<ClusterStatsRequest>,
    ) -> Result<Response<ClusterStatsResponse>, Status> {
        let nodes = self.ledger.nodes().await.map_err(ledger_status)?;
        let live_window = self.liveness.as_millis();
        Ok(Response::new(ClusterStatsResponse {
            nodes: nodes.len() as u64,
            live_nodes: nodes
                .iter()
                .filter(|n| u128::from(n.last_report_age_ms) <= live_window)
                .count() as u64,
            draining_nodes: nodes.iter().filter(|n| n.draining).count() as u64,
            connections: nodes.iter().map(|n| n.connections).sum(),
            pending_reservations: nodes.iter().map(|n| n.pending).sum(),
            assignments_per_sec: self.assigner.assignments_per_sec(),
            lease_holder: self.lease.is_holder(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::NodeRegistration;

    fn node(id: &str, connections: u64, weight: u32) -> NodeView {
        NodeView {
            registration: NodeRegistration {
                node_id: id.into(),
                url: "http://x".into(),
                weight,
                capacity: 0,
                namespaces: vec!["/".into()],
            },
            connections,
            pending: 0,
            draining: false,
            last_report_age_ms: 0,
        }
    }

    #[test]
    fn rebalance_sheds_only_above_the_fair_share() {
        let live = Duration::from_secs(3);
        let plan = shed_plan(
            &[node("a", 90, 1), node("b", 10, 1), node("c", 20, 1)],
            1,
            live,
        );
        assert_eq!(plan, HashMap::from([("a".to_owned(), 50)]));
        assert!(shed_plan(&[node("a", 10, 1), node("b", 11, 1)], 1, live).is_empty());
        let weighted = shed_plan(&[node("a", 30, 1), node("b", 30, 2)], 1, live);
        assert_eq!(weighted, HashMap::from([("a".to_owned(), 10)]));
    }
}
