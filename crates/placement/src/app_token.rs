//! Application tokens: a client may bring its application's JWT to `/v1/assign` (or gRPC
//! `Assign`) so the gateway knows who it is and which rooms it may use.
//!
//! Placement verifies the token with the keys it is configured with (`--app-jwt-hs256-secret`,
//! `--app-jwt-rs256-public-key-file`; the token header's `alg` picks the key, and any other
//! algorithm is refused, so an RS256 public key can never be used as an HMAC secret). It checks
//! the signature and `exp` (and `nbf` when present), then copies `sub` into the assignment's
//! `uid` and the `rooms` claim (a list of room patterns) into its `rooms`; the gateway enforces
//! them on `join` and `publish` (see `switchyard_gateway::rooms`). A token without a `rooms`
//! claim leaves the gateway's own `--rooms` patterns in force.
//!
//! With no key configured, tokens are not looked at. With `--require-app-token`, an assignment
//! without a valid token is refused (HTTP 401).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Who the client is, as its verified application token says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppIdentity {
    /// `sub` claim.
    pub uid: Option<String>,
    /// `rooms` claim: room patterns the client may join or publish to.
    pub rooms: Option<Vec<String>>,
}

/// Why an application token was refused. `code()` is the HTTP `error` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppTokenError {
    #[error("an application token is required")]
    Missing,
    #[error("application token refused: {0}")]
    Invalid(String),
}

impl AppTokenError {
    pub fn code(&self) -> &'static str {
        match self {
            AppTokenError::Missing => "app_token_required",
            AppTokenError::Invalid(_) => "invalid_app_token",
        }
    }
}

/// A key that cannot be loaded: a configuration error, reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum AppKeyError {
    #[error("reading the RS256 public key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the RS256 public key {path} is not a PEM RSA public key: {source}")]
    Parse {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("--require-app-token needs --app-jwt-hs256-secret or --app-jwt-rs256-public-key-file")]
    RequiredWithoutKey,
    #[error("--app-jwt-hs256-secret must not be empty")]
    EmptySecret,
}

#[derive(Debug, Deserialize)]
struct AppClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Verifies application tokens with the configured keys.
pub struct AppTokenVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    require: bool,
}

impl std::fmt::Debug for AppTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTokenVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("require", &self.require)
            .finish()
    }
}

impl AppTokenVerifier {
    /// No keys, nothing required: tokens are ignored.
    pub fn disabled() -> Self {
        Self {
            hs256: None,
            rs256: None,
            require: false,
        }
    }

    /// Loads the configured keys.
    pub fn new(
        hs256_secret: Option<&str>,
        rs256_public_key_file: Option<&Path>,
        require: bool,
    ) -> Result<Self, AppKeyError> {
        let hs256 = match hs256_secret {
            Some("") => return Err(AppKeyError::EmptySecret),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let rs256 = match rs256_public_key_file {
            Some(path) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path).map_err(|source| AppKeyError::Read {
                    path: shown.clone(),
                    source,
                })?;
                Some(
                    DecodingKey::from_rsa_pem(&pem).map_err(|source| AppKeyError::Parse {
                        path: shown,
                        source,
                    })?,
                )
            }
            None => None,
        };
        if require && hs256.is_none() && rs256.is_none() {
            return Err(AppKeyError::RequiredWithoutKey);
        }
        Ok(Self {
            hs256,
            rs256,
            require,
        })
    }

    /// True when some key is configured.
    pub fn enabled(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some()
    }

    /// Checks the token a client brought (`None`: it brought none). `Ok(None)`: no identity to
    /// copy (no token, or verification is off).
    pub fn verify(&self, token: Option<&str>) -> Result<Option<AppIdentity>, AppTokenError> {
        let token = match token.map(str::trim) {
            Some(t) if !t.is_empty() => t,
            _ if self.require => return Err(AppTokenError::Missing),
            _ => return Ok(None),
        };
        if !self.enabled() {
            return Ok(None);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AppTokenError::Invalid(format!("malformed: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            AppTokenError::Invalid(format!("algorithm {:?} is not accepted", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.validate_nbf = true;
        // Audiences are application-specific; placement has no flag for one (yet).
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<AppClaims>(token, key, &validation)
            .map_err(|e| AppTokenError::Invalid(e.to_string()))?;
        Ok(Some(AppIdentity {
            uid: data.claims.sub,
            rooms: data.claims.rooms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn hs256(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    fn in_an_hour() -> u64 {
        switchyard_common::clock::now_ms() / 1000 + 3600
    }

    #[test]
    fn a_valid_token_yields_uid_and_rooms() -> anyhow::Result<()> {
        let v = AppTokenVerifier::new(Some("app-secret"), None, false)?;
        let t = hs256(
            "app-secret",
            serde_json::json!({"sub": "alice", "rooms": ["chat:*"], "exp": in_an_hour()}),
        );
        let id = v.verify(Some(&t))?;
        assert_eq!(
            id,
            Some(AppIdentity {
                uid: Some("alice".into()),
                rooms: Some(vec!["chat:*".into()]),
            })
        );
        Ok(())
    }

    #[test]
    fn bad_expired_or_missing_tokens_are_refused() -> anyhow::Result<()> {
        let v = AppTokenVerifier::new(Some("app-secret"), None, true)?;
        let wrong = hs256(
            "other",
            serde_json::json!({"sub": "a", "exp": in_an_hour()}),
        );
        assert!(matches!(
            v.verify(Some(&wrong)),
            Err(AppTokenError::Invalid(_))
        ));
        let expired = hs256("app-secret", serde_json::json!({"sub": "a", "exp": 1000}));
        assert!(matches!(
            v.verify(Some(&expired)),
            Err(AppTokenError::Invalid(_))
        ));
        let no_exp = hs256("app-secret", serde_json::json!({"sub": "a"}));
        assert!(matches!(
            v.verify(Some(&no_exp)),
            Err(AppTokenError::Invalid(_))
        ));
        assert_eq!(v.verify(None), Err(AppTokenError::Missing));
        assert_eq!(v.verify(Some("  ")), Err(AppTokenError::Missing));
        assert!(matches!(
            v.verify(Some("garbage")),
            Err(AppTokenError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn an_unconfigured_algorithm_is_refused() -> anyhow::Result<()> {
        let v = AppTokenVerifier::new(Some("app-secret"), None, false)?;
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"sub": "a", "exp": in_an_hour()}),
            &EncodingKey::from_secret(b"app-secret"),
        )?;
        assert!(matches!(v.verify(Some(&t)), Err(AppTokenError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn without_keys_tokens_are_ignored_and_requiring_one_is_a_config_error() -> anyhow::Result<()> {
        let v = AppTokenVerifier::disabled();
        assert_eq!(v.verify(Some("whatever")), Ok(None));
        assert!(matches!(
            AppTokenVerifier::new(None, None, true),
            Err(AppKeyError::RequiredWithoutKey)
        ));
        Ok(())
    }
}
