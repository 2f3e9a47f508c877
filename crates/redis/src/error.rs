//! [`Error`]: Redis unreachable, refusing us, or answering an error, and [`Hint`]: which of
//! those a retry can fix.

use std::time::Duration;

use crate::endpoint::EndpointError;

/// Redis unreachable, answering an error, or a configuration that names no usable Redis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redis configuration: {0}")]
    InvalidUrl(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// A TLS connection failed and the same address answers plain-text RESP.
    #[error("{address} answers plain-text Redis, not TLS")]
    NotTls { address: String },
    /// The first contact ([`crate::Pool::check_at_startup`]) failed for a reason no retry
    /// fixes.
    #[error("Redis at {endpoint}: {} (cause: {cause})", hint.advice())]
    Misconfigured {
        endpoint: String,
        hint: Hint,
        cause: String,
    },
}

/// What an [`Error`] most likely means for the operator. The first four are configuration
/// mistakes that no retry fixes; services say so at startup and keep saying it while not
/// ready, instead of looking like an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `WRONGPASS` / `NOAUTH`: the user, the password, or a disabled user.
    Credentials,
    /// `NOPERM`: the ACL user lacks a command, key or channel Switchyard uses.
    Permission,
    /// The server's certificate is not trusted (wrong or missing CA bundle, hostname not in
    /// the certificate), or the server refused our client certificate.
    TlsTrust,
    /// A TLS handshake that got no TLS answer: a `rediss://` URL for a plain-TCP port.
    NotTls,
    /// Anything else: unreachable, timed out, cluster down. Retrying may help.
    Unavailable,
}

impl Hint {
    /// Whether the configuration, not the network, is to blame.
    pub fn is_configuration(self) -> bool {
        !matches!(self, Hint::Unavailable)
    }

    /// One sentence an operator can act on.
    pub fn advice(self) -> &'static str {
        match self {
            Hint::Credentials => {
                "Redis refused the credentials: check --redis-username and --redis-password \
                 (SWITCHYARD_REDIS_PASSWORD), and that the ACL user is `on`"
            }
            Hint::Permission => {
                "the Redis ACL user lacks a permission Switchyard needs (see ACL LOG on the \
                 server, and the rule in docs/deploy.md)"
            }
            Hint::TlsTrust => {
                "the TLS handshake with Redis failed: check --redis-ca-file (the CA that signed \
                 the server's certificate), that the URL's host is in that certificate, and \
                 --redis-client-cert-file if the server requires client certificates"
            }
            Hint::NotTls => {
                "the Redis server did not answer TLS: is --redis-url rediss:// pointing at a \
                 plain-TCP port?"
            }
            Hint::Unavailable => "Redis is unreachable or not answering; retrying",
        }
    }
}

impl Error {
    /// Classifies this error (see [`Hint`]).
    pub fn hint(&self) -> Hint {
        match self {
            Error::InvalidUrl(_) | Error::Endpoint(_) => Hint::Unavailable,
            Error::ConnectTimeout(_) => Hint::Unavailable,
            Error::NotTls { .. } => Hint::NotTls,
            Error::Pool(deadpool_redis::PoolError::Backend(e)) | Error::Redis(e) => hint_of(e),
            Error::Pool(_) => Hint::Unavailable,
            Error::Misconfigured { hint, .. } => *hint,
        }
    }
}

impl Error {
    /// [`Error::hint`] of a bare redis-rs error (from a connection obtained from the pool).
    pub fn hint_of(e: &redis::RedisError) -> Hint {
        hint_of(e)
    }
}

/// Classifies a redis-rs error by its kind, its server error code and, for I/O errors, the
/// rustls error underneath.
fn hint_of(e: &redis::RedisError) -> Hint {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::AuthenticationFailed => return Hint::Credentials,
        ErrorKind::Server(ServerErrorKind::NoPerm) => return Hint::Permission,
        _ => {}
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        return Hint::Credentials;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_hint(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return tls_hint(tls);
        }
        source = err.source();
    }
    // Some paths keep only the text of the cause.
    let text = e.to_string();
    if text.contains("WRONGPASS") || text.contains("NOAUTH") {
        Hint::Credentials
    } else if text.contains("NOPERM")
        || text.contains("can't run this command")
        || text.contains("no permissions to")
    {
        // The second form is how Redis words a refusal inside a script.
        Hint::Permission
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        Hint::NotTls
    } else if text.contains("invalid peer certificate") || text.contains("received fatal alert") {
        Hint::TlsTrust
    } else {
        Hint::Unavailable
    }
}

fn tls_hint(e: &rustls::Error) -> Hint {
    match e {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            Hint::NotTls
        }
        _ => Hint::TlsTrust,
    }
}
