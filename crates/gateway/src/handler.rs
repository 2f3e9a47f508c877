//! [`GatewayHandler`]: wraps an application's connect handler with Switchyard's admission.
//!
//! socketioxide runs a namespace's connect middlewares, answers the CONNECT (or sends
//! `connect_error`), then spawns the connect handler. Switchyard hooks both halves:
//!
//! - **middleware half** ([`ConnectHandler::call_middleware`]): admission (draining, connect
//!   rate, token, capacity seat), then the built-in events and the disconnect handler are
//!   registered on the socket — here and not in the connect handler, which runs in a spawned
//!   task and could lose a `join` sent right after `connect` — then the application's own
//!   middlewares run;
//! - **handler half** ([`ConnectHandler::call`]), reached only after every middleware accepted
//!   and the CONNECT answer went out: the reservation is recorded as consumed, and the
//!   application's handler is called.
//!
//! The application's disconnect handler, if it sets one with `socket.on_disconnect`, replaces
//! Switchyard's; the socket's seat is then given back when socketioxide drops the socket
//! instead of at the disconnect itself (see [`crate::load::Seat`]). Call
//! [`crate::release_seat`] from your own disconnect handler to keep the count exact. With
//! interest routing, the rooms such a socket was the last local member of then stay declared
//! until another member leaves them: more frames than needed reach this gateway, none fewer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use socketioxide::{
    adapter::Adapter,
    extract::{Data, Event, SocketRef, TryData},
    handler::{ConnectHandler, FromConnectParts, Value},
    socket::{DisconnectReason, Socket},
};
use tracing::Instrument;

use crate::admission::{Claim, Refusal};
use crate::load::Seat;
use crate::metrics;
use crate::observe::{AdminEvent, Observer};
use crate::shared::Shared;

type MiddlewareResult = Result<(), Box<dyn std::fmt::Display + Send>>;

/// An application connect handler `H` behind Switchyard's admission. Built by
/// [`crate::Switchyard::ns`].
pub struct GatewayHandler<H> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inner: H,
}

impl<H: Clone> Clone for GatewayHandler<H> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<A, H, T> ConnectHandler<A, T> for GatewayHandler<H>
where
    A: Adapter,
    H: ConnectHandler<A, T>,
    T: Send + Sync + 'static,
{
    fn call(&self, s: Arc<Socket<A>>, auth: Option<Value>) {
        let span = tracing::info_span!("connected", node_id = %self.shared.settings.node_id, ns = %s.ns(), sid = %s.id);
        let _enter = span.enter();
        if let Some(claim) = s.extensions.get::<Arc<Claim>>()
            && let Some(rid) = claim.commit()
        {
            self.shared.load.record_consumed(rid.to_owned());
        }
        ::metrics::counter!(metrics::CONNECTS_TOTAL, "outcome" => "accepted", "reason" => "ok")
            .increment(1);
        tracing::debug!(
            connections = self.shared.load.connections(),
            "client connected"
        );
        crate::observe::report(&s, || {
            AdminEvent::Connected(Box::new(crate::observe::describe(&s)))
        });
        self.inner.call(s, auth);
    }

    fn call_middleware<'a>(
        &'a self,
        s: Arc<Socket<A>>,
        auth: &'a Option<Value>,
    ) -> Pin<Box<dyn Future<Output = MiddlewareResult> + Send + 'a>> {
        let span = tracing::info_span!(
            "connect",
            node_id = %self.shared.settings.node_id,
            ns = %s.ns(),
            sid = %s.id,
            transport = ?s.transport_type(),
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let auth_value = auth_of(&s, auth);
                let token = token_of(&auth_value);
                match admit(&self.shared, &s, token.as_deref()) {
                    Ok(seat) => {
                        let cluster = self.shared.cluster();
                        if let Some(hooks) = &self.shared.hooks
                            && let Err(reason) = crate::backend::connect(hooks, &s, auth_value, &self.shared.settings.node_id, cluster.as_ref()).await
                        {
                            seat.release();
                            tracing::Span::current().record("outcome", "refused").record("reason", "backend");
                            tracing::info!(%reason, "connect refused by the backend");
                            ::metrics::counter!(metrics::CONNECTS_TOTAL, "outcome" => "refused", "reason" => "backend")
                                .increment(1);
                            return Err(Box::new(reason) as Box<dyn std::fmt::Display + Send>);
                        }
                        let result = self.inner.call_middleware(s, auth).await;
                        if result.is_err() {
                            // The application refused: give the seat back now.
                            seat.release();
                            tracing::Span::current().record("outcome", "refused").record("reason", "application");
                            ::metrics::counter!(metrics::CONNECTS_TOTAL, "outcome" => "refused", "reason" => "application")
                                .increment(1);
                        } else {
                            tracing::Span::current().record("outcome", "accepted");
                        }
                        result
                    }
                    Err(refusal) => {
                        tracing::Span::current()
                            .record("outcome", "refused")
                            .record("reason", refusal.reason());
                        match refusal {
                            // Floods of these are load, not news: keep them out of info logs.
                            Refusal::RateLimited | Refusal::OverCapacity | Refusal::Draining => {
                                tracing::debug!(reason = refusal.reason(), "connect refused")
                            }
                            _ => tracing::info!(reason = refusal.reason(), "connect refused"),
                        }
                        ::metrics::counter!(metrics::CONNECTS_TOTAL, "outcome" => "refused", "reason" => refusal.reason())
                            .increment(1);
                        Err(Box::new(refusal) as Box<dyn std::fmt::Display + Send>)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// The CONNECT's `auth` object as JSON (null when it carried none or it does not parse).
fn auth_of<A: Adapter>(s: &Arc<Socket<A>>, auth: &Option<Value>) -> serde_json::Value {
    match TryData::<serde_json::Value>::from_connect_parts(s, auth) {
        Ok(TryData(Ok(auth))) => auth,
        _ => serde_json::Value::Null,
    }
}

/// `auth.token` as a string, if the CONNECT carried one.
fn token_of(auth: &serde_json::Value) -> Option<String> {
    match auth.get("token")? {
        serde_json::Value::String(t) => Some(t.clone()),
        _ => None,
    }
}

/// The checks, in contract order; on success the socket holds a seat and its built-in handlers.
fn admit<A: Adapter>(
    shared: &Arc<Shared>,
    s: &Arc<Socket<A>>,
    token: Option<&str>,
) -> Result<Seat, Refusal> {
    if shared.drain.is_draining() {
        return Err(Refusal::Draining);
    }
    let admitted = shared.admission.check_token_now(s.ns(), token)?;
    // After the token: CONNECTs without a good token must not spend the budget, or one host
    // sending bad tokens would refuse everyone else `rate_limited`. Before the claim: a
    // rate-limited token stays good for its retry.
    shared.admission.check_rate()?;
    // Claimed before the seat: `token_reused` comes before `over_capacity`, and a claim dropped
    // because there was no seat gives the reservation back.
    let claim = shared.admission.claim(&admitted)?;
    let seat = shared.load.try_seat().ok_or(Refusal::OverCapacity)?;
    s.extensions.insert(seat.clone());
    if let Some(claim) = claim {
        s.extensions.insert(Arc::new(claim));
    }
    s.extensions.insert(Arc::new(admitted));
    let sref = SocketRef::from(s.clone());
    let cluster = shared.cluster();
    if let Some(observer) = shared.observer.get() {
        watched_by_admin_ui(&sref, observer.clone());
        if let Some(cluster) = &cluster {
            cluster
                .link()
                .rooms_joined(sref.ns(), &[sref.id.to_string()]);
        }
    }
    crate::events::register(&sref, shared.limits, cluster.clone());
    let hooks = shared.hooks.clone();
    if let Some(hooks) = &hooks {
        // Replaces the admin UI's fallback and reports to it as that one does.
        sref.on_fallback(crate::backend::Forwarder::new(
            hooks.clone(),
            cluster.clone(),
        ));
    }
    let disconnect_seat = seat.clone();
    let (ns, sid) = (sref.ns().to_owned(), sref.id);
    sref.on_disconnect(
        move |s: SocketRef<A>, reason: DisconnectReason| async move {
            crate::observe::report(&s, || AdminEvent::Disconnected {
                ns: s.ns().to_owned(),
                sid: s.id.to_string(),
                reason: crate::observe::reason_name(reason),
            });
            disconnect_seat.release();
            if let Some(hooks) = &hooks {
                crate::backend::disconnected(hooks, &s, reason);
            }
            if let Some(cluster) = &cluster {
                cluster.gates().forget_socket(&ns, sid);
                // Still in its rooms (socketioxide removes it after this handler).
                let rooms: Vec<String> = s.rooms().into_iter().map(|r| r.to_string()).collect();
                cluster
                    .link()
                    .rooms_left(&ns, &rooms, Some(sid.to_string().as_str()));
            }
            ::metrics::counter!(metrics::DISCONNECTS_TOTAL, "reason" => disconnect_label(reason))
                .increment(1);
        },
    );
    Ok(seat)
}

/// With the admin UI on: the socket carries the UI's observer, is in a room named after its own
/// id (as in Node, so the UI can name one socket as a room on any gateway), and the events no
/// handler takes are reported as received (an application's own fallback replaces this).
fn watched_by_admin_ui<A: Adapter>(s: &SocketRef<A>, observer: Observer) {
    s.extensions.insert(observer);
    s.join(s.id.to_string());
    s.on_fallback(
        |s: SocketRef<A>, Event(name): Event, Data(args): Data<crate::payload::Args>| async move {
            crate::observe::report(&s, || {
                let mut all = vec![serde_json::Value::String(name)];
                all.extend(args.0);
                AdminEvent::Received {
                    ns: s.ns().to_owned(),
                    sid: s.id.to_string(),
                    args: all,
                }
            });
        },
    );
}

fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "parse_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}

#[cfg(test)]
mod tests {
    //! Admission over the wire: a real socketioxide server on a real socket, spoken to in raw
    //! Engine.IO long-polling, so the test shows byte for byte what a client receives.

    use std::net::SocketAddr;

    use socketioxide::SocketIo;
    use switchyard_common::assignment::{AssignmentClaims, TokenKey};
    use switchyard_common::clock::now_ms;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::{Settings, Switchyard};

    const SECRET: &str = "handler-test-secret";

    async fn start_gateway(max_connections: u64) -> anyhow::Result<(SocketAddr, crate::Running)> {
        let mut settings = Settings::new("gw-test", "http://127.0.0.1:0");
        settings.token_secret = Some(SECRET.into());
        settings.max_connections = max_connections;
        let gateway = Switchyard::new(settings)?;
        let (layer, io) = gateway.configure(SocketIo::builder()).build_layer();
        gateway.mount(&io);
        let running = gateway.start(io)?;
        let app = axum::Router::new().layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((addr, running))
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the body.
    async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await?;
        let mut resp = String::new();
        stream.read_to_string(&mut resp).await?;
        let (_, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no body in {resp:?}"))?;
        Ok(body.to_owned())
    }

    /// Opens an Engine.IO polling session, sends a Socket.IO CONNECT with `auth`, and returns
    /// the server's answer packet.
    async fn connect(addr: SocketAddr, auth: &str) -> anyhow::Result<String> {
        let open = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", "").await?;
        let handshake: serde_json::Value = serde_json::from_str(
            open.strip_prefix('0')
                .ok_or_else(|| anyhow::anyhow!("not an open packet: {open:?}"))?,
        )?;
        let sid = handshake["sid"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no sid"))?
            .to_owned();
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        http(addr, "POST", &path, &format!("40{auth}")).await?;
        // A poll may carry several packets (separated by 0x1e), e.g. an Engine.IO ping ("2").
        let polled = http(addr, "GET", &path, "").await?;
        polled
            .split('\u{1e}')
            .find(|p| p.starts_with('4'))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no Socket.IO packet in {polled:?}"))
    }

    fn token(node: &str, rid: &str) -> anyhow::Result<String> {
        let exp_ms = now_ms() + 60_000;
        Ok(TokenKey::new(SECRET.as_bytes()).sign(&AssignmentClaims {
            sub: node.into(),
            ns: "/".into(),
            rid: rid.into(),
            exp: exp_ms / 1000,
            exp_ms,
            uid: None,
            rooms: None,
        })?)
    }

    #[tokio::test]
    async fn a_refused_connect_carries_the_reason_as_the_connect_error_message()
    -> anyhow::Result<()> {
        let (addr, _running) = start_gateway(1).await?;
        assert_eq!(
            connect(addr, r#"{"token":"garbage"}"#).await?,
            r#"44{"message":"bad_token"}"#
        );
        assert_eq!(connect(addr, "").await?, r#"44{"message":"bad_token"}"#);
        let other = token("gw-other", "r0")?;
        assert_eq!(
            connect(addr, &format!(r#"{{"token":"{other}"}}"#)).await?,
            r#"44{"message":"wrong_node"}"#
        );

        let good = token("gw-test", "r1")?;
        let answer = connect(addr, &format!(r#"{{"token":"{good}"}}"#)).await?;
        assert!(answer.starts_with(r#"40{"sid":"#), "{answer}");
        // The same token again: its reservation is consumed.
        assert_eq!(
            connect(addr, &format!(r#"{{"token":"{good}"}}"#)).await?,
            r#"44{"message":"token_reused"}"#
        );
        // A fresh token, but the one seat is taken.
        let second = token("gw-test", "r2")?;
        assert_eq!(
            connect(addr, &format!(r#"{{"token":"{second}"}}"#)).await?,
            r#"44{"message":"over_capacity"}"#
        );
        Ok(())
    }
}
