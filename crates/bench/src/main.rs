//! `switchyard-bench`: benchmarks that run Switchyard against the approaches it replaces, in
//! one process run, on the same machine and the same (private) Redis.
//!
//! Scenarios (one clap subcommand each):
//! - `placement`: least-loaded assignment. See [`placement`] for what is measured and how.
//! - `fanout`: one room over three servers vs the Node + redis-adapter cluster and the
//!   socketioxide + socketioxide-redis cluster ([`fanout`]).
//! - `rooms`: 300 small rooms over three servers, same systems and figures ([`rooms`]).
//! - `idle`: memory per idle websocket connection vs one Node process ([`idle`]).
//! - `scale`: 6, 12, 24 servers, 6,000 clients in pairs, groups and large rooms, a fixed
//!   publish rate: CPU per delivery, latency, relay frames per publish, vs Node's redis
//!   adapter classic and sharded ([`scale`]).
//! - `storm`: kill -9 one of three servers; time until every client is back ([`storm`]).
//! - `resume`: a server killed mid-stream, missed / duplicated events per subscriber vs Node
//!   with the redis-streams adapter and connection state recovery ([`resume`]).
//! - `hooks`: the round trip of an event through the event hook to a backend that does
//!   nothing, against a built-in event's, and events per second through hooks ([`hooks`]).
//! - `soak`: long moderate load with churn: memory slope, errors, lost events ([`soak`]).
//! - `report`: `target/bench/*.json` to `docs/BENCHMARKS.md` and `docs/bench/*.svg`
//!   ([`report`], [`charts`]).
//!
//! The Rust peer of the delivery scenarios is this crate's second binary, `sio-redis-peer`
//! (`src/bin/sio_redis_peer.rs`).
//!
//! Run through `cargo xtask bench placement`, or `cargo run --release -p switchyard-bench --
//! placement` after `cargo build --release -p switchyard-placement --bins`. Results go to
//! `target/bench/<scenario>.json` and a table on stdout.

mod charts;
mod cpu;
mod fanout;
mod hooks;
mod idle;
mod loadgen;
mod official;
mod peers;
mod placement;
mod report;
mod resume;
mod rooms;
mod scale;
mod soak;
mod stats;
mod storm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "switchyard-bench", about = "Switchyard benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Assignment throughput, latency and balance: Switchyard's one-script ledger vs the
    /// "distributed lock, read all counts, increment the minimum" baseline, plus the whole HTTP
    /// path through a real switchyard-placement.
    Placement(placement::Args),
    /// One room over three servers: latency, skew and saturation throughput, Switchyard vs
    /// Node socket.io + @socket.io/redis-adapter vs socketioxide + socketioxide-redis.
    Fanout(fanout::Args),
    /// 300 rooms of 10 over three servers, publishes spread over the rooms: the same figures
    /// as fanout.
    Rooms(rooms::Args),
    /// G = 6, 12, 24 servers, 6,000 clients in pairs, groups of 10 and rooms of 500, a fixed
    /// publish rate: server CPU per delivery, latency and relay frames per publish, Switchyard
    /// vs Node's redis adapter classic and sharded (dynamic subscriptions).
    Scale(scale::Args),
    /// Resident memory per idle websocket connection: one gateway vs one Node process.
    Idle(idle::Args),
    /// kill -9 one of three servers holding 1,000 clients each: reconnect times and the
    /// spread afterwards.
    Storm(storm::Args),
    /// A server killed (SIGKILL) mid-stream: events missed, duplicated, out of order per
    /// subscriber, Switchyard's resume vs Node's redis-streams adapter + connection state
    /// recovery.
    Resume(resume::Args),
    /// An event's round trip through the event hook (a backend that does nothing) vs a
    /// built-in event's on the same gateway, and events per second through hooks.
    Hooks(hooks::Args),
    /// Moderate load with connection churn for `--minutes`: resident memory over time,
    /// errors and lost events (`target/soak.json`; fails on any loss or error).
    Soak(soak::Args),
    /// Write docs/BENCHMARKS.md from target/bench/*.json.
    Report(report::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Placement(args) => placement::main(args),
        Scenario::Fanout(args) => fanout::main(args),
        Scenario::Rooms(args) => rooms::main(args),
        Scenario::Scale(args) => scale::main(args),
        Scenario::Idle(args) => idle::main(args),
        Scenario::Storm(args) => storm::main(args),
        Scenario::Resume(args) => resume::main(args),
        Scenario::Hooks(args) => hooks::main(args),
        Scenario::Soak(args) => soak::main(args),
        Scenario::Report(args) => report::main(args),
    }
}
