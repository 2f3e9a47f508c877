//! The whole system on managed Redis, as processes: a TLS-only `redis-server` (`--tls-port`,
//! `--port 0`) with an ACL user created with exactly `switchyard_redis::acl::rule`, placement
//! and the relay reaching it with `--redis-url rediss://…`, `--redis-ca-file`,
//! `--redis-username` and the password in `SWITCHYARD_REDIS_PASSWORD`, two gateways linked to
//! the relay. Official JS clients are placed through `/v1/assign` (spread over both gateways),
//! join a room, and an event published on one gateway reaches the members on both, stamped
//! with its position; a client joining later gets the retained event. Redis's `ACL LOG` stays
//! empty throughout: nothing placement, the relay or their scripts did needed more.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;
use support::{Admin, Driver, REPORT_INTERVAL_MS};
use switchyard_redis::acl;
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts,
};
use switchyard_testkit::redis::{RedisOptions, RedisServer};
use switchyard_testkit::tls::TestPki;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_gateways_with_placement_and_relay_on_tls_redis_as_a_least_privileged_user()
-> anyhow::Result<()> {
    let pki = Arc::new(TestPki::generate("e2e-managed-redis")?);
    let redis = RedisServer::start_with(RedisOptions::managed(
        pki,
        "switchyard",
        &acl::rule("switchyard"),
    ))?;
    let access = redis.access();
    ensure!(access.url.starts_with("rediss://"), "{}", access.url);
    let interval = vec![
        "--report-interval-ms".to_owned(),
        REPORT_INTERVAL_MS.to_owned(),
    ];
    let placement = Placement::start_with_redis(
        PlacementOpts {
            redis_url: None,
            extra_args: interval.clone(),
        },
        &access,
    )?;
    let relay = Relay::start_with_redis(RelayOpts::default(), &access)?;
    let mut gateways = Vec::new();
    for i in 0..2 {
        let mut opts = GatewayOpts::new(&placement, format!("gw-{i}"));
        opts.relay_urls = vec![relay.grpc_url().to_owned()];
        opts.extra_args = interval.clone();
        gateways.push(Gateway::start(opts)?);
    }
    support::wait_relay_members(relay.grpc_url(), gateways.len(), WAIT).await?;
    let mut admin = Admin::connect(placement.grpc_url()).await?;
    eventually("placement to list both gateways", WAIT, async || {
        let nodes = admin.nodes().await?;
        ensure!(nodes.len() >= gateways.len(), "placement lists {nodes:?}");
        Ok(())
    })
    .await?;

    // Placed through placement's ledger (a Lua script on TLS Redis, as the ACL user).
    let mut js = Driver::node().await?;
    js.connect_many(
        "c",
        CLIENTS,
        json!({"placement": placement.http_url(), "transports": ["websocket"]}),
    )
    .await?;
    let counts = js
        .wait_counts("every client connected", WAIT, |c| c.connected == CLIENTS)
        .await?;
    ensure!(
        counts.by_node.len() == 2 && counts.by_node.values().all(|n| *n == CLIENTS / 2),
        "clients spread over both gateways: {:?}",
        counts.by_node
    );
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    for id in &ids {
        let ack = js.join(id, "lobby").await?;
        ensure!(ack["ok"] == true, "{id} joins: {ack}");
    }

    // Published on one gateway, stamped by the relay (history on TLS Redis), received on both.
    let ack = js
        .publish("c0", "lobby", "chat", json!({"text": "over TLS"}))
        .await?;
    ensure!(ack["ok"] == true, "publish: {ack}");
    let offset = ack["offset"]
        .as_u64()
        .context("the ack carries an offset")?;
    for id in &ids {
        let e = js
            .wait_event(&format!("{id} to receive chat"), WAIT, |e| {
                e["id"] == id.as_str() && e["event"] == "recv" && e["name"] == "chat"
            })
            .await?;
        assert_eq!(e["args"][0]["text"], "over TLS", "{e}");
        assert_eq!(e["args"][1]["room"], "lobby", "{e}");
        assert_eq!(e["args"][1]["offset"].as_u64(), Some(offset), "{e}");
    }

    // A retained event, then a late joiner gets it with its offset (history read back).
    let mut retained = json!({"cmd": "publish", "id": "c1", "room": "lobby", "event": "state",
                              "data": {"v": 1}, "retain": true});
    let ack = js.request(retained.take()).await?["ack"].clone();
    ensure!(ack["ok"] == true, "retained publish: {ack}");
    js.connect(
        "late",
        json!({"placement": placement.http_url(), "transports": ["websocket"]}),
    )
    .await?;
    js.connected("late", WAIT).await?;
    let joined = js.join("late", "lobby").await?;
    ensure!(joined["ok"] == true, "late joins: {joined}");
    ensure!(
        joined["retained"]["data"]["v"] == 1 && joined["retained"]["offset"] == ack["offset"],
        "the late joiner gets the retained state at its offset: {joined} vs {ack}"
    );

    redis.ensure_no_acl_denials()?;
    js.shutdown().await
}
