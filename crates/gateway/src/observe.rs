//! What the admin UI ([`crate::admin_ui`]) learns about client sockets, reported upward through
//! a callback it gives ([`Observer`]), so the modules that see sockets (the connect handler,
//! the built-in events) never import the admin UI above them.
//!
//! The observer travels in each admitted socket's extensions (set by the connect handler when
//! `--admin-ui` is on), so [`report`] is a no-op for every socket when the admin UI is off, and
//! an event is only built when someone listens.
//!
//! **Outgoing events** ([`AdminEvent::Sent`], development mode only: [`Observer::outgoing`])
//! are reported by every path that delivers an event to a local client socket. Paths that hold
//! the socket ask it ([`outgoing_observer`]); paths that know only socket ids (the cluster
//! adapter and [`crate::delivery`]) hold their namespace's [`OutgoingWatch`], which stays empty
//! unless the admin UI is on in development mode. Either way the observer is looked up once
//! per delivery, and the event's arguments are decoded ([`SentEvent`]) only when it is there.

use std::fmt::Display;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::Value;
use socketioxide::{
    TransportType,
    adapter::Adapter,
    socket::{DisconnectReason, Socket},
};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::Parse;

use crate::payload::{Args, Payload};

/// Something an admin UI shows, as `@socket.io/admin-ui` names it.
#[derive(Debug, Clone)]
pub enum AdminEvent {
    /// `socket_connected`.
    Connected(Box<SerializedSocket>),
    /// `socket_disconnected`.
    Disconnected {
        ns: String,
        sid: String,
        reason: &'static str,
    },
    /// `room_joined`.
    RoomJoined {
        ns: String,
        room: String,
        sid: String,
    },
    /// `room_left`.
    RoomLeft {
        ns: String,
        room: String,
        sid: String,
    },
    /// `event_received`: the event name first, then its arguments.
    Received {
        ns: String,
        sid: String,
        args: Vec<serde_json::Value>,
    },
    /// `event_sent`: an event delivered to one client socket, the event name first, then its
    /// arguments as the socket got them. `args` is shared by every socket of one delivery;
    /// `bytes` is the encoded event's size (see [`SentEvent`]).
    Sent {
        ns: String,
        sid: String,
        args: Arc<[Value]>,
        bytes: usize,
    },
}

/// The admin UI's callback. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    report: Arc<dyn Fn(AdminEvent) + Send + Sync>,
    outgoing: bool,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("outgoing", &self.outgoing)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An observer calling `report`; `outgoing`: whether it wants [`AdminEvent::Sent`] (the
    /// admin UI in development mode), which every delivery then pays for.
    pub fn new(outgoing: bool, report: impl Fn(AdminEvent) + Send + Sync + 'static) -> Self {
        Self {
            report: Arc::new(report),
            outgoing,
        }
    }

    /// Hands `event` to the admin UI.
    pub fn report(&self, event: AdminEvent) {
        (self.report)(event);
    }

    /// Whether it wants outgoing events ([`AdminEvent::Sent`]).
    pub fn outgoing(&self) -> bool {
        self.outgoing
    }

    /// Reports `event` as sent to each socket of `sids` in namespace `ns`.
    pub fn sent<I: Display>(&self, ns: &str, sids: impl IntoIterator<Item = I>, event: &SentEvent) {
        for sid in sids {
            self.report(AdminEvent::Sent {
                ns: ns.to_owned(),
                sid: sid.to_string(),
                args: Arc::clone(&event.args),
                bytes: event.bytes,
            });
        }
    }
}

/// Reports the event `make` builds to the observer of socket `s`, if it has one.
pub fn report<A: Adapter>(s: &Socket<A>, make: impl FnOnce() -> AdminEvent) {
    if let Some(observer) = s.extensions.get::<Observer>() {
        observer.report(make());
    }
}

/// The observer of socket `s` if it wants outgoing events (the admin UI in development mode):
/// what a path holding the socket asks once per delivery.
pub fn outgoing_observer<A: Adapter>(s: &Socket<A>) -> Option<Observer> {
    s.extensions.get::<Observer>().filter(Observer::outgoing)
}

/// Where the paths that know only socket ids find the observer of outgoing events of one
/// namespace: empty unless a socket of the namespace carrying an observer that wants them was
/// admitted ([`OutgoingWatch::watch`]), so never for the admin UI's own namespace. Cheap to
/// clone (clones share); reading it is one atomic load.
#[derive(Debug, Clone, Default)]
pub struct OutgoingWatch(Arc<OnceLock<Observer>>);

impl OutgoingWatch {
    /// The observer, when someone listens.
    pub fn get(&self) -> Option<&Observer> {
        self.0.get()
    }

    /// Starts reporting to `observer` if it wants outgoing events (the first one stays).
    pub fn watch(&self, observer: &Observer) {
        if observer.outgoing() && self.0.get().is_none() {
            let _ = self.0.set(observer.clone());
        }
    }
}

/// One delivered event as the admin UI shows it: the event name, then the arguments; and its
/// size in bytes, the encoded event (name and arguments, binary attachments included) without
/// the packet header and the transport's framing.
#[derive(Debug, Clone)]
pub struct SentEvent {
    pub args: Arc<[Value]>,
    pub bytes: usize,
}

impl SentEvent {
    /// The event `packet` carries, decoded with the namespace's parser; `None` for a packet
    /// that is not an event (or does not decode).
    pub fn of_packet(parser: impl Parse, packet: &Packet) -> Option<SentEvent> {
        let value = match &packet.inner {
            PacketData::Event(v, _) | PacketData::BinaryEvent(v, _) => v,
            _ => return None,
        };
        let bytes = match value {
            socketioxide_core::Value::Str(s, bins) => {
                s.len() + bins.iter().flatten().map(|b| b.len()).sum::<usize>()
            }
            socketioxide_core::Value::Bytes(b) => b.len(),
        };
        let mut value = value.clone();
        // Through `Payload`, which takes binary attachments (JSON values do not).
        let Args(args) = parser
            .decode_value::<Args<Payload>>(&mut value, false)
            .ok()?;
        Some(SentEvent {
            args: args
                .iter()
                .map(|a| serde_json::to_value(a).unwrap_or_default())
                .collect(),
            bytes,
        })
    }

    /// `event` with `args` (already JSON); the size is their JSON text's.
    pub fn of_args(event: &str, args: impl IntoIterator<Item = Value>) -> SentEvent {
        let all: Vec<Value> = std::iter::once(Value::String(event.to_owned()))
            .chain(args)
            .collect();
        let bytes = serde_json::to_vec(&all)
            .map(|v| v.len())
            .unwrap_or_default();
        SentEvent {
            args: all.into(),
            bytes,
        }
    }
}

/// A socket as the admin UI's `SerializedSocket` (`lib/typed-events.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SerializedSocket {
    pub id: String,
    /// Node's Engine.IO client id; socketioxide does not expose its own, so the socket id.
    pub client_id: String,
    pub transport: &'static str,
    pub nsp: String,
    pub data: serde_json::Value,
    pub handshake: Handshake,
    pub rooms: Vec<String>,
}

/// The admin UI's `handshake`.
#[derive(Debug, Clone, Serialize)]
pub struct Handshake {
    pub address: String,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub query: serde_json::Map<String, serde_json::Value>,
    /// Milliseconds since the epoch.
    pub issued: u64,
    pub secure: bool,
    pub time: String,
    pub url: String,
    pub xdomain: bool,
}

/// The transport's name as Engine.IO says it.
pub fn transport_name(t: TransportType) -> &'static str {
    match t {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

/// The client's address as the proxy in front reports it: the first of `cf-connecting-ip` and
/// `x-forwarded-for` (as the admin UI reads it), else `None`: socketioxide does not expose the
/// peer address. What a proxy says, so only as trustworthy as that proxy.
pub fn forwarded_address(parts: &axum::http::request::Parts) -> Option<String> {
    ["cf-connecting-ip", "x-forwarded-for"]
        .iter()
        .find_map(|name| {
            parts
                .headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// Describes a local socket; its address is [`forwarded_address`]. `issued` is now, which is
/// when a connecting socket is described.
pub fn describe<A: Adapter>(s: &Socket<A>) -> SerializedSocket {
    let parts = s.req_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.into())))
        .collect();
    let query = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), serde_json::Value::String(v.to_owned()))
        })
        .collect();
    let issued = switchyard_common::clock::now_ms();
    let id = s.id.to_string();
    SerializedSocket {
        client_id: id.clone(),
        id,
        transport: transport_name(s.transport_type()),
        nsp: s.ns().to_owned(),
        data: serde_json::Value::Object(serde_json::Map::new()),
        handshake: Handshake {
            address: forwarded_address(parts).unwrap_or_default(),
            headers,
            query,
            issued,
            secure: parts.uri.scheme_str() == Some("https"),
            time: switchyard_common::iso8601::now(),
            url: parts.uri.to_string(),
            xdomain: header("origin").is_some(),
        },
        rooms: s.rooms().iter().map(|r| r.to_string()).collect(),
    }
}

/// A disconnect reason in Node's words (what the admin UI shows).
pub fn reason_name(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::MultipleHttpPollingError => "transport error",
        DisconnectReason::PacketParsingError => "parse error",
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client namespace disconnect",
        DisconnectReason::ServerNSDisconnect => "server namespace disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording(outgoing: bool) -> (Observer, Arc<Mutex<Vec<AdminEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let observer = Observer::new(outgoing, move |e| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        });
        (observer, seen)
    }

    #[test]
    fn only_an_observer_of_outgoing_events_is_watched() {
        let watch = OutgoingWatch::default();
        let (production, _) = recording(false);
        watch.watch(&production);
        assert!(watch.get().is_none(), "production mode: nothing to look up");
        let (development, seen) = recording(true);
        watch.clone().watch(&development);
        let observer = watch.get().cloned();
        assert!(observer.as_ref().is_some_and(Observer::outgoing));
        let sent = SentEvent::of_args("news", [serde_json::json!({"x": 1})]);
        if let Some(o) = observer {
            o.sent("/", ["a", "b"], &sent);
        }
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let sids: Vec<&str> = seen
            .iter()
            .filter_map(|e| match e {
                AdminEvent::Sent {
                    ns,
                    sid,
                    args,
                    bytes,
                } if ns == "/" => {
                    assert_eq!(&**args, &*sent.args);
                    assert_eq!(*bytes, sent.bytes);
                    Some(sid.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(sids, ["a", "b"]);
    }

    #[test]
    fn a_sent_event_is_its_name_then_its_arguments() {
        let sent = SentEvent::of_args("news", [serde_json::json!({"x": 1}), serde_json::json!(2)]);
        assert_eq!(
            serde_json::to_string(&*sent.args).unwrap_or_default(),
            r#"["news",{"x":1},2]"#
        );
        assert_eq!(sent.bytes, r#"["news",{"x":1},2]"#.len());
    }
}
