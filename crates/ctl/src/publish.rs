//! `syctl publish`: emit an event to rooms from the command line, through the relay's
//! `switchyard.relay.v1.Relay/Publish` (the same call any backend service makes).
//!
//! The relay and its publish token come from `--relay` / `SWITCHYARD_RELAY_URL` and
//! `--publish-token` / `SWITCHYARD_PUBLISH_TOKEN`, else from `.switchyard/cluster.json`
//! (`relays[].grpc`, `publish_token`). As with placement, the file's token is only sent to a relay
//! the same file lists. The publish token is not the admin token: a backend that may publish
//! need not be able to drain nodes.

use std::{path::Path, time::Duration};

use switchyard_common::tls::ClientTls;
use switchyard_proto::relay::v1::{PublishRequest, publish_request, relay_client::RelayClient};
use tonic::{Code, Request};

use crate::{client, cluster_file, error::CtlError, output};

/// What to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    pub namespace: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub event: String,
    /// One JSON value, already checked to parse.
    pub json: String,
}

/// The relay endpoints to try, in order, and the token to present.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
}

impl RelayTarget {
    /// Resolves the relay from the flags, falling back to the cluster file found from `cwd`;
    /// `file_token` picks the file's token for the call (publish or admin).
    pub fn resolve(
        relay: Option<&str>,
        token: Option<&str>,
        cwd: &Path,
        file_token: fn(&cluster_file::Found) -> Option<&str>,
    ) -> Result<RelayTarget, CtlError> {
        let flag_token = token.filter(|t| !t.is_empty()).map(str::to_owned);
        let found = cluster_file::discover(cwd);
        if let Some(relay) = relay.map(str::trim).filter(|r| !r.is_empty()) {
            let endpoint = cluster_file::normalize_endpoint(relay);
            let token = flag_token.or_else(|| {
                found
                    .ok()
                    .flatten()
                    .filter(|f| f.relay_endpoints().contains(&endpoint))
                    .and_then(|f| file_token(&f).map(str::to_owned))
            });
            return Ok(RelayTarget {
                endpoints: vec![endpoint],
                token,
            });
        }
        let Some(found) = found? else {
            return Err(CtlError::Config(format!(
                "no relay address: pass --relay <url>, set SWITCHYARD_RELAY_URL, or start a local \
                 cluster with `cargo xtask up` (no {} in {} or any parent)",
                cluster_file::RELATIVE_PATH,
                cwd.display()
            )));
        };
        let endpoints = found.relay_endpoints();
        if endpoints.is_empty() {
            return Err(CtlError::Config(format!(
                "{} lists no relay gRPC endpoint; pass --relay <url>",
                found.path.display()
            )));
        }
        Ok(RelayTarget {
            endpoints,
            token: flag_token.or_else(|| file_token(&found).map(str::to_owned)),
        })
    }
}

/// Publishes through the first relay that accepts a connection, and prints the outcome.
pub async fn run(
    target: &RelayTarget,
    publication: Publication,
    timeout: Duration,
    tls: &ClientTls,
    json: bool,
) -> Result<(), CtlError> {
    let bearer = client::bearer(target.token.as_deref(), "publish")?;
    let (channel, endpoint) =
        client::connect_first(&target.endpoints, timeout, tls, "the relay", "").await?;
    let mut req = Request::new(PublishRequest {
        namespace: publication.namespace.clone(),
        rooms: publication.rooms.clone(),
        except: publication.except.clone(),
        event: publication.event.clone(),
        data: Some(publish_request::Data::Json(publication.json.clone())),
    });
    req.set_timeout(timeout);
    bearer.apply(req.metadata_mut());
    let answer = tokio::time::timeout(timeout, RelayClient::new(channel).publish(req)).await;
    let response = match answer {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return Err(from_status(&status, endpoint)),
        Err(_) => {
            return Err(CtlError::Unavailable(format!(
                "relay at {endpoint} did not answer within {timeout:?}"
            )));
        }
    };
    let position = response.position.map(|p| (p.epoch, p.offset));
    if json {
        return output::print_json(&serde_json::json!({
            "gateways": response.gateways,
            "position": position.as_ref().map(|(epoch, offset)| {
                serde_json::json!({"epoch": epoch, "offset": offset})
            }),
        }));
    }
    let at = match position {
        Some((epoch, offset)) => format!(" at offset {offset} (epoch {epoch})"),
        None => String::new(),
    };
    let rooms = if publication.rooms.is_empty() {
        "every socket".to_owned()
    } else {
        format!("rooms {}", publication.rooms.join(", "))
    };
    println!(
        "Published `{}` to {rooms} of {}{at}: {} gateway(s) linked.",
        publication.event, publication.namespace, response.gateways
    );
    Ok(())
}

/// Relay-specific wording for a failed `Publish`; exit codes as for placement.
fn from_status(status: &tonic::Status, endpoint: &str) -> CtlError {
    let detail = status.message();
    match status.code() {
        Code::Unauthenticated => CtlError::Unauthenticated(format!(
            "relay at {endpoint} refused the publish token: {detail}\n\
             hint: pass --publish-token or set SWITCHYARD_PUBLISH_TOKEN to the relay's \
             --publish-token (`cargo xtask up` writes it to .switchyard/cluster.json)"
        )),
        Code::InvalidArgument | Code::OutOfRange => {
            CtlError::Config(format!("the relay rejected the event: {detail}"))
        }
        Code::Unavailable | Code::DeadlineExceeded => {
            CtlError::Unavailable(format!("relay at {endpoint} is unavailable: {detail}"))
        }
        Code::Unimplemented => CtlError::Other(format!(
            "{endpoint} does not serve switchyard.relay.v1.Relay ({detail}); is it the relay's \
             gRPC address?"
        )),
        code => CtlError::Other(format!("publish to {endpoint} failed ({code:?}): {detail}")),
    }
}
