//! The pod network on loopback: who gets which 127.x.y.z address, and the few translations
//! that make a manifest's values mean on this machine what they mean in a cluster.
//!
//! **Addresses.** A run claims a /16 of its own, `127.N.0.0/16` with N in 100..=199, by binding
//! its ingress listener on `127.N.0.1` (the claim fails with "address in use" when another run
//! holds N, and the next N is tried), so a dev and a prod run, or two tests, coexist. Inside it:
//! the ingress controller on `127.N.0.1`, Service cluster IPs on `127.N.1.*` (in the order of
//! the rendered Services), pod IPs on `127.N.2.*` and up, a fresh one for every pod created, as
//! in a cluster (a recreated StatefulSet pod keeps its name, not its IP). `127.0.0.1` is never
//! used: the machine's own services (a Redis on 6379) listen there.
//!
//! **Translations**, applied to a container's final environment values and arguments (after
//! `$(VAR)` expansion) and to the commands of its probes and hooks, and nowhere else:
//!
//! 1. A wildcard listen address, `0.0.0.0` or `[::]`, means the pod's IP (a process bound to the
//!    wildcard would take the port on every address of the machine, and on every pod at once).
//! 2. A Service name in host position (right after `://` or `@`, or right before `:<port>`), short
//!    (`switchyard-relay`) or qualified (`.<namespace>`, `.<namespace>.svc`,
//!    `.<namespace>.svc.cluster.local`), becomes the Service's cluster IP; for a headless
//!    Service, the address of its first endpoint, and `<pod>.<headless service>[...]` the pod's.
//!    Only host positions are rewritten, so a node id that happens to equal a Service name
//!    (`switchyard-gateway-0`) is left alone.
//! 3. A volume's `mountPath` at the start of a value (or right after `=`, as in
//!    `--flag=/path`) becomes the pod's directory for that volume.
//!
//! Values that name an address outside the cluster (the prod overlay's external Redis at
//! `127.0.0.1:<port>` in a test) pass through untouched.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Which octet N of `127.N.0.0/16` runs may use.
const SUBNETS: std::ops::RangeInclusive<u8> = 100..=199;

/// A run's addresses (see the module docs).
#[derive(Debug)]
pub struct AddressPlan {
    subnet: u8,
    next_pod: std::sync::atomic::AtomicU32,
}

/// The listeners that claimed a subnet: the ingress controller's HTTP port and, when asked
/// for, its HTTPS port.
pub struct Claim {
    pub plan: AddressPlan,
    pub http: TcpListener,
    pub https: Option<TcpListener>,
}

impl AddressPlan {
    /// Claims a free subnet by binding the ingress controller's listeners on `127.N.0.1`:
    /// ports 80 and 443 where this process may bind them (root or CAP_NET_BIND_SERVICE), else
    /// 8080 and 8443 (each run has its own address, so fixed ports never collide).
    pub fn claim(with_https: bool) -> Result<Claim> {
        let start = (std::process::id() % u32::from(SUBNETS.end() - SUBNETS.start() + 1)) as u8;
        let count = SUBNETS.end() - SUBNETS.start() + 1;
        let mut last_error = None;
        for i in 0..count {
            let subnet = SUBNETS.start() + (start + i) % count;
            let ip = Ipv4Addr::new(127, subnet, 0, 1);
            match bind_ingress(ip, with_https) {
                Ok((http, https)) => {
                    return Ok(Claim {
                        plan: AddressPlan {
                            subnet,
                            next_pod: std::sync::atomic::AtomicU32::new(0),
                        },
                        http,
                        https,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("binding the ingress on {ip}"));
                }
            }
        }
        Err(anyhow::anyhow!(
            "every subnet 127.{}-{}.0.0/16 is taken by another run ({last_error:?})",
            SUBNETS.start(),
            SUBNETS.end()
        ))
    }

    /// The `N` of `127.N.0.0/16`.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    pub fn ingress_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.subnet, 0, 1)
    }

    /// The cluster IP of the `index`-th Service (0-based).
    pub fn service_ip(&self, index: usize) -> Result<Ipv4Addr> {
        let host = u8::try_from(index + 1)
            .ok()
            .filter(|h| *h < 255)
            .context("more than 254 Services")?;
        Ok(Ipv4Addr::new(127, self.subnet, 1, host))
    }

    /// A fresh pod IP.
    pub fn next_pod_ip(&self) -> Result<Ipv4Addr> {
        let n = self
            .next_pod
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let third = 2 + n / 250;
        let fourth = 1 + n % 250;
        match u8::try_from(third) {
            Ok(third) => Ok(Ipv4Addr::new(127, self.subnet, third, fourth as u8)),
            Err(_) => bail!("this run created more than 63,000 pods"),
        }
    }
}

fn bind_ingress(
    ip: Ipv4Addr,
    with_https: bool,
) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
    let bind = |port: u16| TcpListener::bind(SocketAddr::from((ip, port)));
    let (http, https_port) = match bind(80) {
        Ok(l) => (l, 443),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (bind(8080)?, 8443),
        Err(e) => return Err(e),
    };
    let https = if with_https {
        Some(bind(https_port)?)
    } else {
        None
    };
    Ok((http, https))
}

/// What translation 2 resolves: the address a Service name, or a pod's name under a headless
/// Service, stands for; `None` when the name is not one of the run's.
pub type Resolver<'a> = dyn Fn(&str) -> Option<Ipv4Addr> + 'a;

/// The translations of one container (see the module docs).
pub struct Translator<'a> {
    pub pod_ip: Ipv4Addr,
    pub resolve: &'a Resolver<'a>,
    /// `(mountPath, local directory)`, longest mount path first.
    pub mounts: Vec<(String, PathBuf)>,
}

impl Translator<'_> {
    pub fn value(&self, value: &str) -> String {
        let value = replace_wildcards(value, self.pod_ip);
        let value = replace_service_hosts(&value, self.resolve);
        self.replace_mounts(&value)
    }

    /// A path as the process must open it: under the pod's directory when a volume is mounted
    /// there, unchanged otherwise.
    pub fn path(&self, path: &str) -> Option<PathBuf> {
        self.mounts.iter().find_map(|(mount, local)| {
            let rest = path.strip_prefix(mount.trim_end_matches('/'))?;
            if rest.is_empty() {
                Some(local.clone())
            } else {
                rest.strip_prefix('/').map(|r| local.join(r))
            }
        })
    }

    fn replace_mounts(&self, value: &str) -> String {
        if let Some(local) = self.path(value) {
            return local.display().to_string();
        }
        if let Some((flag, path)) = value.split_once('=')
            && let Some(local) = self.path(path)
        {
            return format!("{flag}={}", local.display());
        }
        value.to_owned()
    }
}

/// Translation 1.
fn replace_wildcards(value: &str, pod_ip: Ipv4Addr) -> String {
    let ip = pod_ip.to_string();
    let value = value.replace("[::]", &ip);
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(at) = rest.find("0.0.0.0") {
        out.push_str(&rest[..at]);
        let before = out.chars().last();
        let after = rest[at + 7..].chars().next();
        let bounded = |c: Option<char>| !c.is_some_and(|c| c.is_ascii_digit() || c == '.');
        if bounded(before) && bounded(after) {
            out.push_str(&ip);
        } else {
            out.push_str("0.0.0.0");
        }
        rest = &rest[at + 7..];
    }
    out.push_str(rest);
    out
}

/// Translation 2.
fn replace_service_hosts(value: &str, resolve: &Resolver<'_>) -> String {
    let is_host_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let bytes = value.as_bytes();
    while i < value.len() {
        let c = value[i..].chars().next().unwrap_or('\0');
        if !c.is_ascii_alphanumeric() || (i > 0 && is_host_char(char::from(bytes[i - 1]))) {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let end = value[i..]
            .find(|c: char| !is_host_char(c))
            .map_or(value.len(), |e| i + e);
        let token = &value[i..end];
        let before = &value[..i];
        let after = &value[end..];
        let host_position = before.ends_with("://")
            || before.ends_with('@')
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_digit()));
        match resolve(token).filter(|_| host_position) {
            Some(ip) => out.push_str(&ip.to_string()),
            None => out.push_str(token),
        }
        i = end;
    }
    out
}

/// The short Service (or `<pod>.<service>`) name a DNS name stands for in `namespace`, if it is
/// a cluster name at all: `a`, `a.ns`, `a.ns.svc`, `a.ns.svc.cluster.local` give `a`;
/// `p.a`, `p.a.ns`, ... give `p.a`.
pub fn cluster_name<'a>(name: &'a str, namespace: &str) -> Vec<&'a str> {
    let mut candidates = vec![name];
    for suffix in [
        format!(".{namespace}.svc.cluster.local"),
        format!(".{namespace}.svc"),
        format!(".{namespace}"),
    ] {
        if let Some(short) = name.strip_suffix(suffix.as_str()) {
            candidates.push(short);
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translator<'a>(resolve: &'a Resolver<'a>) -> Translator<'a> {
        Translator {
            pod_ip: Ipv4Addr::new(127, 150, 2, 7),
            resolve,
            mounts: vec![
                (
                    "/etc/switchyard/redis-ca".into(),
                    PathBuf::from("/run/p/redis-ca"),
                ),
                ("/tmp".into(), PathBuf::from("/run/p/tmp")),
            ],
        }
    }

    fn services(name: &str) -> Option<Ipv4Addr> {
        cluster_name(name, "switchyard")
            .into_iter()
            .find_map(|short| match short {
                "switchyard-relay" => Some(Ipv4Addr::new(127, 150, 1, 2)),
                "switchyard-gateway-0" => Some(Ipv4Addr::new(127, 150, 1, 5)),
                _ => None,
            })
    }

    #[test]
    fn wildcards_mean_the_pod() {
        let t = translator(&services);
        assert_eq!(t.value("0.0.0.0:4000"), "127.150.2.7:4000");
        assert_eq!(t.value("[::]:4000"), "127.150.2.7:4000");
        assert_eq!(t.value("--bind=0.0.0.0"), "--bind=127.150.2.7");
        assert_eq!(t.value("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(t.value("0.0.0.0/32"), "127.150.2.7/32");
        assert_eq!(t.value("1.0.0.0.0"), "1.0.0.0.0");
    }

    #[test]
    fn service_names_resolve_only_in_host_position() {
        let t = translator(&services);
        assert_eq!(
            t.value("http://switchyard-relay:7101"),
            "http://127.150.1.2:7101"
        );
        assert_eq!(
            t.value("http://switchyard-relay.switchyard.svc.cluster.local:7101,http://x:1"),
            "http://127.150.1.2:7101,http://x:1"
        );
        assert_eq!(
            t.value("redis://:pw@switchyard-relay.switchyard:6379"),
            "redis://:pw@127.150.1.2:6379"
        );
        assert_eq!(t.value("switchyard-relay:7101"), "127.150.1.2:7101");
        // A node id equal to a per-pod Service name is not an address.
        assert_eq!(t.value("switchyard-gateway-0"), "switchyard-gateway-0");
        // Another namespace, or a public name under it, is not ours.
        assert_eq!(
            t.value("http://switchyard-relay.other:7101"),
            "http://switchyard-relay.other:7101"
        );
        assert_eq!(
            t.value("https://switchyard-gateway-0.gw.example.com"),
            "https://switchyard-gateway-0.gw.example.com"
        );
        assert_eq!(
            t.value("http://my-switchyard-relay:1"),
            "http://my-switchyard-relay:1"
        );
    }

    #[test]
    fn mount_paths_map_to_the_pods_directories() {
        let t = translator(&services);
        assert_eq!(
            t.value("/etc/switchyard/redis-ca/ca.pem"),
            "/run/p/redis-ca/ca.pem"
        );
        assert_eq!(
            t.value("--tls-ca=/tmp/ca.pem"),
            "--tls-ca=/run/p/tmp/ca.pem"
        );
        assert_eq!(t.value("/tmpfoo"), "/tmpfoo");
        assert_eq!(t.value("/etc/other"), "/etc/other");
    }

    #[test]
    fn two_claims_get_two_subnets() -> Result<()> {
        let a = AddressPlan::claim(false)?;
        let b = AddressPlan::claim(false)?;
        assert_ne!(a.plan.subnet(), b.plan.subnet());
        let ip = a.plan.next_pod_ip()?;
        assert_eq!(ip.octets()[..3], [127, a.plan.subnet(), 2]);
        assert_ne!(a.plan.next_pod_ip()?, ip);
        Ok(())
    }
}
