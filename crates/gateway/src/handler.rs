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
//! [`crate::release_seat`] from your own disconnect handler to keep the count exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, TryData},
    handler::{ConnectHandler, FromConnectParts, Value},
    socket::{DisconnectReason, Socket},
};
use tracing::Instrument;

use crate::Shared;
use crate::admission::{Admitted, Refusal};
use crate::load::Seat;

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
        let admitted = s.extensions.get::<Arc<Admitted>>();
        let span = tracing::info_span!("connected", node_id = %self.shared.settings.node_id, ns = %s.ns(), sid = %s.id);
        let _enter = span.enter();
        if let Some(admitted) = &admitted
            && let Some(rid) = &admitted.reservation_id
        {
            if self
                .shared
                .admission
                .mark_consumed(rid, admitted.token_exp_ms)
            {
                self.shared.load.record_consumed(rid.clone());
            } else {
                tracing::warn!(rid = %rid, "token replayed concurrently; reservation already consumed");
            }
        }
        metrics::counter!("switchyard_gateway_connects_total", "outcome" => "accepted", "reason" => "ok")
            .increment(1);
        tracing::debug!(
            connections = self.shared.load.connections(),
            "client connected"
        );
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
                let token = token_of(&s, auth);
                match admit(&self.shared, &s, token.as_deref()) {
                    Ok(seat) => {
                        let result = self.inner.call_middleware(s, auth).await;
                        if result.is_err() {
                            // The application refused: give the seat back now.
                            seat.release();
                            tracing::Span::current().record("outcome", "refused").record("reason", "application");
                            metrics::counter!("switchyard_gateway_connects_total", "outcome" => "refused", "reason" => "application")
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
                        tracing::info!(reason = refusal.reason(), "connect refused");
                        metrics::counter!("switchyard_gateway_connects_total", "outcome" => "refused", "reason" => refusal.reason())
                            .increment(1);
                        Err(Box::new(refusal) as Box<dyn std::fmt::Display + Send>)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// `auth.token` as a string, if the CONNECT carried one.
fn token_of<A: Adapter>(s: &Arc<Socket<A>>, auth: &Option<Value>) -> Option<String> {
    let Ok(TryData(Ok(auth))) = TryData::<serde_json::Value>::from_connect_parts(s, auth) else {
        return None;
    };
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
    shared.admission.check_rate()?;
    let admitted = shared.admission.check_token_now(s.ns(), token)?;
    let seat = shared.load.try_seat().ok_or(Refusal::OverCapacity)?;
    s.extensions.insert(seat.clone());
    s.extensions.insert(Arc::new(admitted));
    let sref = SocketRef::from(s.clone());
    crate::events::register(&sref, shared.limits.clone());
    let disconnect_seat = seat.clone();
    sref.on_disconnect(move |reason: DisconnectReason| async move {
        disconnect_seat.release();
        metrics::counter!("switchyard_gateway_disconnects_total", "reason" => disconnect_label(reason)).increment(1);
    });
    Ok(seat)
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
