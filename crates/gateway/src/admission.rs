//! Admission: may this CONNECT become a socket on this gateway?
//!
//! Checked in this order, first failure wins; the reason string is the external contract:
//!
//! | reason            | when |
//! |-------------------|------|
//! | `draining`        | the gateway is draining (SIGTERM, placement's drain) |
//! | `rate_limited`    | more than `--connect-rate` new connections this second |
//! | `bad_token`       | no `auth.token` (unless `--allow-anonymous`), garbage, or a wrong signature |
//! | `token_expired`   | the token's `exp_ms` has passed |
//! | `wrong_node`      | the token names another node; it stays good for that node |
//! | `wrong_namespace` | the token was issued for another namespace |
//! | `token_reused`    | this token's reservation already became a connection here |
//! | `over_capacity`   | `--max-connections` sockets are connected |
//!
//! **What a client observes.** socketioxide answers a refused CONNECT with a `connect_error`
//! packet whose payload is `{"message": "<reason>"}` (the `Display` of the middleware's error;
//! socketioxide 0.18 has no way to add a `data` field). So with the official JS client,
//! `socket.on("connect_error", err => err.message)` is exactly `"bad_token"` etc., and
//! `err.data` is `undefined`; python-socketio calls its `connect_error` handler with
//! `{"message": "bad_token"}`. The engine.io connection stays open, the namespace is not joined,
//! and the JS client does not retry by itself after a middleware refusal.
//!
//! **Consumption.** A token's reservation is consumed only when the connection succeeds on the
//! node the token names. Admission *claims* the reservation id ([`Admission::claim`]: checked
//! and recorded in one step, so of two CONNECTs racing with one token exactly one gets it and
//! the other is refused `token_reused`); the claim becomes final in the connect handler, which
//! socketioxide runs only after every middleware accepted and the CONNECT answer was sent, and
//! the id is then recorded for the next report. A claim that never becomes final (a later check
//! or the application refused the CONNECT, or the connection failed before it was answered) is
//! released when the socket is dropped. A token refused for any reason, including `wrong_node`,
//! is not consumed.
//!
//! With `--allow-anonymous`, a CONNECT without a token is admitted (and counted in the load);
//! a CONNECT *with* a token is still verified when a secret is configured, so a bad token is
//! never silently downgraded to anonymous.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use switchyard_common::assignment::{AssignmentClaims, TokenError, TokenKey};
use switchyard_common::clock::now_ms;
use switchyard_common::namespace;

use crate::rooms::RoomGrant;

/// Why a CONNECT was refused. `Display` is the machine-readable reason clients receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad_token")]
    BadToken,
    #[error("token_expired")]
    TokenExpired,
    #[error("wrong_node")]
    WrongNode,
    #[error("wrong_namespace")]
    WrongNamespace,
    #[error("token_reused")]
    TokenReused,
    #[error("draining")]
    Draining,
    #[error("over_capacity")]
    OverCapacity,
    #[error("rate_limited")]
    RateLimited,
}

impl Refusal {
    /// The reason string (same as `Display`), for metric labels and span fields.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadToken => "bad_token",
            Refusal::TokenExpired => "token_expired",
            Refusal::WrongNode => "wrong_node",
            Refusal::WrongNamespace => "wrong_namespace",
            Refusal::TokenReused => "token_reused",
            Refusal::Draining => "draining",
            Refusal::OverCapacity => "over_capacity",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Bad => Refusal::BadToken,
            TokenError::Expired => Refusal::TokenExpired,
        }
    }
}

/// What admission learned about an accepted client; stored in the socket's extensions.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The reservation this connection consumes; `None` for anonymous clients.
    pub reservation_id: Option<String>,
    /// When the token expires (ms since the epoch); replays are remembered until then.
    pub token_exp_ms: u64,
    /// Application user id from the token, if any.
    pub uid: Option<String>,
    /// Rooms this client may join and publish to.
    pub rooms: RoomGrant,
}

/// The token, rate and replay checks (capacity and draining are asked of their owners).
#[derive(Debug)]
pub struct Admission {
    node_id: String,
    key: Option<TokenKey>,
    allow_anonymous: bool,
    default_rooms: RoomGrant,
    rate: Option<Mutex<TokenBucket>>,
    /// Reservation ids claimed or consumed here, with their token's expiry. A token cannot be
    /// replayed before it expires; after that, its expiry refuses it anyway.
    consumed: Arc<Mutex<HashMap<String, u64>>>,
}

impl Admission {
    /// `connect_rate == 0` disables the connect rate limit.
    pub fn new(
        node_id: String,
        key: Option<TokenKey>,
        allow_anonymous: bool,
        default_rooms: RoomGrant,
        connect_rate: u32,
    ) -> Self {
        Self {
            node_id,
            key,
            allow_anonymous,
            default_rooms,
            rate: (connect_rate > 0).then(|| Mutex::new(TokenBucket::new(connect_rate))),
            consumed: Arc::default(),
        }
    }

    /// Takes one connection from the connect-rate budget.
    pub fn check_rate(&self) -> Result<(), Refusal> {
        match &self.rate {
            None => Ok(()),
            Some(bucket) => match bucket.lock() {
                Ok(mut b) => {
                    if b.try_take(Instant::now()) {
                        Ok(())
                    } else {
                        Err(Refusal::RateLimited)
                    }
                }
                Err(_) => Err(Refusal::RateLimited),
            },
        }
    }

    /// Verifies `token` (if any) for a CONNECT to namespace `ns`, at `now_ms`.
    pub fn check_token(
        &self,
        ns: &str,
        token: Option<&str>,
        now_ms: u64,
    ) -> Result<Admitted, Refusal> {
        let token = token.filter(|t| !t.is_empty());
        let (token, key) = match (token, &self.key) {
            (Some(token), Some(key)) => (token, key),
            // Without a secret nothing can be verified: only anonymous mode admits anyone.
            (_, None) | (None, _) if self.allow_anonymous => return Ok(self.anonymous()),
            _ => return Err(Refusal::BadToken),
        };
        let claims: AssignmentClaims = key.verify_at(token, now_ms)?;
        if claims.sub != self.node_id {
            return Err(Refusal::WrongNode);
        }
        if namespace::normalize(&claims.ns) != Ok(ns) {
            return Err(Refusal::WrongNamespace);
        }
        if claims.rid.is_empty() {
            return Err(Refusal::BadToken);
        }
        let rooms = match claims.rooms {
            Some(patterns) => RoomGrant::new(patterns),
            None => self.default_rooms.clone(),
        };
        Ok(Admitted {
            reservation_id: Some(claims.rid),
            token_exp_ms: claims.exp_ms,
            uid: claims.uid,
            rooms,
        })
    }

    /// [`Admission::check_token`] at the current time.
    pub fn check_token_now(&self, ns: &str, token: Option<&str>) -> Result<Admitted, Refusal> {
        self.check_token(ns, token, now_ms())
    }

    /// Claims the reservation of an admitted client: checked and recorded in one step, so a
    /// token whose reservation is claimed or consumed here is refused `token_reused`, however
    /// many CONNECTs race with it. `None` for anonymous clients (nothing to consume). Dropping
    /// the claim uncommitted gives the reservation back; see [`Claim`].
    pub fn claim(&self, admitted: &Admitted) -> Result<Option<Claim>, Refusal> {
        let Some(rid) = &admitted.reservation_id else {
            return Ok(None);
        };
        let mut consumed = self.consumed.lock().unwrap_or_else(PoisonError::into_inner);
        if consumed.contains_key(rid) {
            return Err(Refusal::TokenReused);
        }
        // Forget expired ids now and then; their tokens are refused as expired anyway.
        if consumed.len() >= 1024 && consumed.len().is_power_of_two() {
            let now = now_ms();
            consumed.retain(|_, exp| *exp > now);
        }
        consumed.insert(rid.clone(), admitted.token_exp_ms);
        Ok(Some(Claim {
            consumed: Arc::clone(&self.consumed),
            rid: rid.clone(),
            committed: AtomicBool::new(false),
        }))
    }

    fn anonymous(&self) -> Admitted {
        Admitted {
            reservation_id: None,
            token_exp_ms: 0,
            uid: None,
            rooms: self.default_rooms.clone(),
        }
    }
}

/// A reservation claimed by one CONNECT ([`Admission::claim`]). Kept in the socket's extensions;
/// [`Claim::commit`] makes it final once the connection succeeded. Dropped uncommitted, it
/// gives the reservation back, so the token stays good for a connection that does succeed.
#[derive(Debug)]
pub struct Claim {
    consumed: Arc<Mutex<HashMap<String, u64>>>,
    rid: String,
    committed: AtomicBool,
}

impl Claim {
    /// Makes the claim final and returns the reservation id, to be reported as consumed;
    /// `None` if it was already committed.
    pub fn commit(&self) -> Option<&str> {
        (!self.committed.swap(true, Ordering::AcqRel)).then_some(self.rid.as_str())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !*self.committed.get_mut() {
            self.consumed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.rid);
        }
    }
}

/// A token bucket holding at most one second of connections.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate_per_sec: u32) -> Self {
        let rate = f64::from(rate_per_sec);
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl fmt::Display for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reservation_id {
            Some(rid) => write!(f, "reservation {rid}"),
            None => f.write_str("anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn key() -> TokenKey {
        TokenKey::new(b"test-secret")
    }

    fn token(
        sub: &str,
        ns: &str,
        rid: &str,
        exp_ms: u64,
        rooms: Option<Vec<String>>,
    ) -> anyhow::Result<String> {
        Ok(key().sign(&AssignmentClaims {
            sub: sub.into(),
            ns: ns.into(),
            rid: rid.into(),
            exp: exp_ms / 1000 + 1,
            exp_ms,
            uid: None,
            rooms,
        })?)
    }

    fn admission(anonymous: bool) -> Admission {
        Admission::new(
            "gw-1".into(),
            Some(key()),
            anonymous,
            RoomGrant::new(["*"]),
            0,
        )
    }

    #[test]
    fn a_valid_token_for_this_node_is_admitted_with_its_reservation() -> anyhow::Result<()> {
        let t = token("gw-1", "/", "r1", NOW + 5000, None)?;
        let a = admission(false)
            .check_token("/", Some(&t), NOW)
            .map_err(anyhow::Error::msg)?;
        assert_eq!(a.reservation_id.as_deref(), Some("r1"));
        assert!(a.rooms.allows("anything"));
        Ok(())
    }

    #[test]
    fn each_bad_token_gets_its_reason() -> anyhow::Result<()> {
        let adm = admission(false);
        let check = |t: Option<&str>, ns: &str| adm.check_token(ns, t, NOW).err();
        assert_eq!(check(None, "/"), Some(Refusal::BadToken));
        assert_eq!(check(Some(""), "/"), Some(Refusal::BadToken));
        assert_eq!(check(Some("garbage"), "/"), Some(Refusal::BadToken));
        let other_key = TokenKey::new(b"other").sign(&AssignmentClaims {
            sub: "gw-1".into(),
            ns: "/".into(),
            rid: "r".into(),
            exp: NOW / 1000 + 10,
            exp_ms: NOW + 5000,
            uid: None,
            rooms: None,
        })?;
        assert_eq!(check(Some(&other_key), "/"), Some(Refusal::BadToken));
        assert_eq!(
            check(Some(&token("gw-1", "/", "r", NOW, None)?), "/"),
            Some(Refusal::TokenExpired)
        );
        assert_eq!(
            check(Some(&token("gw-2", "/", "r", NOW + 5000, None)?), "/"),
            Some(Refusal::WrongNode)
        );
        assert_eq!(
            check(Some(&token("gw-1", "/chat", "r", NOW + 5000, None)?), "/"),
            Some(Refusal::WrongNamespace)
        );
        Ok(())
    }

    #[test]
    fn a_consumed_token_cannot_be_replayed_but_a_refused_one_stays_good() -> anyhow::Result<()> {
        let adm = admission(false);
        let t = token("gw-1", "/", "r9", NOW + 5000, None)?;
        // Refused elsewhere (another namespace here): not consumed, still good.
        assert_eq!(
            adm.check_token("/other", Some(&t), NOW).err(),
            Some(Refusal::WrongNamespace)
        );
        let admitted = adm
            .check_token("/", Some(&t), NOW)
            .map_err(anyhow::Error::msg)?;
        let claim = adm.claim(&admitted).map_err(anyhow::Error::msg)?;
        assert_eq!(claim.as_ref().and_then(Claim::commit), Some("r9"));
        assert_eq!(adm.claim(&admitted).err(), Some(Refusal::TokenReused));
        drop(claim);
        assert_eq!(
            adm.claim(&admitted).err(),
            Some(Refusal::TokenReused),
            "a committed claim stays consumed"
        );
        Ok(())
    }

    #[test]
    fn racing_claims_of_one_token_admit_exactly_one() -> anyhow::Result<()> {
        let adm = Arc::new(admission(false));
        let t = token("gw-1", "/", "race", NOW + 5000, None)?;
        let admitted = adm
            .check_token("/", Some(&t), NOW)
            .map_err(anyhow::Error::msg)?;
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let claims: Vec<_> = (0..8)
            .map(|_| {
                let (adm, admitted, barrier) = (adm.clone(), admitted.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    adm.claim(&admitted).ok().flatten()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect();
        assert_eq!(claims.len(), 1);
        Ok(())
    }

    #[test]
    fn an_uncommitted_claim_gives_the_reservation_back() -> anyhow::Result<()> {
        let adm = admission(false);
        let t = token("gw-1", "/", "r5", NOW + 5000, None)?;
        let admitted = adm
            .check_token("/", Some(&t), NOW)
            .map_err(anyhow::Error::msg)?;
        let claim = adm.claim(&admitted).map_err(anyhow::Error::msg)?;
        assert!(claim.is_some());
        drop(claim); // e.g. over capacity, or the application refused the CONNECT
        assert!(adm.claim(&admitted).map_err(anyhow::Error::msg)?.is_some());
        Ok(())
    }

    #[test]
    fn anonymous_mode_admits_tokenless_clients_but_still_checks_tokens() -> anyhow::Result<()> {
        let adm = admission(true);
        let a = adm
            .check_token("/", None, NOW)
            .map_err(anyhow::Error::msg)?;
        assert!(a.reservation_id.is_none());
        assert_eq!(
            adm.check_token("/", Some("garbage"), NOW).err(),
            Some(Refusal::BadToken)
        );
        let no_secret = Admission::new("gw-1".into(), None, true, RoomGrant::new(["*"]), 0);
        assert!(no_secret.check_token("/", Some("anything"), NOW).is_ok());
        let closed = Admission::new("gw-1".into(), None, false, RoomGrant::new(["*"]), 0);
        assert_eq!(
            closed.check_token("/", None, NOW).err(),
            Some(Refusal::BadToken)
        );
        Ok(())
    }

    #[test]
    fn token_rooms_claim_replaces_the_configured_patterns() -> anyhow::Result<()> {
        let t = token("gw-1", "/", "r1", NOW + 5000, Some(vec!["team:*".into()]))?;
        let a = admission(false)
            .check_token("/", Some(&t), NOW)
            .map_err(anyhow::Error::msg)?;
        assert!(a.rooms.allows("team:a"));
        assert!(!a.rooms.allows("other"));
        Ok(())
    }

    #[test]
    fn the_bucket_allows_the_rate_then_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(3);
        b.last = start;
        assert!((0..3).all(|_| b.try_take(start)));
        assert!(!b.try_take(start));
        assert!(b.try_take(start + Duration::from_millis(400)));
        assert!(!b.try_take(start + Duration::from_millis(400)));
    }

    #[test]
    fn refusal_display_is_the_reason() {
        for r in [
            Refusal::BadToken,
            Refusal::Draining,
            Refusal::OverCapacity,
            Refusal::RateLimited,
        ] {
            assert_eq!(r.to_string(), r.reason());
        }
    }
}
