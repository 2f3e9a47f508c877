//! The broadcast relay: carries adapter frames between gateways, stamps room events with a
//! position and keeps their bounded history, and takes events from backends.
//!
//! # Reading order
//!
//! Top down; every module imports only modules below it. A lower module reports upward
//! through a callback it is given (`Hub::set_inbox`), never by importing the module above.
//!
//! 1. `server`: the wiring: what runs, and how it stops.
//! 2. `config`: every flag.
//! 3. `service`: the `Relay` gRPC service, each call handed to its owner.
//! 4. `link`: one gateway's stream.
//! 5. `publish`: events from backends.
//! 6. `admin`: the operator API; `admin/requests.rs` asks the gateways and gathers answers.
//! 7. `emitter`: `@socket.io/redis-emitter`'s messages as cluster operations, on the one
//!    replica holding the emitter lease (`emitter/lease.rs`); `emitter/channel.rs` its
//!    channels, `emitter/message.rs` what a message means, `emitter/value.rs` its
//!    MessagePack, `emitter/apply.rs` how it is carried out.
//! 8. `state`: what a replica shares, and `RelayState::stamp`, the one way into history.
//! 9. `membership`: who is linked for a namespace, cluster-wide.
//! 10. `history`: offsets, epochs, the bounded log, retained state, replay: the `History`
//!     trait, `history/memory.rs`, and `history/redis.rs` with its batcher, keys and scripts.
//! 11. `origin`: the frames the relay writes itself, and their one sequence.
//! 12. `bus`: frames between replicas; `bus/channel.rs` the channel format,
//!     `bus/subscription.rs` the subscriber connection.
//! 13. `dedup`: the per-origin high-water mark.
//! 14. `hub`: the local fan-out and its backpressure policy.
//! 15. `interest`: interest routing: the rooms a link's gateway has members in, and which
//!     frames that makes it want.
//! 16. `validate`: what the relay accepts from outside.
//! 17. `metrics`: every metric's name and HELP.
//!
//! # Guarantees (the contract the gateway adapter builds on)
//!
//! - **Per-origin order.** A link's frames are offered to the bus one at a time, each after the
//!   previous one's verdict; with Redis every replica delivers only from its subscription, so
//!   every receiver sees one origin's frames in `seq` order. The relay's own frames keep their
//!   order the same way (see [`origin`]).
//! - **Exactly once per gateway, while links hold.** A frame is forwarded to each other gateway
//!   of its namespace once (responses only to their target); with interest routing a frame
//!   that targets rooms only to the gateways that declared one of them (see [`interest`]). One link per node id per replica;
//!   a newer link of the same node supersedes the older one.
//! - **Retries are deduplicated.** `(origin, incarnation, seq)` is accepted at most once
//!   cluster-wide (see [`dedup`]); `Welcome.accepted_seq` and `Ack` tell the gateway what to
//!   resend after a relink. With Redis the mark and the publish are one atomic script, so a
//!   relay dying mid-frame loses nothing a gateway resends and doubles nothing.
//! - **No stall.** Every link has a bounded queue; a full queue cuts that link
//!   (`RESOURCE_EXHAUSTED`); nobody else waits. A cut gateway has missed frames: it relinks
//!   and resyncs; the stamped room events it missed come back exactly from history (its
//!   clients resume from their last offset).
//! - **Exact membership.** `Members` lists the node ids linked for a namespace on every
//!   replica (dead replicas' entries expire within 3 membership intervals).
//! - **History.** Room publishes (a gateway's `StampCall` on its link or `Stamp` RPC, a
//!   backend's `Publish` to one room) pass the same checks ([`validate::RoomEvent`]), get one
//!   offset per namespace, enter a bounded history and reach every gateway (the caller too)
//!   in offset order; `Head` and `Replay` let a gateway join "state, then every later event"
//!   and resume a client exactly (see [`history`]).
//!
//! - **Emitter, once.** With `--emitter`, each message of `@socket.io/redis-emitter` is carried
//!   out by at most one replica, the holder of the emitter lease (see [`emitter`] for the
//!   argument); a room emit is then one stamp like any room publish, anything else one frame
//!   from the relay's origin. Messages published while no replica is subscribed (a handler's
//!   death, until its lease expires) are lost, as with Socket.IO's own servers.
//!
//! What is NOT guaranteed: adapter frames delivered to a gateway while its link is down are
//! not kept (stamped events are: clients resume them from history); a replica that loses its
//! Redis subscription cuts all its links rather than deliver with a gap.
//!
//! # Locks
//!
//! Every `std::sync::Mutex` here guards a section that never awaits; a poisoned one is
//! recovered (the poison policy in ARCHITECTURE.md, "Cross-cutting concerns"). Locks that are
//! held across an await are tokio's (the bus's subscriber, the origin's send order). Locks nest in one direction only: the origin's send lock (without Redis) and the
//! in-memory history's lock are held while the hub delivers, and the hub takes its state, then
//! releases it before it cuts a link (a link's cut switch) or calls its inbox. Nothing the hub
//! calls takes a lock above it, so no two locks are ever taken in the opposite order.
//!
//! # What a gateway (the socketioxide adapter) must do
//!
//! 1. Open `Relay/Link` (with `authorization: Bearer <token>` when the relay has a
//!    `--link-token`; the same for `Stamp`, `Head` and `Replay`) and send
//!    `Hello{node_id, namespaces, incarnation}` first;
//!    `incarnation` = the process start time in Unix ms (must grow across restarts of a node
//!    id; below 2^53). Read `Welcome{relay_id, accepted_seq}`.
//! 2. Number its frames per incarnation: `seq` = 1, 2, … (never reused, never reset on
//!    relink). Set `namespace`, `kind` (BROADCAST / REQUEST / RESPONSE + `target`), and
//!    `payload` = the serialized socketioxide-core `RequestOut` / `Response`. `origin` and
//!    `incarnation` are stamped by the relay.
//! 3. Keep every frame sent until an `Ack{seq}` covers it. After a relink (same incarnation),
//!    drop what `Welcome.accepted_seq` covers and resend the rest in order before anything new.
//! 4. Apply incoming frames: `payload` through its `RemoteRequestHandler`; or, when `event` is
//!    set (a backend's `Publish`, or a stamped room event), emit `event.event` with the decoded
//!    `json`/`msgpack` value to `rooms` minus `except` (all local sockets when `rooms` is
//!    empty). Frames of one origin arrive in order; frames of different origins interleave.
//!    A frame with `position` set is a stamped history event: deduplicate it per socket by
//!    offset, not by the origin's `seq`.
//! 5. Use the latest `Members{namespace, node_ids}` for `server_count` (it includes the
//!    gateway itself); the unary `Members` call gives the same answer on demand.
//! 6. When the stream ends with any status (`RESOURCE_EXHAUSTED`: too slow; `UNAVAILABLE`:
//!    relay stopping or lost Redis; `ABORTED`: superseded), relink with the common backoff,
//!    to any replica, and resync (it may have missed frames addressed to it while cut).
//!    `OUT_OF_RANGE` means a frame exceeded `--max-frame-bytes`: drop that frame, do not resend.
//! 7. Keep frames below `--max-frame-bytes` (4 MiB by default).
//! 8. With history, stamp a room publish on the link: `StampCall{id, request, trace_context}`
//!    with an id unique among the link's open calls; the answer is the `StampResult` with the
//!    same id (a position, or a gRPC status code and message), in completion order, not call
//!    order. A call whose link ends unanswered may have been stamped: retry it with the same
//!    `publish_id` (on another link or with the `Stamp` RPC) and it is stamped once. The data
//!    must be one MessagePack value of at most `--max-frame-bytes` (else `INVALID_ARGUMENT` or
//!    `OUT_OF_RANGE`), the room and event name not empty.

// Wiring: what runs, what it is given, and the gRPC services.
pub mod server;

pub mod config;

pub mod service;

// The calls: one gateway's link, backends' publishes, the operator API.
pub mod link;

pub mod publish;

pub mod admin;

pub mod emitter;

// What the calls share, and the parts it is made of.
pub mod state;

pub mod membership;

pub mod history;

pub mod origin;

pub mod bus;

pub mod dedup;

pub mod hub;

pub mod interest;

// The rules for input, and the names of the metrics.
pub mod validate;

pub mod metrics;
