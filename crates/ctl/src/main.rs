//! `syctl`: the operator's command line for a Switchyard cluster.
//!
//! A thin client of placement's `switchyard.admin.v1.Admin` gRPC API (and, for `publish`, of the
//! relay's `Publish` through [`publish`]; for `rooms`, `sockets`, `disconnect`, `links` and
//! `history`, of the relay's `RelayAdmin` through [`relay_admin`]): [`cli`] defines the
//! command line, [`client`] finds placement (flags, environment, or `.switchyard/cluster.json`
//! through [`cluster_file`]) and authenticates every call, [`commands`] runs one subcommand and
//! [`output`] prints tables or JSON. Failures map to the exit codes documented in [`error`] and
//! in `syctl --help`.

mod cli;
mod client;
mod cluster_file;
mod commands;
mod error;
mod output;
mod publish;
mod relay_admin;

use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};

use crate::{
    cli::{Cli, Command},
    client::{Admin, Target},
    error::CtlError,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` arrive as "errors" and succeed. Usage errors exit 1, not
            // clap's 2, because 2 means "not found" (see `error`).
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return CtlError::Other(format!("cannot start the async runtime: {e}")).report(),
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

async fn run(cli: &Cli) -> Result<(), CtlError> {
    let tls = cli
        .tls
        .load()
        .map_err(|e| CtlError::Config(e.to_string()))?;
    let cwd = std::env::current_dir()
        .map_err(|e| CtlError::Config(format!("cannot read the current directory: {e}")))?;
    if let Command::Publish {
        event,
        data,
        rooms,
        except,
        namespace,
        relay,
        publish_token,
    } = &cli.command
    {
        let target = publish::RelayTarget::resolve(
            relay.as_deref(),
            publish_token.as_deref(),
            &cwd,
            cluster_file::Found::publish_token,
        )?;
        let publication = publish::Publication {
            namespace: namespace.clone(),
            rooms: rooms.clone(),
            except: except.clone(),
            event: event.clone(),
            json: data.clone(),
        };
        return publish::run(&target, publication, cli.timeout, &tls, cli.json).await;
    }
    if let Some((op, relay)) = relay_admin_op(&cli.command) {
        let target = publish::RelayTarget::resolve(
            relay,
            cli.admin_token.as_deref(),
            &cwd,
            cluster_file::Found::admin_token,
        )?;
        return relay_admin::run(&op, &target, cli.timeout, &tls, cli.json).await;
    }
    let target = Target::resolve(cli.placement.as_deref(), cli.admin_token.as_deref(), &cwd)?;
    let admin = Admin::connect(&target, cli.timeout, &tls).await?;
    commands::run(&cli.command, &admin, cli.json).await
}

/// The relay admin operation of `command` and its `--relay`, if it is one.
fn relay_admin_op(command: &Command) -> Option<(relay_admin::Op, Option<&str>)> {
    use relay_admin::Op;
    let (op, relay) = match command {
        Command::Rooms { namespace, relay } => (
            Op::Rooms {
                namespace: namespace.clone(),
            },
            relay,
        ),
        Command::Sockets {
            room,
            namespace,
            relay,
        } => (
            Op::Sockets {
                namespace: namespace.clone(),
                room: room.clone(),
            },
            relay,
        ),
        Command::Disconnect {
            socket_id,
            room,
            namespace,
            relay,
        } => (
            Op::Disconnect {
                namespace: namespace.clone(),
                socket_id: socket_id.clone().unwrap_or_default(),
                room: room.clone().unwrap_or_default(),
            },
            relay,
        ),
        Command::Links { relay } => (Op::Links, relay),
        Command::History { namespaces, relay } => (
            Op::History {
                namespaces: namespaces.clone(),
            },
            relay,
        ),
        _ => return None,
    };
    Some((op, relay.relay.as_deref()))
}
