//! The `rooms` scenario: many small rooms instead of one big one. 3,000 clients in 300 rooms
//! (10 members each, every room spanning the three servers), one publisher cycling over the
//! rooms; the same engine and figures as [`crate::fanout`] (`msgs_per_sec`, `p50_ms`,
//! `p99_ms`, `max_ms`, `skew_p99_ms` over a room's members).
//!
//! Where `fanout` measures how fast one message reaches thousands of sockets, this measures
//! the per-publish cost of the cluster path (adapter or relay, Redis, room lookup on every
//! server) when each message reaches only a few sockets.

use crate::fanout::{Common, Plan, run_plan};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Clients, spread over three servers and over the rooms.
    #[arg(long, default_value_t = 3000)]
    clients: usize,
    /// Rooms (`room-0` ..); members are contiguous blocks of clients.
    #[arg(long, default_value_t = 300)]
    rooms: usize,
    /// Fixed publish rate (messages per second, spread over the rooms) for the latency phase;
    /// 500 msg/s × 10 members = 5,000 deliveries/s, below every system's saturation.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Length of the fixed-rate phase, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// First rate of the saturation search (messages per second); doubles each step.
    #[arg(long, default_value_t = 500)]
    start_rate: u64,
    /// Highest rate the saturation search tries.
    #[arg(long, default_value_t = 64_000)]
    max_rate: u64,
    /// Length of one saturation step, seconds.
    #[arg(long, default_value_t = 3)]
    step_secs: u64,
    #[command(flatten)]
    common: Common,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    run_plan(Plan {
        scenario: "rooms",
        clients: args.clients,
        rooms: (0..args.rooms.max(1))
            .map(|k| format!("room-{k}"))
            .collect(),
        rate: args.rate,
        seconds: args.seconds,
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        step_secs: args.step_secs,
        common: args.common,
    })
}
