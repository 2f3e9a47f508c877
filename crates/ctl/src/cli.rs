//! The command line: global connection flags and one subcommand per admin operation.

use std::time::Duration;

use clap::{Parser, Subcommand, builder::FalseyValueParser};

/// Shown at the end of `--help`: the exit codes scripts may rely on.
const AFTER_HELP: &str = "\
Finding the cluster:
  --placement / SWITCHYARD_PLACEMENT_URL names placement's gRPC endpoint (`http://` is added when
  missing). With neither, syctl reads .switchyard/cluster.json (written by `cargo xtask up`) from
  the current directory or the nearest parent that has one; its admin token is used when
  --admin-token / SWITCHYARD_ADMIN_TOKEN is not given.

Exit codes:
  0  success
  1  usage or configuration error (bad flags, no placement address, an argument placement rejects)
  2  not found (the node is not in the ledger)
  3  unauthenticated (missing or wrong admin token)
  4  unavailable (cannot connect, timed out, or placement is unavailable)
  5  any other error
  (clap's usual exit code 2 for usage errors is replaced by 1, so 2 always means not found.)

`syctl publish` talks to a relay instead: --relay / SWITCHYARD_RELAY_URL and --publish-token /
SWITCHYARD_PUBLISH_TOKEN, else the relays and publish token of .switchyard/cluster.json.
`rooms`, `sockets`, `disconnect`, `links` and `history` talk to a relay too, with the admin
token: --relay, else the relays of .switchyard/cluster.json. `rooms`, `sockets` and
`disconnect` ask every gateway; when some did not answer in time the answer is partial: a
warning on stderr (`missing` in --json), exit code 0. `disconnect` exits 2 when no gateway holds
the socket.";

/// Operate a Switchyard cluster through placement's admin API.
#[derive(Debug, Parser)]
#[command(name = "syctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Placement's gRPC endpoint, e.g. http://127.0.0.1:7001.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_PLACEMENT_URL",
        value_name = "URL"
    )]
    pub placement: Option<String>,

    /// Bearer token for admin calls (placement's --admin-token).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true, env = "SWITCHYARD_JSON", value_parser = FalseyValueParser::new())]
    pub json: bool,

    /// Limit for connecting and for each call: `500ms`, `10s`, `1m`, or plain seconds.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub timeout: Duration,

    /// `--tls-ca` (trust for `https://` URLs), `--tls-client-cert` / `--tls-client-key` (for a
    /// cluster that requires client certificates).
    #[command(flatten)]
    pub tls: switchyard_common::tls::ClientTlsArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// One admin operation.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every node in the ledger with its load.
    Nodes,
    /// Stop assigning to a node and ask it to disconnect its clients at a bounded rate.
    Drain {
        /// Node id, as listed by `syctl nodes`.
        node: String,
        /// Disconnects per second; placement's --drain-rate when omitted.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
    },
    /// Let a drained node take new clients again.
    Undrain {
        /// Node id, as listed by `syctl nodes`.
        node: String,
    },
    /// Set a node's relative share of new connections (overrides the weight it registered).
    Weight {
        /// Node id, as listed by `syctl nodes`.
        node: String,
        /// New weight, at least 1.
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        weight: u32,
    },
    /// Ask the busiest nodes to shed clients until the load spread is within a target.
    Rebalance {
        /// Stop when max - min of connections/weight is at most this; placement uses 1 when
        /// omitted.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        target_spread: Option<u64>,
        /// Disconnects per second per shedding node; placement's --drain-rate when omitted.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
    },
    /// Cluster-wide figures: nodes, connections, pending reservations, assignment rate.
    Stats,
    /// Rooms of a namespace with their member counts, across every gateway (through a relay).
    Rooms {
        /// Socket.IO namespace.
        #[arg(long, default_value = "/", value_parser = parse_namespace)]
        namespace: String,
        #[command(flatten)]
        relay: RelayArg,
    },
    /// The sockets of a room across every gateway: socket id, gateway node, rooms.
    Sockets {
        room: String,
        /// Socket.IO namespace.
        #[arg(long, default_value = "/", value_parser = parse_namespace)]
        namespace: String,
        #[command(flatten)]
        relay: RelayArg,
    },
    /// Disconnect a socket (or with --room every socket of a room) wherever it is connected.
    Disconnect {
        /// Socket id, as listed by `syctl sockets`.
        #[arg(required_unless_present = "room", conflicts_with = "room")]
        socket_id: Option<String>,
        /// Disconnect every socket of this room instead.
        #[arg(long)]
        room: Option<String>,
        /// Socket.IO namespace.
        #[arg(long, default_value = "/", value_parser = parse_namespace)]
        namespace: String,
        #[command(flatten)]
        relay: RelayArg,
    },
    /// The gateways linked to a relay: namespaces, queue, unacknowledged frames, traffic, uptime.
    Links {
        #[command(flatten)]
        relay: RelayArg,
    },
    /// History per namespace: epoch, length, oldest and head offsets, limits.
    History {
        /// Namespace to describe (repeatable); none means every namespace with a history.
        #[arg(long = "namespace", value_name = "NAMESPACE", value_parser = parse_namespace)]
        namespaces: Vec<String>,
        #[command(flatten)]
        relay: RelayArg,
    },
    /// Emit an event to rooms on every gateway, through a relay (like a backend service would).
    Publish {
        /// Socket.IO event name.
        event: String,
        /// The event's one argument, as JSON (`'{"text":"hi"}'`, `42`, `'"a string"'`).
        #[arg(default_value = "null", value_parser = parse_json)]
        data: String,
        /// Room to emit to (repeat for several); none means every socket of the namespace.
        #[arg(long = "room", value_name = "ROOM")]
        rooms: Vec<String>,
        /// Room whose members must not receive it (repeatable).
        #[arg(long = "except", value_name = "ROOM")]
        except: Vec<String>,
        /// Socket.IO namespace.
        #[arg(long, default_value = "/", value_parser = parse_namespace)]
        namespace: String,
        /// The relay's gRPC endpoint, e.g. http://127.0.0.1:7101.
        #[arg(long, env = "SWITCHYARD_RELAY_URL", value_name = "URL")]
        relay: Option<String>,
        /// Bearer token for Publish (the relay's --publish-token).
        #[arg(
            long,
            env = "SWITCHYARD_PUBLISH_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        publish_token: Option<String>,
    },
}

/// Which relay a relay admin command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArg {
    /// The relay's gRPC endpoint, e.g. http://127.0.0.1:7101.
    #[arg(long, env = "SWITCHYARD_RELAY_URL", value_name = "URL")]
    pub relay: Option<String>,
}

/// A namespace as every service takes it ([`switchyard_common::namespace::check`]), refused
/// here as a usage error rather than by the relay after connecting.
pub fn parse_namespace(text: &str) -> Result<String, String> {
    switchyard_common::namespace::check(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Accepts one JSON value and returns it unchanged (checked here so a typo is a usage error,
/// not a relay refusal).
pub fn parse_json(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not JSON: {e}"))
}

/// Parses `500ms`, `10s`, `2m` or a plain number of seconds. Zero is refused: a zero timeout
/// would fail every call.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. 500ms, 10s, 1m)"))?;
    match value.checked_mul(unit_ms) {
        Some(0) => Err("the timeout must be greater than zero".to_owned()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("`{text}` is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_units_and_refuse_zero_or_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn a_bad_namespace_is_a_usage_error() {
        let parse = |ns: &str| Cli::try_parse_from(["syctl", "rooms", "--namespace", ns]);
        assert!(parse("/chat").is_ok());
        for bad in ["chat", "/a\nb"] {
            let kind = parse(bad).err().map(|e| e.kind());
            assert_eq!(
                kind,
                Some(clap::error::ErrorKind::ValueValidation),
                "{bad:?}"
            );
        }
    }
}
