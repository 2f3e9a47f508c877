//! The `authorization: Bearer <token>` header, written and read in one place.
//!
//! Every token between Switchyard's parts travels this way: the admin token (`syctl`, any gRPC
//! client), the relay's publish token (backends, `syctl publish`) and link token (gateways, on
//! the link and on every history call), and applications' tokens on placement's `/v1/assign`.
//! Clients send it with [`Bearer`]; gRPC services check it with [`crate::grpc::BearerAuth`],
//! which compares the whole header value (built by [`header_value`] too) in constant time;
//! placement's HTTP front end, which takes tokens from browsers and other HTTP clients, reads it
//! with [`token_of`].

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Request, Status, service::Interceptor};

/// The header's name (gRPC metadata keys are lower case).
pub const AUTHORIZATION: &str = "authorization";

/// A token that cannot be sent in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the token contains characters that cannot be sent in a header (only visible ASCII is allowed)"
)]
pub struct UnsendableToken;

/// `Bearer <token>`, as a header value.
pub fn header_value(token: &str) -> Result<MetadataValue<Ascii>, UnsendableToken> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| UnsendableToken)
}

/// The token of an HTTP `Authorization` header value: `Bearer <token>`, the scheme in any case
/// (RFC 9110 makes it case-insensitive) and surrounding spaces ignored; `None` for another
/// scheme or no token.
pub fn token_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Sends `authorization: Bearer <token>` with every call, or nothing without a token (the
/// server then answers `UNAUTHENTICATED` with a hint). A tonic interceptor, and
/// [`Bearer::apply`] for requests made by hand (a streaming call's first request).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Fails when the token cannot travel in a header.
    pub fn new(token: Option<&str>) -> Result<Self, UnsendableToken> {
        token.map(header_value).transpose().map(Bearer)
    }

    /// Adds the header to `metadata`, when there is a token.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        if let Some(value) = &self.0 {
            metadata.insert(AUTHORIZATION, value.clone());
        }
    }
}

/// Never shows the token.
impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("token", &self.0.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.apply(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_sends_its_token_and_hides_it() -> Result<(), UnsendableToken> {
        let mut req = Request::new(());
        Bearer::new(Some("s3cret"))?.apply(req.metadata_mut());
        let sent = req.metadata().get(AUTHORIZATION).map(|v| v.to_str().ok());
        assert_eq!(sent, Some(Some("Bearer s3cret")));
        assert!(!format!("{:?}", Bearer::new(Some("s3cret"))?).contains("s3cret"));

        let mut req = Request::new(());
        Bearer::new(None)?.apply(req.metadata_mut());
        assert!(req.metadata().get(AUTHORIZATION).is_none());

        assert_eq!(Bearer::new(Some("bad\ntoken")).err(), Some(UnsendableToken));
        Ok(())
    }

    #[test]
    fn the_token_is_read_from_a_bearer_header_only() {
        assert_eq!(token_of("Bearer abc"), Some("abc"));
        assert_eq!(token_of("  bearer  abc "), Some("abc"));
        assert_eq!(token_of("BEARER abc"), Some("abc"));
        assert_eq!(token_of("Basic abc"), None);
        assert_eq!(token_of("Bearer"), None);
        assert_eq!(token_of(""), None);
    }
}
