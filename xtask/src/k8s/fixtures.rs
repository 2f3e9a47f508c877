//! What an overlay expects to exist outside it, provided for a local run.
//!
//! A production overlay references Secrets it does not render (docs/deploy.md says how an
//! operator creates them) and an external Redis. For a run, every Secret that is referenced but
//! not rendered is filled here, key by key, from what the manifests ask for:
//!
//! - `redis-url`: a private `redis-server` ([`RedisServer`], on 127.0.0.1 and a free port, the
//!   "external" Redis), `redis://127.0.0.1:<port>`;
//! - `redis-password`: a random password, set on that server for the ACL user the manifests name
//!   in `SWITCHYARD_REDIS_USERNAME` (or the default user). Once the binaries read
//!   `SWITCHYARD_REDIS_USERNAME` and `SWITCHYARD_REDIS_PASSWORD` (their `--help` says so), the
//!   default user is switched off, so a run proves the credentials are used; before that it
//!   stays on and the credentials are harmless;
//! - a key ending in `.pem` or `.crt` of a non-TLS Secret (a CA bundle): the run's test CA;
//! - `tls.crt` / `tls.key` of a Secret named in an Ingress `tls` section: a certificate for its
//!   hosts signed by the run's test CA ([`TestPki`]), which clients must trust;
//! - any other key (tokens and secrets): 32 random bytes, hex.
//!
//! A Secret referenced wholesale (`envFrom`, or a volume without `items`) has no keys to go by
//! and is refused with a message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::tls::TestPki;

use super::controllers::random_hex;
use super::flags::accepted_by;
use super::model::{Container, Ingress, KeyValues, PodSpec};

/// The provided Secrets and the processes and files behind them; dropping it stops the Redis
/// and removes the certificates.
pub struct Fixtures {
    pub secrets: Vec<KeyValues>,
    pub redis: Option<RedisServer>,
    pub pki: Option<TestPki>,
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
    bin_dir: &Path,
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
    let pki = TestPki::generate_for("k8s-run", &hosts)?;
    let ca = pki.ca_pem()?;
    let password = random_hex(16)?;
    for (name, keys) in &wanted {
        let mut data = BTreeMap::new();
        for key in keys {
            let value = match key.as_str() {
                "redis-url" => {
                    let redis = match &fixtures.redis {
                        Some(redis) => redis,
                        None => fixtures.redis.insert(RedisServer::start()?),
                    };
                    redis.url().into_bytes()
                }
                "redis-password" => password.clone().into_bytes(),
                k if k.ends_with(".pem") || k.ends_with(".crt") => ca.clone(),
                _ => random_hex(32)?.into_bytes(),
            };
            data.insert(key.clone(), value);
        }
        fixtures.secrets.push(KeyValues {
            name: name.clone(),
            data,
        });
    }
    if wanted.values().any(|keys| keys.contains("redis-password")) {
        let redis = match &fixtures.redis {
            Some(redis) => redis,
            None => fixtures.redis.insert(RedisServer::start()?),
        };
        let reply = match username.as_deref() {
            None | Some("default") => {
                redis.command(&["CONFIG", "SET", "requirepass", &password])?
            }
            Some(user) => redis.command(&[
                "ACL",
                "SETUSER",
                user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ])?,
        };
        if !reply.starts_with("+OK") {
            bail!("setting the test Redis password failed: {reply}");
        }
        let user = username.as_deref().unwrap_or("default");
        if user != "default" && credentials_are_read(bin_dir) {
            let reply = redis.command(&["ACL", "SETUSER", "default", "off"])?;
            if !reply.starts_with("+OK") {
                bail!("switching the test Redis's default user off failed: {reply}");
            }
        }
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

/// Whether placement and the relay read the Redis ACL credentials from their environment.
fn credentials_are_read(bin_dir: &Path) -> bool {
    ["switchyard-placement", "switchyard-relay"]
        .iter()
        .all(|bin| {
            accepted_by(&bin_dir.join(bin)).is_ok_and(|names| {
                names.env.contains("SWITCHYARD_REDIS_USERNAME")
                    && names.env.contains("SWITCHYARD_REDIS_PASSWORD")
            })
        })
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
