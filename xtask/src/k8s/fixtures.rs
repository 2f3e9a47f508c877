//! What an overlay expects to exist outside it, provided for a local run.
//!
//! A production overlay references Secrets it does not render (docs/deploy.md says how an
//! operator creates them) and an external Redis. For a run, every Secret that is referenced but
//! not rendered is filled here, key by key, from what the manifests ask for:
//!
//! - `redis-url`: a private `redis-server` ([`RedisServer`], on 127.0.0.1 and a free port, the
//!   "external" Redis). When the manifests also ask for `redis-password` (an ACL user, named by
//!   `SWITCHYARD_REDIS_USERNAME`), it runs as managed Redis does: TLS only, with the run's test
//!   CA, and that user confined by the exact rule `docs/deploy.md` tells operators to create
//!   (so a run proves the documented least privilege suffices; `ACL LOG` is checked after);
//!   `rediss://127.0.0.1:<port>` then, else `redis://127.0.0.1:<port>`;
//! - `redis-password`: that ACL user's password;
//! - a key ending in `.pem` or `.crt` of a non-TLS Secret (a CA bundle): the run's test CA;
//! - `tls.crt` / `tls.key` of a Secret named in an Ingress `tls` section: a certificate for its
//!   hosts signed by the run's test CA ([`TestPki`]), which clients must trust;
//! - any other key (tokens and secrets): 32 random bytes, hex.
//!
//! A Secret referenced wholesale (`envFrom`, or a volume without `items`) has no keys to go by
//! and is refused with a message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use switchyard_testkit::redis::{RedisOptions, RedisServer};
use switchyard_testkit::tls::TestPki;

use super::controllers::random_hex;
use super::model::{Container, Ingress, KeyValues, PodSpec};

/// The provided Secrets and the processes and files behind them; dropping it stops the Redis
/// and removes the certificates.
pub struct Fixtures {
    pub secrets: Vec<KeyValues>,
    pub redis: Option<RedisServer>,
    pub pki: Option<Arc<TestPki>>,
}

impl Fixtures {
    /// The CA clients must trust for the ingress's TLS hosts, if any.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.pki.as_ref().map(|p| p.file("ca.pem"))
    }
}

/// Fills every Secret `objects` reference without rendering (see the module docs).
pub fn provide(
    objects: &[Value],
    rendered: &BTreeMap<String, KeyValues>,
    ingresses: &[Ingress],
    root: &Path,
) -> Result<Fixtures> {
    // Secret name -> keys wanted; and the TLS Secrets with their hosts.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut tls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut username = None;
    for object in objects {
        let spec = match object["kind"].as_str() {
            Some("Deployment" | "StatefulSet") => &object["spec"]["template"]["spec"],
            _ => continue,
        };
        let spec: PodSpec = serde_json::from_value(spec.clone()).context("a pod template")?;
        for container in &spec.containers {
            secret_keys(container, rendered, &mut wanted)?;
            for var in &container.env {
                if var.name == "SWITCHYARD_REDIS_USERNAME" {
                    username = var.value.clone();
                }
            }
        }
        for volume in &spec.volumes {
            if let Some(secret) = &volume.secret
                && !rendered.contains_key(&secret.secret_name)
            {
                if secret.items.is_empty() {
                    bail!(
                        "volume {} mounts Secret {} without `items`: list the keys so a local \
                         run knows what to provide",
                        volume.name,
                        secret.secret_name
                    );
                }
                wanted
                    .entry(secret.secret_name.clone())
                    .or_default()
                    .extend(secret.items.iter().map(|i| i.key.clone()));
            }
        }
    }
    for object in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
        if let Some(name) = object["data"]["SWITCHYARD_REDIS_USERNAME"].as_str() {
            username = Some(name.to_owned());
        }
    }
    for ingress in ingresses {
        for entry in &ingress.spec.tls {
            if let Some(secret) = &entry.secret_name
                && !rendered.contains_key(secret)
            {
                tls.entry(secret.clone())
                    .or_default()
                    .extend(entry.hosts.iter().cloned());
            }
        }
    }

    let mut fixtures = Fixtures {
        secrets: Vec::new(),
        redis: None,
        pki: None,
    };
    if wanted.is_empty() && tls.is_empty() {
        return Ok(fixtures);
    }
    let hosts: Vec<&str> = tls.values().flatten().map(String::as_str).collect();
    let pki = Arc::new(TestPki::generate_for("k8s-run", &hosts)?);
    let ca = pki.ca_pem()?;
    if wanted.values().any(|keys| keys.contains("redis-url")) {
        let options = if wanted.values().any(|keys| keys.contains("redis-password")) {
            let user = username.as_deref().unwrap_or("default");
            RedisOptions::managed(Arc::clone(&pki), user, &documented_acl_rule(root, user)?)
        } else {
            RedisOptions::default()
        };
        fixtures.redis = Some(RedisServer::start_with(options)?);
    }
    let access = fixtures.redis.as_ref().map(RedisServer::access);
    for (name, keys) in &wanted {
        let mut data = BTreeMap::new();
        for key in keys {
            let value = match key.as_str() {
                "redis-url" => access.as_ref().map(|a| a.url.clone()).unwrap_or_default(),
                "redis-password" => access
                    .as_ref()
                    .and_then(|a| a.password.clone())
                    .context("the manifests ask for redis-password but name no Redis URL")?,
                k if k.ends_with(".pem") || k.ends_with(".crt") => {
                    data.insert(key.clone(), ca.clone());
                    continue;
                }
                _ => random_hex(32)?,
            };
            data.insert(key.clone(), value.into_bytes());
        }
        fixtures.secrets.push(KeyValues {
            name: name.clone(),
            data,
        });
    }
    for (name, _) in tls {
        let cert = std::fs::read(pki.file("server.pem"))?;
        let key = std::fs::read(pki.file("server-key.pem"))?;
        fixtures.secrets.push(KeyValues {
            name,
            data: BTreeMap::from([("tls.crt".to_owned(), cert), ("tls.key".to_owned(), key)]),
        });
    }
    fixtures.pki = Some(pki);
    Ok(fixtures)
}

/// The ACL rule `docs/deploy.md` tells operators to create for `user` (the text after
/// `ACL SETUSER <user> on >PASSWORD`): the one line of it in the document, which a unit test of
/// `switchyard-redis` keeps equal to the rule the services need.
fn documented_acl_rule(root: &Path, user: &str) -> Result<String> {
    let doc = root.join("docs").join("deploy.md");
    let text =
        std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let documented = "ACL SETUSER switchyard on >PASSWORD ";
    let rule = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(documented))
        .with_context(|| {
            format!(
                "{} has no line starting `{documented}`: the managed-Redis section must give \
                 operators the ACL rule",
                doc.display()
            )
        })?;
    if user != "switchyard" {
        bail!(
            "the manifests name the Redis ACL user `{user}`, but docs/deploy.md documents the \
             rule for `switchyard`"
        );
    }
    Ok(rule.to_owned())
}

fn secret_keys(
    container: &Container,
    rendered: &BTreeMap<String, KeyValues>,
    wanted: &mut BTreeMap<String, BTreeSet<String>>,
) -> Result<()> {
    for from in &container.env_from {
        if let Some(r) = &from.secret_ref
            && !rendered.contains_key(&r.name)
        {
            bail!(
                "container {} takes every key of Secret {} (envFrom), which is not rendered: a \
                 local run cannot know its keys",
                container.name,
                r.name
            );
        }
    }
    for var in &container.env {
        if let Some(r) = var
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            && !rendered.contains_key(&r.name)
        {
            wanted
                .entry(r.name.clone())
                .or_default()
                .insert(r.key.clone());
        }
    }
    Ok(())
}
