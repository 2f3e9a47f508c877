//! Switchyard's own deployment rules, which no schema knows: every container non-root,
//! read-only, without capabilities, with requests, limits and probes; secrets only in dev
//! overlays; every referenced ConfigMap or Secret rendered or documented as external; every
//! gateway ordinal the autoscaler may create reachable through its own Service and Ingress host;
//! a termination grace period that covers the gateway's drain.

use std::collections::BTreeSet;

use serde_json::Value;

use super::render::{items, kind, name, pod_spec};

/// Overlays allowed to carry `Secret` objects (throwaway generated values). Every other overlay
/// must reference Secrets created out of band.
const DEV_OVERLAYS: &[&str] = &["dev"];

/// Secrets that production overlays reference without rendering them (docs/deploy.md says how
/// to create them): the tokens and Redis credentials, and the CA bundle of a TLS Redis.
const EXTERNAL_SECRETS: &[&str] = &["switchyard-secrets", "switchyard-redis-ca"];

/// The gateway StatefulSet; its pods are `<name>-<ordinal>`, each with a Service of that name.
const GATEWAY: &str = "switchyard-gateway";

/// Every broken deployment rule in one rendered overlay, as human-readable lines.
pub fn policy_violations(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut violations = Vec::new();
    let index = Index::new(objects);

    for object in objects {
        let id = object_id(object);
        if kind(object) == "Secret" && !DEV_OVERLAYS.contains(&overlay) {
            violations.push(format!(
                "{id}: only dev overlays may render Secrets; reference an existing one instead"
            ));
        }
        if let Some(pod) = pod_spec(object) {
            check_pod(&id, pod, &index, &mut violations);
        }
    }
    check_gateway_addressing(objects, &index, &mut violations);
    check_gateway_drain_budget(objects, &index, &mut violations);
    violations
}

/// Names of the rendered objects of each kind that other objects refer to.
struct Index<'a> {
    config_maps: Vec<&'a Value>,
    secrets: BTreeSet<&'a str>,
}

impl<'a> Index<'a> {
    fn new(objects: &'a [Value]) -> Self {
        Self {
            config_maps: objects.iter().filter(|o| kind(o) == "ConfigMap").collect(),
            secrets: objects
                .iter()
                .filter(|o| kind(o) == "Secret")
                .map(name)
                .collect(),
        }
    }

    fn config_map(&self, wanted: &str) -> Option<&'a Value> {
        self.config_maps.iter().copied().find(|c| name(c) == wanted)
    }

    fn has_secret(&self, wanted: &str) -> bool {
        self.secrets.contains(wanted) || EXTERNAL_SECRETS.contains(&wanted)
    }
}

fn object_id(object: &Value) -> String {
    format!("{}/{}", kind(object), name(object))
}

/// The hardening every pod and container must have (the "restricted" Pod Security Standard plus
/// resources and probes), and every ConfigMap or Secret it refers to must exist.
fn check_pod(id: &str, pod: &Value, index: &Index<'_>, violations: &mut Vec<String>) {
    let pod_sc = &pod["securityContext"];
    if pod_sc["runAsNonRoot"] != Value::Bool(true) {
        violations.push(format!(
            "{id}: pod securityContext.runAsNonRoot must be true"
        ));
    }
    if pod["automountServiceAccountToken"] != Value::Bool(false) {
        violations.push(format!("{id}: automountServiceAccountToken must be false"));
    }
    if pod["enableServiceLinks"] != Value::Bool(false) {
        violations.push(format!(
            "{id}: enableServiceLinks must be false (service links inject *_PORT variables)"
        ));
    }
    for volume in items(&pod["volumes"]) {
        let volume_name = volume["name"].as_str().unwrap_or("?");
        if let Some(secret) = volume["secret"]["secretName"].as_str()
            && !index.has_secret(secret)
        {
            violations.push(format!(
                "{id}: volume {volume_name} mounts Secret {secret}, neither rendered nor a \
                 documented external one"
            ));
        }
        if let Some(map) = volume["configMap"]["name"].as_str()
            && index.config_map(map).is_none()
        {
            violations.push(format!(
                "{id}: volume {volume_name} mounts ConfigMap {map}, which is not rendered"
            ));
        }
    }
    let pod_seccomp = pod_sc["seccompProfile"]["type"].as_str();
    for container in items(&pod["containers"])
        .iter()
        .chain(items(&pod["initContainers"]))
    {
        let c = format!(
            "{id} container {}",
            container["name"].as_str().unwrap_or("?")
        );
        let sc = &container["securityContext"];
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            violations.push(format!("{c}: seccompProfile must be RuntimeDefault"));
        }
        if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
            violations.push(format!("{c}: readOnlyRootFilesystem must be true"));
        }
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            violations.push(format!("{c}: allowPrivilegeEscalation must be false"));
        }
        if !items(&sc["capabilities"]["drop"]).contains(&Value::from("ALL")) {
            violations.push(format!("{c}: capabilities.drop must contain ALL"));
        }
        let user = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
        if user == Some(0) {
            violations.push(format!("{c}: runs as uid 0"));
        }
        for (section, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            if container["resources"][section][resource].is_null() {
                violations.push(format!("{c}: resources.{section}.{resource} is not set"));
            }
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if container[probe].is_null() {
                violations.push(format!("{c}: {probe} is missing"));
            }
        }
        check_references(&c, container, index, violations);
    }
}

fn check_references(c: &str, container: &Value, index: &Index<'_>, violations: &mut Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for source in items(&container["envFrom"]) {
        config_maps.extend(source["configMapRef"]["name"].as_str());
        secrets.extend(source["secretRef"]["name"].as_str());
    }
    for var in items(&container["env"]) {
        let from = &var["valueFrom"];
        if let Some(cm) = from["configMapKeyRef"]["name"].as_str() {
            let key = from["configMapKeyRef"]["key"].as_str().unwrap_or_default();
            match index.config_map(cm) {
                Some(map) if map["data"][key].is_null() => violations.push(format!(
                    "{c}: env {} reads key `{key}` missing from ConfigMap {cm}",
                    var["name"].as_str().unwrap_or("?")
                )),
                _ => config_maps.push(cm),
            }
        }
        secrets.extend(from["secretKeyRef"]["name"].as_str());
    }
    for cm in config_maps {
        if index.config_map(cm).is_none() {
            violations.push(format!(
                "{c}: refers to ConfigMap {cm}, which is not rendered"
            ));
        }
    }
    for secret in secrets {
        if !index.has_secret(secret) {
            violations.push(format!(
                "{c}: refers to Secret {secret}, neither rendered nor a documented external one"
            ));
        }
    }
}

/// The gateway StatefulSet, if the overlay has one.
fn gateway_set(objects: &[Value]) -> Option<&Value> {
    objects
        .iter()
        .find(|o| kind(o) == "StatefulSet" && name(o) == GATEWAY)
}

/// How many gateway ordinals can exist: the autoscaler's maximum, else the replica count.
fn gateway_ordinals(objects: &[Value], set: &Value) -> u64 {
    let hpa_max = objects
        .iter()
        .filter(|o| kind(o) == "HorizontalPodAutoscaler")
        .filter(|o| {
            o["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
                && o["spec"]["scaleTargetRef"]["name"] == GATEWAY
        })
        .filter_map(|o| o["spec"]["maxReplicas"].as_u64())
        .max();
    hpa_max.unwrap_or_else(|| set["spec"]["replicas"].as_u64().unwrap_or(1))
}

/// The value of an environment variable of the gateway container, following `configMapKeyRef`.
fn gateway_env<'a>(set: &'a Value, index: &Index<'a>, var: &str) -> Option<&'a str> {
    let container = items(&set["spec"]["template"]["spec"]["containers"]).first()?;
    for entry in items(&container["env"]) {
        if entry["name"] == var {
            if let Some(value) = entry["value"].as_str() {
                return Some(value);
            }
            let from = &entry["valueFrom"]["configMapKeyRef"];
            let map = index.config_map(from["name"].as_str()?)?;
            return map["data"][from["key"].as_str()?].as_str();
        }
    }
    for source in items(&container["envFrom"]) {
        if let Some(map) = source["configMapRef"]["name"]
            .as_str()
            .and_then(|n| index.config_map(n))
            && let Some(value) = map["data"][var].as_str()
        {
            return Some(value);
        }
    }
    None
}

/// Every gateway pod that can exist must be reachable at the URL it announces:
/// `<scheme>://<pod>.<GATEWAY_PUBLIC_DOMAIN>` -> Ingress rule -> Service `<pod>` -> that pod.
fn check_gateway_addressing(objects: &[Value], index: &Index<'_>, violations: &mut Vec<String>) {
    let Some(set) = gateway_set(objects) else {
        violations.push(format!("no StatefulSet/{GATEWAY} rendered"));
        return;
    };
    let Some(domain) = gateway_env(set, index, "GATEWAY_PUBLIC_DOMAIN") else {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: GATEWAY_PUBLIC_DOMAIN is not set"
        ));
        return;
    };
    let url = gateway_env(set, index, "SWITCHYARD_PUBLIC_URL").unwrap_or_default();
    if !url.contains("$(POD_NAME).$(GATEWAY_PUBLIC_DOMAIN)") {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: SWITCHYARD_PUBLIC_URL `{url}` is not derived from the pod name \
             and GATEWAY_PUBLIC_DOMAIN"
        ));
    }
    let rules: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "Ingress")
        .flat_map(|o| items(&o["spec"]["rules"]))
        .collect();
    for ordinal in 0..gateway_ordinals(objects, set) {
        let pod = format!("{GATEWAY}-{ordinal}");
        let service = objects
            .iter()
            .find(|o| kind(o) == "Service" && name(o) == pod);
        match service {
            None => violations.push(format!(
                "gateway pod {pod} can exist but has no Service {pod}"
            )),
            Some(svc) => {
                if svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] != pod.as_str() {
                    violations.push(format!("Service/{pod} does not select pod {pod} by name"));
                }
                if svc["spec"]["publishNotReadyAddresses"] != Value::Bool(true) {
                    violations.push(format!(
                        "Service/{pod}: publishNotReadyAddresses must be true so a draining \
                         gateway keeps its clients' route"
                    ));
                }
            }
        }
        let host = format!("{pod}.{domain}");
        let routed = rules.iter().any(|rule| {
            rule["host"] == host.as_str()
                && items(&rule["http"]["paths"])
                    .iter()
                    .any(|p| p["backend"]["service"]["name"] == pod.as_str())
        });
        if !routed {
            violations.push(format!(
                "no Ingress rule routes host {host} to Service {pod}"
            ));
        }
    }
}

/// The gateway's termination grace period must cover the preStop pause plus the drain deadline.
fn check_gateway_drain_budget(objects: &[Value], index: &Index<'_>, violations: &mut Vec<String>) {
    let Some(set) = gateway_set(objects) else {
        return;
    };
    let pod = &set["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let deadline_ms = gateway_env(set, index, "SWITCHYARD_DRAIN_DEADLINE_MS")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30_000);
    let pre_stop = items(&pod["containers"])
        .first()
        .map(|c| &c["lifecycle"]["preStop"])
        .unwrap_or(&Value::Null);
    let pause = pre_stop["sleep"]["seconds"].as_u64().or_else(|| {
        let command = items(&pre_stop["exec"]["command"]);
        match command {
            [bin, secs] if bin.as_str().is_some_and(|b| b.ends_with("sleep")) => {
                secs.as_str().and_then(|s| s.parse().ok())
            }
            _ => None,
        }
    });
    let Some(pause) = pause else {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: preStop must pause (exec sleep N) so endpoints settle before \
             SIGTERM starts the drain"
        ));
        return;
    };
    let needed = pause + deadline_ms.div_ceil(1000);
    if grace <= needed {
        violations.push(format!(
            "StatefulSet/{GATEWAY}: terminationGracePeriodSeconds {grace} must exceed preStop \
             {pause} s + drain deadline {deadline_ms} ms, with a margin"
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The smallest overlay that keeps every rule: one hardened gateway pod reachable at its URL.
    fn compliant() -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "gw"},
                   "data": {"GATEWAY_PUBLIC_DOMAIN": "gw.example.com",
                            "SWITCHYARD_DRAIN_DEADLINE_MS": "30000"}}),
            json!({"kind": "StatefulSet", "metadata": {"name": GATEWAY}, "spec": {
                "replicas": 1,
                "template": {"spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "gateway",
                        "envFrom": [{"configMapRef": {"name": "gw"}}],
                        "env": [
                            {"name": "GATEWAY_PUBLIC_DOMAIN", "valueFrom": {"configMapKeyRef":
                                {"name": "gw", "key": "GATEWAY_PUBLIC_DOMAIN"}}},
                            {"name": "SWITCHYARD_PUBLIC_URL",
                             "value": "https://$(POD_NAME).$(GATEWAY_PUBLIC_DOMAIN)"},
                            {"name": "SWITCHYARD_TOKEN_SECRET", "valueFrom": {"secretKeyRef":
                                {"name": "switchyard-secrets", "key": "token-secret"}}}
                        ],
                        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sleep", "5"]}}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}},
                        "securityContext": {"readOnlyRootFilesystem": true,
                                            "allowPrivilegeEscalation": false,
                                            "capabilities": {"drop": ["ALL"]}}
                    }]
                }}
            }}),
            json!({"kind": "Service", "metadata": {"name": "switchyard-gateway-0"}, "spec": {
                "publishNotReadyAddresses": true,
                "selector": {"statefulset.kubernetes.io/pod-name": "switchyard-gateway-0"}}}),
            json!({"kind": "Ingress", "metadata": {"name": "gw"}, "spec": {"rules": [{
                "host": "switchyard-gateway-0.gw.example.com",
                "http": {"paths": [{"path": "/socket.io",
                    "backend": {"service": {"name": "switchyard-gateway-0"}}}]}}]}}),
        ]
    }

    fn container(objects: &mut [Value]) -> &mut Value {
        &mut objects[1]["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn a_compliant_overlay_passes() {
        assert_eq!(
            policy_violations("prod", &compliant()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn secrets_are_rendered_only_by_dev_overlays() {
        let mut objects = compliant();
        objects.push(json!({"kind": "Secret", "metadata": {"name": "switchyard-secrets"}}));
        assert!(policy_violations("dev", &objects).is_empty());
        let found = policy_violations("prod", &objects);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("only dev overlays"), "{found:?}");
    }

    #[test]
    fn hardening_gaps_are_each_reported() {
        let mut objects = compliant();
        let c = container(&mut objects);
        c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        c["securityContext"]["runAsUser"] = json!(0);
        c["resources"]["limits"] = json!({});
        c["readinessProbe"] = Value::Null;
        c["env"][2]["valueFrom"]["secretKeyRef"]["name"] = json!("unknown");
        objects[1]["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "ca", "secret": {"secretName": "nowhere"}}]);
        let found = policy_violations("prod", &objects).join("\n");
        for expected in [
            "readOnlyRootFilesystem must be true",
            "runs as uid 0",
            "resources.limits.cpu",
            "resources.limits.memory",
            "readinessProbe is missing",
            "refers to Secret unknown",
            "volume ca mounts Secret nowhere",
        ] {
            assert!(
                found.contains(expected),
                "missing `{expected}` in:\n{found}"
            );
        }
    }

    #[test]
    fn every_ordinal_the_autoscaler_may_create_needs_a_route() {
        let mut objects = compliant();
        objects.push(
            json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "gw"},
            "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": GATEWAY},
                     "maxReplicas": 2}}),
        );
        let found = policy_violations("prod", &objects);
        assert_eq!(
            found,
            vec![
                "gateway pod switchyard-gateway-1 can exist but has no Service switchyard-gateway-1"
                    .to_owned(),
                "no Ingress rule routes host switchyard-gateway-1.gw.example.com to Service \
                 switchyard-gateway-1"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn the_grace_period_must_cover_the_drain() {
        let mut objects = compliant();
        objects[0]["data"]["SWITCHYARD_DRAIN_DEADLINE_MS"] = json!("40000");
        let found = policy_violations("prod", &objects);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("terminationGracePeriodSeconds 45"),
            "{found:?}"
        );
    }
}
