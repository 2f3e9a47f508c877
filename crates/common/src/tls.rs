//! TLS (rustls with the ring provider) for every listener and every outgoing gRPC connection.
//!
//! **Serving.** [`ServerTlsArgs`] (`--tls-cert`, `--tls-key`, `--tls-client-ca`) turns TLS on
//! for both listeners of a service when a certificate is set: [`ServerTls::http_acceptor`]
//! terminates TLS in front of the HTTP listener (`crate::http_server`), [`ServerTls::grpc`]
//! configures tonic (see `grpc::server`). With no certificate nothing changes: plain TCP.
//!
//! **Mutual TLS** (`--tls-client-ca`) applies to the gRPC listeners only: they carry the
//! traffic between services (reports, links, admin, publish), while the HTTP listeners serve
//! browsers and Socket.IO clients (`/v1/assign`, `/socket.io`) and Prometheus, which carry no
//! client certificate. A gRPC client without a certificate signed by that CA fails the
//! handshake.
//!
//! **Connecting.** [`ClientTlsArgs`] (`--tls-ca`, `--tls-client-cert`, `--tls-client-key`)
//! configures every outgoing `https://` gRPC URL through [`ClientTls::endpoint`]: the CA bundle
//! replaces the system roots (a private PKI trusts only itself), and the client certificate is
//! presented to servers that ask for one. `http://` URLs stay plain whatever is configured, so
//! the scheme of each URL says what is spoken.
//!
//! HTTP listeners offer ALPN `http/1.1` only: WebSockets (Socket.IO) then always upgrade the
//! way every client supports, instead of some browsers trying WebSocket over HTTP/2.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Flags for serving TLS; flatten into a service's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain served on every listener (leaf first). Setting it (with
    /// `--tls-key`) turns TLS on for HTTP and gRPC; unset, the listeners speak plain TCP.
    #[arg(
        long,
        env = "SWITCHYARD_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(
        long,
        env = "SWITCHYARD_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that gRPC clients' certificates must chain to: setting it requires a client
    /// certificate on every gRPC connection (mutual TLS between services). HTTP listeners never
    /// ask for one.
    #[arg(
        long,
        env = "SWITCHYARD_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

/// Flags for outgoing `https://` gRPC connections; flatten into a client's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA bundle trusted for `https://` URLs instead of the system roots.
    #[arg(long, global = true, env = "SWITCHYARD_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to servers that require one (mutual TLS).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TLS_CLIENT_CERT",
        requires = "tls_client_key",
        value_name = "PEM"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of `--tls-client-cert`.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TLS_CLIENT_KEY",
        requires = "tls_client_cert",
        value_name = "PEM"
    )]
    pub tls_client_key: Option<PathBuf>,
}

/// Both sides, for a service that serves and connects (the gateway).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    #[command(flatten)]
    pub server: ServerTlsArgs,
    #[command(flatten)]
    pub client: ClientTlsArgs,
}

/// A TLS setting that cannot be used; the message names the file and the flag's purpose.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {} holds no usable PEM {kind}: {detail}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
        detail: String,
    },
    #[error("the TLS certificate and key cannot be served: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the client CA {} cannot verify client certificates: {detail}", path.display())]
    ClientCa { path: PathBuf, detail: String },
    #[error("`{url}` is not a valid gRPC URL: {detail}")]
    Url { url: String, detail: String },
    #[error("TLS for `{url}`: {detail}")]
    Endpoint { url: String, detail: String },
}

/// A loaded server certificate: the rustls configuration for HTTP listeners and the tonic
/// one for gRPC listeners, built from the same files.
#[derive(Clone)]
pub struct ServerTls {
    http: Arc<rustls::ServerConfig>,
    grpc: ServerTlsConfig,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTlsArgs {
    /// `None` when no certificate is configured (plain TCP); otherwise the certificate, key and
    /// client CA, read and checked now, so a bad file stops the service at startup.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        let (Some(cert_path), Some(key_path)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let cert_pem = read(cert_path, "TLS certificate (--tls-cert)")?;
        let key_pem = read(key_path, "TLS key (--tls-key)")?;
        let chain = certificates(&cert_pem, cert_path, "TLS certificate (--tls-cert)")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            what: "TLS key (--tls-key)",
            path: key_path.clone(),
            kind: "private key",
            detail: e.to_string(),
        })?;
        let mut http = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut grpc = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
        let mutual = match &self.tls_client_ca {
            Some(ca_path) => {
                let ca_pem = read(ca_path, "client CA (--tls-client-ca)")?;
                check_client_ca(&ca_pem, ca_path)?;
                grpc = grpc
                    .client_ca_root(Certificate::from_pem(ca_pem))
                    .client_auth_optional(false);
                true
            }
            None => false,
        };
        Ok(Some(ServerTls {
            http: Arc::new(http),
            grpc,
            mutual,
        }))
    }
}

impl ServerTls {
    /// The tonic configuration for a gRPC listener (requires client certificates when mutual).
    pub fn grpc(&self) -> ServerTlsConfig {
        self.grpc.clone()
    }

    /// The acceptor that terminates TLS on an HTTP listener (ALPN `http/1.1`, no client
    /// certificate asked for).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.http))
    }

    /// Whether gRPC clients must present a certificate signed by `--tls-client-ca`.
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

/// The client side: trust and identity for outgoing `https://` gRPC connections. The default
/// trusts the system roots and presents no certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<ClientIdentity>,
}

/// A client certificate chain and its key, PEM.
#[derive(Clone)]
struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTlsArgs {
    /// Reads and checks the configured files now, so a bad path fails at startup rather than
    /// at the first connection.
    pub fn load(&self) -> Result<ClientTls, TlsError> {
        let ca_pem = match &self.tls_ca {
            Some(path) => {
                let pem = read(path, "CA bundle (--tls-ca)")?;
                certificates(&pem, path, "CA bundle (--tls-ca)")?;
                Some(pem)
            }
            None => None,
        };
        let identity = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read(cert_path, "client certificate (--tls-client-cert)")?;
                certificates(
                    &cert_pem,
                    cert_path,
                    "client certificate (--tls-client-cert)",
                )?;
                let key_pem = read(key_path, "client key (--tls-client-key)")?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
                    what: "client key (--tls-client-key)",
                    path: key_path.clone(),
                    kind: "private key",
                    detail: e.to_string(),
                })?;
                Some(ClientIdentity { cert_pem, key_pem })
            }
            _ => None,
        };
        Ok(ClientTls { ca_pem, identity })
    }
}

impl ClientTls {
    /// A tonic endpoint for `url`: `https://` gets TLS with the configured trust and client
    /// certificate, `http://` stays plain.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Url {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        endpoint
            .tls_config(self.grpc())
            .map_err(|e| TlsError::Endpoint {
                url: url.to_owned(),
                detail: error_chain(&e),
            })
    }

    /// The tonic client configuration: the CA bundle if one is set, else the system roots.
    fn grpc(&self) -> ClientTlsConfig {
        let config = match &self.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some(id) => config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem)),
            None => config,
        }
    }

    /// The configured CA bundle (PEM), for clients other than gRPC (`rediss://`).
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// The configured client certificate and key (PEM), for clients other than gRPC.
    pub fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity
            .as_ref()
            .map(|id| (id.cert_pem.as_slice(), id.key_pem.as_slice()))
    }
}

/// The one crypto provider (ring), named explicitly so no process-wide default is needed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file; an error when there is none.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        kind: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Checks that the client CA bundle can build a verifier (tonic would only say so later).
fn check_client_ca(pem: &[u8], path: &Path) -> Result<(), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem, path, "client CA (--tls-client-ca)")? {
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map(drop)
        .map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, written to a fresh temp dir.
    fn self_signed(name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = std::env::temp_dir().join(format!("sy-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((dir, cert_path, key_path))
    }

    #[test]
    fn no_certificate_means_plain_tcp() -> anyhow::Result<()> {
        assert!(ServerTlsArgs::default().load()?.is_none());
        let tls = ClientTlsArgs::default().load()?;
        assert!(tls.ca_pem().is_none() && tls.identity_pem().is_none());
        Ok(())
    }

    #[test]
    fn a_certificate_loads_and_a_client_ca_makes_grpc_mutual() -> anyhow::Result<()> {
        let (dir, cert, key) = self_signed("ok")?;
        let mut args = ServerTlsArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            tls_client_ca: None,
        };
        assert!(!args.load()?.map(|t| t.mutual()).unwrap_or(true));
        args.tls_client_ca = Some(cert.clone());
        assert!(args.load()?.map(|t| t.mutual()).unwrap_or(false));
        let client = ClientTlsArgs {
            tls_ca: Some(cert.clone()),
            tls_client_cert: Some(cert),
            tls_client_key: Some(key),
        }
        .load()?;
        assert!(client.ca_pem().is_some() && client.identity_pem().is_some());
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn missing_or_invalid_files_are_refused_naming_the_flag() -> anyhow::Result<()> {
        let (dir, cert, key) = self_signed("bad")?;
        let missing = ServerTlsArgs {
            tls_cert: Some(dir.join("nope.pem")),
            tls_key: Some(key.clone()),
            tls_client_ca: None,
        };
        let err = missing
            .load()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--tls-cert"), "{err}");
        // A key where the certificate should be: no CERTIFICATE block.
        let swapped = ServerTlsArgs {
            tls_cert: Some(key.clone()),
            tls_key: Some(cert.clone()),
            tls_client_ca: None,
        };
        let err = swapped
            .load()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--tls-cert"), "{err}");
        let bad_ca = ClientTlsArgs {
            tls_ca: Some(key),
            ..ClientTlsArgs::default()
        };
        let err = bad_ca
            .load()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--tls-ca"), "{err}");
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
