//! Services: kube-proxy in its old userspace mode.
//!
//! Every ClusterIP Service gets a listener on its cluster IP for each of its ports. Each new TCP
//! connection is forwarded to one endpoint chosen round-robin among the Service's endpoints *at
//! that moment* ([`Shared::endpoints`]: Ready pods that are not terminating, or every pod for a
//! Service that publishes not-ready addresses), at the port's `targetPort` (a number, or the
//! name of a container port). An endpoint that refuses is skipped for the next one; with none
//! left the connection is closed, which clients see as the Service being down. A connection
//! stays with its pod until either side closes it, so a killed pod's connections break and
//! their clients reconnect, through the Service again, to a pod that is ready: the fail-over a
//! cluster gives, for the report streams and relay links that go through Services.
//!
//! Headless Services (`clusterIP: None`) get no listener: their names resolve to pod addresses
//! directly (see [`super::network`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::ingress::connect_from;
use super::state::Shared;

/// Binds every port of every ClusterIP Service and spawns its proxy.
pub async fn start_proxies(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for (index, entry) in shared.services.iter().enumerate() {
        let Some(ip) = entry.ip else {
            continue;
        };
        for (port_index, port) in entry.service.spec.ports.iter().enumerate() {
            let addr = SocketAddr::from((ip, port.port));
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("binding Service {} on {addr}", entry.service.metadata.name)
            })?;
            let shared = Arc::clone(shared);
            tasks.push(tokio::spawn(proxy(shared, index, port_index, listener)));
        }
    }
    Ok(tasks)
}

async fn proxy(shared: Arc<Shared>, service: usize, port: usize, listener: TcpListener) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            let entry = &shared.services[service];
            let service_port = &entry.service.spec.ports[port];
            let endpoints = shared.endpoints(&entry.service, service_port);
            let start = next.fetch_add(1, Ordering::Relaxed);
            for i in 0..endpoints.len() {
                let addr = endpoints[(start + i) % endpoints.len()];
                let Some(ip) = entry.ip else {
                    return;
                };
                if let Ok(mut upstream) = connect_from(ip, addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            }
            // No endpoint: dropping the client closes it.
        });
    }
}
