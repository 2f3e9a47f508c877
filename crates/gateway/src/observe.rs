//! What the admin UI ([`crate::admin_ui`]) learns about client sockets, reported upward through
//! a callback it gives ([`Observer`]), so the modules that see sockets (the connect handler,
//! the built-in events) never import the admin UI above them.
//!
//! The observer travels in each admitted socket's extensions (set by the connect handler when
//! `--admin-ui` is on), so [`report`] is a no-op for every socket when the admin UI is off, and
//! an event is only built when someone listens.

use std::sync::Arc;

use serde::Serialize;
use socketioxide::{
    TransportType,
    adapter::Adapter,
    socket::{DisconnectReason, Socket},
};

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
}

/// The admin UI's callback. Cheap to clone.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(AdminEvent) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Reports the event `make` builds to the observer of socket `s`, if it has one.
pub fn report<A: Adapter>(s: &Socket<A>, make: impl FnOnce() -> AdminEvent) {
    if let Some(observer) = s.extensions.get::<Observer>() {
        (observer.0)(make());
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
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
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
