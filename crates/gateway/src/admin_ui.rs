//! The server side of `@socket.io/admin-ui` 0.5, on every gateway, across the cluster
//! (`--admin-ui`).
//!
//! The official dashboard connects to the admin namespace (`/admin` by default) of any gateway,
//! with its own basic auth ([`auth`]): no assignment token, and admin connections hold no seat,
//! so they are not client load and placement never counts them. The namespace rides the
//! cluster adapter like any other, so whatever one gateway emits to it reaches every admin
//! connection on every gateway, and commands act cluster-wide through socketioxide's own
//! operators (adapter requests to every gateway):
//!
//! - on connect: `session` (after a password login), `config` (the supported features),
//!   and in development mode `all_sockets` ([`sockets`]);
//! - every [`stats::STATS_INTERVAL`]: `server_stats` of this gateway ([`stats`]);
//! - development mode: `socket_connected`, `socket_disconnected`, `room_joined`, `room_left`
//!   (the built-in `join` / `leave`) and `event_received`, reported by the connect handler and
//!   the built-in events through [`crate::observe`] and emitted in order by one task; and
//!   `event_sent`, one per event and client socket it reached, as the package's
//!   `onAnyOutgoing`, reported by every path that delivers an event to a local client socket
//!   (room events and backend events of [`crate::delivery`], broadcasts through the cluster
//!   adapter from this gateway or another, replays, the single-gateway room emit, the UI's own
//!   `emit`, the drain notice; see [`crate::observe`]), with `packetsOut` and `bytesOut` in
//!   the stats;
//! - commands `emit`, `join`, `leave`, `_disconnect` with the UI's `(nsp, …, filter)`, where a
//!   filter is a room, or a socket id: with the admin UI on, every client socket is in a room
//!   named after its id, as in Node, so "this socket" is a room cluster-wide.
//!
//! Not served: `socket_updated` (socketioxide has no hook on transport upgrades); `event_sent`
//! for what an application's own handlers send with `socket.emit` straight to a socket, and,
//! on a single gateway (socketioxide's local adapter), for the hooks' emits to one socket
//! (socketioxide has no hook on outgoing packets: only the paths above report); `packetsOut` /
//! `bytesOut` in production mode, and `bytesIn` (see [`stats`]); and `close` on `_disconnect`
//! (the socket is disconnected from its namespace either way).
//!
//! Cost: production mode sends only `server_stats` (one frame per gateway every 2 s), and no
//! delivery looks at more than an empty slot for it; development mode (the package's default,
//! and this one's) adds one frame to every gateway per client connect, disconnect, room change
//! and event received, and per event and client socket it was sent to (a room event to a
//! thousand members is a thousand `event_sent`), like the package with a Redis adapter. Events
//! wait in a queue of [`EVENT_QUEUE`]; when it is full they are dropped and counted
//! (`switchyard_gateway_admin_ui_events_dropped_total`).

pub mod auth;
pub mod sockets;
pub mod stats;

use std::sync::Arc;
use std::time::Instant;

use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{Data, SocketRef, TryData},
    handler::ConnectHandler,
    operators::BroadcastOperators,
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use switchyard_common::clock::now_ms;
use tokio::sync::mpsc;

use crate::load::Load;
use crate::metrics;
use crate::observe::{AdminEvent, Observer, SentEvent, outgoing_observer, transport_name};
use crate::payload::Args;
use crate::settings::AdminUiSettings;
use auth::{AuthPayload, Credentials, CredentialsError};
use stats::{EventBuffer, Identity, NamespaceDetails, STATS_INTERVAL, ServerStats};

/// Admin events waiting to be emitted.
pub const EVENT_QUEUE: usize = 4096;

/// A session id made by a password login, handed from the middleware to the connect handler.
#[derive(Clone)]
struct NewSession(String);

/// The admin UI of one gateway. See the module docs.
#[derive(Debug)]
pub struct AdminUi {
    settings: AdminUiSettings,
    credentials: Arc<Credentials>,
    buffer: Arc<EventBuffer>,
    identity: Identity,
    /// Client namespaces (the configured ones), then the admin namespace.
    namespaces: Vec<String>,
}

impl AdminUi {
    /// Checks the credentials; `node_id` is the `serverId` every stats message carries.
    pub fn new(
        settings: AdminUiSettings,
        node_id: &str,
        client_namespaces: &[String],
        token_secret: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let credentials =
            Credentials::new(&settings.username, &settings.password_hash, token_secret)?;
        let mut namespaces = client_namespaces.to_vec();
        namespaces.push(settings.namespace.clone());
        Ok(Self {
            credentials: Arc::new(credentials),
            buffer: Arc::new(EventBuffer::default()),
            identity: Identity {
                server_id: node_id.to_owned(),
                hostname: crate::config::hostname(),
                pid: std::process::id(),
                started: Instant::now(),
            },
            namespaces,
            settings,
        })
    }

    /// The admin namespace (`/admin` by default).
    pub fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    fn features(&self) -> Vec<&'static str> {
        let mut f = vec![
            "EMIT",
            "JOIN",
            "LEAVE",
            "DISCONNECT",
            "MJOIN",
            "MLEAVE",
            "MDISCONNECT",
            "AGGREGATED_EVENTS",
        ];
        if self.settings.development {
            f.push("ALL_EVENTS");
        }
        f
    }

    /// Registers the admin namespace on `io`: the UI's authentication as a middleware, then
    /// the connect handler. With a non-local adapter the namespace is spawned here.
    pub fn mount<A: Adapter + DefinedAdapter>(self: &Arc<Self>, io: &SocketIo<A>) {
        let credentials = self.credentials.clone();
        let authenticate = move |s: SocketRef<A>, TryData(auth): TryData<AuthPayload>| {
            let credentials = credentials.clone();
            async move {
                let auth = auth.unwrap_or_default();
                match credentials.admit(&auth, now_ms()).await {
                    Ok(session) => {
                        if let Some(session) = session {
                            s.extensions.insert(NewSession(session));
                        }
                        ::metrics::counter!(metrics::ADMIN_UI_LOGINS_TOTAL, "outcome" => "ok")
                            .increment(1);
                        Ok(())
                    }
                    Err(refusal) => {
                        ::metrics::counter!(metrics::ADMIN_UI_LOGINS_TOTAL, "outcome" => "refused")
                            .increment(1);
                        tracing::info!(sid = %s.id, "admin UI login refused");
                        Err(refusal)
                    }
                }
            }
        };
        let ui = Arc::clone(self);
        let io2 = io.clone();
        let connected = move |s: SocketRef<A>| {
            let ui = Arc::clone(&ui);
            let io = io2.clone();
            async move { ui.on_connect(s, io).await }
        };
        io.ns(
            self.settings.namespace.clone(),
            connected.with(authenticate),
        )
        .spawn();
    }

    async fn on_connect<A: Adapter>(&self, s: SocketRef<A>, io: SocketIo<A>) {
        tracing::info!(sid = %s.id, "admin UI connected");
        register_commands(&s, &io);
        if let Some(NewSession(session)) = s.extensions.get::<NewSession>() {
            let _ = s.emit("session", &session);
        }
        let _ = s.emit("config", &json!({ "supportedFeatures": self.features() }));
        if self.settings.development {
            let all = sockets::all_sockets(&io, &self.namespaces).await;
            let _ = s.emit("all_sockets", &all);
        }
    }

    /// Starts emitting `server_stats` every [`STATS_INTERVAL`] and, in development mode, the
    /// observed events in order; returns the observer the connect handler gives every client
    /// socket.
    pub fn start<A: Adapter>(self: &Arc<Self>, io: SocketIo<A>, load: Arc<Load>) -> Observer {
        let ui = Arc::clone(self);
        let stats_io = io.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_INTERVAL);
            loop {
                tick.tick().await;
                let stats = ui.stats(&stats_io, &load);
                if let Some(op) = stats_io.of(ui.namespace())
                    && let Err(e) = op.emit("server_stats", &stats).await
                {
                    tracing::debug!(error = %e, "admin UI: server_stats not sent everywhere");
                }
            }
        });
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        if self.settings.development {
            tokio::spawn(forward(io, self.settings.namespace.clone(), rx));
        }
        let buffer = Arc::clone(&self.buffer);
        let development = self.settings.development;
        // Outgoing events only in development mode: in production mode no delivery pays for
        // the admin UI (and `packetsOut` / `bytesOut` are not counted).
        Observer::new(development, move |event: AdminEvent| {
            let now = now_ms();
            match &event {
                AdminEvent::Connected(_) => buffer.push(now, "rawConnection", None),
                AdminEvent::Disconnected { reason, .. } => {
                    buffer.push(now, "rawDisconnection", Some(reason))
                }
                AdminEvent::Received { .. } => buffer.push(now, "packetsIn", None),
                AdminEvent::Sent { bytes, .. } => buffer.add_all(
                    now,
                    &[("packetsOut", None, 1), ("bytesOut", None, *bytes as u64)],
                ),
                AdminEvent::RoomJoined { .. } | AdminEvent::RoomLeft { .. } => {}
            }
            if development && tx.try_send(event).is_err() {
                ::metrics::counter!(metrics::ADMIN_UI_EVENTS_DROPPED_TOTAL).increment(1);
            }
        })
    }

    fn stats<A: Adapter>(&self, io: &SocketIo<A>, load: &Load) -> ServerStats {
        let mut polling = 0;
        let namespaces = self
            .namespaces
            .iter()
            .map(|ns| {
                let sockets = io
                    .of(ns)
                    .map(|op| op.broadcast().sockets())
                    .unwrap_or_default();
                polling += sockets
                    .iter()
                    .filter(|s| transport_name(s.transport_type()) == "polling")
                    .count();
                NamespaceDetails {
                    name: ns.clone(),
                    sockets_count: sockets.len(),
                }
            })
            .collect();
        ServerStats {
            server_id: self.identity.server_id.clone(),
            hostname: self.identity.hostname.clone(),
            pid: self.identity.pid,
            uptime: self.identity.started.elapsed().as_secs_f64(),
            clients_count: load.connections(),
            polling_clients_count: polling,
            aggregated_events: self.buffer.take(),
            namespaces,
        }
    }
}

/// Emits observed events to every admin connection, in the order they were observed.
async fn forward<A: Adapter>(io: SocketIo<A>, ns: String, mut rx: mpsc::Receiver<AdminEvent>) {
    while let Some(event) = rx.recv().await {
        let Some(op) = io.of(&ns) else { continue };
        let now = switchyard_common::iso8601::now();
        let sent = match event {
            AdminEvent::Connected(socket) => op.emit("socket_connected", &(socket, now)).await,
            AdminEvent::Disconnected { ns, sid, reason } => {
                op.emit("socket_disconnected", &(ns, sid, reason, now))
                    .await
            }
            AdminEvent::RoomJoined { ns, room, sid } => {
                op.emit("room_joined", &(ns, room, sid, now)).await
            }
            AdminEvent::RoomLeft { ns, room, sid } => {
                op.emit("room_left", &(ns, room, sid, now)).await
            }
            AdminEvent::Received { ns, sid, args } => {
                op.emit("event_received", &(ns, sid, args, now)).await
            }
            AdminEvent::Sent { ns, sid, args, .. } => {
                op.emit("event_sent", &(ns, sid, &*args, now)).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "admin UI: an event was not sent everywhere");
        }
    }
}

/// The UI's commands, with the arguments it sends (`lib/typed-events.ts`'s `ClientEvents`).
fn register_commands<A: Adapter>(s: &SocketRef<A>, io: &SocketIo<A>) {
    let io1 = io.clone();
    s.on("emit", move |Data(Args(args)): Data<Args>| {
        let io = io1.clone();
        async move {
            // (nsp, filter, event, ...args)
            let (Some(nsp), Some(event)) = (str_at(&args, 0), str_at(&args, 2)) else {
                return;
            };
            let Some(op) = io.of(nsp) else { return };
            let op = match str_at(&args, 1) {
                Some(filter) => op.to(filter.to_owned()),
                None => op.broadcast(),
            };
            let rest = args.get(3..).unwrap_or_default();
            command("emit");
            if !crate::adapter::reports_outgoing::<A>() {
                sent_locally(&op, event, rest);
            }
            if let Err(e) = op.emit(event, &Spread(rest)).await {
                tracing::debug!(error = %e, "admin UI emit not sent everywhere");
            }
        }
    });
    for (name, join) in [("join", true), ("leave", false)] {
        let io = io.clone();
        s.on(name, move |Data(Args(args)): Data<Args>| {
            let io = io.clone();
            async move {
                // (nsp, room, filter?)
                let (Some(nsp), Some(room)) = (str_at(&args, 0), str_at(&args, 1)) else {
                    return;
                };
                let Some(op) = io.of(nsp) else { return };
                let op = match str_at(&args, 2) {
                    Some(filter) => op.to(filter.to_owned()),
                    None => op.broadcast(),
                };
                command(if join { "join" } else { "leave" });
                let done = if join {
                    op.join(room.to_owned()).await
                } else {
                    op.leave(room.to_owned()).await
                };
                if let Err(e) = done {
                    tracing::debug!(error = %e, "admin UI {name} not applied everywhere");
                }
            }
        });
    }
    let io3 = io.clone();
    s.on("_disconnect", move |Data(Args(args)): Data<Args>| {
        let io = io3.clone();
        async move {
            // (nsp, close, filter?)
            let Some(nsp) = str_at(&args, 0) else { return };
            let Some(op) = io.of(nsp) else { return };
            let op = match str_at(&args, 2) {
                Some(filter) => op.to(filter.to_owned()),
                None => op.broadcast(),
            };
            command("disconnect");
            if let Err(e) = op.disconnect().await {
                tracing::debug!(error = %e, "admin UI disconnect not applied everywhere");
            }
        }
    });
}

/// Reports an emit of the UI to the local sockets `op` selects, for an adapter that does not
/// report what it delivers (socketioxide's local one: a single gateway). Every client socket
/// of a namespace carries the same observer, so the first one says whether anyone listens.
fn sent_locally<A: Adapter>(op: &BroadcastOperators<A>, event: &str, args: &[Value]) {
    let sockets = op.clone().sockets();
    let Some(first) = sockets.first() else { return };
    let Some(observer) = outgoing_observer(first) else {
        return;
    };
    let sent = SentEvent::of_args(event, args.iter().cloned());
    observer.sent(first.ns(), sockets.iter().map(|s| s.id), &sent);
}

fn command(op: &'static str) {
    ::metrics::counter!(metrics::ADMIN_UI_COMMANDS_TOTAL, "op" => op).increment(1);
}

/// A non-empty string argument at `i`.
fn str_at(args: &[Value], i: usize) -> Option<&str> {
    args.get(i)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Arguments to send as that many arguments (a tuple to socketioxide's parser).
struct Spread<'a>(&'a [Value]);

impl Serialize for Spread<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_is_read_whatever_their_number() -> anyhow::Result<()> {
        let args: Args = serde_json::from_str(r#"["/", null, "e", 1, {"a": 2}]"#)?;
        assert_eq!(args.0.len(), 5);
        assert_eq!(str_at(&args.0, 0), Some("/"));
        assert_eq!(str_at(&args.0, 1), None);
        let spread = serde_json::to_string(&Spread(&args.0[3..]))?;
        assert_eq!(spread, r#"[1,{"a":2}]"#);
        // socketioxide hands a tuple type the whole argument list, anything else the first.
        assert!(socketioxide_core::parser::is_de_tuple::<Args>());
        Ok(())
    }
}
