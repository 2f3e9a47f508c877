//! The testkit's own line to a test Redis: one RESP2 command over a fresh connection, plain TCP
//! or TLS, authenticated as the `default` user when the server has a password. For setup and
//! assertions (`PING`, `CLUSTER INFO`, `ACL LOG`); the services under test use their own
//! client, never this one.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<String>),
    /// `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a simple or bulk string (or an integer), for reading map-like arrays.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => Some(s.clone()),
            Resp::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// A flat `[key, value, key, value, …]` array (what `ACL LOG` entries are) as pairs.
    pub fn pairs(&self) -> Vec<(String, Resp)> {
        let Resp::Array(Some(items)) = self else {
            return Vec::new();
        };
        items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.text()?, v.clone())),
                _ => None,
            })
            .collect()
    }
}

/// How the testkit reaches one node: its port, TLS settings when it serves TLS only, and the
/// user and password to authenticate with (`default` and the testkit's password when the
/// server has an ACL user).
#[derive(Clone)]
pub(crate) struct AdminLink {
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for AdminLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminLink")
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A TLS client configuration trusting `ca_pem` and, when given, presenting a client
/// certificate (for servers with `tls-auth-clients yes`). rustls with ring, like the services.
pub(crate) fn tls_client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A plain or TLS stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl AdminLink {
    fn connect(&self) -> anyhow::Result<Stream> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        if let Some((user, password)) = &self.auth {
            let (reply, _) = exchange(&mut stream, &["AUTH", user, password])?;
            if reply != Resp::Simple("OK".into()) {
                bail!("AUTH as `{user}` was refused: {reply:?}");
            }
        }
        Ok(stream)
    }

    /// One command; the whole reply as RESP text, e.g. `"+PONG\r\n"` or `"$1\r\nv\r\n"`.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut stream = self.connect()?;
        let (_, raw) = exchange(&mut stream, args)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    /// One command; the reply parsed.
    pub fn query(&self, args: &[&str]) -> anyhow::Result<Resp> {
        let mut stream = self.connect()?;
        Ok(exchange(&mut stream, args)?.0)
    }
}

/// Sends one command and reads exactly one reply.
fn exchange(stream: &mut Stream, args: &[&str]) -> anyhow::Result<(Resp, Vec<u8>)> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    stream.flush()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some((value, used)) = parse(&reply)? {
            reply.truncate(used);
            return Ok((value, reply));
        }
        let n = stream.read(&mut buf).context("reading a Redis reply")?;
        if n == 0 {
            bail!(
                "the connection closed before a whole reply came: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        reply.extend_from_slice(&buf[..n]);
    }
}

/// One RESP2 value from the start of `buf` and the bytes it takes; `None` until it is whole.
pub(crate) fn parse(buf: &[u8]) -> anyhow::Result<Option<(Resp, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let Some(kind) = buf.first() else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' => (Resp::Simple(line), after),
        b'-' => (Resp::Error(line), after),
        b':' => (Resp::Int(line.parse()?), after),
        b'$' => {
            let len: i64 = line.parse()?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Some((Resp::Bulk(None), after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[after..after + len]).into_owned();
            (Resp::Bulk(Some(text)), after + len + 2)
        }
        b'*' => {
            let len: i64 = line.parse()?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Some((Resp::Array(None), after)));
            };
            let mut items = Vec::with_capacity(len);
            let mut at = after;
            for _ in 0..len {
                let Some((item, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            (Resp::Array(Some(items)), at)
        }
        other => bail!("not a RESP2 reply (starts with {:?})", *other as char),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_whole_or_not_yet() -> anyhow::Result<()> {
        assert_eq!(parse(b"+PONG\r\n")?, Some((Resp::Simple("PONG".into()), 7)));
        assert_eq!(
            parse(b"$1\r\nv\r\n")?,
            Some((Resp::Bulk(Some("v".into())), 7))
        );
        assert_eq!(parse(b"$1\r\nv")?, None);
        assert_eq!(parse(b"$-1\r\n")?, Some((Resp::Bulk(None), 5)));
        let nested = b"*2\r\n*1\r\n:3\r\n$2\r\nab\r\n";
        let (value, used) = parse(nested)?.ok_or_else(|| anyhow::anyhow!("incomplete"))?;
        assert_eq!(used, nested.len());
        assert_eq!(
            value,
            Resp::Array(Some(vec![
                Resp::Array(Some(vec![Resp::Int(3)])),
                Resp::Bulk(Some("ab".into()))
            ]))
        );
        assert_eq!(parse(&nested[..nested.len() - 1])?, None);
        Ok(())
    }
}
