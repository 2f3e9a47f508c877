//! The `resume` scenario: what subscribers miss or get twice when their server dies mid-stream.
//!
//! Systems (one run each, in the same process run, alternating nothing: the figures are counts,
//! not timings):
//! - `switchyard`: private Redis, placement, one relay (history on, its defaults), three
//!   gateways; subscribers use `clients/js/src/switchyard.mjs`, which re-assigns after a loss
//!   and sends `resume({epoch, offset, rooms})` by itself.
//! - `node_redis_streams`: three Node processes of `bench/peers/node/server.mjs` with
//!   `ADAPTER=redis-streams` (socket.io 4.8 + `@socket.io/redis-streams-adapter` 0.2,
//!   connection state recovery on) on a private Redis; subscribers use the official
//!   `socket.io-client` and its own recovery (`socket.recovered`), re-joining the room when a
//!   reconnect did not recover. A reconnect attempt goes to the next server's URL, as a load
//!   balancer in front of the cluster would send it.
//!
//! Per run, `subscribers` clients (one Node process, `bench/peers/node/resume-subscribers.mjs`)
//! join room `resume`; a publisher on a server that survives sends `events` numbered events
//! (`{"s": n, "t": ns}`) at `rate` per second, each after the previous one's ack, so stamping
//! order is `n` order. When `kill_at` events have been sent, the server with the most
//! subscribers (other than the publisher's) is killed with SIGKILL. After the last publish the
//! run waits until every subscriber has the last event or deliveries stop, then counts per
//! subscriber: `missed` (numbers never received), `duplicated` (receptions of a number already
//! received) and `out_of_order` (first receptions of a number below one received earlier).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::loadgen::{BENCH_EVENT, Client, Clock, Shared, Stamp, Target};
use crate::peers::{
    PeerCluster, SwitchyardCluster, bench_dir, ensure_node_peer_installed, ensure_npm_installed,
    ensure_profile_env,
};

const ROOM: &str = "resume";

/// How long the subscribers may take to connect and join, and the stream to drain at the end.
const SETUP_LIMIT: Duration = Duration::from_secs(120);
/// Deliveries are over when none arrived for this long after the last publish.
const QUIET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Subscribers in the one room, spread over three servers.
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    /// Numbered events published.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Publish rate, events per second (steady).
    #[arg(long, default_value_t = 250)]
    rate: u64,
    /// Kill one server after this many events were published; default 40% of `events`.
    #[arg(long)]
    kill_at: Option<u64>,
    /// Comma list of systems: switchyard, node_redis_streams.
    #[arg(long, default_value = "switchyard,node_redis_streams")]
    systems: String,
    /// Where to write the results; default `target/bench/resume.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Switchyard,
    NodeRedisStreams,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Switchyard => "switchyard",
            System::NodeRedisStreams => "node_redis_streams",
        }
    }
}

/// One subscriber's counts against the expected `0..events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    missed: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl Tally {
    /// Counts `seqs` (in arrival order) against `0..events`; numbers outside it are ignored.
    fn of(seqs: &[u64], events: u64) -> Tally {
        let mut seen = vec![false; usize::try_from(events).unwrap_or(usize::MAX)];
        let mut tally = Tally::default();
        let mut highest: Option<u64> = None;
        let mut distinct = 0u64;
        for &s in seqs {
            let Some(slot) = usize::try_from(s).ok().and_then(|i| seen.get_mut(i)) else {
                continue;
            };
            if *slot {
                tally.duplicated += 1;
                continue;
            }
            *slot = true;
            distinct += 1;
            if highest.is_some_and(|h| s < h) {
                tally.out_of_order += 1;
            }
            highest = highest.max(Some(s));
        }
        tally.missed = events - distinct;
        tally
    }

    fn exact(&self) -> bool {
        *self == Tally::default()
    }
}

/// The runs of consecutive numbers of `0..events` missing from `seqs`, as `first..=last`.
fn missing_ranges(seqs: &[u64], events: u64) -> Vec<(u64, u64)> {
    let mut seen = vec![false; usize::try_from(events).unwrap_or(usize::MAX)];
    for &s in seqs {
        if let Some(slot) = usize::try_from(s).ok().and_then(|i| seen.get_mut(i)) {
            *slot = true;
        }
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (n, _) in (0u64..).zip(&seen).filter(|(_, seen)| !**seen) {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => ranges.push((n, n)),
        }
    }
    ranges
}

/// At most this many distinct gaps are kept in the report.
const MAX_GAPS: usize = 20;

/// What one system's run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub subscribers: usize,
    /// Subscribers that were connected to the killed server.
    pub affected: usize,
    /// Subscribers that ended with exactly `0..events`, each once, in order.
    pub exact: usize,
    /// Totals over every subscriber.
    pub missed: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Subscribers with at least one missed / duplicated event.
    pub subscribers_missing: usize,
    pub subscribers_with_duplicates: usize,
    /// The most events one subscriber missed.
    pub max_missed: u64,
    /// Reconnects whose resume recovered (`resumed.recovered` / `socket.recovered`), and those
    /// that did not (the subscriber re-joined and lost what was sent meanwhile).
    pub recovered: u64,
    pub not_recovered: u64,
    /// Seconds the publisher took for every event (the target is `events / rate`).
    pub publish_secs: f64,
    /// Where events went missing: `"first..=last"` → subscribers with exactly that gap (the
    /// first [`MAX_GAPS`] distinct gaps). Shows whether losses sit at the kill or elsewhere.
    pub gaps: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    subscribers: usize,
    events: u64,
    rate: u64,
    kill_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    switchyard: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_redis_streams: Option<Outcome>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if let Some(code) = ensure_profile_env()? {
        std::process::exit(code);
    }
    ensure!(args.subscribers > 0 && args.events > 0 && args.rate > 0);
    let mut systems = Vec::new();
    for s in args
        .systems
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        systems.push(match s {
            "switchyard" => System::Switchyard,
            "node_redis_streams" => System::NodeRedisStreams,
            other => bail!("unknown system {other:?} (switchyard, node_redis_streams)"),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, systems))
}

async fn run(args: Args, systems: Vec<System>) -> anyhow::Result<()> {
    let kill_at = args.kill_at.unwrap_or(args.events * 2 / 5).min(args.events);
    let mut report = Report {
        subscribers: args.subscribers,
        events: args.events,
        rate: args.rate,
        kill_at,
        switchyard: None,
        node_redis_streams: None,
    };
    for system in systems {
        eprintln!(
            "resume: {}, {} subscribers, {} events at {}/s, kill after {kill_at}",
            system.name(),
            args.subscribers,
            args.events,
            args.rate
        );
        let outcome = run_once(&args, kill_at, system)
            .await
            .with_context(|| system.name())?;
        eprintln!("  {outcome:?}");
        match system {
            System::Switchyard => report.switchyard = Some(outcome),
            System::NodeRedisStreams => report.node_redis_streams = Some(outcome),
        }
    }
    print_table(&report);
    let out = match &args.out {
        Some(p) => p.clone(),
        None => bench_dir()?.join("resume.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "\nresume: {} subscribers in one room over 3 servers, {} events at {}/s, one server \
         killed (SIGKILL) after {}",
        r.subscribers, r.events, r.rate, r.kill_at
    );
    println!(
        "{:<20} {:>8} {:>6} {:>8} {:>10} {:>12} {:>10} {:>13} {:>10}",
        "system",
        "affected",
        "exact",
        "missed",
        "duplicated",
        "out_of_order",
        "recovered",
        "not_recovered",
        "max_missed"
    );
    for (name, o) in [
        ("switchyard", &r.switchyard),
        ("node_redis_streams", &r.node_redis_streams),
    ] {
        if let Some(o) = o {
            println!(
                "{:<20} {:>8} {:>6} {:>8} {:>10} {:>12} {:>10} {:>13} {:>10}",
                name,
                o.affected,
                o.exact,
                o.missed,
                o.duplicated,
                o.out_of_order,
                o.recovered,
                o.not_recovered,
                o.max_missed
            );
        }
    }
}

async fn run_once(args: &Args, kill_at: u64, system: System) -> anyhow::Result<Outcome> {
    let clock = Clock::new();
    let shared = Arc::new(Shared::default());
    match system {
        System::Switchyard => {
            let cluster = tokio::task::spawn_blocking(|| SwitchyardCluster::start(3, 1)).await??;
            cluster.wait_all_registered().await?;
            let placement = cluster.placement.http_url().to_owned();
            let subs =
                Subscribers::start(&["--system", "switchyard", "--placement", &placement], args)
                    .await?;
            let a = switchyard_testkit::assign::assign(&placement, "/").await?;
            let target = Target {
                url: a.url.trim_end_matches('/').to_owned(),
                token: Some(a.token),
            };
            let publisher = Client::connect(&target, None, clock, shared).await?;
            let victim = cluster
                .gateways
                .iter()
                .filter(|g| g.url().trim_end_matches('/') != target.url)
                .max_by_key(|g| subs.on(g.node_id()))
                .context("no gateway besides the publisher's")?;
            let kill = || victim.kill();
            exercise(
                args,
                kill_at,
                subs,
                &publisher,
                clock,
                victim.node_id(),
                kill,
            )
            .await
        }
        System::NodeRedisStreams => {
            let cluster =
                tokio::task::spawn_blocking(|| PeerCluster::node_redis_streams(3)).await??;
            let urls = cluster.urls().to_vec();
            let (Some(publisher_url), Some(victim_url), Some(victim)) =
                (urls.first(), urls.get(1), cluster.processes.get(1))
            else {
                bail!("the Node peer started {} processes, want 3", urls.len());
            };
            let subs =
                Subscribers::start(&["--system", "socketio", "--urls", &urls.join(",")], args)
                    .await?;
            let target = Target {
                url: publisher_url.clone(),
                token: None,
            };
            let publisher = Client::connect(&target, None, clock, shared).await?;
            let kill = || victim.kill();
            exercise(args, kill_at, subs, &publisher, clock, victim_url, kill).await
        }
    }
}

/// Publishes `0..events` at the steady rate (each after the previous ack), runs `kill` once
/// `kill_at` were sent, waits for the deliveries to end and counts them.
async fn exercise(
    args: &Args,
    kill_at: u64,
    mut subs: Subscribers,
    publisher: &Client,
    clock: Clock,
    victim: &str,
    kill: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let affected = subs.on(victim);
    ensure!(
        affected > 0,
        "no subscriber on the server to kill ({victim}): {:?}",
        subs.servers
    );
    eprintln!("  subscribers per server {:?}", subs.servers);
    // Let the joins settle everywhere (remote adapters, relay links).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut kill = Some(kill);
    let start = tokio::time::Instant::now();
    for n in 0..args.events {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / args.rate as f64))
            .await;
        if n == kill_at
            && let Some(kill) = kill.take()
        {
            kill().with_context(|| format!("killing {victim}"))?;
            eprintln!("  killed {victim} after {n} events");
        }
        let body = json!({"room": ROOM, "event": BENCH_EVENT,
                          "data": Stamp { s: n, t: clock.now_ns() }});
        let ack = publisher
            .emit_with_ack("publish", &[body], Duration::from_secs(30))
            .await
            .with_context(|| format!("publishing {n}"))?;
        ensure!(ack[0]["ok"] == true, "publish {n} refused: {ack}");
    }
    let publish_secs = start.elapsed().as_secs_f64();
    subs.wait_done().await?;
    let records = subs.report().await?;

    let mut outcome = Outcome {
        subscribers: records.len(),
        affected,
        publish_secs,
        ..Outcome::default()
    };
    for r in &records {
        let t = Tally::of(&r.seqs, args.events);
        outcome.exact += usize::from(t.exact());
        outcome.missed += t.missed;
        outcome.duplicated += t.duplicated;
        outcome.out_of_order += t.out_of_order;
        outcome.subscribers_missing += usize::from(t.missed > 0);
        outcome.subscribers_with_duplicates += usize::from(t.duplicated > 0);
        outcome.max_missed = outcome.max_missed.max(t.missed);
        outcome.recovered += r.recovered;
        outcome.not_recovered += r.lost;
        for (first, last) in missing_ranges(&r.seqs, args.events) {
            let key = format!("{first}..={last}");
            if outcome.gaps.len() < MAX_GAPS || outcome.gaps.contains_key(&key) {
                *outcome.gaps.entry(key).or_default() += 1;
            }
        }
    }
    Ok(outcome)
}

/// One line of `resume-subscribers.mjs`'s stdout.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum DriverLine {
    Ready { servers: HashMap<String, usize> },
    Status { complete: usize, received: u64 },
    Report { subscribers: Vec<SubscriberRecord> },
}

/// What one subscriber received (`s` of every event, arrival order) and how its reconnects went.
#[derive(Debug, Deserialize)]
struct SubscriberRecord {
    seqs: Vec<u64>,
    recovered: u64,
    lost: u64,
}

/// The subscribers' Node process (`bench/peers/node/resume-subscribers.mjs`), killed on drop.
struct Subscribers {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Subscribers per server (URL or gateway node id) at the start.
    servers: HashMap<String, usize>,
    count: usize,
}

impl Subscribers {
    /// Starts the driver with `system_args` and waits until every subscriber has joined.
    async fn start(system_args: &[&str], args: &Args) -> anyhow::Result<Subscribers> {
        let dir = ensure_node_peer_installed()?;
        // The Switchyard subscribers import the JS client module, which needs its own packages.
        ensure_npm_installed(&switchyard_testkit::process::workspace_root()?.join("clients/js"))?;
        let mut child = Command::new("node")
            .arg(dir.join("resume-subscribers.mjs"))
            .args(system_args)
            .args(["--count", &args.subscribers.to_string(), "--room", ROOM])
            .args(["--last", &args.events.saturating_sub(1).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning node resume-subscribers.mjs (is Node.js installed?)")?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        let mut subs = Subscribers {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            servers: HashMap::new(),
            count: args.subscribers,
        };
        match subs.next_line(SETUP_LIMIT).await? {
            DriverLine::Ready { servers } => subs.servers = servers,
            other => bail!("expected the ready line, got {other:?}"),
        }
        Ok(subs)
    }

    /// Subscribers that started on `server`.
    fn on(&self, server: &str) -> usize {
        self.servers.get(server).copied().unwrap_or(0)
    }

    async fn next_line(&mut self, limit: Duration) -> anyhow::Result<DriverLine> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .with_context(|| format!("the subscribers' driver said nothing for {limit:?}"))?
            .context("reading the subscribers' driver")?
            .context("the subscribers' driver exited")?;
        serde_json::from_str(&line).with_context(|| {
            let head: String = line.chars().take(200).collect();
            format!("unexpected line from the driver: {head}")
        })
    }

    async fn command(&mut self, cmd: &str) -> anyhow::Result<DriverLine> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.next_line(Duration::from_secs(30)).await
    }

    /// Returns once every subscriber has the last event, or nothing arrived for [`QUIET`], or
    /// [`SETUP_LIMIT`] passed.
    async fn wait_done(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
        let mut last = 0;
        let mut still_since = tokio::time::Instant::now();
        loop {
            let DriverLine::Status { complete, received } = self.command("status").await? else {
                bail!("expected a status line");
            };
            let now = tokio::time::Instant::now();
            if complete >= self.count || now > deadline {
                return Ok(());
            }
            if received != last {
                last = received;
                still_since = now;
            } else if now - still_since > QUIET {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn report(mut self) -> anyhow::Result<Vec<SubscriberRecord>> {
        match self.command("report").await? {
            DriverLine::Report { subscribers } => Ok(subscribers),
            other => bail!("expected the report, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_missed_duplicated_and_out_of_order() {
        assert!(Tally::of(&[0, 1, 2, 3], 4).exact());
        assert_eq!(
            Tally::of(&[0, 2, 1, 1, 3, 3], 5),
            Tally {
                missed: 1,
                duplicated: 2,
                out_of_order: 1
            }
        );
        // A replay after a reconnect that re-sends what was already received.
        assert_eq!(
            Tally::of(&[0, 1, 2, 1, 2, 3], 4),
            Tally {
                missed: 0,
                duplicated: 2,
                out_of_order: 0
            }
        );
        assert_eq!(Tally::of(&[9], 2).missed, 2);
    }

    #[test]
    fn missing_ranges_are_runs_of_consecutive_numbers() {
        assert_eq!(missing_ranges(&[0, 1, 2], 3), []);
        assert_eq!(
            missing_ranges(&[0, 3, 4, 7, 3], 10),
            [(1, 2), (5, 6), (8, 9)]
        );
        assert_eq!(missing_ranges(&[], 2), [(0, 1)]);
    }
}
