//! [`RedisArgs`]: the Redis flags placement and the relay share, declared once.
//!
//! Both services flatten this struct into their clap `Config`, so the flags, their environment
//! variables, their help and their checks are the same in both (and the Kubernetes manifests
//! can set them the same way for both).

use std::path::PathBuf;

use crate::endpoint::{Access, Endpoint, EndpointError};

/// How to reach Redis: the URL, and for managed Redis the CA bundle, the ACL user and its
/// password, and optionally a client certificate.
///
/// `Debug` redacts the password (in the flag and in the URL); clap never prints the
/// password's or the URL's environment values.
#[derive(Clone, Default, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://host:port[/db]`, `rediss://host:port` (TLS), `redis+unix:///path`,
    /// or a Redis Cluster's nodes `redis+cluster://h1:p1,h2:p2` (`rediss+cluster://…` over
    /// TLS). Userinfo (`redis://user:password@…`) works, but prefer --redis-username and
    /// SWITCHYARD_REDIS_PASSWORD, which override it. Unset: run without Redis (one replica
    /// only; see the service's docs).
    #[arg(
        id = "redis_url",
        value_name = "URL",
        long = "redis-url",
        env = "SWITCHYARD_REDIS_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// PEM bundle of the CA certificates that sign the Redis server's certificate (TLS URLs
    /// only). Unset: the platform's trust store (on Linux the system bundle, e.g.
    /// /etc/ssl/certs/ca-certificates.crt; SSL_CERT_FILE / SSL_CERT_DIR override it), not a
    /// bundle built into the binary.
    #[arg(
        id = "redis_ca_file",
        value_name = "FILE",
        long = "redis-ca-file",
        env = "SWITCHYARD_REDIS_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// ACL user to authenticate as (overrides the URL's). Needs a password.
    #[arg(
        id = "redis_username",
        value_name = "USER",
        long = "redis-username",
        env = "SWITCHYARD_REDIS_USERNAME"
    )]
    pub username: Option<String>,
    /// Password of the ACL user (or of `default` without --redis-username); overrides the
    /// URL's. A secret: set it through the environment, not on the command line.
    #[arg(
        id = "redis_password",
        value_name = "PASSWORD",
        long = "redis-password",
        env = "SWITCHYARD_REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM client certificate (chain) for servers that require mutual TLS; with
    /// --redis-client-key-file.
    #[arg(
        id = "redis_client_cert_file",
        value_name = "FILE",
        long = "redis-client-cert-file",
        env = "SWITCHYARD_REDIS_CLIENT_CERT_FILE"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of --redis-client-cert-file.
    #[arg(
        id = "redis_client_key_file",
        value_name = "FILE",
        long = "redis-client-key-file",
        env = "SWITCHYARD_REDIS_CLIENT_KEY_FILE"
    )]
    pub client_key_file: Option<PathBuf>,
}

impl RedisArgs {
    /// The checked endpoint, with its files loaded; `Ok(None)` when no URL is set (and no other
    /// Redis flag either: a CA bundle or a user without a URL is a mistake worth refusing).
    pub fn endpoint(&self) -> Result<Option<Endpoint>, EndpointError> {
        let Some(url) = &self.url else {
            return match self.stray_flag() {
                Some(flag) => Err(EndpointError::OptionWithoutUrl { flag }),
                None => Ok(None),
            };
        };
        let access = Access {
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
            username: self.username.as_deref(),
            password: self.password.as_deref(),
        };
        Endpoint::new(url, &access).map(Some)
    }

    /// The first Redis flag set besides the URL.
    fn stray_flag(&self) -> Option<&'static str> {
        [
            (self.ca_file.is_some(), "--redis-ca-file"),
            (self.username.is_some(), "--redis-username"),
            (self.password.is_some(), "--redis-password"),
            (self.client_cert_file.is_some(), "--redis-client-cert-file"),
            (self.client_key_file.is_some(), "--redis-client-key-file"),
        ]
        .into_iter()
        .find_map(|(set, flag)| set.then_some(flag))
    }
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field(
                "url",
                &self
                    .url
                    .as_deref()
                    .map(switchyard_common::config::redact_url),
            )
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn parse(args: &[&str]) -> Result<RedisArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("svc").chain(args.iter().copied())).map(|c| c.redis)
    }

    #[test]
    fn flags_parse_and_debug_never_shows_the_password() -> anyhow::Result<()> {
        let args = parse(&[
            "--redis-url",
            "rediss://u:url-secret@h:6380",
            "--redis-username",
            "switchyard",
            "--redis-password",
            "flag-secret",
        ])?;
        let shown = format!("{args:?}");
        assert!(
            !shown.contains("url-secret") && !shown.contains("flag-secret"),
            "{shown}"
        );
        let endpoint = args
            .endpoint()?
            .ok_or_else(|| anyhow::anyhow!("no endpoint"))?;
        let shown = format!("{endpoint} {endpoint:?}");
        assert!(
            !shown.contains("url-secret") && !shown.contains("flag-secret"),
            "{shown}"
        );
        assert_eq!(endpoint.username(), Some("switchyard"));
        assert!(endpoint.is_tls());
        Ok(())
    }

    #[test]
    fn no_url_means_no_redis_but_stray_flags_are_refused() -> anyhow::Result<()> {
        assert!(parse(&[])?.endpoint()?.is_none());
        let err = parse(&["--redis-username", "sy"])?.endpoint().err();
        assert!(
            matches!(
                err,
                Some(EndpointError::OptionWithoutUrl {
                    flag: "--redis-username"
                })
            ),
            "{err:?}"
        );
        Ok(())
    }
}
