//! The application's backend as a socket meets it: the connect hook's verdict, forwarded
//! events and their answers, the disconnect hook. The calls themselves are [`crate::hooks`];
//! this module applies what comes back to sockets.
//!
//! **Per-socket order.** socketioxide runs every async event handler in a task of its own, so
//! two events of one socket could reach the backend in either order. The forwarder is
//! therefore not an async handler: [`Forwarder`] implements socketioxide's `MessageHandler`
//! and, synchronously in the socket's receive path, puts each event on the socket's own
//! bounded queue ([`SOCKET_QUEUE`]; made with its task at the socket's first forwarded event);
//! one task per socket takes them off in order, calls the
//! event hook and applies its answer (leaves, joins, emits, then the ack) before it takes the
//! next. A full queue refuses the event at once: the ack gets `{ok: false, error:
//! "overloaded"}`, counted in `switchyard_gateway_hook_events_refused_total`. The task holds no
//! reference to the socket between events, so it ends when the socket is gone.
//!
//! **Emits** to a room go through [`crate::events::publish_to_room`], the built-in `publish`'s
//! own path (stamped into history with a relay, so `resume` covers them); emits to a socket go
//! to the room named by its id, which every socket of a gateway with hooks is in, so they reach
//! it on any gateway.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, TryData},
    handler::{FromMessage, FromMessageParts, MessageHandler, Value},
    socket::{DisconnectReason, Socket},
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::admission::Admitted;
use crate::cluster::ClusterState;
use crate::events::{EventError, leave_room, publish_to_room, valid_event_name};
use crate::hooks::Hooks;
use crate::hooks::binary;
use crate::hooks::client::{Hook, HookError};
use crate::hooks::contract::{
    Actions, ConnectAnswer, ConnectHeaders, ConnectRequest, DisconnectRequest, Emit, EventAnswer,
    EventRequest, Verdict, claims,
};
use crate::metrics;
use crate::observe::AdminEvent;
use crate::payload::{ArgList, Args, Payload};
use crate::settings::ConnectFailure;

/// Forwarded events of one socket waiting for the backend.
pub const SOCKET_QUEUE: usize = 64;

/// The connect hook's `data` for a socket, kept in its extensions and sent with its events.
#[derive(Debug, Clone)]
struct HookData(serde_json::Value);

/// The connect hook, after the assignment token passed: `Err(reason)` refuses the CONNECT
/// with `reason` as the `connect_error` message. On `allow`, the socket keeps the answer's
/// `data` and joins its rooms. A failed call follows `--hook-connect-failure`.
pub(crate) async fn connect<A: Adapter>(
    hooks: &Hooks,
    s: &Arc<Socket<A>>,
    auth: serde_json::Value,
    node_id: &str,
    cluster: Option<&ClusterState>,
) -> Result<(), String> {
    let admitted = s.extensions.get::<Arc<Admitted>>();
    let uid = admitted.as_ref().and_then(|a| a.uid.clone());
    let rooms = admitted
        .map(|a| a.rooms.patterns().to_vec())
        .unwrap_or_default();
    let parts = s.req_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let address = crate::observe::forwarded_address(parts);
    let req = ConnectRequest {
        sid: s.id.to_string(),
        node_id: node_id.to_owned(),
        namespace: s.ns().to_owned(),
        claims: claims(uid.as_deref(), &rooms),
        uid,
        auth: without_token(auth),
        address,
        headers: ConnectHeaders {
            user_agent: header("user-agent"),
            origin: header("origin"),
        },
    };
    let verdict = hooks
        .client
        .call::<_, ConnectAnswer>(Hook::Connect, &req)
        .await
        .and_then(|a| checked(Hook::Connect, a.check(&hooks.limits)));
    let (data, join) = match verdict {
        Ok(Verdict::Allow { data, join }) => (data, join),
        Ok(Verdict::Deny { reason }) => return Err(reason),
        Err(HookError::Refused(reason)) => return Err(reason),
        Err(e) => match hooks.connect_failure {
            ConnectFailure::Deny => return Err(e.client_error()),
            ConnectFailure::Allow => (serde_json::Value::Null, Vec::new()),
        },
    };
    s.extensions.insert(HookData(data));
    let sref = SocketRef::from(s.clone());
    // Its own room, so the event hook's `{"to": sid}` emits reach it from any gateway.
    let mut rooms = join;
    rooms.push(s.id.to_string());
    self::join(&sref, cluster, rooms).await;
    Ok(())
}

/// Joins the rooms a hook answer named, declared for interest routing and settled before the
/// caller goes on (the CONNECT answer, the answer's emits and ack), so what is published to
/// them from then on reaches this gateway. Not history-gated: a hook join has no position.
async fn join<A: Adapter>(s: &SocketRef<A>, cluster: Option<&ClusterState>, rooms: Vec<String>) {
    s.join(rooms.clone());
    if let Some(cluster) = cluster {
        cluster.link().rooms_joined(s.ns(), &rooms);
        if let Err(e) = cluster.link().interest_settled().await {
            tracing::warn!(?rooms, error = %e, "hook join: the relays did not take the rooms");
        }
    }
}

/// The client's `auth` object without its `token` (which is Switchyard's, not the app's).
fn without_token(auth: serde_json::Value) -> serde_json::Value {
    match auth {
        serde_json::Value::Object(mut m) => {
            m.remove("token");
            serde_json::Value::Object(m)
        }
        _ => json!({}),
    }
}

/// An answer that parsed but breaks the limits is `invalid_answer`, counted as such.
fn checked<T>(
    hook: Hook,
    r: Result<T, crate::hooks::contract::AnswerError>,
) -> Result<T, HookError> {
    r.map_err(|e| {
        // Debug, not warn: a backend answering badly would flood the log; it is counted.
        tracing::debug!(hook = hook.name(), error = %e, "hook answer refused");
        ::metrics::counter!(metrics::HOOK_ERRORS_TOTAL, "hook" => hook.name(), "reason" => "bad_answer")
            .increment(1);
        HookError::Invalid("bad_answer")
    })
}

/// Queues the disconnect hook of `s` (see [`crate::hooks::disconnects`]).
pub(crate) fn disconnected<A: Adapter>(hooks: &Hooks, s: &SocketRef<A>, reason: DisconnectReason) {
    let uid = s
        .extensions
        .get::<Arc<Admitted>>()
        .and_then(|a| a.uid.clone());
    hooks.disconnected(DisconnectRequest {
        sid: s.id.to_string(),
        uid,
        namespace: s.ns().to_owned(),
        reason: crate::observe::reason_name(reason).to_owned(),
    });
}

/// One forwarded event, waiting in its socket's queue.
struct Forwarded<A: Adapter> {
    socket: SocketRef<A>,
    event: String,
    args: Vec<Payload>,
    ack: AckSender<A>,
    span: tracing::Span,
}

/// The fallback handler of a socket on a gateway with hooks: application events the
/// `--hook-events` globs match go to the event hook, in order (see the module docs).
pub(crate) struct Forwarder<A: Adapter> {
    hooks: Arc<Hooks>,
    cluster: Option<ClusterState>,
    /// The socket's queue and its task, made at its first forwarded event: a socket that
    /// never sends one costs neither.
    queue: OnceLock<mpsc::Sender<Forwarded<A>>>,
}

impl<A: Adapter> Forwarder<A> {
    /// The forwarder of one socket.
    pub(crate) fn new(hooks: Arc<Hooks>, cluster: Option<ClusterState>) -> Self {
        Self {
            hooks,
            cluster,
            queue: OnceLock::new(),
        }
    }

    /// The socket's queue, and the task that works it (spawned on first use; the handler runs
    /// on the runtime).
    fn queue(&self) -> &mpsc::Sender<Forwarded<A>> {
        self.queue.get_or_init(|| {
            let (queue, rx) = mpsc::channel(SOCKET_QUEUE);
            tokio::spawn(work(self.hooks.clone(), self.cluster.clone(), rx));
            queue
        })
    }
}

impl<A: Adapter> MessageHandler<A, Forwarder<A>> for Forwarder<A> {
    fn call(&self, s: Arc<Socket<A>>, mut v: Value, ack_id: Option<i64>) {
        let Ok(Event(event)) = Event::from_message_parts(&s, &mut v, &ack_id) else {
            return;
        };
        let Ok(ack) = AckSender::from_message_parts(&s, &mut v, &ack_id);
        let Ok(TryData(args)) = TryData::<Args<Payload>>::from_message(s.clone(), v, ack_id);
        let socket = SocketRef::from(s);
        let args = args.map(|Args(a)| a);
        crate::observe::report(&socket, || AdminEvent::Received {
            ns: socket.ns().to_owned(),
            sid: socket.id.to_string(),
            args: std::iter::once(serde_json::Value::String(event.clone()))
                .chain(args.iter().flatten().map(binary::to_json))
                .collect(),
        });
        if !self.hooks.forwards(&event) {
            return;
        }
        let Ok(args) = args else {
            let _ = ack.send(&json!({"ok": false, "error": EventError::BadRequest.code()}));
            return;
        };
        let span = tracing::info_span!("forward", sid = %socket.id, ns = %socket.ns(), %event,
                                       outcome = tracing::field::Empty);
        let item = Forwarded {
            socket,
            event,
            args,
            ack,
            span,
        };
        if let Err(
            mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item),
        ) = self.queue().try_send(item)
        {
            ::metrics::counter!(metrics::HOOK_EVENTS_REFUSED_TOTAL).increment(1);
            let _ = item.ack.send(&json!({"ok": false, "error": "overloaded"}));
        }
    }
}

/// Works one socket's queue, in order, until the socket (and with it the sender) is gone.
async fn work<A: Adapter>(
    hooks: Arc<Hooks>,
    cluster: Option<ClusterState>,
    mut rx: mpsc::Receiver<Forwarded<A>>,
) {
    while let Some(item) = rx.recv().await {
        let span = item.span.clone();
        forward(&hooks, cluster.as_ref(), item)
            .instrument(span)
            .await;
    }
}

async fn forward<A: Adapter>(hooks: &Hooks, cluster: Option<&ClusterState>, item: Forwarded<A>) {
    let Forwarded {
        socket: s,
        event,
        args,
        ack,
        ..
    } = item;
    let own = s.id.to_string();
    let req = EventRequest {
        sid: own.clone(),
        uid: s
            .extensions
            .get::<Arc<Admitted>>()
            .and_then(|a| a.uid.clone()),
        namespace: s.ns().to_owned(),
        event,
        args: args.iter().map(binary::to_json).collect(),
        rooms: s
            .rooms()
            .into_iter()
            .map(|r| r.to_string())
            .filter(|r| *r != own)
            .collect(),
        data: s
            .extensions
            .get::<HookData>()
            .map(|d| d.0)
            .unwrap_or_default(),
    };
    let actions = hooks
        .client
        .call::<_, EventAnswer>(Hook::Event, &req)
        .await
        .and_then(|a| checked(Hook::Event, a.check(&hooks.limits, valid_event_name)));
    let actions = match actions {
        Ok(a) => a,
        Err(e) => {
            tracing::Span::current().record("outcome", e.reason());
            let _ = ack.send(&json!({"ok": false, "error": e.client_error()}));
            return;
        }
    };
    let reply = apply(&s, cluster, actions).await;
    tracing::Span::current().record("outcome", if reply.is_ok() { "ok" } else { "emit_failed" });
    let _ = match reply {
        Ok(Some(args)) => ack.send(&ArgList(&args)),
        Ok(None) => ack.send(&json!({"ok": true})),
        Err(e) => ack.send(&json!({"ok": false, "error": e.code()})),
    };
}

/// Applies a checked answer: leaves, joins, emits in their order; the ack's arguments. An
/// emit that history could not stamp stops the rest and answers `unavailable`.
async fn apply<A: Adapter>(
    s: &SocketRef<A>,
    cluster: Option<&ClusterState>,
    actions: Actions,
) -> Result<Option<Vec<Payload>>, EventError> {
    for room in &actions.leave {
        leave_room(s, cluster, room);
    }
    if !actions.join.is_empty() {
        join(s, cluster, actions.join).await;
    }
    for emit in actions.emit {
        match emit {
            Emit::Room { room, event, data } => {
                publish_to_room(s, cluster, &room, &event, &data, false).await?;
            }
            Emit::Socket { sid, event, data } => {
                if let Err(e) = s.within(sid).emit(&event, &data).await {
                    tracing::debug!(error = %e, "hook emit: socket unreachable");
                }
            }
        }
    }
    Ok(actions.ack)
}
