//! The admin UI's own authentication, across every gateway.
//!
//! `@socket.io/admin-ui` sends `auth: {username, password}` on its first CONNECT, and the
//! server answers a good password with a `session` event carrying a session id, which the UI
//! keeps and sends instead (`auth: {sessionId}`) on every later CONNECT, to any gateway. The
//! package keeps session ids in a store every server shares; gateways share no store, so a
//! session id here is **verified statelessly**: `<expiry ms>.<HMAC-SHA256 of it, hex>`, keyed by
//! a digest of the configured bcrypt hash and the gateways' token secret, which every gateway
//! of a cluster has. Any gateway accepts any gateway's session until it expires
//! ([`SESSION_TTL`], the package's Redis store's default); changing the password (its hash)
//! ends every session.
//!
//! Passwords are checked with bcrypt (the hash `bcryptjs` or any bcrypt tool writes), off the
//! async workers, at most [`CONCURRENT_CHECKS`] at a time: bcrypt is slow on purpose, and a
//! flood of logins must not take every core from the sockets.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// How long a session id stays valid.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// bcrypt checks running at once on one gateway.
pub const CONCURRENT_CHECKS: usize = 2;

/// The refusal the admin UI recognises (it shows its own "invalid credentials" text).
pub const INVALID: &str = "invalid credentials";

/// What the admin UI sends on CONNECT.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthPayload {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// A configuration the admin UI cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("--admin-ui-username must not be empty")]
    NoUsername,
    #[error(
        "--admin-ui-password-hash must be a bcrypt hash ($2a$/$2b$/$2y$, 60 characters), as \
         `htpasswd -bnBC 10 \"\" PASSWORD | tr -d ':\\n'` or bcryptjs writes it"
    )]
    BadHash,
}

type HmacSha256 = Hmac<Sha256>;

/// The configured username and password hash, and the session key derived from them.
pub struct Credentials {
    username: String,
    hash: String,
    key: [u8; 32],
    checks: Semaphore,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks the hash's form now, so a typo fails the start, not every login.
    pub fn new(
        username: &str,
        password_hash: &str,
        token_secret: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        if username.is_empty() {
            return Err(CredentialsError::NoUsername);
        }
        let hash = password_hash.trim();
        if hash.len() != 60 || !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(CredentialsError::BadHash);
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(CredentialsError::BadHash);
        }
        let mut digest = Sha256::new();
        digest.update(b"switchyard admin-ui session\0");
        digest.update(hash.as_bytes());
        digest.update(b"\0");
        digest.update(token_secret.unwrap_or_default().as_bytes());
        Ok(Self {
            username: username.to_owned(),
            hash: hash.to_owned(),
            key: digest.finalize().into(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// Admits a CONNECT: `Ok(None)` with a valid session id, `Ok(Some(new session id))` with
    /// the right username and password, `Err(INVALID)` otherwise.
    pub async fn admit(
        &self,
        auth: &AuthPayload,
        now_ms: u64,
    ) -> Result<Option<String>, &'static str> {
        if let Some(session) = auth.session_id.as_deref()
            && self.valid_session(session, now_ms)
        {
            return Ok(None);
        }
        let (Some(username), Some(password)) = (&auth.username, &auth.password) else {
            return Err(INVALID);
        };
        if *username != self.username {
            return Err(INVALID);
        }
        let _permit = self.checks.acquire().await.map_err(|_| INVALID)?;
        let (password, hash) = (password.clone(), self.hash.clone());
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|_| INVALID)?
            .unwrap_or(false);
        if !matches {
            return Err(INVALID);
        }
        let expiry = now_ms.saturating_add(u64::try_from(SESSION_TTL.as_millis()).unwrap_or(0));
        Ok(Some(self.session(expiry)))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// A session id valid until `expiry_ms`.
    pub fn session(&self, expiry_ms: u64) -> String {
        let mut mac = self.mac();
        mac.update(expiry_ms.to_string().as_bytes());
        let tag = mac.finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{expiry_ms}.{hex}")
    }

    /// Whether `session` was made by a gateway with the same credentials and has not expired.
    pub fn valid_session(&self, session: &str, now_ms: u64) -> bool {
        let Some((expiry, hex)) = session.split_once('.') else {
            return false;
        };
        let Ok(expiry_ms) = expiry.parse::<u64>() else {
            return false;
        };
        if expiry_ms <= now_ms || hex.len() != 64 {
            return false;
        }
        let Some(tag) = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(expiry.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at cost 4 (fast for tests).
    fn hash() -> String {
        bcrypt::hash("secret", 4).unwrap_or_default()
    }

    fn auth(user: &str, pass: &str) -> AuthPayload {
        AuthPayload {
            session_id: None,
            username: Some(user.into()),
            password: Some(pass.into()),
        }
    }

    #[tokio::test]
    async fn a_password_gives_a_session_that_every_gateway_accepts() -> anyhow::Result<()> {
        let hash = hash();
        let gw1 = Credentials::new("admin", &hash, Some("shared"))?;
        let gw2 = Credentials::new("admin", &hash, Some("shared"))?;
        let now = 1_000_000;
        let session = gw1
            .admit(&auth("admin", "secret"), now)
            .await
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("no session"))?;
        let with_session = AuthPayload {
            session_id: Some(session.clone()),
            ..AuthPayload::default()
        };
        assert_eq!(gw2.admit(&with_session, now + 1).await, Ok(None));
        // Expired, tampered with, or from a gateway with other credentials: refused.
        let later = now + u64::try_from(SESSION_TTL.as_millis())? + 1;
        assert!(!gw2.valid_session(&session, later));
        assert!(!gw2.valid_session(&session.replace('.', "0."), now));
        let other = Credentials::new("admin", &hash, Some("other"))?;
        assert!(!other.valid_session(&session, now));
        assert_eq!(other.admit(&with_session, now).await, Err(INVALID));
        Ok(())
    }

    #[tokio::test]
    async fn wrong_credentials_are_refused_in_the_uis_words() -> anyhow::Result<()> {
        let creds = Credentials::new("admin", &hash(), None)?;
        assert_eq!(creds.admit(&auth("admin", "nope"), 1).await, Err(INVALID));
        assert_eq!(creds.admit(&auth("root", "secret"), 1).await, Err(INVALID));
        assert_eq!(creds.admit(&AuthPayload::default(), 1).await, Err(INVALID));
        assert!(creds.admit(&auth("admin", "secret"), 1).await.is_ok());
        assert!(!creds.valid_session("garbage", 1));
        assert!(!creds.valid_session("99999999999999.zz", 1));
        Ok(())
    }

    #[test]
    fn a_hash_that_is_not_bcrypt_fails_the_start() {
        assert_eq!(
            Credentials::new("admin", "plain-password", None).err(),
            Some(CredentialsError::BadHash)
        );
        assert_eq!(
            Credentials::new("", &hash(), None).err(),
            Some(CredentialsError::NoUsername)
        );
    }
}
