//! `syctl` as an operator uses it: the real binary against a real `switchyard-placement` (build
//! it first with `cargo build -p switchyard-placement --bins`; cargo builds `syctl` itself),
//! with test gateways holding real gRPC report streams, and once against a real redis-server.

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::Value;
use switchyard_proto::placement::v1::{
    Directive, GatewayReport, Load, Register, directive, gateway_report,
    placement_client::PlacementClient,
};
use switchyard_testkit::{
    cluster::{Placement, PlacementOpts, TEST_ADMIN_TOKEN},
    ports::free_port,
    redis::RedisServer,
    wait::eventually,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;

/// The variables syctl reads; removed from every run so the developer's shell cannot leak in.
const SYCTL_ENV: &[&str] = &[
    "SWITCHYARD_PLACEMENT_URL",
    "SWITCHYARD_ADMIN_TOKEN",
    "SWITCHYARD_JSON",
    "SWITCHYARD_TIMEOUT",
];

fn placement(redis: Option<&RedisServer>) -> anyhow::Result<Placement> {
    Placement::start(PlacementOpts {
        redis_url: redis.map(RedisServer::url),
        extra_args: vec![],
    })
}

/// One finished syctl run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {:?} (stderr {:?})",
                self.stdout, self.stderr
            )
        })
    }

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
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs syctl with `args`, extra `env`, in `cwd` (the crate directory when `None`).
async fn syctl_in(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> anyhow::Result<Run> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_syctl"));
    cmd.args(args).kill_on_drop(true);
    for var in SYCTL_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("syctl did not exit within 60 s")??;
    Ok(out.into())
}

/// Runs syctl against `p` with the right token: `--placement <grpc> --admin-token <token> args`.
async fn syctl(p: &Placement, args: &[&str]) -> anyhow::Result<Run> {
    let mut all = vec![
        "--placement",
        p.grpc_url(),
        "--admin-token",
        TEST_ADMIN_TOKEN,
    ];
    all.extend_from_slice(args);
    syctl_in(&all, &[], None).await
}

/// Runs `syctl nodes --json` until `check` accepts the node list, or fails after 10 s.
async fn nodes_until(
    p: &Placement,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    eventually(what, Duration::from_secs(10), async || {
        let json = syctl(p, &["nodes", "--json"]).await?.ok()?.json()?;
        let nodes = json["nodes"]
            .as_array()
            .cloned()
            .context("`nodes` is not an array")?;
        ensure!(check(&nodes), "last nodes: {nodes:#?}");
        Ok(nodes)
    })
    .await
}

fn find<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["node_id"] == id)
}

/// A stand-in gateway: one real report stream that registers, then reports `connections`
/// every 100 ms (placement's test liveness window is 600 ms), and collects directives.
struct FakeNode {
    node_id: String,
    directives: mpsc::UnboundedReceiver<Directive>,
    reporter: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.reporter.abort();
        self.reader.abort();
    }
}

impl FakeNode {
    async fn connect(p: &Placement, node_id: &str, connections: u64) -> anyhow::Result<FakeNode> {
        let mut client = PlacementClient::connect(p.grpc_url().to_owned()).await?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(GatewayReport {
            kind: Some(gateway_report::Kind::Register(Register {
                node_id: node_id.to_owned(),
                url: format!("http://127.0.0.1:1/{node_id}"),
                weight: 1,
                capacity: 0,
                namespaces: vec!["/".into()],
                report_interval_ms: 100,
            })),
        })
        .await?;
        let mut inbound = client.report(ReceiverStream::new(rx)).await?.into_inner();
        let (dtx, directives) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(d)) = inbound.message().await {
                if dtx.send(d).is_err() {
                    return;
                }
            }
        });
        let load = Arc::new(AtomicU64::new(connections));
        let reporter = tokio::spawn(async move {
            let _client = client;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let report = GatewayReport {
                    kind: Some(gateway_report::Kind::Load(Load {
                        connections: load.load(Ordering::Relaxed),
                        consumed_reservations: vec![],
                        draining: false,
                        full: false,
                    })),
                };
                if tx.send(report).await.is_err() {
                    return;
                }
            }
        });
        let mut node = FakeNode {
            node_id: node_id.to_owned(),
            directives,
            reporter,
            reader,
        };
        node.expect("Registered", |k| {
            matches!(k, directive::Kind::Registered(_)).then_some(())
        })
        .await?;
        Ok(node)
    }

    /// Waits up to 10 s for a directive `pick` accepts, skipping others.
    async fn expect<T>(
        &mut self,
        what: &str,
        pick: impl Fn(&directive::Kind) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let d = tokio::time::timeout(left, self.directives.recv())
                .await
                .with_context(|| format!("{}: no {what} directive within 10 s", self.node_id))?
                .with_context(|| format!("{}: stream ended before {what}", self.node_id))?;
            if let Some(v) = d.kind.as_ref().and_then(&pick) {
                return Ok(v);
            }
        }
    }
}

/// A fresh empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("syctl-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything an operator does on one cluster: list, drain/undrain, weight, stats, rebalance.
async fn operate_a_cluster(p: &Placement) -> anyhow::Result<()> {
    let mut busy = FakeNode::connect(p, "gw-busy", 12).await?;
    let _idle = FakeNode::connect(p, "gw-idle", 0).await?;

    // nodes: both, with the figures they report.
    let nodes = nodes_until(p, "both nodes with their loads", |n| {
        n.len() == 2
            && find(n, "gw-busy").is_some_and(|b| b["connections"] == 12)
            && find(n, "gw-idle").is_some_and(|i| i["connections"] == 0)
    })
    .await?;
    let busy_json = find(&nodes, "gw-busy").context("gw-busy listed")?;
    assert_eq!(busy_json["url"], "http://127.0.0.1:1/gw-busy");
    assert_eq!(busy_json["weight"], 1);
    assert_eq!(busy_json["draining"], false);
    let table = syctl(p, &["nodes"]).await?.ok()?.stdout;
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NODE", "URL", "CONNS", "PENDING", "WEIGHT", "CAPACITY", "DRAINING", "AGE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table.contains("gw-busy") && table.contains("gw-idle"),
        "{table}"
    );

    // drain: the ledger marks it and the node's own stream is told, at the requested rate.
    let drained = syctl(p, &["drain", "gw-busy", "--rate", "7", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(drained["node"]["node_id"], "gw-busy");
    assert_eq!(drained["node"]["draining"], true);
    let rate = busy
        .expect("Drain", |k| match k {
            directive::Kind::Drain(d) => Some(d.rate_per_sec),
            _ => None,
        })
        .await?;
    assert_eq!(rate, 7);
    nodes_until(p, "gw-busy listed as draining", |n| {
        find(n, "gw-busy").is_some_and(|b| b["draining"] == true)
            && find(n, "gw-idle").is_some_and(|i| i["draining"] == false)
    })
    .await?;
    let said = syctl(p, &["undrain", "gw-busy"]).await?.ok()?.stdout;
    assert!(said.contains("gw-busy takes new clients again"), "{said}");
    busy.expect("Undrain", |k| {
        matches!(k, directive::Kind::Undrain(_)).then_some(())
    })
    .await?;

    // weight
    let weighted = syctl(p, &["weight", "gw-idle", "5", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(weighted["node"]["weight"], 5);
    nodes_until(p, "gw-idle at weight 5", |n| {
        find(n, "gw-idle").is_some_and(|i| i["weight"] == 5)
    })
    .await?;
    let zero = syctl(p, &["weight", "gw-idle", "0"]).await?;
    assert_eq!(
        zero.code,
        Some(1),
        "weight 0 is a usage error: {}",
        zero.stderr
    );

    // stats
    let stats = syctl(p, &["stats", "--json"]).await?.ok()?.json()?;
    assert_eq!(stats["nodes"], 2, "{stats}");
    assert_eq!(stats["live_nodes"], 2, "{stats}");
    assert_eq!(stats["draining_nodes"], 0, "{stats}");
    assert_eq!(stats["connections"], 12, "{stats}");
    assert!(stats["assignments_per_sec"].is_number(), "{stats}");
    let human = syctl(p, &["stats"]).await?.ok()?.stdout;
    assert!(
        human.contains("connections") && human.contains("12"),
        "{human}"
    );

    // rebalance: back to equal weights, 12 vs 0 must shed from the busy node, which is told.
    syctl(p, &["weight", "gw-idle", "1"]).await?.ok()?;
    let plan = syctl(p, &["rebalance", "--rate", "3", "--json"])
        .await?
        .ok()?
        .json()?;
    let shed = plan["shed"]["gw-busy"].as_u64().context("gw-busy sheds")?;
    assert!(shed > 0, "{plan}");
    assert!(plan["shed"].get("gw-idle").is_none(), "{plan}");
    let (count, rate) = busy
        .expect("Shed", |k| match k {
            directive::Kind::Shed(s) => Some((s.count, s.rate_per_sec)),
            _ => None,
        })
        .await?;
    assert_eq!((count, rate), (shed, 3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_drains_weighs_rebalances_and_reads_stats() -> anyhow::Result<()> {
    let p = placement(None)?;
    operate_a_cluster(&p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commands_work_on_a_redis_ledger() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let p = placement(Some(&redis))?;
    operate_a_cluster(&p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_can_come_from_the_environment() -> anyhow::Result<()> {
    let p = placement(None)?;
    let _node = FakeNode::connect(&p, "gw-env", 0).await?;
    let run = syctl_in(
        &["nodes"],
        &[
            ("SWITCHYARD_PLACEMENT_URL", p.grpc_url()),
            ("SWITCHYARD_ADMIN_TOKEN", TEST_ADMIN_TOKEN),
            ("SWITCHYARD_JSON", "1"),
        ],
        None,
    )
    .await?
    .ok()?;
    assert_eq!(run.json()?["nodes"][0]["node_id"], "gw-env");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_exits_3_and_says_why() -> anyhow::Result<()> {
    let p = placement(None)?;
    let wrong = syctl_in(
        &[
            "--placement",
            p.grpc_url(),
            "--admin-token",
            "not-the-token",
            "nodes",
        ],
        &[],
        None,
    )
    .await?;
    assert_eq!(wrong.code, Some(3), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("invalid admin token"),
        "{}",
        wrong.stderr
    );
    assert!(wrong.stderr.contains("--admin-token"), "{}", wrong.stderr);
    assert!(wrong.stdout.is_empty(), "{}", wrong.stdout);

    let missing = syctl_in(&["--placement", p.grpc_url(), "stats"], &[], None).await?;
    assert_eq!(missing.code, Some(3), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("authorization"),
        "{}",
        missing.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_exits_2() -> anyhow::Result<()> {
    let p = placement(None)?;
    for args in [
        &["drain", "gw-nope"][..],
        &["undrain", "gw-nope"],
        &["weight", "gw-nope", "3"],
    ] {
        let run = syctl(&p, args).await?;
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("gw-nope"), "{}", run.stderr);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_placement_listening_exits_4() -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{}", free_port());
    let run = syctl_in(
        &[
            "--placement",
            &addr,
            "--admin-token",
            "t",
            "--timeout",
            "5s",
            "nodes",
        ],
        &[],
        None,
    )
    .await?;
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_flags_syctl_finds_the_cluster_file_in_a_parent_directory() -> anyhow::Result<()> {
    let p = placement(None)?;
    let node = FakeNode::connect(&p, "gw-found", 4).await?;
    let root = TempDir::new("discovery")?;
    std::fs::create_dir_all(root.0.join(".switchyard"))?;
    // The gRPC address without a scheme, as a hand-written file might have it.
    let grpc = p.grpc_url().trim_start_matches("http://");
    let file = serde_json::json!({
        "placement": [{"http": p.http_url(), "grpc": grpc, "pid": p.pid()}],
        "relays": [],
        "gateways": [],
        "redis": null,
        "admin_token": TEST_ADMIN_TOKEN,
    });
    std::fs::write(
        root.0.join(".switchyard").join("cluster.json"),
        serde_json::to_string_pretty(&file)?,
    )?;
    let nested = root.0.join("deep").join("er");
    std::fs::create_dir_all(&nested)?;

    let run = syctl_in(&["nodes", "--json"], &[], Some(&nested))
        .await?
        .ok()?;
    assert_eq!(run.json()?["nodes"][0]["node_id"], "gw-found");

    // A stale file (cluster gone) is "unavailable" and names the file.
    drop(node);
    p.kill()?;
    let stale = syctl_in(&["nodes", "--timeout", "5s"], &[], Some(&nested)).await?;
    assert_eq!(stale.code, Some(4), "{}", stale.stderr);
    assert!(stale.stderr.contains("cluster.json"), "{}", stale.stderr);

    // No file anywhere and no flags: a configuration error that says what to do.
    let empty = TempDir::new("nothing")?;
    let none = syctl_in(&["nodes"], &[], Some(&empty.0)).await?;
    assert_eq!(none.code, Some(1), "{}", none.stderr);
    assert!(none.stderr.contains("cargo xtask up"), "{}", none.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_1_and_help_documents_the_exit_codes() -> anyhow::Result<()> {
    let bad = syctl_in(&["nodes", "--bogus"], &[], None).await?;
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    let help = syctl_in(&["--help"], &[], None).await?.ok()?;
    for line in [
        "Exit codes",
        "2  not found",
        "3  unauthenticated",
        "4  unavailable",
    ] {
        assert!(help.stdout.contains(line), "{}", help.stdout);
    }
    Ok(())
}
