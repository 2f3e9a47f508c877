//! [`Endpoint`]: where Redis is and how to talk to it (plain or TLS, which CA, which ACL user),
//! parsed and checked once, before anything connects.
//!
//! Everything a user can get wrong in the configuration is found here, at startup, as an
//! [`EndpointError`] naming the flag to fix: an unknown scheme, a CA bundle without a single
//! certificate, a client key that does not fit its certificate, TLS files given for a plain
//! `redis://` URL. What only the server can tell (a wrong password, a CA that did not sign the
//! server's certificate, a TLS URL for a plain server) is found by the first connection; see
//! [`crate::Error::hint`].
//!
//! No message of this module contains the password: URLs are shown through
//! [`switchyard_common::config::redact_url`], and node addresses without their userinfo.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_common::config::redact_url;

/// `redis+cluster://host:port[,host:port…]`: a Redis Cluster over plain TCP.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";
/// `rediss+cluster://host:port[,host:port…]`: a Redis Cluster over TLS (`tls-cluster yes`).
pub const TLS_CLUSTER_SCHEME: &str = "rediss+cluster://";

/// The URL schemes `--redis-url` accepts.
pub const SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis+unix://",
    "unix://",
    CLUSTER_SCHEME,
    TLS_CLUSTER_SCHEME,
];

/// Whether `url` starts with one of the accepted [`SCHEMES`].
pub fn is_supported_url(url: &str) -> bool {
    SCHEMES.iter().any(|s| url.starts_with(s))
}

/// A Redis configuration that cannot work, found before connecting. Each message names the
/// flag to fix and never contains a password.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "--redis-url must start with redis://, rediss://, redis+unix://, unix://, \
         redis+cluster:// or rediss+cluster:// (got `{0}`)"
    )]
    UnsupportedScheme(String),
    #[error("--redis-url `{url}` is not a valid Redis URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "{flag} is set but --redis-url is `{url}`, which is not TLS: use rediss:// or \
         rediss+cluster:// (a CA bundle or client certificate is never ignored)"
    )]
    TlsOptionWithoutTls { flag: &'static str, url: String },
    #[error(
        "--redis-client-cert-file and --redis-client-key-file go together; only {given} is set"
    )]
    HalfClientIdentity { given: &'static str },
    #[error(
        "--redis-username is set but there is no password (--redis-password, \
         SWITCHYARD_REDIS_PASSWORD, or in the URL): Redis authenticates a user only with one"
    )]
    UsernameWithoutPassword,
    #[error("{flag} is set but --redis-url (SWITCHYARD_REDIS_URL) is not")]
    OptionWithoutUrl { flag: &'static str },
    #[error("{flag} `{}`: {source}", path.display())]
    ReadFile {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} `{}`: {reason}", path.display())]
    BadPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Where Redis is and how to reach it: one server or a cluster's seed nodes, each with the
/// credentials to send, plus the TLS material when it is not the platform default. Cheap to
/// clone. `Debug` and `Display` show the URL with its password redacted.
///
/// Build it with [`Endpoint::parse`] (a URL alone) or [`crate::RedisArgs::endpoint`] (the
/// service flags); [`crate::Pool::new`] takes it.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) topology: Topology,
    /// Our own trust anchors and/or client identity, for TLS only; `None` means the platform's
    /// trust store (rustls-native-certs) and no client certificate.
    pub(crate) tls: Option<Arc<TlsCertificates>>,
    shown: String,
}

#[derive(Clone)]
pub(crate) enum Topology {
    /// One server, TLS parameters already applied to its address.
    Server(Box<ConnectionInfo>),
    /// Seed nodes of a cluster; the rest are discovered.
    Cluster(Vec<ConnectionInfo>),
}

/// TLS files and credentials that come with a URL (the `--redis-*` flags besides the URL).
#[derive(Debug, Default, Clone)]
pub struct Access<'a> {
    /// PEM bundle of the CAs to trust instead of the platform's store.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate chain and its key, for servers that ask for one (mutual TLS).
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
    /// ACL user and password; each replaces the URL's own.
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl Endpoint {
    /// A URL alone: credentials from its userinfo, TLS trust from the platform store.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        Endpoint::new(url, &Access::default())
    }

    /// A URL with the TLS files and credentials of `access`, checked and loaded now.
    pub fn new(url: &str, access: &Access<'_>) -> Result<Endpoint, EndpointError> {
        if !is_supported_url(url) {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            return Err(EndpointError::UnsupportedScheme(format!("{scheme}://…")));
        }
        let shown = redact_url(url);
        let cluster_tls = url.starts_with(TLS_CLUSTER_SCHEME);
        let mut topology = if url.starts_with(CLUSTER_SCHEME) || cluster_tls {
            Topology::Cluster(cluster_nodes(url, &shown)?)
        } else {
            let info = url.into_connection_info().map_err(|e| invalid(&shown, e))?;
            Topology::Server(Box::new(info))
        };
        let is_tls = match &topology {
            Topology::Server(info) => matches!(info.addr(), ConnectionAddr::TcpTls { .. }),
            Topology::Cluster(_) => cluster_tls,
        };
        let tls = tls_files(access, is_tls, &shown)?;
        for info in topology.nodes_mut() {
            let mut settings = info.redis_settings().clone();
            if let Some(user) = access.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = access.password {
                settings = settings.set_password(password);
            }
            if settings.username().is_some() && settings.password().is_none() {
                return Err(EndpointError::UsernameWithoutPassword);
            }
            *info = info
                .clone()
                .set_redis_settings(settings)
                .set_tcp_settings(tcp_settings());
        }
        if let (Topology::Server(info), Some(certs)) = (&mut topology, &tls) {
            // The only public way to attach certificates to one server's address.
            let client = redis::Client::build_with_tls(info.as_ref().clone(), (**certs).clone())
                .map_err(|e| invalid(&shown, e))?;
            **info = client.get_connection_info().clone();
        }
        Ok(Endpoint {
            topology,
            tls,
            shown,
        })
    }

    /// Whether this names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.topology
            .nodes()
            .first()
            .is_some_and(|n| matches!(n.addr(), ConnectionAddr::TcpTls { .. }))
    }

    /// Host and port of the first (or only) node, for diagnostics.
    pub(crate) fn first_address(&self) -> Option<(&str, u16)> {
        match self.topology.nodes().first()?.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.as_str(), *port))
            }
            _ => None,
        }
    }

    /// The ACL user connections authenticate as (`None`: the `default` user).
    pub fn username(&self) -> Option<&str> {
        self.topology.nodes().first()?.redis_settings().username()
    }

    /// Whether a password is sent (never the password itself).
    pub fn has_password(&self) -> bool {
        self.topology
            .nodes()
            .first()
            .is_some_and(|n| n.redis_settings().password().is_some())
    }
}

impl std::fmt::Display for Endpoint {
    /// The URL with its password redacted, plus the user the flags set, e.g.
    /// `rediss://127.0.0.1:6380 (TLS, user switchyard)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)?;
        let mut notes = Vec::new();
        if self.is_tls() {
            notes.push(
                if self.tls.as_ref().is_some_and(|t| t.root_cert.is_some()) {
                    "TLS, own CA".to_owned()
                } else {
                    "TLS, platform CAs".to_owned()
                },
            );
        }
        if let Some(user) = self.username() {
            notes.push(format!("user {user}"));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(url)
    }
}

impl Topology {
    pub(crate) fn nodes(&self) -> &[ConnectionInfo] {
        match self {
            Topology::Server(info) => std::slice::from_ref(info.as_ref()),
            Topology::Cluster(nodes) => nodes,
        }
    }

    fn nodes_mut(&mut self) -> &mut [ConnectionInfo] {
        match self {
            Topology::Server(info) => std::slice::from_mut(info.as_mut()),
            Topology::Cluster(nodes) => nodes,
        }
    }
}

/// `TCP_NODELAY` on: every script call is one small round trip, and Nagle plus delayed ACKs
/// would add tens of milliseconds to each.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn invalid(shown: &str, e: impl std::fmt::Display) -> EndpointError {
    EndpointError::InvalidUrl {
        url: shown.to_owned(),
        reason: e.to_string(),
    }
}

/// The nodes named by a `redis+cluster://` or `rediss+cluster://` URL, each as
/// `redis[s]://[userinfo@]host:port`.
fn cluster_nodes(url: &str, shown: &str) -> Result<Vec<ConnectionInfo>, EndpointError> {
    let (rest, node_scheme) = if let Some(rest) = url.strip_prefix(TLS_CLUSTER_SCHEME) {
        (rest, "rediss://")
    } else if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        (rest, "redis://")
    } else {
        return Err(invalid(shown, "not a cluster URL"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, rest),
    };
    if hosts.contains(['/', '?', '#']) {
        return Err(invalid(
            shown,
            "a cluster URL takes only host:port[,host:port…] (no database, path or options)",
        ));
    }
    hosts
        .split(',')
        .map(|host| {
            if host
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
            {
                return Err(invalid(
                    shown,
                    format!("cluster node `{host}` is not host:port"),
                ));
            }
            let node = match userinfo {
                Some(user) => format!("{node_scheme}{user}@{host}"),
                None => format!("{node_scheme}{host}"),
            };
            node.into_connection_info()
                .map_err(|e| invalid(shown, format!("cluster node `{host}`: {e}")))
        })
        .collect()
}

/// Reads and checks the CA bundle and client identity of `access`; `None` when neither is set
/// (plain TCP, or TLS trusting the platform store).
fn tls_files(
    access: &Access<'_>,
    is_tls: bool,
    shown: &str,
) -> Result<Option<Arc<TlsCertificates>>, EndpointError> {
    let identity = match (access.client_cert_file, access.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            return Err(EndpointError::HalfClientIdentity {
                given: "--redis-client-cert-file",
            });
        }
        (None, Some(_)) => {
            return Err(EndpointError::HalfClientIdentity {
                given: "--redis-client-key-file",
            });
        }
    };
    if !is_tls {
        let flag = match (access.ca_file, identity) {
            (Some(_), _) => "--redis-ca-file",
            (None, Some(_)) => "--redis-client-cert-file",
            (None, None) => return Ok(None),
        };
        return Err(EndpointError::TlsOptionWithoutTls {
            flag,
            url: shown.to_owned(),
        });
    }
    let root_cert = access.ca_file.map(read_ca_bundle).transpose()?;
    let client_tls = identity
        .map(|(cert, key)| read_identity(cert, key, root_cert.as_deref()))
        .transpose()?;
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(TlsCertificates {
        client_tls,
        root_cert,
    })))
}

const CA_FLAG: &str = "--redis-ca-file";
const CERT_FLAG: &str = "--redis-client-cert-file";
const KEY_FLAG: &str = "--redis-client-key-file";

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, EndpointError> {
    std::fs::read(path).map_err(|source| EndpointError::ReadFile {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn bad_pem(flag: &'static str, path: &Path, reason: impl std::fmt::Display) -> EndpointError {
    EndpointError::BadPem {
        flag,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate of the bundle parsed and accepted as a trust anchor; at least one.
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, EndpointError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(flag, path, e))?;
    if certs.is_empty() {
        return Err(bad_pem(
            flag,
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, EndpointError> {
    let pem = read(CA_FLAG, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(CA_FLAG, path, &pem)? {
        roots
            .add(cert)
            .map_err(|e| bad_pem(CA_FLAG, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(pem)
}

/// The client certificate chain and key, checked by building the rustls client configuration
/// redis-rs will build from them (so a key of an unsupported type, or one that does not belong
/// to the certificate, is refused here rather than at every connection attempt).
fn read_identity(
    cert_path: &Path,
    key_path: &Path,
    ca: Option<&[u8]>,
) -> Result<redis::ClientTlsConfig, EndpointError> {
    let client_cert = read(CERT_FLAG, cert_path)?;
    let client_key = read(KEY_FLAG, key_path)?;
    let chain = certificates(CERT_FLAG, cert_path, &client_cert)?;
    let key = PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
        bad_pem(
            KEY_FLAG,
            key_path,
            format!("no usable private key in it: {e}"),
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add_parsable_certificates(CertificateDer::pem_slice_iter(ca).flatten());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
        })
        .map_err(|e| bad_pem(KEY_FLAG, key_path, format!("does not fit {CERT_FLAG}: {e}")))?;
    Ok(redis::ClientTlsConfig {
        client_cert,
        client_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(e: &Endpoint) -> Vec<String> {
        e.topology
            .nodes()
            .iter()
            .map(|n| n.addr().to_string())
            .collect()
    }

    #[test]
    fn cluster_urls_name_their_nodes() -> Result<(), EndpointError> {
        let e = Endpoint::parse("redis+cluster://u:pw@10.0.0.1:7000,h2:7001/")?;
        assert_eq!(hosts(&e), ["10.0.0.1:7000", "h2:7001"]);
        assert!(e.is_cluster() && !e.is_tls());
        assert!(
            e.topology
                .nodes()
                .iter()
                .all(|n| n.redis_settings().password() == Some("pw"))
        );
        let e = Endpoint::parse("rediss+cluster://h1:7000,h2:7001")?;
        assert!(e.is_cluster() && e.is_tls());
        for bad in [
            "redis+cluster://",
            "redis+cluster://h1",
            "redis+cluster://h1:1,",
            "redis+cluster://h1:1/0",
            "rediss+cluster://h1:1?x=1",
            "http://h1:1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} must be refused");
        }
        Ok(())
    }

    #[test]
    fn flags_override_the_urls_credentials() -> Result<(), EndpointError> {
        let access = Access {
            username: Some("sy"),
            password: Some("flag-secret"),
            ..Access::default()
        };
        let e = Endpoint::new("rediss://old:url-secret@h:6380", &access)?;
        let node = &e.topology.nodes()[0];
        assert_eq!(node.redis_settings().username(), Some("sy"));
        assert_eq!(node.redis_settings().password(), Some("flag-secret"));
        assert_eq!(
            e.to_string(),
            "rediss://old:***@h:6380 (TLS, platform CAs, user sy)"
        );

        let only_user = Access {
            username: Some("sy"),
            ..Access::default()
        };
        assert!(matches!(
            Endpoint::new("redis://h:1", &only_user),
            Err(EndpointError::UsernameWithoutPassword)
        ));
        // The password may come from the URL while the user comes from the flag.
        let e = Endpoint::new("redis://:pw@h:1", &only_user)?;
        assert_eq!(e.username(), Some("sy"));
        assert!(e.has_password());
        Ok(())
    }

    #[test]
    fn tls_files_need_a_tls_url_and_messages_never_show_the_password() {
        let ca = Path::new("/nonexistent/ca.pem");
        let access = Access {
            ca_file: Some(ca),
            ..Access::default()
        };
        let err = Endpoint::new("redis://u:hunter2@h:1", &access)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--redis-ca-file") && err.contains("rediss://"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = Endpoint::new("rediss://u:hunter2@h:1", &access)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let half = Access {
            client_cert_file: Some(ca),
            ..Access::default()
        };
        assert!(matches!(
            Endpoint::new("rediss://h:1", &half),
            Err(EndpointError::HalfClientIdentity { .. })
        ));
        for url in ["http://u:hunter2@h", "rediss+cluster://u:hunter2@h1"] {
            let err = Endpoint::parse(url)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.is_empty() && !err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn supported_schemes() {
        assert!(is_supported_url("redis+cluster://h:1"));
        assert!(is_supported_url("rediss+cluster://h:1"));
        assert!(is_supported_url("redis://h:1"));
        assert!(!is_supported_url("http://h:1"));
    }
}
