//! `cargo xtask up`: a local cluster for development, supervised the way Kubernetes runs one.
//!
//! `up` builds the binaries with the documented command (`cargo build [--release] --workspace
//! --bins`), starts a redis-server (when installed), placement, the relays and N gateways as
//! child processes through `switchyard_testkit` (so it reads the same `SWITCHYARD_READY`
//! lines tests do), the demo page when Node is there, writes `cluster.json` (module [`state`])
//! and stays in the foreground, supervising (module [`supervise`]): a service that exits on its
//! own is reported on one line and started again, after a backoff, with the same node id,
//! ports and arguments, while everything else keeps running. Only Ctrl-C, SIGTERM, SIGHUP or
//! `cargo xtask down` stop the cluster: demo and gateways first (they drain), then the relays
//! and placement, Redis last; the file is removed.
//!
//! Every process runs in a process group of its own, so a terminal's Ctrl-C reaches `up`
//! alone and the stop keeps that order. The verbs for a cluster running in another terminal
//! (`status`, `kill`, `down`) are in module [`control`].

mod admin_ui;
mod control;
mod secrets;
mod state;
mod supervise;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use switchyard_testkit::process::default_ready_timeout;
use switchyard_testkit::redis::{RedisServer, find_on_path};

pub use control::{KillArgs, down, kill, status};
use secrets::secret_from_env_or_random;
pub use state::StateArgs;
use state::{
    ClusterFile, DEMO_SERVER, DemoEntry, GatewayEntry, PlacementEntry, RedisEntry, RelayEntry,
    is_ours, relay_name,
};
use supervise::{StateFile, Unit, process_info, ready, watch};

use crate::exec::{Profile, build_bins, workspace_root};

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
    /// Port of the demo page server (needs Node; `up` runs `npm ci` in clients/js when its
    /// node_modules is missing or older than the lockfile); 0 = do not serve.
    #[arg(long, default_value_t = 8080)]
    demo_port: u16,
    /// Port of the admin UI page (`@socket.io/admin-ui`'s dashboard, served with Node; every
    /// gateway serves its `/admin` namespace with a generated login); 0 = do not serve the
    /// page (the gateways still serve the namespace).
    #[arg(long, default_value_t = 8090)]
    admin_ui_port: u16,
    /// Base URL of the application's backend: every gateway calls its hooks (`POST
    /// {url}/connect`, `/event`, `/disconnect`; docs/hooks.md), e.g. the chat backend of
    /// `examples/chat-backend` at http://127.0.0.1:8000. A `--hook-token` comes from
    /// `SWITCHYARD_HOOK_TOKEN` in the environment, as the gateways read it.
    #[arg(long)]
    hooks_url: Option<String>,
    /// Application events the gateways forward to the event hook (comma-separated globs).
    #[arg(long, default_value = "*", requires = "hooks_url")]
    hook_events: String,
    /// Run release builds (`cargo build --release --workspace --bins`). Slower to build, the
    /// only meaningful choice for load tests; the default debug build starts sooner.
    #[arg(long)]
    release: bool,
    #[command(flatten)]
    state: StateArgs,
}

/// `cargo xtask up`.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let state_path = args.state.cluster_file();
    refuse_if_running(&state_path)?;

    let profile = if args.release {
        Profile::Release
    } else {
        Profile::Debug
    };
    build_bins(profile)?;
    let bin_dir = profile.bin_dir()?;

    let token_secret = secret_from_env_or_random("SWITCHYARD_TOKEN_SECRET")?;
    let admin_token = secret_from_env_or_random("SWITCHYARD_ADMIN_TOKEN")?;
    let publish_token = secret_from_env_or_random("SWITCHYARD_PUBLISH_TOKEN")?;
    // Only the relay and the gateways need it; it stays out of cluster.json.
    let link_token = secret_from_env_or_random("SWITCHYARD_LINK_TOKEN")?;
    let login = admin_ui::login()?;

    // Redis: --redis URL, or our own supervised redis-server, or (said loudly) none.
    let mut redis_unit = None;
    let redis_url = if args.no_redis {
        None
    } else if let Some(url) = args.redis.clone() {
        Some(url)
    } else if find_on_path("redis-server").is_some() {
        let unit = Unit::redis(RedisServer::start_in_own_process_group()?);
        let url = unit.redis_server().map(RedisServer::url);
        redis_unit = Some(unit);
        url
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
    if args.relays > 1 && redis_url.is_none() {
        bail!(
            "--relays {} needs Redis (relay replicas share frames and history through it): \
             drop --no-redis, pass --redis URL or install redis-server",
            args.relays
        );
    }

    let timeout = default_ready_timeout();
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
    let placement = Unit::program(
        "placement",
        &binary(&bin_dir, "switchyard-placement")?,
        placement_args,
        timeout,
    )?;
    let placement_http = format!("http://{}", ready(&placement, "http")?);
    let placement_grpc = format!("http://{}", ready(&placement, "grpc")?);

    // The relays: every gateway links to each, so rooms span all of them.
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
            // With Redis, backends can also use Socket.IO's own @socket.io/redis-emitter.
            relay_args.extend([
                "--redis-url".to_owned(),
                url.clone(),
                "--emitter".to_owned(),
            ]);
        }
        relays.push(Unit::program(
            &relay_name(usize::from(i)),
            &binary(&bin_dir, "switchyard-relay")?,
            relay_args,
            timeout,
        )?);
    }
    let relay_grpcs = relays
        .iter()
        .map(|r| Ok(format!("http://{}", ready(r, "grpc")?)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut gateways = Vec::new();
    for i in 1..=args.gateways {
        let port = args
            .gateway_base_port
            .checked_add(i - 1)
            .context("gateway port out of range")?;
        let node_id = format!("gw-{i}");
        let mut gateway_args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--node-id".to_owned(),
            node_id.clone(),
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
        gateway_args.extend(admin_ui::gateway_args(&login));
        if let Some(url) = &args.hooks_url {
            gateway_args.extend([
                "--hooks-url".to_owned(),
                url.clone(),
                "--hook-events".to_owned(),
                args.hook_events.clone(),
            ]);
        }
        gateways.push(Unit::program(
            &node_id,
            &binary(&bin_dir, "switchyard-gateway")?,
            gateway_args,
            timeout,
        )?);
    }

    let demo = start_demo(args.demo_port);
    let admin_page = admin_ui::start_ui(&workspace_root(), args.admin_ui_port);
    let first_gateway = gateways
        .first()
        .map(|g| Ok::<_, anyhow::Error>(format!("http://{}", ready(g, "http")?)))
        .transpose()?
        .unwrap_or_default();

    let state = ClusterFile {
        placement: vec![PlacementEntry {
            http: placement_http.clone(),
            grpc: placement_grpc.clone(),
            process: process_info(&placement),
        }],
        relays: relays
            .iter()
            .zip(&relay_grpcs)
            .map(|(r, grpc)| {
                Ok(RelayEntry {
                    http: Some(format!("http://{}", ready(r, "http")?)),
                    grpc: grpc.clone(),
                    process: process_info(r),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        gateways: gateways
            .iter()
            .map(|g| {
                Ok(GatewayEntry {
                    node_id: g.name.clone(),
                    url: format!("http://{}", ready(g, "http")?),
                    process: process_info(g),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        redis: redis_url.clone(),
        admin_token,
        publish_token: Some(publish_token),
        xtask_pid: Some(std::process::id()),
        profile: Some(profile.name().to_owned()),
        redis_server: redis_unit.as_ref().and_then(|u| {
            Some(RedisEntry {
                url: u.redis_server()?.url(),
                process: process_info(u),
            })
        }),
        demo: demo.as_ref().and_then(|d| {
            Some(DemoEntry {
                url: format!(
                    "http://{}/demo/index.html?placement={placement_http}",
                    ready(d, "http").ok()?
                ),
                process: process_info(d),
            })
        }),
        admin_ui: Some(admin_ui::entry(&login, admin_page.as_ref(), &first_gateway)),
    };
    state.write(&state_path)?;
    print_summary(&state, &state_path);

    // Supervise until a stop signal.
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(StateFile {
        path: state_path.clone(),
        file: Mutex::new(state),
    });
    let mut watchers = Vec::new();
    let groups = [
        (Stage::Last, redis_unit.into_iter().collect::<Vec<_>>()),
        (
            Stage::Core,
            std::iter::once(placement).chain(relays).collect(),
        ),
        (
            Stage::Edge,
            gateways.into_iter().chain(demo).chain(admin_page).collect(),
        ),
    ];
    for (stage, units) in groups {
        for unit in units {
            watchers.push((stage, watch(unit, shared.clone(), stop.clone())));
        }
    }
    let signal = wait_for_stop_signal();
    stop.store(true, Ordering::SeqCst);
    match &signal {
        Ok(name) => eprintln!("{name}: stopping the cluster ..."),
        Err(e) => eprintln!("{e:#}; stopping the cluster ..."),
    }
    let mut units: Vec<(Stage, Unit)> = Vec::new();
    for (stage, watcher) in watchers {
        match watcher.join() {
            Ok(unit) => units.push((stage, unit)),
            Err(_) => eprintln!("a supervisor thread panicked; its service is left to Drop"),
        }
    }
    // Gateways first, so they drain while placement still answers; Redis last.
    for (stage, grace) in [
        (Stage::Edge, Duration::from_secs(8)),
        (Stage::Core, Duration::from_secs(5)),
        (Stage::Last, Duration::from_secs(5)),
    ] {
        let group: Vec<&Unit> = units
            .iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, u)| u)
            .collect();
        group.iter().for_each(|u| u.terminate());
        group.iter().for_each(|u| u.wait_stopped(grace));
    }
    let _ = fs::remove_file(&state_path);
    eprintln!("stopped; removed {}", state_path.display());
    signal.map(drop)
}

/// When a group of services is stopped: the edge (gateways, demo) first, Redis last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Edge,
    Core,
    Last,
}

/// Blocks until Ctrl-C, SIGTERM or SIGHUP (a closed terminal); returns the signal's name.
fn wait_for_stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
        Ok(tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        })
    })
}

/// `bin_dir/bin`, which the build just made.
fn binary(bin_dir: &Path, bin: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(bin);
    if !path.is_file() {
        bail!("{} is missing after the build", path.display());
    }
    Ok(path)
}

/// Serves `clients/js` (the demo page) with `node tools/serve.mjs` when Node is installed,
/// after `npm ci` when `node_modules` is missing or older than the lockfile. The demo is a
/// convenience: whatever stands in its way is said, and the cluster starts without it.
fn start_demo(port: u16) -> Option<Unit> {
    if port == 0 {
        return None;
    }
    let root = workspace_root();
    let server = root.join(DEMO_SERVER);
    if !server.is_file() {
        return None;
    }
    let Some(node) = find_on_path("node") else {
        eprintln!(
            "demo page not served: Node.js is not installed (Debian: `sudo apt-get install -y \
             nodejs npm`)"
        );
        return None;
    };
    if find_on_path("npm").is_none() {
        eprintln!(
            "demo page not served: npm is not installed (Debian: `sudo apt-get install -y npm`)"
        );
        return None;
    }
    if let Err(e) = crate::prereqs::ensure_node_deps(&root) {
        eprintln!("demo page not served: {e:#}");
        return None;
    }
    let args = vec![
        server.display().to_string(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
    ];
    match Unit::program("demo", &node, args, Duration::from_secs(15)) {
        Ok(unit) => Some(unit),
        Err(e) => {
            eprintln!("demo page not served: {e:#}");
            None
        }
    }
}

fn print_summary(state: &ClusterFile, state_path: &Path) {
    let Some(placement) = state.placement.first() else {
        return;
    };
    println!();
    println!(
        "Switchyard is up ({} build).",
        state.profile.as_deref().unwrap_or("debug")
    );
    match &state.redis {
        Some(url) => println!("  redis       {url}"),
        None => println!("  redis       none (in-memory ledger)"),
    }
    println!(
        "  placement   HTTP {}  (/v1/assign /healthz /readyz /metrics)   gRPC {}  (pid {})",
        placement.http, placement.grpc, placement.process.pid
    );
    for r in &state.relays {
        println!(
            "  relay       gRPC {}  (Link, Members, Publish, RelayAdmin)   (pid {})",
            r.grpc, r.process.pid
        );
    }
    for g in &state.gateways {
        println!(
            "  gateway     {:<6} {}  (pid {})",
            g.node_id, g.url, g.process.pid
        );
    }
    if let Some(demo) = &state.demo {
        println!("  demo        {}", demo.url);
    }
    if let Some(ui) = &state.admin_ui {
        let page = ui.url.as_deref().unwrap_or("(page not served)");
        println!(
            "  admin UI    {page}  server URL {}  namespace {}  user {}  password {}",
            ui.server_url, ui.namespace, ui.username, ui.password
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
        "State in {}. A service that dies is restarted (try `cargo xtask kill gw-2`, then \
         `cargo xtask status`).",
        state_path.display()
    );
    println!("Ctrl-C stops everything (or `cargo xtask down` elsewhere).");
}

/// Refuses to start over a cluster that is still running; removes a stale file.
fn refuse_if_running(path: &Path) -> anyhow::Result<()> {
    let Ok(Some(state)) = ClusterFile::read(path) else {
        return Ok(());
    };
    let running = state
        .xtask_pid
        .into_iter()
        .chain(state.services().iter().map(|s| s.process.pid))
        .any(is_ours);
    if running {
        bail!(
            "a cluster is already running ({}); stop it with `cargo xtask down`, or give this \
             one its own --state-dir and ports",
            path.display()
        );
    }
    let _ = fs::remove_file(path);
    Ok(())
}
