//! What one emitter message means: [`parse`] turns a channel and its payload into an
//! [`Operation`], or says why it cannot ([`Rejected`]). Pure: no Redis, no runtime, so every
//! shape the emitter writes (and every shape it does not) is tested here.
//!
//! The formats, from `@socket.io/redis-emitter` 5.1 (`lib/index.ts`):
//!
//! - broadcast (MessagePack, notepack.io): `[uid, packet, opts]` with `uid` = `"emitter"`,
//!   `packet` = `{type: 2 (EVENT), data: [event, ...args], nsp}`, `opts` = `{rooms: [..],
//!   except: [..], flags: {volatile?, compress?}}`;
//! - requests (JSON): `{type: 2 (REMOTE_JOIN) | 3 (REMOTE_LEAVE), opts: {rooms, except},
//!   rooms}`, `{type: 4 (REMOTE_DISCONNECT), opts, close}`, `{uid, type: 6
//!   (SERVER_SIDE_EMIT), data: [event, ...args]}`.
//!
//! `serverSideEmit` has no meaning here: it calls a Node server's own `io.on(event)`
//! listeners, and gateways run no application listeners of that kind (applications reach
//! backends through hooks). It is [`Rejected::Unsupported`], counted, never an error. The
//! request types only Node servers send each other (fetch sockets, all rooms; they expect an
//! answer on a response channel) are unsupported too.

use serde::Deserialize;

use super::channel::{Channels, Source};
use super::value::{self, Arg};

/// The event names Socket.IO reserves; the emitter refuses them itself, so one arriving here
/// was not written by it.
const RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Whom an operation targets: sockets in any of `rooms` (every socket when empty) and in none
/// of `except`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

/// The cluster operation a message means.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `emit(event, ...args)` to the target; `volatile`: may be lost for a socket not ready.
    Emit {
        target: Target,
        event: String,
        args: Vec<Arg>,
        volatile: bool,
    },
    /// `socketsJoin(rooms)`.
    Join { target: Target, rooms: Vec<String> },
    /// `socketsLeave(rooms)`.
    Leave { target: Target, rooms: Vec<String> },
    /// `disconnectSockets(close)`.
    Disconnect { target: Target, close: bool },
}

impl Operation {
    /// The operation's name, for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Emit { .. } => "emit",
            Operation::Join { .. } => "join",
            Operation::Leave { .. } => "leave",
            Operation::Disconnect { .. } => "disconnect",
        }
    }

    pub fn target(&self) -> &Target {
        match self {
            Operation::Emit { target, .. }
            | Operation::Join { target, .. }
            | Operation::Leave { target, .. }
            | Operation::Disconnect { target, .. } => target,
        }
    }
}

/// Why a message is not turned into an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not what the emitter writes.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Well formed, but nothing here does it (see the module docs).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Larger than `--max-frame-bytes`.
    #[error("{len} bytes, above --max-frame-bytes ({max})")]
    TooLarge { len: usize, max: usize },
}

impl Rejected {
    /// The metric outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Rejected::Malformed(_) => "malformed",
            Rejected::Unsupported(_) => "unsupported",
            Rejected::TooLarge { .. } => "too_large",
        }
    }
}

fn malformed(what: impl Into<String>) -> Rejected {
    Rejected::Malformed(what.into())
}

/// What a message on `channel` means; at most `max` bytes are accepted.
pub fn parse(
    channels: &Channels,
    channel: &str,
    payload: &[u8],
    max: usize,
) -> Result<Operation, Rejected> {
    if payload.len() > max {
        return Err(Rejected::TooLarge {
            len: payload.len(),
            max,
        });
    }
    match channels.source(channel) {
        Some(Source::Broadcast { namespace }) => broadcast(namespace, payload),
        Some(Source::Request { namespace }) => request(namespace, payload),
        None => Err(malformed(format!(
            "channel `{channel}` is not an emitter channel"
        ))),
    }
}

/// `[uid, packet, opts]` in MessagePack.
fn broadcast(namespace: String, payload: &[u8]) -> Result<Operation, Rejected> {
    let value = value::decode(payload).map_err(|e| malformed(format!("not MessagePack: {e}")))?;
    let Arg::Array(parts) = value else {
        return Err(malformed("not an array"));
    };
    let [uid, packet, opts] = parts.as_slice() else {
        return Err(malformed(format!(
            "{} elements, not [uid, packet, opts]",
            parts.len()
        )));
    };
    if uid.as_str().is_none() {
        return Err(malformed("uid is not a string"));
    }
    match packet.get("type") {
        // EVENT, and BINARY_EVENT (a parser that marks binary packets).
        Some(Arg::UInt(2 | 5)) => {}
        _ => return Err(malformed("packet.type is not EVENT")),
    }
    match packet.get("nsp") {
        None => {}
        Some(Arg::Str(nsp)) if *nsp == namespace => {}
        Some(_) => {
            return Err(malformed(format!(
                "packet.nsp differs from the channel's namespace {namespace}"
            )));
        }
    }
    let Some(Arg::Array(data)) = packet.get("data") else {
        return Err(malformed("packet.data is not an array"));
    };
    let Some((Arg::Str(event), args)) = data.split_first() else {
        return Err(malformed("packet.data does not start with an event name"));
    };
    if event.is_empty() || RESERVED.contains(&event.as_str()) {
        return Err(malformed(format!("`{event}` cannot be emitted")));
    }
    let target = Target {
        namespace,
        rooms: strings(opts.get("rooms"), "opts.rooms")?,
        except: strings(opts.get("except"), "opts.except")?,
    };
    let volatile = matches!(
        opts.get("flags").and_then(|f| f.get("volatile")),
        Some(Arg::Bool(true))
    );
    Ok(Operation::Emit {
        target,
        event: event.clone(),
        args: args.to_vec(),
        volatile,
    })
}

/// A list of room names; absent or nil is empty.
fn strings(v: Option<&Arg>, field: &str) -> Result<Vec<String>, Rejected> {
    match v {
        None | Some(Arg::Nil) => Ok(Vec::new()),
        Some(Arg::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| malformed(format!("{field} holds a non-string or empty room")))
            })
            .collect(),
        Some(_) => Err(malformed(format!("{field} is not an array"))),
    }
}

/// A request, as the emitter writes it in JSON.
#[derive(Debug, Deserialize)]
struct RawRequest {
    #[serde(rename = "type")]
    ty: u8,
    #[serde(default)]
    opts: RawOpts,
    rooms: Option<Vec<String>>,
    #[serde(default)]
    close: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RawOpts {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

const REMOTE_JOIN: u8 = 2;
const REMOTE_LEAVE: u8 = 3;
const REMOTE_DISCONNECT: u8 = 4;
const SERVER_SIDE_EMIT: u8 = 6;

fn request(namespace: String, payload: &[u8]) -> Result<Operation, Rejected> {
    let raw: RawRequest =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("not a request: {e}")))?;
    let no_empty = |rooms: Vec<String>, field: &str| {
        if rooms.iter().any(String::is_empty) {
            Err(malformed(format!("{field} holds an empty room")))
        } else {
            Ok(rooms)
        }
    };
    let target = Target {
        namespace,
        rooms: no_empty(raw.opts.rooms, "opts.rooms")?,
        except: no_empty(raw.opts.except, "opts.except")?,
    };
    let rooms = |rooms: Option<Vec<String>>| match rooms {
        Some(r) if !r.is_empty() => no_empty(r, "rooms"),
        _ => Err(malformed("rooms missing or empty")),
    };
    match raw.ty {
        REMOTE_JOIN => Ok(Operation::Join {
            target,
            rooms: rooms(raw.rooms)?,
        }),
        REMOTE_LEAVE => Ok(Operation::Leave {
            target,
            rooms: rooms(raw.rooms)?,
        }),
        REMOTE_DISCONNECT => Ok(Operation::Disconnect {
            target,
            close: raw.close,
        }),
        SERVER_SIDE_EMIT => Err(Rejected::Unsupported("serverSideEmit")),
        _ => Err(Rejected::Unsupported(
            "a request type only Socket.IO servers send",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;

    const MAX: usize = 4096;

    fn channels() -> Channels {
        match Channels::new("socket.io", &["/".into(), "/chat".into()]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// What notepack writes for the emitter's `[uid, packet, opts]`.
    #[derive(Serialize)]
    struct Packet<'a> {
        #[serde(rename = "type")]
        ty: u8,
        data: Vec<Arg>,
        nsp: &'a str,
    }

    #[derive(Serialize)]
    struct Flags {
        volatile: bool,
    }

    #[derive(Serialize)]
    struct Opts<'a> {
        rooms: &'a [&'a str],
        flags: Flags,
        except: &'a [&'a str],
    }

    fn emitted(
        nsp: &str,
        data: Vec<Arg>,
        rooms: &[&str],
        except: &[&str],
        volatile: bool,
    ) -> Vec<u8> {
        let msg = (
            "emitter",
            Packet { ty: 2, data, nsp },
            Opts {
                rooms,
                flags: Flags { volatile },
                except,
            },
        );
        rmp_serde::to_vec_named(&msg).unwrap_or_default()
    }

    fn s(v: &str) -> Arg {
        Arg::Str(v.into())
    }

    #[test]
    fn an_emit_to_rooms_except_rooms_is_read_whole() {
        let bytes = emitted(
            "/chat",
            vec![s("hello"), Arg::UInt(1), Arg::Bin(vec![7u8].into())],
            &["a", "b"],
            &["c"],
            true,
        );
        let op = parse(&channels(), "socket.io#/chat#", &bytes, MAX);
        assert_eq!(
            op,
            Ok(Operation::Emit {
                target: Target {
                    namespace: "/chat".into(),
                    rooms: vec!["a".into(), "b".into()],
                    except: vec!["c".into()],
                },
                event: "hello".into(),
                args: vec![Arg::UInt(1), Arg::Bin(vec![7u8].into())],
                volatile: true,
            })
        );
        let one_room = emitted("/", vec![s("e"), s("x")], &["r"], &[], false);
        assert!(matches!(
            parse(&channels(), "socket.io#/#r#", &one_room, MAX),
            Ok(Operation::Emit {
                volatile: false,
                ..
            })
        ));
    }

    #[test]
    fn broadcasts_that_the_emitter_never_writes_are_malformed() {
        let c = channels();
        let malformed = |channel: &str, bytes: &[u8]| {
            matches!(parse(&c, channel, bytes, MAX), Err(Rejected::Malformed(_)))
        };
        assert!(malformed("socket.io#/#", b"junk"));
        assert!(malformed(
            "socket.io#/#",
            &rmp_serde::to_vec(&(1, 2)).unwrap_or_default()
        ));
        // Another namespace's packet on this namespace's channel.
        assert!(malformed(
            "socket.io#/#",
            &emitted("/chat", vec![s("e")], &[], &[], false)
        ));
        assert!(malformed(
            "socket.io#/#",
            &emitted("/", vec![], &[], &[], false)
        ));
        assert!(malformed(
            "socket.io#/#",
            &emitted("/", vec![s("connect")], &[], &[], false)
        ));
        assert!(malformed(
            "socket.io#/#",
            &emitted("/", vec![Arg::UInt(3)], &[], &[], false)
        ));
        assert!(malformed(
            "socket.io#/#",
            &emitted("/", vec![s("e")], &[""], &[], false)
        ));
        assert!(malformed(
            "socket.io#/nope#",
            &emitted("/", vec![s("e")], &[], &[], false)
        ));
        let big = emitted("/", vec![s("e"), s(&"x".repeat(MAX))], &[], &[], false);
        assert!(matches!(
            parse(&c, "socket.io#/#", &big, MAX),
            Err(Rejected::TooLarge { .. })
        ));
    }

    #[test]
    fn requests_become_joins_leaves_and_disconnects() {
        let c = channels();
        let ch = "socket.io-request#/#";
        let target = Target {
            namespace: "/".into(),
            rooms: vec!["a".into()],
            except: vec!["b".into()],
        };
        let join = br#"{"type":2,"opts":{"rooms":["a"],"except":["b"]},"rooms":["x","y"]}"#;
        assert_eq!(
            parse(&c, ch, join, MAX),
            Ok(Operation::Join {
                target: target.clone(),
                rooms: vec!["x".into(), "y".into()]
            })
        );
        let leave = br#"{"type":3,"opts":{"rooms":["a"],"except":["b"]},"rooms":["x"]}"#;
        assert_eq!(
            parse(&c, ch, leave, MAX),
            Ok(Operation::Leave {
                target: target.clone(),
                rooms: vec!["x".into()]
            })
        );
        let disconnect = br#"{"type":4,"opts":{"rooms":["a"],"except":["b"]},"close":true}"#;
        assert_eq!(
            parse(&c, ch, disconnect, MAX),
            Ok(Operation::Disconnect {
                target,
                close: true
            })
        );
        let sse = br#"{"uid":"emitter","type":6,"data":["hello",1]}"#;
        assert_eq!(
            parse(&c, ch, sse, MAX),
            Err(Rejected::Unsupported("serverSideEmit"))
        );
        assert!(matches!(
            parse(&c, ch, br#"{"type":0}"#, MAX),
            Err(Rejected::Unsupported(_))
        ));
        for junk in [
            &b"{"[..],
            b"[]",
            br#"{"type":2,"opts":{}}"#,
            br#"{"type":"2"}"#,
        ] {
            assert!(
                matches!(parse(&c, ch, junk, MAX), Err(Rejected::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    proptest! {
        /// Whatever is published on any of the channels, parsing answers, never panics.
        #[test]
        fn arbitrary_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let c = channels();
            for ch in ["socket.io#/#", "socket.io#/#r#", "socket.io-request#/chat#", "x"] {
                let _ = parse(&c, ch, &bytes, MAX);
            }
        }
    }
}
