//! Every environment variable a manifest sets, and every flag it passes, must be one the binary
//! reads.
//!
//! A misspelt variable is the worst kind of configuration bug: clap never sees it, the service
//! starts with its default, and nothing fails (the shipped manifests set `SWITCHYARD_RELAY_URL`
//! for a gateway that reads `SWITCHYARD_RELAY_URLS`, so broadcast was off in every overlay).
//!
//! The accepted names come from the binaries themselves, so there is one source of truth (each
//! service's clap `Config`): `cargo xtask k8s` runs `<binary> --help` with an empty environment
//! and takes every `--flag` at the start of an option line and every `[env: NAME…]` annotation.
//! clap prints hidden arguments nowhere, so a hidden flag would be refused here: none exists,
//! and one added later fails this check loudly rather than passing silently. clap wraps help
//! only with its `wrap_help` feature, which the workspace does not enable; the parser joins
//! lines anyway, so a wrapped `[env: …]` is still read.
//!
//! Besides clap's names, a container may set:
//! - variables consumed by `$(VAR)` expansion in the same container (`POD_NAME`,
//!   `GATEWAY_PUBLIC_SCHEME`, `GATEWAY_PUBLIC_DOMAIN` in the gateway): Kubernetes reads them, and
//!   a reference to an undefined one stays verbatim, which the rendered value would show;
//! - [`NON_FLAG_ENV`]: variables a binary reads without clap, each listed with the binary and
//!   the code that reads it.
//!
//! Only containers of the Switchyard image are checked (their program is one of our binaries);
//! a third-party image (the dev overlay's `redis:7`) has its own rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::env::references;
use super::model::{Container, KeyValues};

/// Variables a binary reads outside clap, per binary (`*` = every Switchyard binary).
///
/// - `POD_NAME`: the gateway's default node id (`crates/gateway/src/config.rs`,
///   `GatewayArgs::settings`).
/// - `OTEL_*`: read by `opentelemetry_sdk` / `opentelemetry-otlp` 0.33 for the trace pipeline
///   `switchyard_common::telemetry::init` builds once `OTEL_EXPORTER_OTLP_ENDPOINT` (a clap
///   flag) is set: resource attributes, the sampler, span limits, the batch span processor and
///   the gRPC exporter's headers, timeout and compression. Not listed because they have no
///   effect: `OTEL_SERVICE_NAME` (the code sets the service name) and the `*_ENDPOINT` variants
///   (the explicit endpoint wins). Re-derive with `grep -rho '"OTEL_[A-Z_]*"'` over those crates
///   when upgrading them.
pub const NON_FLAG_ENV: &[(&str, &str)] = &[
    ("switchyard-gateway", "POD_NAME"),
    ("*", "OTEL_RESOURCE_ATTRIBUTES"),
    ("*", "OTEL_TRACES_SAMPLER"),
    ("*", "OTEL_TRACES_SAMPLER_ARG"),
    ("*", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"),
    ("*", "OTEL_SPAN_EVENT_COUNT_LIMIT"),
    ("*", "OTEL_SPAN_LINK_COUNT_LIMIT"),
    ("*", "OTEL_BSP_SCHEDULE_DELAY"),
    ("*", "OTEL_BSP_MAX_QUEUE_SIZE"),
    ("*", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
    ("*", "OTEL_BSP_EXPORT_TIMEOUT"),
    ("*", "OTEL_BSP_MAX_CONCURRENT_EXPORTS"),
    ("*", "OTEL_EXPORTER_OTLP_HEADERS"),
    ("*", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    ("*", "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ("*", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    ("*", "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ("*", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
];

/// The image every Switchyard binary ships in (after kustomize's `images:` rewrite the
/// reference may carry a registry and a tag: `registry.example.com/switchyard:0.1.0`).
pub const SWITCHYARD_IMAGE: &str = "switchyard";

/// The flags and environment variables one binary accepts, from its `--help`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub flags: BTreeSet<String>,
    pub env: BTreeSet<String>,
}

/// Parses clap's `--help` output (see the module docs).
pub fn parse_help(help: &str) -> Result<Accepted> {
    let mut accepted = Accepted::default();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        // `-s, --long <VALUE>` or `--long <VALUE>` or `--switch`.
        for token in trimmed.split([' ', ',', '=']) {
            if let Some(flag) = token.strip_prefix("--")
                && is_flag_name(flag)
            {
                accepted.flags.insert(flag.to_owned());
                break;
            }
        }
    }
    let joined = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut rest = joined.as_str();
    while let Some(at) = rest.find("[env: ") {
        let after = &rest[at + "[env: ".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end > 0 {
            accepted.env.insert(after[..end].to_owned());
        }
        rest = &after[end..];
    }
    if accepted.flags.is_empty() || accepted.env.is_empty() {
        bail!("found no `--flag` or no `[env: NAME]` in this help text:\n{help}");
    }
    Ok(accepted)
}

fn is_flag_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Runs `<binary> --help` with an empty environment (clap prints the current value of an
/// environment variable next to its name; none must leak into the parse, nor into a log) and
/// parses it.
pub fn accepted_by(binary: &Path) -> Result<Accepted> {
    let output = Command::new(binary)
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("running {} --help", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} --help failed with {}:\n{}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let help = String::from_utf8(output.stdout)
        .with_context(|| format!("{} --help printed non-UTF-8", binary.display()))?;
    parse_help(&help).with_context(|| format!("parsing {} --help", binary.display()))
}

/// The Switchyard binary a container runs: the basename of its command's program, when the
/// container uses the Switchyard image; `None` for other images.
pub fn switchyard_binary(container: &Container) -> Option<Result<String>> {
    if image_name(&container.image) != SWITCHYARD_IMAGE {
        return None;
    }
    Some(match container.command.first() {
        Some(program) => Ok(program.rsplit('/').next().unwrap_or(program).to_owned()),
        None => Err(anyhow::anyhow!(
            "container {} of image {} has no command: say which binary it runs",
            container.name,
            container.image
        )),
    })
}

/// `registry.example.com:5000/team/switchyard:0.1.0@sha256:…` -> `switchyard`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// One violation per unknown variable or flag in every Switchyard container of `objects`.
/// `accepted` gives the names of a binary (by basename), or `None` when it does not exist.
pub fn violations(
    objects: &[Value],
    config_maps: &BTreeMap<String, KeyValues>,
    secrets: &BTreeMap<String, KeyValues>,
    accepted: &dyn Fn(&str) -> Option<Accepted>,
) -> Vec<String> {
    let mut found = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let pod = match kind {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                &object["spec"]["template"]["spec"]
            }
            "Pod" => &object["spec"],
            _ => continue,
        };
        let containers = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| pod[*k].as_array().cloned().unwrap_or_default());
        for raw in containers {
            let container: Container = match serde_json::from_value(raw) {
                Ok(c) => c,
                Err(e) => {
                    found.push(format!("{kind}/{name}: a container does not parse: {e}"));
                    continue;
                }
            };
            let id = format!("{kind}/{name} container {}", container.name);
            let binary = match switchyard_binary(&container) {
                None => continue,
                Some(Ok(binary)) => binary,
                Some(Err(e)) => {
                    found.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let Some(names) = accepted(&binary) else {
                found.push(format!(
                    "{id}: runs `{binary}`, which is not a binary of this workspace"
                ));
                continue;
            };
            check_container(
                &id,
                &binary,
                &container,
                &names,
                config_maps,
                secrets,
                &mut found,
            );
        }
    }
    found
}

fn check_container(
    id: &str,
    binary: &str,
    container: &Container,
    names: &Accepted,
    config_maps: &BTreeMap<String, KeyValues>,
    secrets: &BTreeMap<String, KeyValues>,
    found: &mut Vec<String>,
) {
    // Every variable the container's environment will hold, with where it comes from.
    let mut set: Vec<(String, String)> = Vec::new();
    for from in &container.env_from {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (what, source, name) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => ("ConfigMap", config_maps.get(&r.name), &r.name),
            (_, Some(r)) => ("Secret", secrets.get(&r.name), &r.name),
            _ => continue,
        };
        match source {
            Some(source) => set.extend(
                source
                    .data
                    .keys()
                    .map(|k| (format!("{prefix}{k}"), format!("envFrom {what} {name}"))),
            ),
            None => found.push(format!(
                "{id}: envFrom {what} {name} is not rendered, so the variables it sets cannot be \
                 checked against `{binary}`"
            )),
        }
    }
    set.extend(
        container
            .env
            .iter()
            .map(|v| (v.name.clone(), "env".to_owned())),
    );

    // Names that `$(VAR)` expansion in this container consumes.
    let consumed: BTreeSet<String> = container
        .env
        .iter()
        .filter_map(|v| v.value.as_deref())
        .chain(container.command.iter().map(String::as_str))
        .chain(container.args.iter().map(String::as_str))
        .flat_map(references)
        .collect();
    let documented = |var: &str| {
        NON_FLAG_ENV
            .iter()
            .any(|(bin, name)| *name == var && (*bin == "*" || *bin == binary))
    };

    let mut reported = BTreeSet::new();
    for (var, origin) in set {
        if names.env.contains(&var) || consumed.contains(&var) || documented(&var) {
            continue;
        }
        if reported.insert(var.clone()) {
            let hint = closest(&var, names.env.iter())
                .map(|c| format!(" (did you mean {c}?)"))
                .unwrap_or_default();
            found.push(format!(
                "{id}: sets environment variable {var} ({origin}), which `{binary}` does not \
                 read{hint}"
            ));
        }
    }
    for arg in container.command.iter().skip(1).chain(&container.args) {
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        let flag = flag.split('=').next().unwrap_or(flag);
        if flag.is_empty() || names.flags.contains(flag) {
            continue;
        }
        let hint = closest(flag, names.flags.iter())
            .map(|c| format!(" (did you mean --{c}?)"))
            .unwrap_or_default();
        found.push(format!(
            "{id}: passes flag --{flag}, which `{binary}` does not have{hint}"
        ));
    }
}

/// The candidate nearest to `wanted` by edit distance, if it is close (a typo, a plural).
fn closest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(wanted, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Both layouts clap prints: short help (the annotation on the description line) and long
    /// help (annotations on lines of their own), with a hidden value (`[env: NAME]`).
    const HELP: &str = "\
Switchyard gateway

Usage: switchyard-gateway [OPTIONS]

Options:
      --listen <LISTEN>
          HTTP listen address. Port 0 picks one [env: SWITCHYARD_LISTEN=] [default: 127.0.0.1:4000]
      --relay-urls <RELAY_URLS>
          gRPC URLs of the broadcast relays, comma separated

          [env: SWITCHYARD_RELAY_URLS=]
      --link-token <LINK_TOKEN>
          Bearer token [env:
          SWITCHYARD_LINK_TOKEN]
      --allow-anonymous
          Admit clients that bring no token [env: SWITCHYARD_ALLOW_ANONYMOUS=]
  -h, --help
          Print help
";

    #[test]
    fn help_yields_flags_and_variables() -> Result<()> {
        let accepted = parse_help(HELP)?;
        assert_eq!(
            accepted
                .flags
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            [
                "allow-anonymous",
                "help",
                "link-token",
                "listen",
                "relay-urls"
            ]
        );
        assert_eq!(
            accepted.env.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "SWITCHYARD_ALLOW_ANONYMOUS",
                "SWITCHYARD_LINK_TOKEN",
                "SWITCHYARD_LISTEN",
                "SWITCHYARD_RELAY_URLS"
            ]
        );
        assert!(parse_help("no options at all").is_err());
        Ok(())
    }

    #[test]
    fn image_names_lose_registry_tag_and_digest() {
        assert_eq!(image_name("switchyard"), "switchyard");
        assert_eq!(
            image_name("registry.example.com:5000/x/switchyard:0.1.0"),
            "switchyard"
        );
        assert_eq!(image_name("switchyard@sha256:abc"), "switchyard");
        assert_eq!(image_name("redis:7"), "redis");
    }

    fn gateway(env: Value, args: Value) -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "gw"},
                   "data": {"SWITCHYARD_LISTEN": "0.0.0.0:4000", "GATEWAY_PUBLIC_DOMAIN": "d"}}),
            json!({"kind": "StatefulSet", "metadata": {"name": "switchyard-gateway"}, "spec": {
                "template": {"spec": {"containers": [{
                    "name": "gateway",
                    "image": "registry.example.com/switchyard:0.1.0",
                    "command": ["/usr/local/bin/switchyard-gateway"],
                    "args": args,
                    "envFrom": [{"configMapRef": {"name": "gw"}}],
                    "env": env
                }]}}
            }}),
            json!({"kind": "Deployment", "metadata": {"name": "redis"}, "spec": {
                "template": {"spec": {"containers": [{
                    "name": "redis", "image": "redis:7", "args": ["redis-server", "--save", ""],
                    "env": [{"name": "ANYTHING", "value": "x"}]
                }]}}
            }}),
        ]
    }

    fn check(objects: &[Value]) -> Result<Vec<String>> {
        let accepted = parse_help(HELP)?;
        let mut config_maps = BTreeMap::new();
        config_maps.insert("gw".to_owned(), KeyValues::from_config_map(&objects[0])?);
        Ok(violations(
            objects,
            &config_maps,
            &BTreeMap::new(),
            &|bin| (bin == "switchyard-gateway").then(|| accepted.clone()),
        ))
    }

    #[test]
    fn known_names_expansion_inputs_and_documented_variables_pass() -> Result<()> {
        let objects = gateway(
            json!([
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "SWITCHYARD_RELAY_URLS", "value": "http://$(POD_NAME).$(GATEWAY_PUBLIC_DOMAIN)"},
                {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.pod.name=x"}
            ]),
            json!(["--listen=0.0.0.0:4000", "--allow-anonymous", "positional"]),
        );
        assert_eq!(check(&objects)?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn a_misspelt_variable_is_named_with_its_container_and_binary() -> Result<()> {
        let objects = gateway(
            json!([
                {"name": "SWITCHYARD_RELAY_URL", "value": "http://switchyard-relay:7101"},
                {"name": "SWITCHYARD_LISTEN", "value": "$(GATEWAY_PUBLIC_DOMAIN):4000"}
            ]),
            json!([]),
        );
        assert_eq!(
            check(&objects)?,
            [
                "StatefulSet/switchyard-gateway container gateway: sets environment variable \
                 SWITCHYARD_RELAY_URL (env), which `switchyard-gateway` does not read (did you \
                 mean SWITCHYARD_RELAY_URLS?)"
            ]
        );
        Ok(())
    }

    #[test]
    fn unknown_flags_unused_config_map_keys_and_foreign_binaries_fail() -> Result<()> {
        let mut objects = gateway(json!([]), json!(["--relay-url", "x", "--link-token=t"]));
        objects[0]["data"]["OTEL_SERVICE_NAME"] = json!("gw");
        let found = check(&objects)?.join("\n");
        assert!(
            found.contains("passes flag --relay-url, which `switchyard-gateway` does not have (did you mean --relay-urls?)"),
            "{found}"
        );
        assert!(
            found.contains("sets environment variable OTEL_SERVICE_NAME (envFrom ConfigMap gw)"),
            "{found}"
        );
        // GATEWAY_PUBLIC_DOMAIN comes from the ConfigMap but nothing consumes it here.
        assert!(found.contains("GATEWAY_PUBLIC_DOMAIN"), "{found}");
        assert!(!found.contains("--link-token"), "{found}");

        objects[1]["spec"]["template"]["spec"]["containers"][0]["command"] =
            json!(["/usr/local/bin/switchyard-nothing"]);
        let found = check(&objects)?.join("\n");
        assert!(
            found.contains("runs `switchyard-nothing`, which is not a binary"),
            "{found}"
        );
        Ok(())
    }
}
