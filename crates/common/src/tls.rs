//! TLS (rustls with the ring provider) for every listener and every outgoing gRPC connection.
//!
//! **Serving.** [`ServerTlsArgs`] (`--tls-cert`, `--tls-key`, `--tls-client-ca`) turns TLS on
//! for both listeners of a service when a certificate is set: [`HttpListener`] terminates TLS
//! for axum, [`ServerTls::grpc`] configures tonic (see `grpc::server`). With no certificate
//! nothing changes: plain TCP, exactly as before.
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
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a client may take to complete the TLS handshake on an HTTP listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress on one HTTP listener; beyond, accepting waits (backpressure instead
/// of unbounded tasks when many clients connect at once or stall mid-handshake).
const MAX_PENDING_HANDSHAKES: usize = 1024;

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

/// An HTTP listener for `axum::serve`: plain TCP, or TLS terminated in front of axum.
///
/// With TLS, a background task accepts connections and runs each handshake in its own task
/// (at most [`MAX_PENDING_HANDSHAKES`] at once, each bounded by [`HANDSHAKE_TIMEOUT`]), so a
/// slow or hostile client never holds up the others; only completed handshakes reach axum. A
/// failed handshake is counted in the service's handshake-failure counter
/// (`switchyard_<service>_tls_handshake_failures_total`, named and described in the service's
/// `metrics.rs`) and logged at DEBUG. The task ends when the listener is dropped.
///
/// Every accepted connection has `TCP_NODELAY` on ([`nodelay`]).
pub struct HttpListener {
    local_addr: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(HttpStream, SocketAddr)>),
}

impl HttpListener {
    /// Binds `addr`; with `tls`, every accepted connection completes a TLS handshake first.
    /// `handshake_failures` is the counter of failed handshakes (the service's
    /// `switchyard_<service>_tls_handshake_failures_total`).
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<&ServerTls>,
        handshake_failures: &'static str,
    ) -> std::io::Result<HttpListener> {
        Self::from_tcp(TcpListener::bind(addr).await?, tls, handshake_failures)
    }

    /// Wraps an already bound listener (see [`HttpListener::bind`]).
    pub fn from_tcp(
        listener: TcpListener,
        tls: Option<&ServerTls>,
        handshake_failures: &'static str,
    ) -> std::io::Result<HttpListener> {
        let local_addr = listener.local_addr()?;
        let inner = match tls {
            None => Inner::Plain(listener),
            Some(tls) => {
                let (tx, rx) = mpsc::channel(64);
                let acceptor = TlsAcceptor::from(Arc::clone(&tls.http));
                tokio::spawn(accept_tls(listener, acceptor, tx, handshake_failures));
                Inner::Tls(rx)
            }
        };
        Ok(HttpListener { local_addr, inner })
    }

    /// The bound address (as `TcpListener::local_addr`, so callers need no trait import).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = HttpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (HttpStream, SocketAddr) {
        match &mut self.inner {
            Inner::Plain(listener) => {
                let (tcp, addr) = axum::serve::Listener::accept(listener).await;
                (HttpStream::Plain(nodelay(tcp)), addr)
            }
            Inner::Tls(rx) => match rx.recv().await {
                Some(accepted) => accepted,
                // The accept task only ends once this receiver is gone; never reached.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Turns `TCP_NODELAY` on (best effort: a socket that refuses it still works). Every service
/// speaks in small writes that someone waits for: answers, acks, streamed frames, one
/// Socket.IO packet to a client. With Nagle's algorithm, such a write waits while an earlier
/// one is unacknowledged, and the peer's delayed ACK can make that 40 ms.
pub fn nodelay(tcp: TcpStream) -> TcpStream {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY refused");
    }
    tcp
}

/// Accepts TCP connections and hands completed TLS handshakes to the [`HttpListener`].
async fn accept_tls(
    mut listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(HttpStream, SocketAddr)>,
    failures: &'static str,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&pending).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (tcp, addr) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(nodelay(tcp))).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((HttpStream::Tls(Box::new(tls)), addr)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!(failures, "reason" => "handshake").increment(1);
                    tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!(failures, "reason" => "timeout").increment(1);
                    tracing::debug!(client = %addr, "TLS handshake timed out");
                }
            }
        });
    }
}

/// One accepted HTTP connection, plain or TLS.
pub enum HttpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl HttpStream {
    /// The TCP socket underneath (socket options such as `TCP_NODELAY`).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            HttpStream::Plain(tcp) => tcp,
            HttpStream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            HttpStream::Plain(s) => s.is_write_vectored(),
            HttpStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
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

    #[tokio::test]
    async fn accepted_http_connections_have_nodelay_on() -> anyhow::Result<()> {
        let mut listener = HttpListener::bind(
            "127.0.0.1:0".parse()?,
            None,
            "test_tls_handshake_failures_total",
        )
        .await?;
        let _client = TcpStream::connect(listener.local_addr()?).await?;
        let (stream, _) = axum::serve::Listener::accept(&mut listener).await;
        assert!(stream.tcp().nodelay()?);
        Ok(())
    }

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
