//! The ingress controller: HTTP and HTTPS on the run's ingress address, routed by the rendered
//! Ingress rules.
//!
//! Routing follows the Ingress API: the rule whose `host` equals the request's `Host` (a
//! wildcard `*.example.com` matches exactly one more label; exact hosts win over wildcards),
//! then the longest matching path (`Exact`, or `Prefix` matched element by element on `/`;
//! `ImplementationSpecific` is treated as `Prefix`, as ingress-nginx does); no match is a 404,
//! a backend without endpoints a 503. Like ingress-nginx, the controller connects straight to a
//! Service's endpoints (not to its cluster IP), a Service that publishes not-ready addresses
//! included, and sends `X-Forwarded-For`, `X-Real-IP` and `X-Forwarded-Proto`. Outgoing
//! connections leave from the ingress address, so a pod sees the controller as its client, as
//! placement's per-address limiter does behind a real controller.
//!
//! TLS: hosts listed under an Ingress's `tls` are served on the HTTPS port with the certificate
//! of the Secret it names (`tls.crt`, `tls.key`), picked by SNI; a plain HTTP request for such a
//! host is redirected with 308 (ingress-nginx's `ssl-redirect`). ALPN offers `http/1.1` only.
//!
//! Requests: the request head is read and routed; a websocket upgrade is then spliced both ways
//! for the life of the connection; any other request is forwarded with `Connection: close`, so
//! each connection carries exactly one routed request (keep-alive is given up, routing is
//! exact). Not emulated: controller annotations (rate limits, timeouts, body size).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::model::{Ingress, ServicePort};
use super::state::Shared;

/// The largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// One path of one rule.
#[derive(Debug, Clone)]
struct Route {
    host: Option<String>,
    path: String,
    exact: bool,
    service: String,
    port_name: Option<String>,
    port_number: Option<u16>,
}

/// The merged rules of every rendered Ingress.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// `(host pattern, Secret name)` from the `tls` sections.
    tls: Vec<(String, String)>,
}

impl Router {
    pub fn new(ingresses: &[Ingress]) -> Router {
        let mut router = Router::default();
        for ingress in ingresses {
            for tls in &ingress.spec.tls {
                if let Some(secret) = &tls.secret_name {
                    for host in &tls.hosts {
                        router.tls.push((host.clone(), secret.clone()));
                    }
                }
            }
            for rule in &ingress.spec.rules {
                for path in rule.http.iter().flat_map(|h| &h.paths) {
                    let Some(service) = &path.backend.service else {
                        continue;
                    };
                    router.routes.push(Route {
                        host: rule.host.clone(),
                        path: path.path.clone().unwrap_or_else(|| "/".to_owned()),
                        exact: path.path_type.as_deref() == Some("Exact"),
                        service: service.name.clone(),
                        port_name: service.port.name.clone(),
                        port_number: service.port.number,
                    });
                }
            }
        }
        router
    }

    /// Every host the rules name, with whether it is served over TLS.
    pub fn hosts(&self) -> Vec<(String, bool)> {
        let mut hosts: Vec<(String, bool)> = self
            .routes
            .iter()
            .filter_map(|r| r.host.clone())
            .map(|h| {
                let tls = self.tls_secret(&h).is_some();
                (h, tls)
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The rule host a public URL's host falls under, if any.
    pub fn host_for_service(&self, service: &str) -> Option<(String, bool)> {
        let route = self.routes.iter().find(|r| r.service == service)?;
        let host = route.host.clone()?;
        let tls = self.tls_secret(&host).is_some();
        Some((host, tls))
    }

    pub fn tls_secret(&self, host: &str) -> Option<&str> {
        self.tls
            .iter()
            .filter(|(pattern, _)| host_matches(pattern, host) || pattern == host)
            .map(|(_, secret)| secret.as_str())
            .next()
    }

    pub fn has_tls(&self) -> bool {
        !self.tls.is_empty()
    }

    fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host_rank = |route: &Route| match &route.host {
            Some(h) if h == host => Some(2),
            Some(h) if host_matches(h, host) => Some(1),
            Some(_) => None,
            None => Some(0),
        };
        let best_host = self.routes.iter().filter_map(host_rank).max()?;
        self.routes
            .iter()
            .filter(|r| host_rank(r) == Some(best_host))
            .filter(|r| path_matches(r, path))
            .max_by_key(|r| (r.exact, r.path.len()))
    }
}

/// `*.example.com` matches `a.example.com`, not `a.b.example.com` nor `example.com`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == host,
    }
}

fn path_matches(route: &Route, path: &str) -> bool {
    if route.exact {
        return route.path == path;
    }
    let want: Vec<&str> = route.path.split('/').filter(|s| !s.is_empty()).collect();
    let have: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    have.len() >= want.len() && want.iter().zip(&have).all(|(a, b)| a == b)
}

/// A parsed request head.
struct Head {
    raw: Vec<u8>,
    target: String,
    host: String,
    upgrade: bool,
}

fn parse_head(raw: Vec<u8>) -> Result<Head> {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut host = String::new();
    let mut upgrade = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            host = value.to_owned();
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = !value.is_empty();
        }
    }
    if method.is_empty() || !target.starts_with('/') {
        bail!("not an HTTP request line: {request_line:?}");
    }
    Ok(Head {
        raw,
        target,
        host,
        upgrade,
    })
}

impl Head {
    /// The head to send upstream: hop-by-hop `Connection` replaced, forwarding headers added.
    fn upstream(&self, client: SocketAddr, proto: &str) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.raw);
        let mut out = String::with_capacity(text.len() + 128);
        for (i, line) in text.split("\r\n").enumerate() {
            if line.is_empty() {
                continue;
            }
            let name = line.split(':').next().unwrap_or_default();
            let hop = [
                "connection",
                "keep-alive",
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
            ]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
            if i > 0 && hop {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(if self.upgrade {
            "Connection: upgrade\r\n"
        } else {
            "Connection: close\r\n"
        });
        out.push_str(&format!(
            "X-Forwarded-For: {ip}\r\nX-Real-IP: {ip}\r\nX-Forwarded-Proto: {proto}\r\n\r\n",
            ip = client.ip()
        ));
        out.into_bytes()
    }
}

/// Reads up to the end of the request head; returns it and whatever followed it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            bail!("request head larger than {MAX_HEAD} bytes");
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the end of the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, extra: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves plain HTTP on `listener` until the task is aborted.
pub async fn serve_http(
    shared: Arc<Shared>,
    router: Arc<Router>,
    listener: TcpListener,
    https_port: Option<u16>,
) {
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            handle(shared, router, stream, client, "http", https_port).await;
        });
    }
}

/// Serves HTTPS on `listener` with the certificates of the Ingress `tls` Secrets.
pub async fn serve_https(
    shared: Arc<Shared>,
    router: Arc<Router>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let router = Arc::clone(&router);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            handle(shared, router, tls, client, "https", None).await;
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    router: Arc<Router>,
    mut stream: S,
    client: SocketAddr,
    proto: &str,
    https_port: Option<u16>,
) {
    let Ok(Ok((raw, body_start))) =
        tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await
    else {
        return;
    };
    let head = match parse_head(raw) {
        Ok(head) => head,
        Err(_) => return respond(&mut stream, "400 Bad Request", "", "bad request\n").await,
    };
    let host = head
        .host
        .rsplit_once(':')
        .map_or(head.host.as_str(), |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                head.host.as_str()
            }
        });
    let path = head.target.split('?').next().unwrap_or_default();
    if proto == "http"
        && let Some(port) = https_port
        && router.tls_secret(host).is_some()
    {
        let authority = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let location = format!("Location: https://{authority}{}\r\n", head.target);
        return respond(&mut stream, "308 Permanent Redirect", &location, "").await;
    }
    let Some(route) = router.route(host, path) else {
        return respond(&mut stream, "404 Not Found", "", "default backend - 404\n").await;
    };
    let Some(entry) = shared.service(&route.service) else {
        return respond(
            &mut stream,
            "503 Service Unavailable",
            "",
            "no such service\n",
        )
        .await;
    };
    let port: Option<&ServicePort> = entry.service.spec.ports.iter().find(|p| {
        route.port_number == Some(p.port)
            || (route.port_name.is_some() && p.name == route.port_name)
    });
    let Some(port) = port else {
        return respond(&mut stream, "503 Service Unavailable", "", "no such port\n").await;
    };
    let endpoints = shared.endpoints(&entry.service, port);
    let mut upstream = None;
    // Any endpoint will do; start at a different one each time, try each once.
    let offset = usize::from(client.port());
    for i in 0..endpoints.len() {
        let addr = endpoints[(offset + i) % endpoints.len()];
        if let Ok(conn) = connect_from(shared.plan.ingress_ip(), addr).await {
            upstream = Some(conn);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return respond(
            &mut stream,
            "503 Service Temporarily Unavailable",
            "",
            "no endpoint\n",
        )
        .await;
    };
    let forwarded = head.upstream(client, proto);
    if upstream.write_all(&forwarded).await.is_err()
        || upstream.write_all(&body_start).await.is_err()
    {
        return respond(&mut stream, "502 Bad Gateway", "", "upstream closed\n").await;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

/// Connects to `to` from `from` (any port), with a short timeout.
pub async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .with_context(|| format!("connecting to {to}: timed out"))?
        .with_context(|| format!("connecting to {to}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Picks the certificate of the `tls` entry whose hosts match the SNI name.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.certs
            .iter()
            .find(|(pattern, _)| pattern == name || host_matches(pattern, name))
            .map(|(_, key)| Arc::clone(key))
    }
}

/// The TLS acceptor for every `tls` entry of the Ingresses, from their Secrets.
pub fn acceptor(router: &Router, shared: &Shared) -> Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::new();
    for (host, secret_name) in &router.tls {
        let secret = shared.secrets.get(secret_name).with_context(|| {
            format!("Ingress TLS for {host} names Secret {secret_name}, which does not exist")
        })?;
        let cert_pem = secret
            .data
            .get("tls.crt")
            .with_context(|| format!("Secret {secret_name} has no tls.crt"))?;
        let key_pem = secret
            .data
            .get("tls.key")
            .with_context(|| format!("Secret {secret_name} has no tls.key"))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .with_context(|| format!("Secret {secret_name}: tls.crt is not PEM"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .with_context(|| format!("Secret {secret_name}: tls.key is not a PEM key"))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("Secret {secret_name}: unusable tls.key"))?;
        certs.push((host.clone(), Arc::new(CertifiedKey::new(chain, signing))));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn router() -> Result<Router> {
        let ingresses: Vec<Ingress> = serde_json::from_value(json!([
            {"metadata": {"name": "placement"}, "spec": {
                "tls": [{"hosts": ["switchyard.example.com"], "secretName": "p-tls"}],
                "rules": [{"host": "switchyard.example.com", "http": {"paths": [
                    {"path": "/v1/assign", "pathType": "Exact",
                     "backend": {"service": {"name": "placement", "port": {"name": "http"}}}}]}}]}},
            {"metadata": {"name": "gateway"}, "spec": {
                "tls": [{"hosts": ["*.gw.example.com"], "secretName": "gw-tls"}],
                "rules": [
                    {"host": "gw-0.gw.example.com", "http": {"paths": [
                        {"path": "/socket.io", "pathType": "Prefix",
                         "backend": {"service": {"name": "gw-0", "port": {"name": "http"}}}}]}},
                    {"host": "*.gw.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "any", "port": {"number": 80}}}}]}}
                ]}}
        ]))?;
        Ok(Router::new(&ingresses))
    }

    #[test]
    fn routes_follow_host_then_longest_path() -> Result<()> {
        let r = router()?;
        let to = |host: &str, path: &str| r.route(host, path).map(|r| r.service.clone());
        assert_eq!(
            to("switchyard.example.com", "/v1/assign").as_deref(),
            Some("placement")
        );
        assert_eq!(to("switchyard.example.com", "/v1/assign/x"), None);
        assert_eq!(to("switchyard.example.com", "/"), None);
        assert_eq!(
            to("gw-0.gw.example.com", "/socket.io/").as_deref(),
            Some("gw-0")
        );
        assert_eq!(
            to("gw-0.gw.example.com", "/socket.io").as_deref(),
            Some("gw-0")
        );
        // The exact host wins over the wildcard, so its other paths are not routed.
        assert_eq!(to("gw-0.gw.example.com", "/metrics"), None);
        assert_eq!(to("gw-0.gw.example.com", "/socket.iox"), None);
        assert_eq!(
            to("gw-1.gw.example.com", "/socket.io/").as_deref(),
            Some("any")
        );
        assert_eq!(to("a.b.gw.example.com", "/"), None);
        assert_eq!(r.tls_secret("gw-3.gw.example.com"), Some("gw-tls"));
        assert_eq!(r.tls_secret("switchyard.example.com"), Some("p-tls"));
        assert_eq!(r.tls_secret("other.example.com"), None);
        Ok(())
    }

    #[test]
    fn upstream_heads_close_or_upgrade_and_say_who_asked() -> Result<()> {
        let client: SocketAddr = "127.9.9.9:5555".parse()?;
        let plain = parse_head(
            b"GET /v1/assign?namespace=/ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
                .to_vec(),
        )?;
        let text = String::from_utf8(plain.upstream(client, "https"))?;
        assert!(
            text.starts_with("GET /v1/assign?namespace=/ HTTP/1.1\r\nHost: a\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!text.contains("keep-alive"), "{text}");
        assert!(text.contains("X-Forwarded-For: 127.9.9.9\r\n"), "{text}");
        assert!(text.ends_with("X-Forwarded-Proto: https\r\n\r\n"), "{text}");
        let ws = parse_head(
            b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
        )?;
        let text = String::from_utf8(ws.upstream(client, "http"))?;
        assert!(text.contains("Upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("Connection: upgrade\r\n"), "{text}");
        Ok(())
    }
}
