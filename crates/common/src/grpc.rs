//! gRPC pieces every service mounts: the server builder (TLS when configured), health,
//! reflection and the admin bearer check.

use tonic::{Request, Status, metadata::MetadataValue};
use tonic_health::server::HealthReporter;

/// The gRPC server builder every service starts from: TLS with `tls` (requiring client
/// certificates when it is mutual), plain HTTP/2 without.
pub fn server(
    tls: Option<&crate::tls::ServerTls>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder.tls_config(tls.grpc()),
        None => Ok(builder),
    }
}

/// The connections a gRPC listener accepts, each with `TCP_NODELAY` on
/// ([`crate::http_server::nodelay`]: streamed frames are small writes), for `serve_with_incoming`,
/// which unlike `serve` leaves socket options alone.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener
            .accept()
            .await
            .map(|(tcp, _)| crate::http_server::nodelay(tcp));
        Some((accepted, listener))
    })
}

/// The standard `grpc.health.v1.Health` service and its reporter. The overall status (service
/// name `""`) starts `SERVING`; services add their own names.
pub async fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// Reflection v1 and v1alpha (grpcurl still speaks v1alpha) over every Switchyard proto and the
/// health proto.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Checks `authorization: Bearer <token>` ([`crate::bearer`]) against one configured token, in
/// constant time.
///
/// A service with no token configured for a purpose refuses every call of that purpose:
/// security by default. Admin calls and the relay's backend `Publish` each have their own
/// token, so a backend able to publish cannot drain gateways.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// What the token guards and which setting provides it, for the refusal messages.
    purpose: &'static str,
    setting: &'static str,
}

/// The admin API's bearer check (`--admin-token`, `SWITCHYARD_ADMIN_TOKEN`).
pub type AdminAuth = BearerAuth;

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("purpose", &self.purpose)
            .field("configured", &self.expected.is_some())
            .finish()
    }
}

impl BearerAuth {
    /// The admin token check.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Self::for_purpose("admin", "--admin-token (SWITCHYARD_ADMIN_TOKEN)", token)
    }

    /// A token check for `purpose` (`"publish"`…), configured by `setting` (named in errors).
    pub fn for_purpose(
        purpose: &'static str,
        setting: &'static str,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let expected = match token {
            Some(t) if !t.is_empty() => Some(crate::bearer::header_value(t)?),
            _ => None,
        };
        Ok(Self {
            expected,
            purpose,
            setting,
        })
    }

    /// Checks a request's metadata; `UNAUTHENTICATED` with a clear reason otherwise.
    pub fn verify(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Err(Status::unauthenticated(format!(
                "{} calls are disabled: no {} configured",
                self.purpose, self.setting
            )));
        };
        match metadata.get(crate::bearer::AUTHORIZATION) {
            Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(format!(
                "invalid {} token",
                self.purpose
            ))),
            None => Err(Status::unauthenticated(format!(
                "missing `authorization: Bearer <{} token>`",
                self.purpose
            ))),
        }
    }

    /// A tonic interceptor body: passes the request through or answers `UNAUTHENTICATED`.
    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        self.verify(req.metadata())?;
        Ok(req)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_grpc_connections_have_nodelay_on() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let mut accepted = std::pin::pin!(incoming(listener));
        let tcp = futures::StreamExt::next(&mut accepted)
            .await
            .ok_or_else(|| anyhow::anyhow!("the listener stream ended"))??;
        assert!(tcp.nodelay()?);
        Ok(())
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth
            && let Ok(v) = a.parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    #[test]
    fn admin_calls_need_the_right_bearer_token() -> anyhow::Result<()> {
        let auth = AdminAuth::new(Some("s3cret"))?;
        assert!(auth.check(request(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Bearer s3cret "),
        ] {
            let err = auth.check(request(bad)).err().map(|s| s.code());
            assert_eq!(err, Some(tonic::Code::Unauthenticated), "{bad:?}");
        }
        let off = AdminAuth::new(None)?;
        assert!(off.check(request(Some("Bearer s3cret"))).is_err());
        Ok(())
    }
}
