//! The broadcast relay: carries adapter frames between gateways.
//!
//! Reading order: `config` → `server` (wiring) → `link` (one gateway's stream) → `hub` (the
//! local fan-out and its backpressure policy) → `bus` (frames between replicas through Redis
//! pub/sub) → `dedup` (the per-origin high-water mark) → `membership` → `publish` → `history`
//! (offsets, epochs, the bounded event log, retained state, replay) → `admin` (the operator
//! API; its socket operations are adapter requests the relay sends the gateways itself).
//!
//! # Guarantees (the contract the gateway adapter builds on)
//!
//! - **Per-origin order.** A link's frames are offered to the bus one at a time, each after the
//!   previous one's verdict; with Redis every replica delivers only from its subscription, so
//!   every receiver sees one origin's frames in `seq` order.
//! - **Exactly once per gateway, while links hold.** A frame is forwarded to each other gateway
//!   of its namespace once (responses only to their target). One link per node id per replica;
//!   a newer link of the same node supersedes the older one.
//! - **Retries are deduplicated.** `(origin, incarnation, seq)` is accepted at most once
//!   cluster-wide (see [`dedup`]); `Welcome.accepted_seq` and `Ack` tell the gateway what to
//!   resend after a relink. With Redis the mark and the publish are one atomic script, so a
//!   relay dying mid-frame loses nothing a gateway resends and doubles nothing.
//! - **No stall.** Every link has a bounded queue; a full queue cuts that link
//!   (`RESOURCE_EXHAUSTED`); nobody else waits. A cut gateway has missed frames: it must
//!   relink and resync (history, in the history issue, will make that exact).
//! - **Exact membership.** `Members` lists the node ids linked for a namespace on every
//!   replica (dead replicas' entries expire within 3 membership intervals).
//!
//! - **History.** Room publishes of gateways (a `StampCall` on the link, or the `Stamp` RPC)
//!   get one offset per namespace, enter a bounded history and reach every gateway (the
//!   caller too) in offset order; `Head` and `Replay` let a gateway join "state, then every
//!   later event" and resume a client exactly (see [`history`]).
//!
//! What is NOT guaranteed: adapter frames delivered to a gateway while its link is down are
//! not kept (stamped events are: clients resume them from history); a replica that loses its Redis subscription cuts all its links
//! rather than deliver with a gap.

//!
//! # What a gateway (the socketioxide adapter) must do
//!
//! 1. Open `Relay/Link` and send `Hello{node_id, namespaces, incarnation}` first;
//!    `incarnation` = the process start time in Unix ms (must grow across restarts of a node
//!    id; below 2^53). Read `Welcome{relay_id, accepted_seq}`.
//! 2. Number its frames per incarnation: `seq` = 1, 2, … (never reused, never reset on
//!    relink). Set `namespace`, `kind` (BROADCAST / REQUEST / RESPONSE + `target`), and
//!    `payload` = the serialized socketioxide-core `RequestOut` / `Response`. `origin` and
//!    `incarnation` are stamped by the relay.
//! 3. Keep every frame sent until an `Ack{seq}` covers it. After a relink (same incarnation),
//!    drop what `Welcome.accepted_seq` covers and resend the rest in order before anything new.
//! 4. Apply incoming frames: `payload` through its `RemoteRequestHandler`; or, when `event` is
//!    set (from `Publish`), emit `event.event` with the decoded `json`/`msgpack` value to
//!    `rooms` minus `except` (all local sockets when `rooms` is empty). Frames of one origin
//!    arrive in order; frames of different origins interleave.
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
//!    `publish_id` (on another link or with the `Stamp` RPC) and it is stamped once.

pub mod admin;
pub mod bus;
pub mod config;
pub mod dedup;
pub mod history;
pub mod hub;
pub mod link;
pub mod membership;
pub mod publish;
pub mod server;
