//! Faults with clients connected and events flowing, on a full cluster of real processes: Redis,
//! two placement replicas behind one address (a TCP front, as a Kubernetes Service is), two relay
//! replicas (every gateway linked to both), three gateways, 60 subscribers through the JS helper
//! (`clients/js/src/switchyard.mjs`: assign, connect, resume) and a publisher of numbered events.
//!
//! For each fault (kill -9 of a gateway, of one relay replica, of the placement replica holding
//! the lease, of Redis restarted empty; a gateway frozen past the liveness window then thawed):
//! - no client waits more than 5 s for a new placement: from its `disconnect` to its
//!   `reconnected` as the driver saw them, or from asking to `connected` for new clients;
//! - every subscriber ends with exactly the acknowledged events, in order, none twice; when
//!   history is lost (Redis empty) a resuming client is told `recovered: false` with a new
//!   epoch, and nothing acknowledged is missing anywhere;
//! - the ledger is right again within 3 report intervals: placement's `ListNodes` connections
//!   per node and `ClusterStats` total equal the clients really connected.
//!
//! Earlier suites cover the single faults in isolation: `e2e_failover` (gateway kill, drains),
//! `e2e_cluster` (one relay of two killed, a stalled gateway cut off), `e2e_resume` (resume after
//! a gateway kill, Redis restarted empty), `e2e_placement` (Redis loss, a paused lease holder
//! fenced). Here they happen to the whole system at once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use support::{Admin, Driver, REPORT_INTERVAL_MS};
use switchyard_common::clock::now_ms;
use switchyard_testkit::cluster::{
    Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts,
};
use switchyard_testkit::feed::{
    self, Published, Publishing, all_acked, placement_waits, resumes, ticks,
};
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::wait::eventually;
use tokio::net::{TcpListener, TcpStream};

/// The contract's bound on how long a client waits for a new placement (README: a client that
/// loses its gateway is placed again within 5 s).
const PLACEMENT_DEADLINE_MS: u64 = 5_000;
/// A guard against hanging, not a measurement.
const WAIT: Duration = Duration::from_secs(60);
const SUBSCRIBERS: usize = 60;
const ROOM: &str = "feed";
/// The gateways' node ids.
const ALL: [&str; 3] = ["gw-0", "gw-1", "gw-2"];

/// The report interval of every service here.
fn interval() -> Duration {
    Duration::from_millis(REPORT_INTERVAL_MS.parse().unwrap_or(1000))
}

/// The contract's bound for the ledger to be right again: 3 report intervals (a dead gateway
/// leaves the ledger within three intervals).
fn ledger_deadline() -> Duration {
    3 * interval()
}

/// One address in front of several replicas, as a Kubernetes Service is: each new connection
/// goes to the next replica that accepts; a connection whose replica dies ends with it.
struct Front {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Front {
    async fn start(backend_urls: &[&str]) -> anyhow::Result<Front> {
        let backends = backend_urls
            .iter()
            .map(|u| {
                u.trim_start_matches("http://")
                    .parse::<SocketAddr>()
                    .with_context(|| format!("backend {u}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = next;
                next += 1;
                let backends = backends.clone();
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let backend = backends[(first + i) % backends.len()];
                        if let Ok(mut outbound) = TcpStream::connect(backend).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Front { addr, accept })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Every service of a production cluster, twice where it can be, as processes; stopped on drop
/// (gateways first).
struct FaultCluster {
    gateways: Vec<Gateway>,
    relays: Vec<Relay>,
    placement_http: Front,
    placement_grpc: Front,
    placements: Vec<Placement>,
    redis: RedisServer,
}

impl FaultCluster {
    async fn start() -> anyhow::Result<FaultCluster> {
        let redis = RedisServer::start()?;
        let every_interval = || {
            vec![
                "--report-interval-ms".to_owned(),
                REPORT_INTERVAL_MS.to_owned(),
            ]
        };
        let placements = (0..2)
            .map(|_| {
                Placement::start(PlacementOpts {
                    redis_url: Some(redis.url()),
                    extra_args: every_interval(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http: Vec<&str> = placements.iter().map(|p| p.http_url()).collect();
        let grpc: Vec<&str> = placements.iter().map(|p| p.grpc_url()).collect();
        let placement_http = Front::start(&http).await?;
        let placement_grpc = Front::start(&grpc).await?;
        let relays = (0..2)
            .map(|_| {
                Relay::start(RelayOpts {
                    redis_url: Some(redis.url()),
                    extra_args: Vec::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut gateways = Vec::new();
        for i in 0..3 {
            let opts = GatewayOpts {
                placement_grpc: placement_grpc.url(),
                node_id: format!("gw-{i}"),
                relay_urls: relays.iter().map(|r| r.grpc_url().to_owned()).collect(),
                // The publisher connects straight to a chosen gateway, without a token.
                extra_args: [vec!["--allow-anonymous".to_owned()], every_interval()].concat(),
            };
            gateways.push(tokio::task::block_in_place(|| Gateway::start(opts))?);
        }
        let cluster = FaultCluster {
            gateways,
            relays,
            placement_http,
            placement_grpc,
            placements,
            redis,
        };
        for relay in &cluster.relays {
            support::wait_relay_members(relay.grpc_url(), 3, WAIT).await?;
        }
        cluster.wait_listed(&ALL).await?;
        Ok(cluster)
    }

    /// Admin through the front, as an operator would reach it.
    async fn admin(&self) -> anyhow::Result<Admin> {
        Admin::connect(&self.placement_grpc.url()).await
    }

    /// Placement's node ids, in order.
    async fn listed(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.admin().await?.nodes().await?.into_keys().collect())
    }

    /// Waits until placement lists exactly `want` (a guard, not a measurement).
    async fn wait_listed(&self, want: &[&str]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        eventually(format!("placement to list {want:?}"), WAIT, async || {
            let listed = self.listed().await?;
            ensure!(listed == want, "it lists {listed:?}");
            Ok(start.elapsed())
        })
        .await
    }

    /// Subscribers through placement (the JS helper), all connected and in [`ROOM`].
    async fn subscribers(&self) -> anyhow::Result<Driver> {
        let mut subs = Driver::node().await?;
        subs.connect_many(
            "s",
            SUBSCRIBERS,
            json!({"placement": self.placement_http.url(), "transports": ["websocket"],
                   "useHelper": true}),
        )
        .await?;
        subs.wait_counts("every subscriber connected", WAIT, |c| {
            c.connected == SUBSCRIBERS
        })
        .await?;
        for i in 0..SUBSCRIBERS {
            let ack = subs.join(&format!("s{i}"), ROOM).await?;
            ensure!(ack["ok"] == true, "s{i} joins: {ack}");
        }
        Ok(subs)
    }

    /// A publisher connected straight to gateway `gw`, in its own driver.
    async fn publisher(&self, gw: usize) -> anyhow::Result<Driver> {
        let mut publisher = Driver::node().await?;
        publisher
            .connect_raw(
                "p",
                self.gateways[gw].url(),
                None,
                json!({"transports": ["websocket"]}),
            )
            .await?;
        publisher.connected("p", WAIT).await?;
        Ok(publisher)
    }

    /// Waits until placement's view equals the clients really connected: it lists exactly
    /// the `live` nodes, each with `subs`' clients there plus the publisher's connection on
    /// `publisher_on`, and the same total. Returns how long after `since` it first did; fails
    /// when that takes longer than [`ledger_deadline`].
    async fn ledger_settles(
        &self,
        subs: &mut Driver,
        live: &[&str],
        publisher_on: &Gateway,
        since: Instant,
    ) -> anyhow::Result<Duration> {
        let within = ledger_deadline().saturating_sub(since.elapsed());
        eventually("the ledger to be right", within, async || {
            let counts = subs.count().await?;
            let mut real: BTreeMap<String, usize> =
                live.iter().map(|n| ((*n).to_owned(), 0)).collect();
            for (node, n) in &counts.by_node {
                *real.entry(node.clone()).or_default() += n;
            }
            *real.entry(publisher_on.node_id().to_owned()).or_default() += 1;
            let mut admin = self.admin().await.context("placement unreachable")?;
            let nodes = admin.nodes().await.context("placement unreachable")?;
            let stats = admin.stats().await.context("placement unreachable")?;
            let ledger: BTreeMap<String, usize> = nodes
                .iter()
                .map(|(id, n)| (id.clone(), n.connections as usize))
                .collect();
            let total: usize = real.values().sum();
            ensure!(
                counts.connected == counts.clients
                    && ledger == real
                    && stats.connections as usize == total,
                "clients {real:?} ({} of {} connected), ListNodes {ledger:?}, \
                 ClusterStats connections {}",
                counts.connected,
                counts.clients,
                stats.connections
            );
            Ok(since.elapsed())
        })
        .await
    }
}

/// The subscribers' ids: `s0` .. `s{SUBSCRIBERS - 1}`.
fn subscriber_ids() -> Vec<String> {
    (0..SUBSCRIBERS).map(|i| format!("s{i}")).collect()
}

/// [`feed::every_subscriber_got_exactly`] for every subscriber, the fence published by the
/// feed's publisher `p`.
async fn every_subscriber_got_exactly(
    subs: &mut Driver,
    publisher: &mut Driver,
    published: &[Published],
) -> anyhow::Result<()> {
    let fence = feed::Fence {
        driver: publisher,
        id: "p",
        room: ROOM,
    };
    feed::every_subscriber_got_exactly(subs, &subscriber_ids(), fence, published).await
}

fn assert_waits_within_deadline(waits: &[(String, u64)]) -> anyhow::Result<()> {
    feed::assert_waits_within(waits, PLACEMENT_DEADLINE_MS)
}

/// A publisher of [`ROOM`]'s feed on client `p` of `driver`, from `next` on.
fn publish_feed(driver: Driver, next: u64) -> Publishing {
    Publishing::start(driver, "p", ROOM, next)
}

/// Waits for newcomer `id`'s first `connected` (a refused attempt may come before it) and
/// returns how long after `asked` (ms since the epoch) it came, and on which node.
async fn newcomer_connected(
    subs: &mut Driver,
    id: &str,
    asked: u64,
) -> anyhow::Result<(u64, String)> {
    let e = subs
        .wait_event(&format!("{id} to connect"), WAIT, |e| {
            e["id"] == id && e["event"] == "connected"
        })
        .await?;
    let t = e["t"].as_u64().context("connected at")?;
    let node = e["node_id"].as_str().unwrap_or_default().to_owned();
    Ok((t.saturating_sub(asked), node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_are_placed_within_5s_and_miss_nothing() -> anyhow::Result<()> {
    let cluster = FaultCluster::start().await?;
    let mut subs = cluster.subscribers().await?;
    let on_dead = subs.count().await?.on("gw-0");
    ensure!(on_dead > 0, "some subscribers are on the gateway to kill");
    let publishing = publish_feed(cluster.publisher(1).await?, 0);
    publishing.advance(30).await?;

    cluster.gateways[0].kill()?;
    publishing.advance(30).await?;
    subs.wait_counts("every subscriber back on gw-1 or gw-2", WAIT, |c| {
        c.connected == SUBSCRIBERS && c.on("gw-0") == 0
    })
    .await?;
    let settled = Instant::now();
    let waits = placement_waits(&mut subs);
    ensure!(
        waits.len() == on_dead,
        "only gw-0's {on_dead} clients moved: {waits:?}"
    );
    assert_waits_within_deadline(&waits)?;
    let took = cluster
        .ledger_settles(&mut subs, &["gw-1", "gw-2"], &cluster.gateways[1], settled)
        .await?;
    eprintln!("ledger right {took:?} after the clients settled");

    publishing.advance(30).await?;
    let (mut publisher, published) = publishing.stop().await?;
    all_acked(&published)?;
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    for r in subs.events().iter().filter(|e| e["event"] == "resumed") {
        ensure!(r["recovered"] == true, "a resume did not recover: {r}");
    }
    publisher.shutdown().await?;
    subs.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_replica_moves_no_client_and_loses_no_event() -> anyhow::Result<()> {
    let cluster = FaultCluster::start().await?;
    let mut subs = cluster.subscribers().await?;
    let publishing = publish_feed(cluster.publisher(1).await?, 0);
    publishing.advance(30).await?;

    cluster.relays[0].kill()?;
    let killed = Instant::now();
    let took = cluster
        .ledger_settles(&mut subs, &ALL, &cluster.gateways[1], killed)
        .await?;
    eprintln!("ledger right {took:?} after the kill");
    publishing.advance(60).await?;
    let (mut publisher, published) = publishing.stop().await?;
    // A publish in flight to the dying relay may be refused, explicitly; none is lost.
    let refused: Vec<&Published> = published.iter().filter(|p| !p.acked).collect();
    eprintln!(
        "{} publishes refused around the relay's death",
        refused.len()
    );
    for p in &refused {
        ensure!(
            p.answer["ack"]["ok"] == false && p.answer["ack"]["error"].is_string(),
            "publish {} was not refused explicitly: {}",
            p.n,
            p.answer
        );
    }
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    let waits = placement_waits(&mut subs);
    ensure!(waits.is_empty(), "no client loses its gateway: {waits:?}");
    publisher.shutdown().await?;
    subs.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_placement_replica_goes_unnoticed_by_clients() -> anyhow::Result<()> {
    const NEWCOMERS: usize = 15;
    let cluster = FaultCluster::start().await?;
    let mut subs = cluster.subscribers().await?;
    let publishing = publish_feed(cluster.publisher(1).await?, 0);
    publishing.advance(30).await?;

    // Kill the replica holding the lease, so the other must take the singleton duties over.
    let holder = eventually("a replica to take the lease", WAIT, async || {
        for (i, p) in cluster.placements.iter().enumerate() {
            if Admin::connect(p.grpc_url())
                .await?
                .stats()
                .await?
                .lease_holder
            {
                return Ok(i);
            }
        }
        bail!("no replica holds it")
    })
    .await?;
    let survivor = &cluster.placements[1 - holder];
    cluster.placements[holder].kill()?;

    // New clients arrive at once: each is placed and connected within the bound.
    let asked = now_ms();
    subs.connect_many(
        "n",
        NEWCOMERS,
        json!({"placement": cluster.placement_http.url(), "transports": ["websocket"],
               "useHelper": true}),
    )
    .await?;
    subs.wait_counts("the newcomers connected", WAIT, |c| {
        c.connected == SUBSCRIBERS + NEWCOMERS
    })
    .await?;
    let settled = Instant::now();
    let mut waits = Vec::new();
    for i in 0..NEWCOMERS {
        let id = format!("n{i}");
        let (ms, _) = newcomer_connected(&mut subs, &id, asked).await?;
        waits.push((id, ms));
    }
    assert_waits_within_deadline(&waits)?;
    let took = cluster
        .ledger_settles(&mut subs, &ALL, &cluster.gateways[1], settled)
        .await?;
    eprintln!("ledger right {took:?} after the newcomers connected");

    eventually("the survivor to take the lease", WAIT, async || {
        let stats = Admin::connect(survivor.grpc_url()).await?.stats().await?;
        ensure!(stats.lease_holder, "it does not hold it yet");
        Ok(())
    })
    .await?;
    publishing.advance(30).await?;
    let (mut publisher, published) = publishing.stop().await?;
    all_acked(&published)?;
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    let waits = placement_waits(&mut subs);
    ensure!(waits.is_empty(), "no client loses its gateway: {waits:?}");
    publisher.shutdown().await?;
    subs.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_shows_a_new_epoch_and_loses_nothing_silently() -> anyhow::Result<()>
{
    let cluster = FaultCluster::start().await?;
    let mut subs = cluster.subscribers().await?;
    let publishing = publish_feed(cluster.publisher(1).await?, 0);
    publishing.advance(30).await?;
    let (mut publisher, mut published) = publishing.stop().await?;
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    let old_epoch = ticks(&mut subs, "s0")
        .last()
        .map(|(_, e)| e.clone())
        .context("s0 has events")?;

    // Redis dies while events are being published: those publishes are refused, not lost.
    // The publisher stops before Redis is back, so the exact count below is well defined.
    let publishing = publish_feed(publisher, published.len() as u64);
    cluster.redis.kill()?;
    publishing.advance(5).await?;
    let (publisher, during) = publishing.stop().await?;
    published.extend(during);
    tokio::task::block_in_place(|| cluster.redis.restart_empty())?;
    let restarted = Instant::now();

    // Every relay link dropped with Redis, and whatever was stamped before a gateway relinked
    // never reached it. So at relink each gateway severs its subscribed sockets: every
    // subscriber reconnects and resumes, told `recovered: false` in the new epoch — never a
    // silent gap.
    // A gateway whose links drop again while Redis settles severs again, so a subscriber may
    // resume more than once; what matters is that each one resumes and is told.
    eventually(
        "every subscriber to resume after the relay links came back",
        WAIT,
        async || {
            let resumed: BTreeSet<String> = resumes(&mut subs)
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
            ensure!(
                resumed.len() >= SUBSCRIBERS,
                "{} of {SUBSCRIBERS}",
                resumed.len()
            );
            Ok(())
        },
    )
    .await?;
    let resumed = resumes(&mut subs);
    let new_epoch = resumed
        .first()
        .and_then(|r| r["epoch"].as_str())
        .map(str::to_owned)
        .context("a resume names its epoch")?;
    ensure!(new_epoch != old_epoch, "the epoch changed: {resumed:?}");
    let mut first_seen = BTreeSet::new();
    for r in &resumed {
        ensure!(
            r["epoch"] == new_epoch.as_str(),
            "every resume is in the new epoch: {r}"
        );
        if first_seen.insert(r["id"].to_string()) {
            ensure!(r["recovered"] == false, "history was lost: {r}");
        }
    }
    let new_epoch = Some(new_epoch);
    subs.wait_counts("every subscriber back", WAIT, |c| {
        c.connected == SUBSCRIBERS
    })
    .await?;
    // Checked once the severed subscribers are back: until then the clients' own count moves.
    let back = Instant::now();
    let took = cluster
        .ledger_settles(&mut subs, &ALL, &cluster.gateways[1], back)
        .await?;
    eprintln!(
        "subscribers back {:?} after Redis came back empty, ledger right {took:?} later",
        back - restarted
    );

    // A gateway dies (the busier of gw-0 and gw-2; the publisher is on gw-1, and where the
    // severed subscribers landed depends on when each gateway relinked): its clients resume
    // elsewhere, now within the new epoch's history.
    let counts = subs.count().await?;
    let dead = if counts.on("gw-0") >= counts.on("gw-2") {
        0
    } else {
        2
    };
    let dead_id = format!("gw-{dead}");
    let live: Vec<&str> = ALL.iter().copied().filter(|n| **n != dead_id).collect();
    let on_dead = counts.on(&dead_id);
    ensure!(on_dead > 0, "some subscribers are on {dead_id}: {counts:?}");
    let before = subs.events().len();
    cluster.gateways[dead].kill()?;
    subs.wait_counts("the dead gateway's subscribers back elsewhere", WAIT, |c| {
        c.connected == SUBSCRIBERS && c.on(&dead_id) == 0
    })
    .await?;
    let settled = Instant::now();
    let waits = placement_waits(&mut subs);
    ensure!(
        waits.len() >= SUBSCRIBERS,
        "every subscriber came back: {waits:?}"
    );
    assert_waits_within_deadline(&waits)?;
    let moved: Vec<Value> = subs.events()[before..]
        .iter()
        .filter(|e| e["event"] == "resumed")
        .cloned()
        .collect();
    ensure!(
        moved.len() == on_dead,
        "each of {dead_id}'s clients resumed: {moved:?}"
    );
    for r in &moved {
        ensure!(
            r["recovered"] == true && r["epoch"].as_str() == new_epoch.as_deref(),
            "a resume within the new epoch recovers: {r}"
        );
    }
    cluster
        .ledger_settles(&mut subs, &live, &cluster.gateways[1], settled)
        .await?;

    // Life goes on in the new epoch: every subscriber gets every acknowledged event.
    for relay in &cluster.relays {
        support::wait_relay_members(relay.grpc_url(), 2, WAIT).await?;
    }
    let publishing = publish_feed(publisher, published.len() as u64);
    publishing.advance(30).await?;
    let (mut publisher, after) = publishing.stop().await?;
    all_acked(&after)?;
    published.extend(after);
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    let refused = published.iter().filter(|p| !p.acked).count();
    eprintln!("{refused} publishes refused while Redis was down");
    for i in 0..SUBSCRIBERS {
        let last = ticks(&mut subs, &format!("s{i}"))
            .last()
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        ensure!(last != old_epoch, "s{i}'s latest event is of the new epoch");
    }
    publisher.shutdown().await?;
    subs.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_is_evicted_then_rejoins_counted_once() -> anyhow::Result<()> {
    const NEWCOMERS: usize = 10;
    let cluster = FaultCluster::start().await?;
    let mut subs = cluster.subscribers().await?;
    let on_frozen = subs.count().await?.on("gw-2");
    ensure!(on_frozen > 0, "some subscribers are on gw-2");
    let publishing = publish_feed(cluster.publisher(1).await?, 0);
    publishing.advance(30).await?;

    cluster.gateways[2].pause()?;
    let frozen = Instant::now();
    let evicted = cluster.wait_listed(&["gw-0", "gw-1"]).await?;
    eprintln!("gw-2 evicted {evicted:?} after SIGSTOP");
    ensure!(
        evicted >= 2 * interval(),
        "a node is evicted only after missing reports ({evicted:?})"
    );
    // Nobody is sent to the frozen gateway meanwhile.
    let asked = now_ms();
    subs.connect_many(
        "n",
        NEWCOMERS,
        json!({"placement": cluster.placement_http.url(), "transports": ["websocket"],
               "useHelper": true}),
    )
    .await?;
    let mut waits = Vec::new();
    for i in 0..NEWCOMERS {
        let id = format!("n{i}");
        let (ms, node) = newcomer_connected(&mut subs, &id, asked).await?;
        ensure!(node != "gw-2", "{id} was sent to the frozen gateway");
        waits.push((id, ms));
    }
    assert_waits_within_deadline(&waits)?;

    // Well past the liveness window, still short of the clients' own ping timeout.
    let frozen_for = 5 * interval();
    tokio::time::sleep(frozen_for.saturating_sub(frozen.elapsed())).await;
    cluster.gateways[2].resume()?;
    eprintln!("gw-2 frozen for {:?}", frozen.elapsed());
    let back = cluster.wait_listed(&ALL).await?;
    eprintln!("gw-2 listed again {back:?} after SIGCONT");
    let relisted = Instant::now();
    // Its clients are served or moved; either way each is counted once, where it is.
    let took = cluster
        .ledger_settles(&mut subs, &ALL, &cluster.gateways[1], relisted)
        .await?;
    let counts = subs.count().await?;
    eprintln!(
        "ledger right {took:?} after gw-2 was listed again; {} of its {on_frozen} clients \
         stayed, {} moved",
        counts.on("gw-2"),
        placement_waits(&mut subs).len()
    );
    assert_waits_within_deadline(&placement_waits(&mut subs))?;

    publishing.advance(30).await?;
    let (mut publisher, published) = publishing.stop().await?;
    all_acked(&published)?;
    every_subscriber_got_exactly(&mut subs, &mut publisher, &published).await?;
    publisher.shutdown().await?;
    subs.shutdown().await
}
