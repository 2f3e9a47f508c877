//! The assignment token: placement's signed promise that a client may connect to one gateway.
//!
//! An HS256 JWT whose claims name the node, the namespace and the reservation it consumes. It
//! expires with its reservation, so a token can never outlive the seat it reserves. The secret
//! is shared by placement (which signs) and every gateway (which verifies) and comes from the
//! environment (`SWITCHYARD_TOKEN_SECRET`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Claims carried by an assignment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentClaims {
    /// Node id of the gateway the client must connect to.
    pub sub: String,
    /// Socket.IO namespace the assignment is for.
    pub ns: String,
    /// Reservation id; the gateway reports it consumed after a successful connection.
    pub rid: String,
    /// Expiry, seconds since the Unix epoch (JWT `exp`).
    pub exp: u64,
    /// Expiry in milliseconds since the Unix epoch, for sub-second reservation TTLs.
    pub exp_ms: u64,
    /// Application user id, when the client brought an application token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Room patterns the client may join or publish to, when its application token says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// Why a token was refused. The `reason` strings are part of the gateway's external contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("assignment token is malformed or its signature is wrong")]
    Bad,
    #[error("assignment token has expired")]
    Expired,
}

impl TokenError {
    /// Machine-readable reason sent to clients in `connect_error` data.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Bad => "bad_token",
            TokenError::Expired => "token_expired",
        }
    }
}

/// Signs and verifies assignment tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Signs `claims`. Fails only if the claims cannot be serialized, which they always can.
    pub fn sign(&self, claims: &AssignmentClaims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// Checks signature and expiry (to the millisecond, with no leeway) and returns the claims.
    pub fn verify(&self, token: &str) -> Result<AssignmentClaims, TokenError> {
        self.verify_at(token, crate::clock::now_ms())
    }

    /// [`TokenKey::verify`] at a given time, for tests and for callers that already read the clock.
    pub fn verify_at(&self, token: &str, now_ms: u64) -> Result<AssignmentClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<AssignmentClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Bad,
            })?;
        if data.claims.exp_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_ms: u64) -> AssignmentClaims {
        AssignmentClaims {
            sub: "gw-1".into(),
            ns: "/".into(),
            rid: "r1".into(),
            exp: exp_ms / 1000 + 1,
            exp_ms,
            uid: None,
            rooms: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() -> Result<(), Box<dyn std::error::Error>> {
        let key = TokenKey::new(b"secret");
        let token = key.sign(&claims(10_000))?;
        assert_eq!(key.verify_at(&token, 9_999)?, claims(10_000));
        assert_eq!(key.verify_at(&token, 10_000), Err(TokenError::Expired));
        Ok(())
    }

    /// `alg: none` and any algorithm but HS256, even signed with the right secret, are refused:
    /// the verifier pins HS256 instead of trusting the token's header.
    #[test]
    fn alg_none_and_other_algorithms_are_bad_tokens() -> Result<(), Box<dyn std::error::Error>> {
        let key = TokenKey::new(b"secret");
        let good = key.sign(&claims(u64::MAX / 2))?;
        assert!(key.verify_at(&good, 0).is_ok());
        let mut parts = good.split('.');
        let (_, payload, signature) = (parts.next(), parts.next(), parts.next());
        let payload = payload.ok_or("no payload")?;
        // {"alg":"none","typ":"JWT"}, base64url.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        for forged in [
            format!("{none}.{payload}."),
            format!("{none}.{payload}.{}", signature.unwrap_or_default()),
        ] {
            assert_eq!(key.verify_at(&forged, 0), Err(TokenError::Bad), "{forged}");
        }
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let other = jsonwebtoken::encode(
                &Header::new(alg),
                &claims(u64::MAX / 2),
                &EncodingKey::from_secret(b"secret"),
            )?;
            assert_eq!(key.verify_at(&other, 0), Err(TokenError::Bad), "{alg:?}");
        }
        Ok(())
    }

    #[test]
    fn another_secret_or_garbage_is_a_bad_token() -> Result<(), Box<dyn std::error::Error>> {
        let token = TokenKey::new(b"secret").sign(&claims(u64::MAX / 2))?;
        let other = TokenKey::new(b"other");
        assert_eq!(other.verify_at(&token, 0), Err(TokenError::Bad));
        assert_eq!(other.verify_at("not.a.jwt", 0), Err(TokenError::Bad));
        assert_eq!(other.verify_at("", 0), Err(TokenError::Bad));
        Ok(())
    }

    /// Properties over arbitrary input: a gateway verifies whatever a client sends as `token`.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        const SECRET: &[u8] = b"property-secret-0123456789abcdef";

        fn any_claims() -> impl Strategy<Value = AssignmentClaims> {
            (
                ".{0,40}",
                ".{0,40}",
                ".{0,40}",
                1u64..(1 << 53),
                proptest::option::of(".{0,20}"),
                proptest::option::of(proptest::collection::vec(".{0,12}", 0..4)),
            )
                .prop_map(|(sub, ns, rid, exp_ms, uid, rooms)| AssignmentClaims {
                    sub,
                    ns,
                    rid,
                    exp: exp_ms.div_ceil(1000),
                    exp_ms,
                    uid,
                    rooms,
                })
        }

        proptest! {
            #[test]
            fn arbitrary_strings_are_refused_without_panicking(token in ".*") {
                prop_assert!(TokenKey::new(SECRET).verify_at(&token, 0).is_err());
            }

            #[test]
            fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let token = String::from_utf8_lossy(&bytes);
                prop_assert!(TokenKey::new(SECRET).verify_at(&token, 0).is_err());
            }

            #[test]
            fn jwt_shaped_garbage_is_a_bad_token(
                parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 3),
            ) {
                let token = parts.join(".");
                prop_assert_eq!(TokenKey::new(SECRET).verify_at(&token, 0), Err(TokenError::Bad));
            }

            #[test]
            fn signed_claims_round_trip(claims in any_claims()) {
                let key = TokenKey::new(SECRET);
                let token = key.sign(&claims).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(key.verify_at(&token, claims.exp_ms - 1), Ok(claims.clone()));
                prop_assert_eq!(key.verify_at(&token, claims.exp_ms), Err(TokenError::Expired));
            }

            /// Changing any one character of a valid token (header, claims or signature) is
            /// always caught: the token is refused, never accepted with other claims.
            #[test]
            fn a_tampered_token_is_always_refused(
                claims in any_claims(),
                at in any::<proptest::sample::Index>(),
                replacement in proptest::char::range('!', '~'),
            ) {
                let key = TokenKey::new(SECRET);
                let token = key.sign(&claims).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let i = at.index(token.len());
                prop_assume!(token.as_bytes()[i] != replacement as u8);
                let mut tampered = token.into_bytes();
                tampered[i] = replacement as u8;
                let tampered = String::from_utf8(tampered).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(key.verify_at(&tampered, 0).is_err(), "accepted {}", tampered);
            }

            #[test]
            fn a_token_signed_with_another_secret_is_refused(
                claims in any_claims(),
                other in proptest::collection::vec(any::<u8>(), 1..64),
            ) {
                prop_assume!(other != SECRET);
                let token = TokenKey::new(&other).sign(&claims).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(TokenKey::new(SECRET).verify_at(&token, 0), Err(TokenError::Bad));
            }
        }
    }
}
