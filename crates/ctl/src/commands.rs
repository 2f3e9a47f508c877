//! One function per subcommand: call placement, then print the answer as a table or JSON.
//!
//! Human output goes to stdout; with `--json` stdout holds exactly one JSON document (see
//! [`crate::output`] for the shapes), so it can be piped to `jq`.

use std::collections::BTreeMap;

use switchyard_proto::admin::v1::Node;

use crate::{cli::Command, client::Admin, error::CtlError, output};

/// Runs one subcommand against a connected placement.
pub async fn run(command: &Command, admin: &Admin, json: bool) -> Result<(), CtlError> {
    match command {
        Command::Nodes => nodes(admin, json).await,
        Command::Drain { node, rate } => drain(admin, node, *rate, json).await,
        Command::Undrain { node } => undrain(admin, node, json).await,
        Command::Weight { node, weight } => set_weight(admin, node, *weight, json).await,
        Command::Rebalance {
            target_spread,
            rate,
        } => rebalance(admin, *target_spread, *rate, json).await,
        Command::Stats => stats(admin, json).await,
        // Handled in `main` before placement is dialled: they talk to a relay.
        Command::Publish { .. }
        | Command::Rooms { .. }
        | Command::Sockets { .. }
        | Command::Disconnect { .. }
        | Command::Links { .. }
        | Command::History { .. } => Err(CtlError::Other(
            "this command goes to a relay, not placement".to_owned(),
        )),
    }
}

async fn nodes(admin: &Admin, json: bool) -> Result<(), CtlError> {
    let nodes = admin.list_nodes().await?;
    if json {
        return output::print_json(&output::nodes_json(&nodes));
    }
    if nodes.is_empty() {
        println!("No nodes in the ledger.");
    } else {
        print!("{}", output::nodes_table(&nodes));
    }
    Ok(())
}

async fn drain(admin: &Admin, node: &str, rate: Option<u32>, json: bool) -> Result<(), CtlError> {
    let changed = admin.drain(node, rate.unwrap_or(0)).await?;
    let pace = match rate {
        Some(r) => format!("{r}/s"),
        None => "placement's --drain-rate".to_owned(),
    };
    changed_node(
        &changed,
        json,
        &format!(
            "{node} is draining: it gets no new clients and was asked to disconnect its clients \
             at {pace}."
        ),
    )
}

async fn undrain(admin: &Admin, node: &str, json: bool) -> Result<(), CtlError> {
    let changed = admin.undrain(node).await?;
    changed_node(&changed, json, &format!("{node} takes new clients again."))
}

async fn set_weight(admin: &Admin, node: &str, weight: u32, json: bool) -> Result<(), CtlError> {
    let changed = admin.set_weight(node, weight).await?;
    changed_node(
        &changed,
        json,
        &format!("{node} now has weight {}.", changed.weight),
    )
}

/// Prints a node a call changed: a sentence and its table row, or `{"node":...}`.
fn changed_node(node: &Node, json: bool, sentence: &str) -> Result<(), CtlError> {
    if json {
        return output::print_json(&output::node_json(node));
    }
    println!("{sentence}");
    print!("{}", output::nodes_table(std::slice::from_ref(node)));
    Ok(())
}

async fn rebalance(
    admin: &Admin,
    target_spread: Option<u64>,
    rate: Option<u32>,
    json: bool,
) -> Result<(), CtlError> {
    let answer = admin
        .rebalance(target_spread.unwrap_or(0), rate.unwrap_or(0))
        .await?;
    let shed: BTreeMap<&str, u64> = answer
        .shed
        .iter()
        .map(|(node, count)| (node.as_str(), *count))
        .collect();
    if json {
        return output::print_json(&output::shed_json(&shed));
    }
    if shed.is_empty() {
        println!(
            "Nothing to shed: the spread of connections/weight is already within {}.",
            target_spread.unwrap_or(1)
        );
    } else {
        let total: u64 = shed.values().sum();
        println!(
            "Asked {} node(s) to shed {total} client(s) in total; they re-assign elsewhere.",
            shed.len()
        );
        print!("{}", output::shed_table(&shed));
    }
    Ok(())
}

async fn stats(admin: &Admin, json: bool) -> Result<(), CtlError> {
    let stats = admin.stats().await?;
    if json {
        return output::print_json(&output::StatsJson::from(&stats));
    }
    print!("{}", output::stats_table(&stats));
    Ok(())
}
