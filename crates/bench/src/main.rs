//! `switchyard-bench`: benchmarks that run Switchyard against the approaches it replaces, in
//! one process run, on the same machine and the same (private) Redis.
//!
//! Scenarios (one clap subcommand each):
//! - `placement`: least-loaded assignment. See [`placement`] for what is measured and how.
//! - `fanout`: one room over three servers vs the Node + redis-adapter cluster ([`fanout`]).
//! - `idle`: memory per idle websocket connection vs one Node process ([`idle`]).
//! - `report`: `target/bench/*.json` to `docs/BENCHMARKS.md` ([`report`]).
//!
//! Run through `cargo xtask bench placement`, or `cargo run --release -p switchyard-bench --
//! placement` after `cargo build --release -p switchyard-placement --bins`. Results go to
//! `target/bench/<scenario>.json` and a table on stdout.

mod fanout;
mod idle;
mod loadgen;
mod peers;
mod placement;
mod report;
mod stats;

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
    /// Node socket.io + @socket.io/redis-adapter.
    Fanout(fanout::Args),
    /// Resident memory per idle websocket connection: one gateway vs one Node process.
    Idle(idle::Args),
    /// Write docs/BENCHMARKS.md from target/bench/*.json.
    Report(report::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Placement(args) => placement::main(args),
        Scenario::Fanout(args) => fanout::main(args),
        Scenario::Idle(args) => idle::main(args),
        Scenario::Report(args) => report::main(args),
    }
}
