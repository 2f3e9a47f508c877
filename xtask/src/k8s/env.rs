//! A container's environment, command and arguments, computed exactly as the kubelet does.
//!
//! The rules (kubelet `makeEnvironmentVariables` and `ExpandContainerCommandAndArgs`,
//! Kubernetes 1.30):
//!
//! 1. `envFrom` first, in order: every key of the ConfigMap or Secret (with `prefix`), a later
//!    source overriding an earlier one. A missing source fails the container unless `optional`.
//! 2. Then `env`, in order. A `value` has its `$(VAR)` references expanded against what is
//!    defined *so far* (everything from `envFrom`, the `env` entries above it) and the service
//!    link variables; a `valueFrom` is resolved and never expanded. An entry overrides an
//!    `envFrom` variable of the same name.
//! 3. Service link variables (`enableServiceLinks`, on unless the pod turns it off) are added for
//!    every name not already set.
//! 4. `$(VAR)` in `command` and `args` expands against the final environment.
//!
//! Expansion: `$(NAME)` becomes the value when NAME is defined and stays `$(NAME)` verbatim when
//! it is not; `$$` is a literal `$`; any other `$` stays as it is (the kubelet's
//! `third_party/forked/golang/expansion`, byte for byte on ASCII input).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

use super::model::{Container, KeyValues, Service};

/// What a container's environment can refer to besides itself.
pub struct EnvSources<'a> {
    pub config_maps: &'a BTreeMap<String, KeyValues>,
    pub secrets: &'a BTreeMap<String, KeyValues>,
    /// Service link variables (empty when the pod sets `enableServiceLinks: false`).
    pub service_links: &'a BTreeMap<String, String>,
}

/// The downward-API fields a `fieldRef` can read.
pub struct PodFields<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    pub ip: Ipv4Addr,
}

/// The environment of `container` (see the module docs for the rules).
pub fn container_env(
    container: &Container,
    pod: &PodFields<'_>,
    sources: &EnvSources<'_>,
) -> Result<BTreeMap<String, String>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for from in &container.env_from {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (what, source, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), None) => (
                "ConfigMap",
                sources.config_maps.get(&r.name),
                r.optional == Some(true),
            ),
            (None, Some(r)) => (
                "Secret",
                sources.secrets.get(&r.name),
                r.optional == Some(true),
            ),
            _ => bail!(
                "container {}: an envFrom entry needs exactly one of configMapRef and secretRef",
                container.name
            ),
        };
        let name = from
            .config_map_ref
            .as_ref()
            .or(from.secret_ref.as_ref())
            .map(|r| r.name.as_str())
            .unwrap_or_default();
        let Some(source) = source else {
            if optional {
                continue;
            }
            bail!(
                "container {}: envFrom {what} {name} does not exist",
                container.name
            );
        };
        for key in source.data.keys() {
            let value = source.text(key).unwrap_or_else(|| Ok(String::new()))?;
            env.insert(format!("{prefix}{key}"), value);
        }
    }
    for var in &container.env {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) if !value.is_empty() => expand(value, |name| {
                env.get(name)
                    .or_else(|| sources.service_links.get(name))
                    .cloned()
            }),
            (_, Some(from)) => {
                match resolve_source(from, pod, sources)
                    .with_context(|| format!("container {}: env {}", container.name, var.name))?
                {
                    Some(value) => value,
                    // An optional reference to something missing leaves the variable unset.
                    None => continue,
                }
            }
            _ => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    for (name, value) in sources.service_links {
        env.entry(name.clone()).or_insert_with(|| value.clone());
    }
    Ok(env)
}

/// The value of one `valueFrom`; `None` when an optional reference finds nothing.
fn resolve_source(
    from: &super::model::EnvVarSource,
    pod: &PodFields<'_>,
    sources: &EnvSources<'_>,
) -> Result<Option<String>> {
    if let Some(field) = &from.field_ref {
        return field_value(&field.field_path, pod).map(Some);
    }
    if from.resource_field_ref.is_some() {
        bail!("resourceFieldRef is not emulated by the local runner (no resource limits here)");
    }
    let (what, key_ref, store) = match (&from.config_map_key_ref, &from.secret_key_ref) {
        (Some(r), None) => ("ConfigMap", r, sources.config_maps),
        (None, Some(r)) => ("Secret", r, sources.secrets),
        _ => bail!("valueFrom needs exactly one source"),
    };
    let optional = key_ref.optional == Some(true);
    let Some(source) = store.get(&key_ref.name) else {
        if optional {
            return Ok(None);
        }
        bail!("{what} {} does not exist", key_ref.name);
    };
    match source.text(&key_ref.key) {
        Some(value) => value.map(Some),
        None if optional => Ok(None),
        None => bail!(
            "couldn't find key {} in {what} {}",
            key_ref.key,
            key_ref.name
        ),
    }
}

/// A downward-API field (`metadata.name`, `status.podIP`, ...).
fn field_value(path: &str, pod: &PodFields<'_>) -> Result<String> {
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
        rest.strip_suffix("']").map(str::to_owned)
    };
    Ok(match path {
        "metadata.name" => pod.name.to_owned(),
        "metadata.namespace" => pod.namespace.to_owned(),
        "metadata.uid" => pod.uid.to_owned(),
        "spec.serviceAccountName" => pod.service_account.to_owned(),
        "status.podIP" | "status.podIPs" => pod.ip.to_string(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                pod.labels.get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                pod.annotations.get(&key).cloned().unwrap_or_default()
            } else {
                bail!(
                    "fieldRef {path} is not emulated by the local runner (supported: \
                     metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], \
                     metadata.annotations['k'], spec.serviceAccountName, status.podIP(s))"
                )
            }
        }
    })
}

/// `command` and `args` with `$(VAR)` expanded against the final environment.
pub fn command_and_args(
    container: &Container,
    env: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let lookup = |name: &str| env.get(name).cloned();
    (
        container
            .command
            .iter()
            .map(|c| expand(c, lookup))
            .collect(),
        container.args.iter().map(|a| expand(a, lookup)).collect(),
    )
}

/// Kubernetes' `$(VAR)` expansion (see the module docs).
pub fn expand(input: &str, mapping: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A `$` at the very end stays.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match mapping(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // An unterminated reference stays verbatim.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every `NAME` referenced as `$(NAME)` in `input` (whether defined or not).
pub fn references(input: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    found.push(inner[..close].to_owned());
                    rest = &inner[close + 1..];
                }
                None => break,
            }
        } else {
            rest = after;
        }
    }
    found
}

/// Docker-link-style variables for `services` (what `enableServiceLinks` injects), given each
/// Service's cluster IP. Headless Services contribute nothing.
pub fn service_links(services: &[(&Service, Ipv4Addr)]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (service, ip) in services {
        let Some(first) = service.spec.ports.first() else {
            continue;
        };
        let prefix = env_name(&service.metadata.name);
        vars.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
        vars.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for port in &service.spec.ports {
            if let Some(name) = &port.name {
                vars.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    port.port.to_string(),
                );
            }
        }
        for (i, port) in service.spec.ports.iter().enumerate() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{ip}:{}", protocol.to_lowercase(), port.port);
            if i == 0 {
                vars.insert(format!("{prefix}_PORT"), url.clone());
            }
            let base = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
            vars.insert(format!("{base}_PROTO"), protocol.to_lowercase());
            vars.insert(format!("{base}_PORT"), port.port.to_string());
            vars.insert(format!("{base}_ADDR"), ip.to_string());
            vars.insert(base, url);
        }
    }
    vars
}

fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = map(&[("A", "a"), ("B", "$(A)"), ("EMPTY", "")]);
        let lookup = |n: &str| vars.get(n).cloned();
        for (input, expected) in [
            ("$(A)", "a"),
            ("x$(A)y$(A)", "xaya"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$", "$"),
            ("a$", "a$"),
            ("$x", "$x"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$(EMPTY)z", "z"),
            // No recursion: the value of B is used as is.
            ("$(B)", "$(A)"),
            ("price: 5$ or 6$$", "price: 5$ or 6$"),
            ("é$(A)é", "éaé"),
        ] {
            assert_eq!(expand(input, lookup), expected, "{input}");
        }
    }

    #[test]
    fn references_lists_every_var_reference() {
        assert_eq!(
            references("$(GATEWAY_PUBLIC_SCHEME)://$(POD_NAME).$(X) $$(NOT) $(OPEN"),
            ["GATEWAY_PUBLIC_SCHEME", "POD_NAME", "X"]
        );
    }

    fn sources_with(config: &[(&str, &str)]) -> BTreeMap<String, KeyValues> {
        let mut maps = BTreeMap::new();
        maps.insert(
            "cm".to_owned(),
            KeyValues {
                name: "cm".into(),
                data: config
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
            },
        );
        maps
    }

    #[test]
    fn env_entries_see_only_what_is_defined_above_them() -> Result<()> {
        let container: Container = serde_json::from_value(json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}}],
            "env": [
                {"name": "EARLY", "value": "$(POD_NAME)-$(FROM_MAP)"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "LATE", "value": "$(POD_NAME)"},
                {"name": "FROM_MAP", "value": "overridden-$(FROM_MAP)"},
                {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "FROM_MAP"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ],
            "command": ["/bin/x", "$(LATE)"],
            "args": ["--a=$(FROM_MAP)", "$(MISSING)", "$$(LATE)"]
        }))?;
        let config_maps = sources_with(&[("FROM_MAP", "m")]);
        let secrets = BTreeMap::new();
        let links = BTreeMap::new();
        let labels = BTreeMap::new();
        let pod = PodFields {
            name: "pod-0",
            namespace: "ns",
            uid: "u",
            labels: &labels,
            annotations: &labels,
            service_account: "default",
            ip: Ipv4Addr::new(127, 9, 2, 1),
        };
        let env = container_env(
            &container,
            &pod,
            &EnvSources {
                config_maps: &config_maps,
                secrets: &secrets,
                service_links: &links,
            },
        )?;
        assert_eq!(env["EARLY"], "$(POD_NAME)-m");
        assert_eq!(env["LATE"], "pod-0");
        assert_eq!(env["FROM_MAP"], "overridden-m");
        assert_eq!(env["KEY"], "m");
        assert_eq!(env["IP"], "127.9.2.1");
        assert!(!env.contains_key("OPT"));
        let (command, args) = command_and_args(&container, &env);
        assert_eq!(command, ["/bin/x", "pod-0"]);
        assert_eq!(args, ["--a=overridden-m", "$(MISSING)", "$(LATE)"]);
        Ok(())
    }

    #[test]
    fn a_missing_required_reference_names_it() -> Result<()> {
        let container: Container = serde_json::from_value(json!({
            "name": "c",
            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}]
        }))?;
        let config_maps = sources_with(&[]);
        let empty = BTreeMap::new();
        let no_links = BTreeMap::new();
        let labels = BTreeMap::new();
        let pod = PodFields {
            name: "p",
            namespace: "n",
            uid: "u",
            labels: &labels,
            annotations: &labels,
            service_account: "",
            ip: Ipv4Addr::LOCALHOST,
        };
        let err = container_env(
            &container,
            &pod,
            &EnvSources {
                config_maps: &config_maps,
                secrets: &empty,
                service_links: &no_links,
            },
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.contains("couldn't find key nope in ConfigMap cm"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn service_links_match_dockers_names() -> Result<()> {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "switchyard-placement"},
            "spec": {"ports": [{"name": "http", "port": 7000}, {"name": "grpc", "port": 7001}]}
        }))?;
        let vars = service_links(&[(&service, Ipv4Addr::new(127, 9, 1, 1))]);
        assert_eq!(vars["SWITCHYARD_PLACEMENT_SERVICE_HOST"], "127.9.1.1");
        assert_eq!(vars["SWITCHYARD_PLACEMENT_SERVICE_PORT"], "7000");
        assert_eq!(vars["SWITCHYARD_PLACEMENT_SERVICE_PORT_GRPC"], "7001");
        assert_eq!(vars["SWITCHYARD_PLACEMENT_PORT"], "tcp://127.9.1.1:7000");
        assert_eq!(vars["SWITCHYARD_PLACEMENT_PORT_7001_TCP_ADDR"], "127.9.1.1");
        Ok(())
    }
}
