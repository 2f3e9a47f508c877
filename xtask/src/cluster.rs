//! `cargo xtask up` and `cargo xtask down`: a local cluster for development.
//!
//! `up` builds the binaries, starts a redis-server (when installed), placement, one relay and N gateways
//! as child processes through `switchyard_testkit` (so it reads the same `SWITCHYARD_READY`
//! lines tests do), writes `.switchyard/cluster.json`, and stays in the foreground. Ctrl-C or
//! SIGTERM stops everything and removes the file; so does any service dying on its own.
//!
//! `down` stops a cluster whose `up` is running elsewhere (another terminal, or one that lost
//! its terminal): it SIGTERMs the pids in `cluster.json`.

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use switchyard_testkit::process::{Service, default_ready_timeout, send_signal, target_dir};
use switchyard_testkit::redis::{RedisServer, find_on_path};

use crate::{cargo, run, workspace_root};

/// Options of `cargo xtask up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of gateways (node ids gw-1 .. gw-N).
    #[arg(long, default_value_t = 3)]
    gateways: u16,
    /// Number of relay replicas; every gateway links to each. More than one needs Redis (the
    /// replicas share frames and history through it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    relays: u16,
    /// Use this Redis instead of starting one (e.g. redis://127.0.0.1:6379).
    #[arg(long, conflicts_with = "no_redis")]
    redis: Option<String>,
    /// No Redis at all: placement runs its in-memory ledger (one replica only).
    #[arg(long)]
    no_redis: bool,
    /// Placement's HTTP port (/v1/assign, /healthz, /metrics).
    #[arg(long, default_value_t = 7000)]
    placement_http_port: u16,
    /// Placement's gRPC port (gateway report streams, Admin API).
    #[arg(long, default_value_t = 7001)]
    placement_grpc_port: u16,
    /// The first relay's HTTP port (/healthz, /readyz, /metrics); relay i listens on
    /// base + 2(i - 1).
    #[arg(long, default_value_t = 7100)]
    relay_http_port: u16,
    /// The first relay's gRPC port (gateway links, Members, backend Publish, RelayAdmin);
    /// relay i listens on base + 2(i - 1).
    #[arg(long, default_value_t = 7101)]
    relay_grpc_port: u16,
    /// First gateway port; gateway i listens on base + i - 1.
    #[arg(long, default_value_t = 4000)]
    gateway_base_port: u16,
    /// Port of the demo page server (needs node and `npm ci` in clients/js); 0 = do not serve.
    #[arg(long, default_value_t = 8080)]
    demo_port: u16,
}

/// `.switchyard/cluster.json`. The first five fields are the documented contract; `xtask_pid`
/// and `redis_pid` let `down` stop a cluster whose `up` process is gone.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClusterFile {
    placement: Vec<PlacementEntry>,
    relays: Vec<RelayEntry>,
    gateways: Vec<GatewayEntry>,
    redis: Option<String>,
    admin_token: String,
    #[serde(default)]
    xtask_pid: Option<u32>,
    #[serde(default)]
    redis_pid: Option<u32>,
    #[serde(default)]
    demo_pid: Option<u32>,
    /// Bearer token of the relay's `Publish` (backends, `syctl publish`).
    #[serde(default)]
    publish_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlacementEntry {
    http: String,
    grpc: String,
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct RelayEntry {
    grpc: String,
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct GatewayEntry {
    node_id: String,
    url: String,
    pid: u32,
}

fn cluster_file() -> PathBuf {
    workspace_root().join(".switchyard").join("cluster.json")
}

/// `cargo xtask up`.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let state_path = cluster_file();
    refuse_if_running(&state_path)?;

    run(cargo().args(["build", "--bins"]))?;
    // `cargo build` without --release: the dev profile, whatever SWITCHYARD_PROFILE says.
    let bin_dir = target_dir()?.join("debug");

    let token_secret = secret_from_env_or_random("SWITCHYARD_TOKEN_SECRET")?;
    let admin_token = secret_from_env_or_random("SWITCHYARD_ADMIN_TOKEN")?;
    let publish_token = secret_from_env_or_random("SWITCHYARD_PUBLISH_TOKEN")?;
    // Only the relay and the gateways need it; it stays out of cluster.json.
    let link_token = secret_from_env_or_random("SWITCHYARD_LINK_TOKEN")?;

    // Redis: --redis URL, or our own redis-server, or (said loudly) none.
    let mut own_redis = None;
    let redis_url = if args.no_redis {
        None
    } else if let Some(url) = args.redis.clone() {
        Some(url)
    } else if find_on_path("redis-server").is_some() {
        let redis = RedisServer::start()?;
        let url = redis.url();
        own_redis = Some(redis);
        Some(url)
    } else {
        None
    };
    if redis_url.is_none() {
        eprintln!();
        eprintln!("!!! NO REDIS: placement runs its IN-MEMORY ledger. Fine for one placement !!!");
        eprintln!("!!! replica on this machine; nothing survives a placement restart.        !!!");
        if !args.no_redis {
            eprintln!(
                "!!! (redis-server is not installed; `sudo apt-get install redis-server`) !!!"
            );
        }
        eprintln!();
    }

    let mut placement_args = vec![
        "--http-addr".to_owned(),
        format!("127.0.0.1:{}", args.placement_http_port),
        "--grpc-addr".to_owned(),
        format!("127.0.0.1:{}", args.placement_grpc_port),
        "--token-secret".to_owned(),
        token_secret.clone(),
        "--admin-token".to_owned(),
        admin_token.clone(),
    ];
    if let Some(url) = &redis_url {
        placement_args.extend(["--redis-url".to_owned(), url.clone()]);
    }
    let placement = spawn(&bin_dir, "switchyard-placement", &placement_args)?;
    let placement_http = format!("http://{}", placement.ready_value("http")?);
    let placement_grpc = format!("http://{}", placement.ready_value("grpc")?);

    // The relays: every gateway links to each, so rooms span all of them.
    if args.relays > 1 && redis_url.is_none() {
        anyhow::bail!(
            "--relays {} needs Redis (relay replicas share frames and history through it): \
             drop --no-redis, pass --redis URL or install redis-server",
            args.relays
        );
    }
    let mut relays = Vec::new();
    for i in 0..args.relays {
        let port = |base: u16| base.checked_add(2 * i).context("relay port out of range");
        let mut relay_args = vec![
            "--http-addr".to_owned(),
            format!("127.0.0.1:{}", port(args.relay_http_port)?),
            "--grpc-addr".to_owned(),
            format!("127.0.0.1:{}", port(args.relay_grpc_port)?),
            "--publish-token".to_owned(),
            publish_token.clone(),
            "--admin-token".to_owned(),
            admin_token.clone(),
            "--link-token".to_owned(),
            link_token.clone(),
        ];
        if let Some(url) = &redis_url {
            relay_args.extend(["--redis-url".to_owned(), url.clone()]);
        }
        relays.push(spawn(&bin_dir, "switchyard-relay", &relay_args)?);
    }
    let relay_grpcs = relays
        .iter()
        .map(|r| -> anyhow::Result<String> { Ok(format!("http://{}", r.ready_value("grpc")?)) })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut gateways = Vec::new();
    for i in 1..=args.gateways {
        let port = args
            .gateway_base_port
            .checked_add(i - 1)
            .context("gateway port out of range")?;
        let gateway_args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--node-id".to_owned(),
            format!("gw-{i}"),
            "--placement-url".to_owned(),
            placement_grpc.clone(),
            "--token-secret".to_owned(),
            token_secret.clone(),
            "--relay-urls".to_owned(),
            relay_grpcs.join(","),
            "--link-token".to_owned(),
            link_token.clone(),
            // A development cluster should stop promptly on Ctrl-C.
            "--drain-deadline-ms".to_owned(),
            "5000".to_owned(),
        ];
        gateways.push(spawn(&bin_dir, "switchyard-gateway", &gateway_args)?);
    }

    let demo = start_demo(args.demo_port)?;

    let state = ClusterFile {
        placement: vec![PlacementEntry {
            http: placement_http.clone(),
            grpc: placement_grpc.clone(),
            pid: placement.pid(),
        }],
        relays: relays
            .iter()
            .zip(&relay_grpcs)
            .map(|(r, grpc)| RelayEntry {
                grpc: grpc.clone(),
                pid: r.pid(),
            })
            .collect(),
        gateways: gateways
            .iter()
            .map(|g| -> anyhow::Result<GatewayEntry> {
                Ok(GatewayEntry {
                    node_id: g.ready_value("node")?.to_owned(),
                    url: format!("http://{}", g.ready_value("http")?),
                    pid: g.pid(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        redis: redis_url.clone(),
        admin_token: admin_token.clone(),
        xtask_pid: Some(std::process::id()),
        redis_pid: own_redis.as_ref().and_then(RedisServer::pid),
        demo_pid: demo.as_ref().map(Service::pid),
        publish_token: Some(publish_token.clone()),
    };
    if let Some(dir) = state_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&state_path, serde_json::to_string_pretty(&state)?)
        .with_context(|| format!("writing {}", state_path.display()))?;

    print_summary(&state, demo.as_ref());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut services: Vec<&Service> = vec![&placement];
    services.extend(relays.iter());
    services.extend(gateways.iter());
    services.extend(demo.iter());
    let outcome = runtime.block_on(wait_for_stop(&services));

    eprintln!("stopping the cluster ...");
    // Gateways first, so they drain while placement still answers; then placement.
    let mut stopping: Vec<&Service> = demo.iter().collect();
    stopping.extend(gateways.iter());
    stop_all(&stopping, Duration::from_secs(8));
    let mut last: Vec<&Service> = relays.iter().collect();
    last.push(&placement);
    stop_all(&last, Duration::from_secs(5));
    drop(own_redis);
    let _ = fs::remove_file(&state_path);
    eprintln!("stopped; removed {}", state_path.display());
    outcome
}

/// Spawns `bin_dir/bin` and waits for its readiness line.
fn spawn(bin_dir: &Path, bin: &str, args: &[String]) -> anyhow::Result<Service> {
    let path = bin_dir.join(bin);
    if !path.is_file() {
        bail!("{} is missing after `cargo build --bins`", path.display());
    }
    Service::spawn_program(&path, args, &[], default_ready_timeout())
        .with_context(|| format!("starting {bin} (is the port already taken?)"))
}

/// Serves `clients/js` (the demo page) with `node tools/serve.mjs` when node and the JS
/// dependencies are there; otherwise says how to get it.
fn start_demo(port: u16) -> anyhow::Result<Option<Service>> {
    if port == 0 {
        return Ok(None);
    }
    let js = workspace_root().join("clients").join("js");
    let server = js.join("tools").join("serve.mjs");
    if !server.is_file() {
        return Ok(None);
    }
    if find_on_path("node").is_none() || !js.join("node_modules").is_dir() {
        eprintln!(
            "demo page not served: it needs node and `npm ci` in clients/js \
             (cargo xtask test runs that)"
        );
        return Ok(None);
    }
    let args = [
        server.display().to_string(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
    ];
    match Service::spawn_program(Path::new("node"), &args, &[], Duration::from_secs(15)) {
        Ok(service) => Ok(Some(service)),
        Err(e) => {
            eprintln!("demo page not served: {e:#}");
            Ok(None)
        }
    }
}

fn print_summary(state: &ClusterFile, demo: Option<&Service>) {
    let Some(placement) = state.placement.first() else {
        return;
    };
    println!();
    println!("Switchyard is up.");
    match &state.redis {
        Some(url) => println!("  redis       {url}"),
        None => println!("  redis       none (in-memory ledger)"),
    }
    println!(
        "  placement   HTTP {}  (/v1/assign /healthz /readyz /metrics)   gRPC {}  (pid {})",
        placement.http, placement.grpc, placement.pid
    );
    for r in &state.relays {
        println!(
            "  relay       gRPC {}  (Link, Members, Publish, RelayAdmin)   (pid {})",
            r.grpc, r.pid
        );
    }
    for g in &state.gateways {
        println!("  gateway     {:<6} {}  (pid {})", g.node_id, g.url, g.pid);
    }
    if let Some(demo) = demo
        && let Some(addr) = demo.ready().get("http")
    {
        println!(
            "  demo        http://{addr}/demo/index.html?placement={}",
            placement.http
        );
    }
    println!("  admin token {}", state.admin_token);
    println!();
    println!("Connect a client:");
    println!("  curl '{}/v1/assign?namespace=/'", placement.http);
    println!("    -> {{\"url\", \"node_id\", \"token\", \"expires_in_ms\"}}");
    println!("  then with socket.io-client:  io(url, {{ auth: {{ token }} }})");
    println!(
        "  or with clients/js:  import {{ connect }} from \"./clients/js/src/switchyard.mjs\";"
    );
    println!(
        "                       const client = connect({{ placementUrl: \"{}\" }});",
        placement.http
    );
    println!();
    println!(
        "State in {}. Ctrl-C stops everything (or `cargo xtask down` elsewhere).",
        cluster_file().display()
    );
}

/// Waits for Ctrl-C or SIGTERM (`Ok`), or for a service to die on its own (`Err` with its log).
async fn wait_for_stop(services: &[&Service]) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {
                for service in services {
                    if let Some(status) = service.try_status()? {
                        bail!(
                            "{} (pid {}) exited on its own with {status}; last lines of {}:\n{}",
                            service.name(),
                            service.pid(),
                            service.log_path().display(),
                            service.log_tail(20)
                        );
                    }
                }
            }
        }
    }
}

/// SIGTERMs every service, waits up to `grace` for each; the ones still running are SIGKILLed.
fn stop_all(services: &[&Service], grace: Duration) {
    for service in services {
        // Already gone (e.g. the terminal's SIGINT reached it first) is fine.
        let _ = service.terminate();
    }
    for service in services {
        match service.wait_exit(grace) {
            // Exit 0 after draining, or killed by the SIGTERM itself (the demo server): fine.
            Ok(status) if status.success() || status.signal() == Some(15) => {}
            Ok(status) => eprintln!("{} exited with {status}", service.name()),
            Err(_) => {
                eprintln!(
                    "{} did not stop within {grace:?}; killing it",
                    service.name()
                );
                let _ = service.kill();
            }
        }
    }
}

/// `cargo xtask down`.
pub fn down() -> anyhow::Result<()> {
    let path = cluster_file();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no cluster running ({} does not exist)", path.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: ClusterFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;

    // The `up` process stops everything in order and removes the file; the services and redis
    // are signalled too, in case `up` is gone.
    let mut pids: Vec<u32> = state.xtask_pid.into_iter().collect();
    pids.extend(state.demo_pid);
    pids.extend(state.gateways.iter().map(|g| g.pid));
    pids.extend(state.relays.iter().map(|r| r.pid));
    pids.extend(state.placement.iter().map(|p| p.pid));
    pids.extend(state.redis_pid);
    for &pid in &pids {
        if is_ours(pid) {
            eprintln!("SIGTERM {pid}");
            if let Err(e) = send_signal(pid, "TERM") {
                eprintln!("  {e:#}");
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|&pid| is_ours(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = pids.into_iter().filter(|&pid| is_ours(pid)).collect();
    let _ = fs::remove_file(&path);
    if !left.is_empty() {
        bail!("still running after 15 s: pids {left:?} (kill -9 them if they are stuck)");
    }
    eprintln!("cluster stopped");
    Ok(())
}

/// Whether `pid` is alive and is one of ours (a Switchyard binary, redis-server, node or the
/// xtask), so a stale file never makes us signal an unrelated process that reused the pid.
fn is_ours(pid: u32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some((_, rest)) = stat.rsplit_once(") ")
        && rest.starts_with('Z')
    {
        return false; // a zombie: exited, waiting to be reaped by its parent
    }
    let cmdline = String::from_utf8_lossy(&cmdline);
    ["switchyard", "redis-server", "xtask", "serve.mjs"]
        .iter()
        .any(|name| cmdline.contains(name))
}

/// Refuses to start over a cluster that is still running; removes a stale file.
fn refuse_if_running(path: &Path) -> anyhow::Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    if let Ok(state) = serde_json::from_str::<ClusterFile>(&text) {
        let running = state
            .xtask_pid
            .into_iter()
            .chain(state.placement.iter().map(|p| p.pid))
            .chain(state.relays.iter().map(|r| r.pid))
            .chain(state.gateways.iter().map(|g| g.pid))
            .any(is_ours);
        if running {
            bail!(
                "a cluster is already running ({}); stop it with `cargo xtask down`",
                path.display()
            );
        }
    }
    let _ = fs::remove_file(path);
    Ok(())
}

/// The value of env `var` when set and non-empty, else 32 random bytes as hex.
fn secret_from_env_or_random(var: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return Ok(value);
    }
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a random secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_file_has_the_documented_shape() -> anyhow::Result<()> {
        let state = ClusterFile {
            placement: vec![PlacementEntry {
                http: "http://127.0.0.1:7000".into(),
                grpc: "http://127.0.0.1:7001".into(),
                pid: 1,
            }],
            gateways: vec![GatewayEntry {
                node_id: "gw-1".into(),
                url: "http://127.0.0.1:4000".into(),
                pid: 2,
            }],
            admin_token: "t".into(),
            ..ClusterFile::default()
        };
        let json = serde_json::to_value(&state)?;
        assert_eq!(json["placement"][0]["http"], "http://127.0.0.1:7000");
        assert_eq!(json["gateways"][0]["node_id"], "gw-1");
        assert_eq!(json["relays"], serde_json::json!([]));
        assert!(json["redis"].is_null());
        assert_eq!(json["admin_token"], "t");
        Ok(())
    }

    #[test]
    fn random_secrets_differ() -> anyhow::Result<()> {
        let a = secret_from_env_or_random("SWITCHYARD_XTASK_TEST_UNSET_VAR")?;
        let b = secret_from_env_or_random("SWITCHYARD_XTASK_TEST_UNSET_VAR")?;
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        Ok(())
    }
}
