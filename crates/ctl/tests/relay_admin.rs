//! `syctl rooms | sockets | disconnect | links | history` as an operator uses them: the real
//! binary against a real relay with three real gateways (Redis, placement, relay, gateways all
//! processes; build them first with `cargo build --workspace --bins`), and Socket.IO clients
//! (the official JS client, through `clients/js/tools/driver.mjs`) joined to rooms on
//! different gateways. The relay and the gateways share a link token; a fourth gateway with a
//! wrong one is refused and never shows up.

#[path = "../../gateway/tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::{Driver, metric_value};
use switchyard_testkit::{
    cluster::{Gateway, GatewayOpts, Placement, PlacementOpts, Relay, RelayOpts, TEST_ADMIN_TOKEN},
    redis::RedisServer,
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(30);
const LINK_TOKEN: &str = "relay-admin-e2e-link-token";

/// The variables syctl reads; removed from every run so the developer's shell cannot leak in.
const SYCTL_ENV: &[&str] = &[
    "SWITCHYARD_PLACEMENT_URL",
    "SWITCHYARD_RELAY_URL",
    "SWITCHYARD_ADMIN_TOKEN",
    "SWITCHYARD_PUBLISH_TOKEN",
    "SWITCHYARD_JSON",
    "SWITCHYARD_TIMEOUT",
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> anyhow::Result<Run> {
        ensure!(
            self.code == Some(0),
            "syctl exited {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {:?} ({:?})", self.stdout, self.stderr))
    }
}

/// An empty directory, so no `.switchyard/cluster.json` of a running `xtask up` is found.
fn empty_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "syctl-relay-admin-{}-{}",
        std::process::id(),
        switchyard_common::clock::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs syctl against `relay` with `token` (none: no `--admin-token`).
async fn syctl(relay: &Relay, token: Option<&str>, args: &[&str]) -> anyhow::Result<Run> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_syctl"));
    cmd.args(args)
        .args(["--relay", relay.grpc_url()])
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.args(["--admin-token", t]);
    }
    cmd.current_dir(empty_dir()?);
    for var in SYCTL_ENV {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("syctl did not exit within 60 s")??;
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `syctl <args> --json` until `check` accepts its output, or fails after [`WAIT`].
async fn until(
    relay: &Relay,
    args: &[&str],
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    eventually(what, WAIT, async || {
        let json = syctl(relay, Some(TEST_ADMIN_TOKEN), &all)
            .await?
            .ok()?
            .json()?;
        ensure!(check(&json), "last answer {json}");
        Ok(json)
    })
    .await
}

/// room -> members, from `syctl rooms --json`.
fn members(rooms: &Value) -> BTreeMap<String, u64> {
    rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["room"].as_str()?.to_owned(), r["members"].as_u64()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syctl_sees_and_disconnects_sockets_across_gateways() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let placement = Placement::start(PlacementOpts {
        redis_url: Some(redis.url()),
        extra_args: vec!["--report-interval-ms".into(), "1000".into()],
    })?;
    let relay = Relay::start(RelayOpts {
        redis_url: Some(redis.url()),
        extra_args: vec!["--link-token".into(), LINK_TOKEN.into()],
    })?;
    let mut gateways = Vec::new();
    for i in 0..3 {
        let mut opts = GatewayOpts::new(&placement, format!("gw-{i}"));
        opts.relay_urls = vec![relay.grpc_url().to_owned()];
        opts.extra_args = vec![
            "--report-interval-ms".into(),
            "1000".into(),
            "--link-token".into(),
            LINK_TOKEN.into(),
        ];
        gateways.push(Gateway::start(opts)?);
    }
    // Standalone (not placed: no client lands on it), linking with the wrong token.
    let mut intruder = GatewayOpts::new(&placement, "gw-intruder");
    intruder.relay_urls = vec![relay.grpc_url().to_owned()];
    intruder.extra_args = vec![
        "--placement-url=".into(),
        "--link-token".into(),
        "not-the-link-token".into(),
    ];
    let _intruder = Gateway::start(intruder)?;

    let links = until(&relay, &["links"], "three gateways linked", |j| {
        j["links"].as_array().is_some_and(|l| l.len() == 3)
    })
    .await?;
    let linked: BTreeSet<&str> = links["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["node_id"].as_str())
        .collect();
    assert_eq!(linked, BTreeSet::from(["gw-0", "gw-1", "gw-2"]));

    // Clients spread over the gateways by placement; rooms span gateways.
    let mut js = Driver::node().await?;
    let placement_url = placement.http_url().to_owned();
    let ids = ["a0", "a1", "a2", "b0", "b1", "c0"];
    let mut socket = BTreeMap::new(); // id -> (sid, node)
    for id in ids {
        js.connect(
            id,
            json!({"placement": placement_url, "transports": ["websocket"]}),
        )
        .await?;
        let e = js.connected(id, WAIT).await?;
        let sid = e["sid"].as_str().context("connected has a sid")?.to_owned();
        let node = e["node_id"]
            .as_str()
            .context("connected has a node")?
            .to_owned();
        socket.insert(id, (sid, node));
    }
    for id in ids {
        let mut rooms = vec!["all"];
        rooms.push(match &id[..1] {
            "a" => "alpha",
            "b" => "beta",
            _ => "solo",
        });
        for room in rooms {
            let ack = js.join(id, room).await?;
            ensure!(ack["ok"] == true, "{id} joins {room}: {ack}");
        }
    }
    let nodes_of = |prefix: &str| -> Vec<String> {
        let set: BTreeSet<String> = socket
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .map(|(_, (_, node))| node.clone())
            .collect();
        set.into_iter().collect()
    };
    ensure!(
        nodes_of("").len() >= 2,
        "placement spread the clients over several gateways: {socket:?}"
    );

    // rooms: member counts across gateways, every gateway answered.
    let want = BTreeMap::from([
        ("all".to_owned(), 6),
        ("alpha".to_owned(), 3),
        ("beta".to_owned(), 2),
        ("solo".to_owned(), 1),
    ]);
    let rooms = until(&relay, &["rooms"], "room member counts", |j| {
        members(j) == want
    })
    .await?;
    assert_eq!(rooms["missing"], json!([]), "{rooms}");
    assert_eq!(
        rooms["gateways"],
        json!(["gw-0", "gw-1", "gw-2"]),
        "{rooms}"
    );
    let all = rooms["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["room"] == "all"))
        .context("room all")?;
    assert_eq!(all["gateways"], json!(nodes_of("")), "{rooms}");
    let table = syctl(&relay, Some(TEST_ADMIN_TOKEN), &["rooms"])
        .await?
        .ok()?;
    let alpha_line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("alpha "))
        .with_context(|| format!("an alpha row: {}", table.stdout))?;
    ensure!(
        alpha_line.split_whitespace().nth(1) == Some("3"),
        "{}",
        table.stdout
    );

    // sockets: ids, gateways and rooms of alpha's members.
    let listed = syctl(
        &relay,
        Some(TEST_ADMIN_TOKEN),
        &["sockets", "alpha", "--json"],
    )
    .await?
    .ok()?
    .json()?;
    let mut got: Vec<(String, String, String)> = listed["sockets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["socket_id"].as_str().unwrap_or_default().to_owned(),
                s["node_id"].as_str().unwrap_or_default().to_owned(),
                s["rooms"].to_string(),
            )
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String, String)> = ["a0", "a1", "a2"]
        .iter()
        .map(|id| {
            let (sid, node) = &socket[id];
            (
                sid.clone(),
                node.clone(),
                json!(["all", "alpha"]).to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected, "{listed}");

    // disconnect one socket: that client observes it, the room shrinks.
    let (a0_sid, _) = socket["a0"].clone();
    let done = syctl(
        &relay,
        Some(TEST_ADMIN_TOKEN),
        &["disconnect", &a0_sid, "--json"],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(
        done["disconnected"][0]["socket_id"],
        a0_sid.as_str(),
        "{done}"
    );
    js.wait_event("a0 disconnected by the operator", WAIT, |e| {
        e["id"] == "a0" && e["event"] == "disconnect"
    })
    .await?;
    // The JS helper may reconnect and rejoin as a new socket; the old one is gone for good.
    until(
        &relay,
        &["sockets", "alpha"],
        "a0's socket gone from alpha",
        |j| {
            j["sockets"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["socket_id"] != a0_sid.as_str()))
        },
    )
    .await?;

    // disconnect a whole room.
    syctl(
        &relay,
        Some(TEST_ADMIN_TOKEN),
        &["disconnect", "--room", "beta"],
    )
    .await?
    .ok()?;
    for id in ["b0", "b1"] {
        js.wait_event(&format!("{id} disconnected with its room"), WAIT, |e| {
            e["id"] == id && e["event"] == "disconnect"
        })
        .await?;
    }
    for id in ["a1", "a2", "c0"] {
        ensure!(
            js.events_of(id, "disconnect").is_empty(),
            "{id} was not targeted"
        );
    }

    // A socket nobody holds: not found.
    let gone = syctl(&relay, Some(TEST_ADMIN_TOKEN), &["disconnect", &a0_sid]).await?;
    assert_eq!(gone.code, Some(2), "stderr: {}", gone.stderr);

    // history: a room publish goes through the namespace's history.
    let ack = js
        .publish("a1", "alpha", "message", json!({"text": "hi"}))
        .await?;
    ensure!(ack["ok"] == true, "publish: {ack}");
    let history = until(&relay, &["history"], "a history for /", |j| {
        j["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["namespace"] == "/" && h["head_offset"].as_u64() >= Some(1))
    })
    .await?;
    let root = history["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|h| h["namespace"] == "/"))
        .context("/")?;
    ensure!(
        root["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{root}"
    );
    ensure!(root["length"].as_u64() >= Some(1), "{root}");

    // links: the gateways answered admin requests, so frames came in from each.
    let links = syctl(&relay, Some(TEST_ADMIN_TOKEN), &["links", "--json"])
        .await?
        .ok()?
        .json()?;
    for l in links["links"].as_array().into_iter().flatten() {
        ensure!(l["frames_in"].as_u64() >= Some(1), "{l}");
        ensure!(l["queue_capacity"].as_u64() >= Some(1), "{l}");
    }
    let human = syctl(&relay, Some(TEST_ADMIN_TOKEN), &["links"])
        .await?
        .ok()?;
    ensure!(
        human.stdout.contains("GATEWAY") && human.stdout.contains("gw-2"),
        "{}",
        human.stdout
    );

    // The intruder kept trying and was refused every time.
    let metrics = switchyard_testkit::reqwest::get(format!("{}/metrics", relay.http_url()))
        .await?
        .text()
        .await?;
    ensure!(
        metric_value(&metrics, "switchyard_relay_links_refused_total").unwrap_or(0.0) >= 1.0,
        "refused links are counted"
    );

    // No token, or a wrong one: exit code 3.
    for token in [None, Some("wrong-token")] {
        let run = syctl(&relay, token, &["rooms"]).await?;
        assert_eq!(run.code, Some(3), "token {token:?}: {}", run.stderr);
        ensure!(run.stderr.contains("admin token"), "{}", run.stderr);
    }
    Ok(())
}
