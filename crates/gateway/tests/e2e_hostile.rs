//! Hostile clients: connection patterns an attacker tries cannot take a gateway or placement
//! out of service. Each attacker is a process of its own on its own `127.0.0.x` source
//! addresses; beside it a well-behaved official client (`socket.io-client`) connects through
//! placement and gets its events. Each test asserts what the target holds (descriptors from
//! `/proc/<pid>/fd`, memory from `VmRSS`) stays under the stated bound and that the attacker's
//! connections are closed within the configured time. The bounds are tabled in
//! `docs/RELIABILITY.md` ("Hostile clients").

mod support;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::{Cluster, Driver, repo_root};
use switchyard_testkit::assign::assign;
use switchyard_testkit::raw::http_exchange;
use switchyard_testkit::wait::eventually;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(30);

/// The header-read timeout the targets run with in these tests.
const HEADER_TIMEOUT_MS: u64 = 2_000;
/// Pending connections one source address may hold.
const MAX_PENDING_PER_ADDRESS: usize = 100;
/// How late after the timeout a close may come: hyper's timer, a loaded 2-core machine.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// What each of the attacker's connections does.
#[derive(Clone, Copy, PartialEq)]
enum Attack {
    /// Sends a request line and one header, then nothing.
    HalfSentHeaders,
    /// Opens a polling session, sends a whole POST header for it announcing 50,000 bytes,
    /// then 10 bytes of body and nothing more.
    SlowBody,
    /// Completes an Engine.IO WebSocket upgrade (reads the `101`), then sends nothing: no
    /// namespace CONNECT, no pong.
    Websocket,
}

/// One attacker process (`tests/python/slow_requests.py`), killed on drop.
struct SlowRequests {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SlowRequests {
    /// Starts the attacker against `target` (`host:port`): `per_source` connections doing
    /// `attack` from each of `sources`, held at most `hold` seconds.
    fn start(
        target: &str,
        sources: &[&str],
        per_source: usize,
        hold: Duration,
        attack: Attack,
    ) -> anyhow::Result<Self> {
        let script = repo_root().join("tests/python/slow_requests.py");
        let mut command = Command::new("python3");
        command.arg(&script);
        match attack {
            Attack::HalfSentHeaders => {}
            Attack::SlowBody => {
                command.arg("--slow-body");
            }
            Attack::Websocket => {
                command.arg("--websocket");
            }
        }
        let mut child = command
            .args(["--target", target, "--sources", &sources.join(",")])
            .args(["--per-source", &per_source.to_string()])
            .args(["--hold-secs", &hold.as_secs_f64().to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting python3 {} (python3 is required)",
                    script.display()
                )
            })?;
        let stdout = child.stdout.take().context("attacker stdout")?;
        Ok(SlowRequests {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The attacker's next JSON line.
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("the attacker said nothing in time")??
            .context("the attacker exited early")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Reads `{"opened", "failed"}` and checks every connection was opened.
    async fn opened(&mut self, want: usize) -> anyhow::Result<()> {
        let line = self.next(WAIT).await?;
        ensure!(line["opened"] == json!(want), "attacker: {line}");
        Ok(())
    }

    /// Reads the final report (within `wait`) and checks that the target closed every
    /// connection, each at most `bound` after it was opened. Returns how many seconds after
    /// opening each was closed, and the latest of them; `what` names the connections in errors.
    async fn all_closed_within(
        mut self,
        wait: Duration,
        bound: Duration,
        what: &str,
    ) -> anyhow::Result<(Vec<f64>, f64)> {
        let line = self.next(wait).await?;
        let _ = self.child.wait().await;
        let closed: Vec<f64> = line["closed_after"]
            .as_array()
            .context("closed_after")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let still_open = line["still_open"].as_u64().context("still_open")?;
        ensure!(
            still_open == 0,
            "{still_open} {what} still open after {wait:?}"
        );
        let latest = closed.iter().copied().fold(0.0, f64::max);
        ensure!(
            latest <= bound.as_secs_f64(),
            "one of the {what} was closed only after {latest} s (bound {bound:?})"
        );
        Ok((closed, latest))
    }
}

/// The well-behaved client `calm` starts: it assigns through placement (`placement`, its HTTP
/// URL) and connects over websocket, by its own retries; wait with `connected("calm", ..)`.
async fn calm_dials(placement: &str) -> anyhow::Result<Driver> {
    let mut js = Driver::node().await?;
    js.connect(
        "calm",
        json!({"placement": placement, "transports": ["websocket"]}),
    )
    .await?;
    Ok(js)
}

/// The well-behaved client `calm` (connected) joins a room, publishes to it and receives its
/// own event: what every client of the attacked target must still be able to do.
async fn calm_gets_its_event(js: &mut Driver) -> anyhow::Result<()> {
    let ack = js.join("calm", "news").await?;
    ensure!(ack["ok"] == true, "join: {ack}");
    let ack = js.publish("calm", "news", "tick", json!({"n": 1})).await?;
    ensure!(ack["ok"] == true, "publish: {ack}");
    js.wait_event("calm to receive tick", WAIT, |e| {
        e["id"] == "calm" && e["event"] == "recv" && e["name"] == "tick" && e["args"][0]["n"] == 1
    })
    .await?;
    Ok(())
}

/// What a process holds: open descriptors and resident memory (KiB).
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    fds: usize,
    rss_kib: u64,
}

fn held(pid: u32) -> anyhow::Result<Held> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(Held { fds, rss_kib })
}

/// The largest of each figure over `samples`.
fn peak(samples: &[Held]) -> Held {
    samples.iter().fold(Held::default(), |a, h| Held {
        fds: a.fds.max(h.fds),
        rss_kib: a.rss_kib.max(h.rss_kib),
    })
}

/// The sample of `name` whose labels contain `label` (such as `reason="header_timeout"`).
fn labelled(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The status `GET /readyz` answers.
async fn readyz(http_url: &str) -> anyhow::Result<Option<u16>> {
    let addr = http_url.trim_start_matches("http://");
    let res = http_exchange(
        addr,
        b"GET /readyz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await?;
    Ok(res.status)
}

/// Sets the open-files limit of a running process (util-linux `prlimit`).
fn set_nofile(pid: u32, limit: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .context("running prlimit (util-linux) is required by this test")?;
    ensure!(
        status.success(),
        "prlimit --pid {pid} --nofile={limit}: {status}"
    );
    Ok(())
}

async fn scrape(http_url: &str) -> anyhow::Result<String> {
    let addr = http_url.trim_start_matches("http://");
    let res = http_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await?;
    ensure!(res.status == Some(200), "GET /metrics: {}", res.head);
    Ok(String::from_utf8_lossy(&res.body).into_owned())
}

/// 1,200 half-sent requests against the gateway (4 addresses) and 600 against placement's HTTP
/// listener (2 addresses): each listener holds at most `--max-pending-per-address` of them per
/// address, closes the rest at once and the held ones at `--http-header-timeout-ms`; the
/// targets' descriptors stay within that bound, and a client still assigns, connects and gets
/// its events meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_at_the_header_timeout_and_bounded_per_address()
-> anyhow::Result<()> {
    let limits = [
        "--http-header-timeout-ms".to_owned(),
        HEADER_TIMEOUT_MS.to_string(),
        "--max-pending-per-address".to_owned(),
        MAX_PENDING_PER_ADDRESS.to_string(),
    ];
    let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, &limits, &limits)?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let (gw_pid, pl_pid) = (gateway.service().pid(), cluster.placement.service().pid());
    let (gw_before, pl_before) = (held(gw_pid)?, held(pl_pid)?);

    let gw_sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let pl_sources = ["127.0.0.6", "127.0.0.7"];
    let per_source = 300;
    let hold = Duration::from_secs(20);
    let mut at_gateway = SlowRequests::start(
        gateway.url().trim_start_matches("http://"),
        &gw_sources,
        per_source,
        hold,
        Attack::HalfSentHeaders,
    )?;
    let mut at_placement = SlowRequests::start(
        cluster.placement.http_url().trim_start_matches("http://"),
        &pl_sources,
        per_source,
        hold,
        Attack::HalfSentHeaders,
    )?;
    at_gateway.opened(gw_sources.len() * per_source).await?;
    at_placement.opened(pl_sources.len() * per_source).await?;
    let mut samples = vec![(held(gw_pid)?, held(pl_pid)?)];

    // While the attack holds what it can: an official client assigns through placement,
    // connects to the gateway and gets its own published event back.
    let mut js = calm_dials(cluster.placement.http_url()).await?;
    js.connected("calm", WAIT).await?;
    samples.push((held(gw_pid)?, held(pl_pid)?));
    calm_gets_its_event(&mut js).await?;
    samples.push((held(gw_pid)?, held(pl_pid)?));

    let bound = Duration::from_millis(HEADER_TIMEOUT_MS) + CLOSE_SLACK;
    for (target, attacker) in [("gateway", at_gateway), ("placement", at_placement)] {
        let what = format!("half-sent requests to {target}");
        let (closed, latest) = attacker
            .all_closed_within(hold + WAIT, bound, &what)
            .await?;
        // For the figures in docs/RELIABILITY.md: how many were closed in each second.
        let mut by_second = [0usize; 6];
        for s in &closed {
            by_second[(*s as usize).min(5)] += 1;
        }
        eprintln!(
            "{target}: {} half-sent requests closed, latest after {latest} s, per second {by_second:?}",
            closed.len()
        );
    }

    // What the targets held at the peak of the attack.
    let gw_peak = peak(&samples.iter().map(|s| s.0).collect::<Vec<_>>());
    let pl_peak = peak(&samples.iter().map(|s| s.1).collect::<Vec<_>>());
    eprintln!(
        "gateway before {gw_before:?}, peak {gw_peak:?}; placement before {pl_before:?}, peak {pl_peak:?}"
    );
    // Per address at most MAX_PENDING_PER_ADDRESS; 32 descriptors for the client's own
    // connections, the report stream and the metrics scrapes.
    for (target, before, peak, sources) in [
        ("gateway", gw_before, gw_peak, gw_sources.len()),
        ("placement", pl_before, pl_peak, pl_sources.len()),
    ] {
        let fd_bound = before.fds + sources * MAX_PENDING_PER_ADDRESS + 32;
        ensure!(
            peak.fds <= fd_bound,
            "{target} held {} descriptors (bound {fd_bound})",
            peak.fds
        );
        // 21.6 KiB per held request was measured without a bound; 64 KiB each is generous.
        let rss_bound = before.rss_kib + (sources * MAX_PENDING_PER_ADDRESS) as u64 * 64;
        ensure!(
            peak.rss_kib <= rss_bound,
            "{target} grew to {} KiB (bound {rss_bound} KiB)",
            peak.rss_kib
        );
    }

    // Both listeners say what they did, by reason.
    for (target, url) in [
        ("gateway", gateway.url()),
        ("placement", cluster.placement.http_url()),
    ] {
        let text = scrape(url).await?;
        let name = format!("switchyard_{target}_http_connections_closed_total");
        for reason in ["pending_per_address", "header_timeout"] {
            let n = labelled(&text, &name, &format!("reason=\"{reason}\""));
            ensure!(n > 0.0, "{name}{{reason={reason}}} is {n}");
        }
    }
    js.shutdown().await
}

/// A flood of half-sent requests from many addresses, each under its own per-address bound:
/// the listener's bound (`--max-pending-connections`) holds, what is over it is closed at
/// accept, every held one at the header timeout, and a client that is turned away while the
/// listener is full gets in by its own reconnection once the held requests time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_is_bounded_per_listener() -> anyhow::Result<()> {
    const MAX_PENDING: usize = 200;
    let args = [
        "--http-header-timeout-ms".to_owned(),
        HEADER_TIMEOUT_MS.to_string(),
        "--max-pending-per-address".to_owned(),
        MAX_PENDING_PER_ADDRESS.to_string(),
        "--max-pending-connections".to_owned(),
        MAX_PENDING.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, &args)?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let pid = gateway.service().pid();
    let before = held(pid)?;

    // 8 addresses, each below its own bound: only the listener's bound can hold them.
    let sources: Vec<String> = (10..18).map(|i| format!("127.0.0.{i}")).collect();
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let per_source = MAX_PENDING_PER_ADDRESS - 10;
    let hold = Duration::from_secs(20);
    let mut attacker = SlowRequests::start(
        gateway.url().trim_start_matches("http://"),
        &sources,
        per_source,
        hold,
        Attack::HalfSentHeaders,
    )?;
    attacker.opened(sources.len() * per_source).await?;
    let mut samples = vec![held(pid)?];

    let mut js = calm_dials(cluster.placement.http_url()).await?;
    // While the listener is full the client's first attempt may be closed at accept; its own
    // reconnection gets in once the held requests have timed out.
    js.wait_event("calm to connect, by its own retries", WAIT, |e| {
        e["id"] == "calm" && e["event"] == "connected"
    })
    .await?;
    samples.push(held(pid)?);
    calm_gets_its_event(&mut js).await?;

    let bound = Duration::from_millis(HEADER_TIMEOUT_MS) + CLOSE_SLACK;
    let (closed, latest) = attacker
        .all_closed_within(hold + WAIT, bound, "half-sent requests")
        .await?;
    let peak = peak(&samples);
    eprintln!(
        "flood from {} addresses: {} closed, latest after {latest} s; gateway before {before:?}, peak {peak:?}",
        sources.len(),
        closed.len()
    );
    let fd_bound = before.fds + MAX_PENDING + 32;
    ensure!(
        peak.fds <= fd_bound,
        "held {} descriptors (bound {fd_bound})",
        peak.fds
    );
    let text = scrape(gateway.url()).await?;
    let name = "switchyard_gateway_http_connections_closed_total";
    // How many were turned away at accept depends on how fast the flood arrived against the
    // header timeout freeing slots; that the bound turned some away, and that every request of
    // the flood was either turned away or held and timed out, does not.
    let over = labelled(&text, name, "reason=\"pending_listener\"");
    let timed_out = labelled(&text, name, "reason=\"header_timeout\"");
    ensure!(over > 0.0, "{name}{{reason=pending_listener}} is {over}");
    let flood = (sources.len() * per_source) as f64;
    ensure!(
        over + timed_out >= flood,
        "{name}: {over} pending_listener + {timed_out} header_timeout, want at least {flood}"
    );
    js.shutdown().await
}

/// Bodies that trickle in: each of the attacker's polling POSTs announces 50,000 bytes and
/// sends 10. The gateway reads bodies at `--http-min-body-rate` (1 KiB/s, over windows of the
/// header timeout) at least, so it cuts every one about one window after its header, holds a
/// bounded amount meanwhile, and serves a client through placement all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_trickle_in_are_cut_at_the_minimum_rate() -> anyhow::Result<()> {
    const PER_SOURCE: usize = 50;
    let args = [
        "--http-header-timeout-ms".to_owned(),
        HEADER_TIMEOUT_MS.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, &args)?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let pid = gateway.service().pid();
    let before = held(pid)?;

    let sources = ["127.0.0.8", "127.0.0.9"];
    let hold = Duration::from_secs(20);
    let mut attacker = SlowRequests::start(
        gateway.url().trim_start_matches("http://"),
        &sources,
        PER_SOURCE,
        hold,
        Attack::SlowBody,
    )?;
    attacker.opened(sources.len() * PER_SOURCE).await?;
    let mut samples = vec![held(pid)?];

    let mut js = calm_dials(cluster.placement.http_url()).await?;
    js.connected("calm", WAIT).await?;
    calm_gets_its_event(&mut js).await?;
    samples.push(held(pid)?);

    // Cut when the first window ends without its bytes; a second window of slack for a
    // handler that started reading late.
    let bound = 2 * Duration::from_millis(HEADER_TIMEOUT_MS) + CLOSE_SLACK;
    let (closed, latest) = attacker
        .all_closed_within(hold + WAIT, bound, "trickling bodies")
        .await?;
    let peak = peak(&samples);
    eprintln!(
        "trickling bodies: {} cut, latest after {latest} s; gateway before {before:?}, peak {peak:?}",
        closed.len()
    );
    let connections = sources.len() * PER_SOURCE;
    let fd_bound = before.fds + connections + 32;
    ensure!(
        peak.fds <= fd_bound,
        "held {} descriptors (bound {fd_bound})",
        peak.fds
    );
    let rss_bound = before.rss_kib + connections as u64 * 64;
    ensure!(
        peak.rss_kib <= rss_bound,
        "grew to {} KiB (bound {rss_bound} KiB)",
        peak.rss_kib
    );
    let text = scrape(gateway.url()).await?;
    let name = "switchyard_gateway_http_connections_closed_total";
    let cut = labelled(&text, name, "reason=\"body_too_slow\"");
    ensure!(
        cut >= connections as f64,
        "{name}{{reason=body_too_slow}} is {cut}, want {connections}"
    );
    js.shutdown().await
}

/// A gateway whose descriptors run low reports itself full before `accept` fails: placement
/// stops assigning it, `/readyz` says 503, and a client still gets a working gateway. Pushed
/// past its limit, its accept errors are counted; once the descriptors are back, it is ready
/// and assigned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_short_of_descriptors_reports_full_and_placement_sends_clients_elsewhere()
-> anyhow::Result<()> {
    const LIMIT: usize = 160;
    const RESERVE: usize = 64;
    // Held half-sent requests stay until the test lets them go.
    let cluster = Cluster::start(2, &["--http-header-timeout-ms", "120000"])?;
    cluster.wait_registered(WAIT).await?;
    let (starved, healthy) = (&cluster.gateways[0], &cluster.gateways[1]);
    let pid = starved.service().pid();
    set_nofile(pid, LIMIT)?;
    let baseline = held(pid)?.fds;
    ensure!(
        baseline + 16 < LIMIT - RESERVE,
        "the gateway already holds {baseline} descriptors"
    );

    // Into the reserve, not past the limit: the gateway still accepts, and says it is full.
    let fill = LIMIT - RESERVE - baseline + 16;
    let hold = Duration::from_secs(120);
    let mut filler = SlowRequests::start(
        starved.url().trim_start_matches("http://"),
        &["127.0.0.2"],
        fill,
        hold,
        Attack::HalfSentHeaders,
    )?;
    filler.opened(fill).await?;
    eventually(
        "the starved gateway to answer /readyz 503",
        WAIT,
        async || {
            let status = readyz(starved.url()).await?;
            ensure!(status == Some(503), "/readyz answered {status:?}");
            Ok(())
        },
    )
    .await?;
    // Its next report reaches placement within an interval: then nothing more goes to it.
    eventually(
        "placement to stop assigning the full gateway",
        WAIT,
        async || {
            for _ in 0..6 {
                let a = assign(cluster.placement.http_url(), "/").await?;
                ensure!(a.node_id == healthy.node_id(), "assigned {}", a.node_id);
            }
            Ok(())
        },
    )
    .await?;
    let mut js = calm_dials(cluster.placement.http_url()).await?;
    let connected = js.connected("calm", WAIT).await?;
    ensure!(
        connected["node_id"] == healthy.node_id(),
        "the client was sent to {connected}"
    );
    calm_gets_its_event(&mut js).await?;

    // Past the limit: `accept` fails with EMFILE until descriptors come back.
    let flood = SlowRequests::start(
        starved.url().trim_start_matches("http://"),
        &["127.0.0.3"],
        RESERVE,
        hold,
        Attack::HalfSentHeaders,
    )?;
    eventually("the starved gateway to reach its limit", WAIT, async || {
        let fds = held(pid)?.fds;
        ensure!(fds >= LIMIT, "holds {fds} of {LIMIT}");
        Ok(())
    })
    .await?;
    drop((filler, flood));
    eventually("the gateway to be ready again", WAIT, async || {
        let status = readyz(starved.url()).await?;
        ensure!(status == Some(200), "/readyz answered {status:?}");
        Ok(())
    })
    .await?;
    let text = scrape(starved.url()).await?;
    let name = "switchyard_gateway_http_accept_errors_total";
    let n = labelled(&text, name, "kind=\"fd_limit\"");
    ensure!(n > 0.0, "{name}{{kind=fd_limit}} is {n}");
    eventually("placement to assign the gateway again", WAIT, async || {
        let a = assign(cluster.placement.http_url(), "/").await?;
        ensure!(a.node_id == starved.node_id(), "assigned {}", a.node_id);
        Ok(())
    })
    .await?;
    js.shutdown().await
}

/// Engine.IO sessions that never finish are closed at the protocol's own timeouts and cost
/// nothing after: websockets that answer pings but never CONNECT a namespace (connect
/// timeout), websockets that never answer a ping (ping interval + timeout), and polling
/// sessions never polled again (both). The gateway's descriptors return to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_sessions_that_never_finish_are_closed_at_the_protocol_timeouts()
-> anyhow::Result<()> {
    const PING_INTERVAL_MS: u64 = 500;
    const PING_TIMEOUT_MS: u64 = 500;
    const CONNECT_TIMEOUT_MS: u64 = 1_500;
    const EACH: usize = 30;
    let args = [
        "--ping-interval-ms".to_owned(),
        PING_INTERVAL_MS.to_string(),
        "--ping-timeout-ms".to_owned(),
        PING_TIMEOUT_MS.to_string(),
        "--connect-timeout-ms".to_owned(),
        CONNECT_TIMEOUT_MS.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, &args)?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let pid = gateway.service().pid();
    let before = held(pid)?.fds;
    let started = std::time::Instant::now();

    // Polling sessions: opened once, never polled again.
    let addr = gateway.url().trim_start_matches("http://").to_owned();
    let mut sids = Vec::new();
    for _ in 0..EACH {
        let res = http_exchange(
            &addr,
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await?;
        let body = String::from_utf8_lossy(&res.body).into_owned();
        let sid = body
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .with_context(|| format!("no sid in the OPEN packet: {body}"))?
            .to_owned();
        sids.push(sid);
    }
    // Websockets that answer pings but never CONNECT, and websockets that stay silent.
    let mut polite = Vec::new();
    let mut silent = Vec::new();
    for _ in 0..EACH {
        polite.push(switchyard_testkit::raw::RawSocket::open(gateway.url()).await?);
        silent.push(switchyard_testkit::raw::RawSocket::open(gateway.url()).await?);
    }
    let during = held(pid)?.fds;
    ensure!(
        during >= before + 2 * EACH,
        "the websockets are not held: {during} descriptors"
    );

    let closed_by = |sock: switchyard_testkit::raw::RawSocket, answer_pings: bool| async move {
        let mut sock = sock;
        if answer_pings {
            // `next_text` answers pings; only the connect timeout can end it.
            while sock.next_text().await?.is_some() {}
        } else {
            use futures::StreamExt;
            use tokio_tungstenite::tungstenite::Message;
            loop {
                match tokio::time::timeout(WAIT, sock.ws.next()).await? {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) if t.as_str() == "1" => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        anyhow::Ok(started.elapsed())
    };
    let polite = futures::future::try_join_all(polite.into_iter().map(|s| closed_by(s, true)));
    let silent = futures::future::try_join_all(silent.into_iter().map(|s| closed_by(s, false)));
    let (polite, silent) = tokio::try_join!(polite, silent)?;
    let latest = |v: &[Duration]| v.iter().copied().max().unwrap_or_default();
    let connect_bound = Duration::from_millis(CONNECT_TIMEOUT_MS) + CLOSE_SLACK;
    let ping_bound = Duration::from_millis(PING_INTERVAL_MS + PING_TIMEOUT_MS) + CLOSE_SLACK;
    ensure!(
        latest(&polite) <= connect_bound,
        "a websocket without CONNECT lived {:?} (bound {connect_bound:?})",
        latest(&polite)
    );
    ensure!(
        latest(&silent) <= ping_bound,
        "a websocket that never answers pings lived {:?} (bound {ping_bound:?})",
        latest(&silent)
    );
    eprintln!(
        "no CONNECT: closed by {:?}; silent: closed by {:?}",
        latest(&polite),
        latest(&silent)
    );

    // The polling sessions are gone: their sid is unknown now.
    for sid in &sids {
        let res = http_exchange(
            &addr,
            format!(
                "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            WAIT,
        )
        .await?;
        ensure!(
            res.status == Some(400),
            "polling session {sid} still answers {:?} after {:?}",
            res.status,
            started.elapsed()
        );
    }
    eventually(
        "the gateway to give the descriptors back",
        WAIT,
        async || {
            let now = held(pid)?.fds;
            ensure!(now <= before + 2, "holds {now}, {before} before");
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// One host opens 200 Engine.IO WebSocket sessions from one address and never CONNECTs a
/// namespace (each would be held until `--connect-timeout-ms`, 60 s here; the ping timeout is
/// as long, since a session that does not answer the ping sent at its open ends at the ping
/// timeout, and an attacker answering pings would be held until the connect timeout anyway).
/// The gateway holds at
/// most `--max-connections-per-address` (50) of them, closes the rest at accept (counted as
/// `connections_per_address`), its descriptors stay within that bound, a client from another
/// address still assigns, connects and gets its event, and the slots come back when the held
/// WebSockets close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_never_connect_are_bounded_per_address() -> anyhow::Result<()> {
    const MAX_CONNECTIONS_PER_ADDRESS: usize = 50;
    const SESSIONS: usize = 200;
    let args = [
        "--max-connections-per-address".to_owned(),
        MAX_CONNECTIONS_PER_ADDRESS.to_string(),
        "--connect-timeout-ms".to_owned(),
        "60000".to_owned(),
        "--ping-timeout-ms".to_owned(),
        "60000".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(1, &args)?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let target = gateway.url().trim_start_matches("http://");
    let pid = gateway.service().pid();
    let before = held(pid)?;

    // Well inside the connect and ping timeouts: nothing but the bound can end a session while
    // the attacker holds them.
    let hold = Duration::from_secs(20);
    let source = "127.0.0.20";
    let started = std::time::Instant::now();
    let mut attacker = SlowRequests::start(target, &[source], SESSIONS, hold, Attack::Websocket)?;
    let report = attacker.next(WAIT).await?;
    let opened = report["opened"].as_u64().context("opened")? as usize;
    let refused = report["refused"].as_u64().context("refused")? as usize;
    let refused_latest = report["refused_after"]
        .as_array()
        .context("refused_after")?
        .iter()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    ensure!(
        opened <= MAX_CONNECTIONS_PER_ADDRESS,
        "{opened} websockets upgraded and held from one address (bound {MAX_CONNECTIONS_PER_ADDRESS}): {report}"
    );
    ensure!(
        opened == MAX_CONNECTIONS_PER_ADDRESS && refused == SESSIONS - opened,
        "attacker: {report}"
    );
    let mut samples = vec![held(pid)?];

    // The listener says why it closed the rest.
    let text = scrape(gateway.url()).await?;
    let name = "switchyard_gateway_http_connections_closed_total";
    let counted = labelled(&text, name, "reason=\"connections_per_address\"");
    ensure!(
        counted == refused as f64,
        "{name}{{reason=connections_per_address}} is {counted}, {refused} refused"
    );

    // While the 50 are held: an official client (from 127.0.0.1) assigns through placement,
    // connects and gets its own event.
    let mut js = calm_dials(cluster.placement.http_url()).await?;
    js.connected("calm", WAIT).await?;
    samples.push(held(pid)?);
    calm_gets_its_event(&mut js).await?;
    samples.push(held(pid)?);
    ensure!(
        started.elapsed() < hold,
        "the client check outlasted the attacker's hold ({:?})",
        started.elapsed()
    );

    // The held sessions stayed until the attacker let go: nothing else would have ended them.
    let last = attacker.next(hold + WAIT).await?;
    ensure!(
        last["still_open"] == json!(opened),
        "the held websockets were closed early: {last}"
    );
    drop(attacker);
    let peak = peak(&samples);
    eprintln!(
        "{SESSIONS} websockets without CONNECT from one address: {opened} upgraded and held, {refused} closed at accept (the last {refused_latest:.3} s after its connect), counted {counted}; gateway before {before:?}, peak {peak:?}"
    );
    let fd_bound = before.fds + MAX_CONNECTIONS_PER_ADDRESS + 32;
    ensure!(
        peak.fds <= fd_bound,
        "held {} descriptors (bound {fd_bound})",
        peak.fds
    );

    // The attacker's websockets are closed: their slots are back, the address gets its 50 again.
    eventually("the address to get its slots back", WAIT, async || {
        let mut again = SlowRequests::start(
            target,
            &[source],
            MAX_CONNECTIONS_PER_ADDRESS,
            Duration::ZERO,
            Attack::Websocket,
        )?;
        let report = again.next(WAIT).await?;
        ensure!(
            report["opened"] == json!(MAX_CONNECTIONS_PER_ADDRESS),
            "again: {report}"
        );
        Ok(())
    })
    .await?;
    js.shutdown().await
}

/// A client that never reads: it publishes 1,000 events of 64 KiB to a room it is in (each
/// comes back to it, with an ack) and reads nothing. What the gateway holds for it is bounded
/// by `--max-buffered-packets` (emits to a full socket fail), not by what it was sent: its
/// memory stays within a fixed bound while 128 MiB were addressed to that socket, and a
/// well-behaved client still gets its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_the_gateway_a_bounded_amount() -> anyhow::Result<()> {
    const PUBLISHES: usize = 1_000;
    const SIZE: usize = 64 * 1024;
    let cluster = Cluster::start(1, &["--max-buffered-packets", "16"])?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let pid = gateway.service().pid();
    let before = held(pid)?;

    let mut deaf =
        switchyard_testkit::raw::RawSocket::connected(cluster.placement.http_url()).await?;
    let ack = deaf.call("join", &[json!("news")]).await?;
    ensure!(ack["ok"] == true, "join: {ack}");
    let data = "x".repeat(SIZE);
    for _ in 0..PUBLISHES {
        deaf.emit(
            "publish",
            &[json!({"room": "news", "event": "tick", "data": data})],
        )
        .await?;
    }
    let mut peak_rss = held(pid)?.rss_kib;
    eventually("the gateway to handle every publish", WAIT, async || {
        peak_rss = peak_rss.max(held(pid)?.rss_kib);
        let text = scrape(gateway.url()).await?;
        let n = labelled(
            &text,
            "switchyard_gateway_events_total",
            "event=\"publish\"",
        );
        ensure!(n >= PUBLISHES as f64, "{n} publishes handled");
        Ok(())
    })
    .await?;
    peak_rss = peak_rss.max(held(pid)?.rss_kib);
    let grown = peak_rss.saturating_sub(before.rss_kib);
    eprintln!(
        "never-reading client: gateway RSS {} KiB before, peak {peak_rss} KiB (+{grown} KiB) for {} MiB addressed to it",
        before.rss_kib,
        2 * PUBLISHES * SIZE / (1024 * 1024)
    );
    // 16 queued packets of 64 KiB, socket and allocator slack: far below the 128 MiB sent.
    ensure!(
        grown <= 24 * 1024,
        "the gateway grew by {grown} KiB for a client that never reads"
    );

    let mut js = calm_dials(cluster.placement.http_url()).await?;
    js.connected("calm", WAIT).await?;
    calm_gets_its_event(&mut js).await?;
    drop(deaf);
    js.shutdown().await
}

/// One session floods the gateway with Engine.IO pongs nobody asked for, then with CONNECTs
/// for namespaces that do not exist and for `/` with a bad token, reading nothing. No CONNECT
/// is accepted, nothing accumulates (the gateway's memory stays within a fixed bound), and a
/// well-behaved client still gets its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_namespace_connect_floods_on_one_session_are_bounded() -> anyhow::Result<()> {
    const PONGS: usize = 20_000;
    const CONNECTS: usize = 2_000;
    let cluster = Cluster::start(1, &[])?;
    cluster.wait_registered(WAIT).await?;
    let gateway = &cluster.gateways[0];
    let pid = gateway.service().pid();
    let before = held(pid)?;

    let mut raw = switchyard_testkit::raw::RawSocket::open(gateway.url()).await?;
    let mut sent = 0;
    'flood: {
        for _ in 0..PONGS {
            if raw.send("3").await.is_err() {
                break 'flood;
            }
        }
        for i in 0..CONNECTS {
            let unknown = raw.send(&format!("40/nope-{i},")).await;
            let bad_token = raw.send(r#"40{"token":"bad"}"#).await;
            if unknown.is_err() || bad_token.is_err() {
                break 'flood;
            }
            sent += 2;
        }
    }
    // Its answers are not read (a client that does not read loses them: see above); what it
    // did is in the gateway's count of CONNECTs.
    let scraped = eventually("the CONNECTs to be refused", WAIT, async || {
        let text = scrape(gateway.url()).await?;
        let name = "switchyard_gateway_connects_total";
        let refused = labelled(&text, name, "outcome=\"refused\"");
        ensure!(refused > 0.0, "{refused} refused");
        Ok(text)
    })
    .await?;
    drop(raw);
    let name = "switchyard_gateway_connects_total";
    let accepted = labelled(&scraped, name, "outcome=\"accepted\"");
    ensure!(accepted == 0.0, "{accepted} CONNECTs accepted");
    eprintln!(
        "{PONGS} pongs, then {sent} CONNECTs sent: {} refused when first scraped",
        labelled(&scraped, name, "outcome=\"refused\"")
    );
    let after = held(pid)?;
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    eprintln!(
        "gateway RSS {} KiB before, {} KiB after (+{grown} KiB)",
        before.rss_kib, after.rss_kib
    );
    ensure!(grown <= 16 * 1024, "the gateway grew by {grown} KiB");
    ensure!(
        readyz(gateway.url()).await? == Some(200),
        "the gateway is not ready"
    );

    let mut js = calm_dials(cluster.placement.http_url()).await?;
    js.connected("calm", WAIT).await?;
    calm_gets_its_event(&mut js).await?;
    js.shutdown().await
}
