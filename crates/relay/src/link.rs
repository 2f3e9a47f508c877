//! One gateway's link: the `Link` stream from Hello to the end.
//!
//! [`open`] reads `Hello` (INVALID_ARGUMENT without it), subscribes this replica to the
//! gateway's namespaces, reads the gateway's dedup mark, queues `Welcome`, registers the link
//! in the [`Hub`](crate::hub::Hub) and spawns the reader. The reader offers each frame to the
//! bus in arrival order and waits for the verdict before reading the next one: that is what
//! keeps per-origin order across replicas. A `StampCall` is stamped in a task of its own and
//! answered on the link ([`stamp_call`]). The response stream ([`outbound`]) drains the
//! link's bounded queue, interleaves coalesced `Ack`s, and ends with the cut status when the
//! hub or the reader cuts the link.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::Stream;
use switchyard_common::node_id;
use switchyard_proto::relay::v1::{
    Ack, Frame, FrameKind, Hello, Interest, InterestAck, LinkMessage, Position, StampCall,
    StampResult, Welcome, link_message::Kind,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::{
    dedup::Verdict,
    hub::LinkHandle,
    interest::LinkInterest,
    metrics,
    state::{RelayState, stamp_span},
    validate::{MAX_REQUEST_ID, check_namespace},
};

/// The response stream of `Link`.
pub type LinkStream = Pin<Box<dyn Stream<Item = Result<LinkMessage, Status>> + Send>>;

/// How long a new link may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// `StampCall`s of one link being stamped at once (see [`stamp_call`]).
const MAX_STAMPS_IN_FLIGHT: usize = 4096;

/// Incarnations and sequence numbers stay below 2^53 so the Redis scripts (Lua numbers are
/// doubles) compare them exactly. A start time in milliseconds is far below it.
const MAX_COUNTER: u64 = 1 << 53;

/// Opens a link: validates Hello and returns the stream towards the gateway.
pub async fn open(
    state: Arc<RelayState>,
    mut inbound: Streaming<LinkMessage>,
) -> Result<LinkStream, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::invalid_argument("no Hello within 10 s of opening the link"))?;
    let hello = match first {
        Ok(Some(LinkMessage {
            kind: Some(Kind::Hello(h)),
        })) => h,
        Ok(Some(_)) => {
            return Err(Status::invalid_argument(
                "the first message of a link must be Hello{node_id, namespaces, incarnation}",
            ));
        }
        Ok(None) => return Err(Status::invalid_argument("link closed before Hello")),
        Err(status) => return Err(inbound_error(status, state.max_frame_bytes)),
    };
    let Hello {
        node_id,
        namespaces,
        incarnation,
        interest_routing,
        interests,
    } = hello;
    let namespaces = validate_hello(&node_id, namespaces)?;
    let interest = if interest_routing {
        let mut routed = LinkInterest::routed();
        for change in interests {
            check_interest(&namespaces, &change)?;
            routed.apply(&change.namespace, change.add, &change.remove);
        }
        routed
    } else {
        LinkInterest::everything()
    };
    if incarnation >= MAX_COUNTER {
        return Err(Status::invalid_argument(
            "Hello.incarnation must be below 2^53",
        ));
    }

    state.bus.ensure_subscribed(&namespaces).await?;
    let accepted_seq = state
        .bus
        .accepted(&node_id, incarnation)
        .await?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "a newer incarnation than {incarnation} of node `{node_id}` already sent frames"
            ))
        })?;

    let (queue_tx, queue_rx) = mpsc::channel(state.link_queue);
    let (cut_tx, cut_rx) = oneshot::channel();
    queue_tx
        .try_send(LinkMessage {
            kind: Some(Kind::Welcome(Welcome {
                relay_id: state.relay_id.clone(),
                accepted_seq,
            })),
        })
        .map_err(|_| Status::internal("a new link's queue refused Welcome"))?;
    let (cut_flag, cut_seen) = watch::channel(false);
    let handle = state.hub.register(
        &node_id,
        namespaces.clone(),
        queue_tx,
        cut_tx,
        cut_flag,
        incarnation,
        interest,
    );
    handle
        .stats
        .accepted_seq
        .store(accepted_seq, Ordering::Relaxed);
    let (ack_tx, ack_rx) = watch::channel(accepted_seq);
    let span = tracing::info_span!("link", node_id = %node_id, link_id = handle.link_id,
                                   incarnation, relay_id = %state.relay_id);
    span.in_scope(|| {
        tracing::info!(?namespaces, accepted_seq, "gateway linked");
    });
    let link = ReadLink {
        incarnation,
        namespaces,
        interest_routing,
    };
    tokio::spawn(read_frames(state, handle, link, inbound, ack_tx, cut_seen).instrument(span));
    Ok(outbound(queue_rx, cut_rx, ack_rx, accepted_seq))
}

fn validate_hello(id: &str, namespaces: Vec<String>) -> Result<Vec<String>, Status> {
    node_id::check(id).map_err(|e| Status::invalid_argument(format!("Hello: {e}")))?;
    let mut namespaces = namespaces;
    namespaces.sort();
    namespaces.dedup();
    if namespaces.is_empty() {
        return Err(Status::invalid_argument(
            "Hello.namespaces must name at least one namespace",
        ));
    }
    for namespace in &namespaces {
        check_namespace(namespace)
            .map_err(|e| Status::invalid_argument(format!("Hello: `{namespace}`: {e}")))?;
    }
    Ok(namespaces)
}

/// An `Interest` names one of the link's namespaces.
fn check_interest(namespaces: &[String], change: &Interest) -> Result<(), Status> {
    if namespaces.contains(&change.namespace) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Interest for `{}`, a namespace the link's Hello did not name",
            change.namespace
        )))
    }
}

/// Turns an error of the inbound stream into the status the link ends with.
fn inbound_error(status: Status, max_frame_bytes: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::out_of_range(format!(
            "frame too large: the relay accepts frames up to {max_frame_bytes} bytes \
             (--max-frame-bytes); {}",
            status.message()
        ))
    } else {
        status
    }
}

/// Checks a frame from the gateway and stamps what the relay owns (origin, incarnation).
fn admit(
    mut frame: Frame,
    node_id: &str,
    incarnation: u64,
    max_frame_bytes: usize,
) -> Result<Frame, Status> {
    if frame.payload.len() > max_frame_bytes {
        return Err(Status::out_of_range(format!(
            "frame too large: payload of {} bytes, the relay accepts up to {max_frame_bytes} \
             bytes (--max-frame-bytes)",
            frame.payload.len()
        )));
    }
    if frame.seq == 0 || frame.seq >= MAX_COUNTER {
        return Err(Status::invalid_argument(
            "Frame.seq must be in 1..2^53 (it starts at 1)",
        ));
    }
    check_namespace(&frame.namespace)
        .map_err(|e| Status::invalid_argument(format!("Frame: {e}")))?;
    if frame.request_id.len() > MAX_REQUEST_ID {
        return Err(Status::invalid_argument(format!(
            "Frame.request_id must be at most {MAX_REQUEST_ID} bytes"
        )));
    }
    match FrameKind::try_from(frame.kind) {
        Ok(FrameKind::Broadcast | FrameKind::Request) => {}
        Ok(FrameKind::Response) if !frame.target.is_empty() => {}
        Ok(FrameKind::Response) => {
            return Err(Status::invalid_argument(
                "a response Frame needs a target node id",
            ));
        }
        _ => {
            return Err(Status::invalid_argument(
                "Frame.kind must be BROADCAST, REQUEST or RESPONSE",
            ));
        }
    }
    frame.origin = node_id.to_owned();
    frame.incarnation = incarnation;
    frame.position = None;
    Ok(frame)
}

/// Answers a link's `StampCall` from its own task, so the reader goes on with the frames behind
/// it: the same checks, span (continuing the gateway's trace) and stamp as the `Stamp` RPC, the
/// answer queued on the link like any message to it. Beyond [`MAX_STAMPS_IN_FLIGHT`] calls of
/// one link a call is answered `RESOURCE_EXHAUSTED` at once rather than queued without bound.
fn stamp_call(state: &Arc<RelayState>, link_id: u64, call: StampCall, in_flight: &Arc<Semaphore>) {
    let StampCall {
        id,
        request,
        trace_context,
    } = call;
    let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
        metrics::link_stamp("busy");
        let busy = Status::resource_exhausted("too many stamps in flight on this link");
        state.hub.send_to_link(link_id, stamp_result(id, Err(busy)));
        return;
    };
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let result = match request {
            Some(req) => {
                let span = stamp_span(&req);
                switchyard_common::trace_context::set_parent_from_map(&span, &trace_context);
                state.stamp(req, &span).instrument(span.clone()).await
            }
            None => Err(Status::invalid_argument("StampCall without a request")),
        };
        drop(permit);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::link_stamp(outcome);
        state.hub.send_to_link(link_id, stamp_result(id, result));
    });
}

fn stamp_result(id: u64, result: Result<Position, Status>) -> LinkMessage {
    let (position, code, message) = match result {
        Ok(position) => (Some(position), 0, String::new()),
        Err(status) => (None, status.code() as i32, status.message().to_owned()),
    };
    LinkMessage {
        kind: Some(Kind::Stamped(StampResult {
            id,
            position,
            code,
            message,
        })),
    }
}

/// What the reader of one link knows of it.
struct ReadLink {
    incarnation: u64,
    namespaces: Vec<String>,
    interest_routing: bool,
}

/// Applies one `Interest` of a link and queues its acknowledgement after it (see
/// [`crate::interest`] for why that order makes a join safe).
fn interest(
    state: &RelayState,
    link: &ReadLink,
    link_id: u64,
    change: Interest,
) -> Result<(), Status> {
    if !link.interest_routing {
        return Err(Status::invalid_argument(
            "Interest on a link whose Hello did not ask for interest routing",
        ));
    }
    check_interest(&link.namespaces, &change)?;
    let Interest {
        version,
        namespace,
        add,
        remove,
    } = change;
    if state.hub.apply_interest(link_id, &namespace, add, &remove) {
        let ack = LinkMessage {
            kind: Some(Kind::InterestAck(InterestAck { version })),
        };
        state.hub.send_to_link(link_id, ack);
    }
    Ok(())
}

/// Reads the gateway's frames until the stream ends or the link is cut, then unregisters it.
async fn read_frames(
    state: Arc<RelayState>,
    handle: Arc<LinkHandle>,
    link: ReadLink,
    mut inbound: Streaming<LinkMessage>,
    acks: watch::Sender<u64>,
    mut cut_seen: watch::Receiver<bool>,
) {
    let incarnation = link.incarnation;
    let link_id = handle.link_id;
    let node_id = handle.node_id.clone();
    let stats = Arc::clone(&handle.stats);
    // Only the hub's copy of the handle keeps the queue open; ours must not outlive the link.
    drop(handle);
    let cut = |status: Status, reason: &'static str| {
        state.hub.cut_link(link_id, status, reason);
    };
    let stamps_in_flight = Arc::new(Semaphore::new(MAX_STAMPS_IN_FLIGHT));
    loop {
        let next = tokio::select! {
            biased;
            _ = cut_seen.wait_for(|c| *c) => break,
            next = inbound.message() => next,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!("gateway closed its link");
                break;
            }
            Err(status) => {
                let status = inbound_error(status, state.max_frame_bytes);
                let reason = if status.code() == tonic::Code::OutOfRange {
                    "frame_too_large"
                } else {
                    "stream_error"
                };
                tracing::info!(error = %status.message(), "link stream ended with an error");
                cut(status, reason);
                break;
            }
        };
        let frame = match msg.kind {
            Some(Kind::Frame(f)) => f,
            Some(Kind::Stamp(call)) => {
                stamp_call(&state, link_id, call, &stamps_in_flight);
                continue;
            }
            Some(Kind::Interest(change)) => {
                if let Err(status) = interest(&state, &link, link_id, change) {
                    cut(status, "protocol");
                    break;
                }
                continue;
            }
            Some(Kind::Hello(_)) => {
                cut(Status::invalid_argument("Hello sent twice"), "protocol");
                break;
            }
            _ => {
                cut(
                    Status::invalid_argument(
                        "a gateway may only send Hello, then Frames, StampCalls and Interests",
                    ),
                    "protocol",
                );
                break;
            }
        };
        metrics::frame_in();
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let frame = match admit(frame, &node_id, incarnation, state.max_frame_bytes) {
            Ok(f) => f,
            Err(status) => {
                let reason = if status.code() == tonic::Code::OutOfRange {
                    "frame_too_large"
                } else {
                    "protocol"
                };
                cut(status, reason);
                break;
            }
        };
        let seq = frame.seq;
        stats.last_seq.fetch_max(seq, Ordering::Relaxed);
        match state.bus.submit(&frame).await {
            Ok(Verdict::Accepted) => {
                acks.send_if_modified(|a| raise(a, seq));
                stats.accepted_seq.fetch_max(seq, Ordering::Relaxed);
            }
            Ok(Verdict::Duplicate) => {
                metrics::frame_duplicate();
                tracing::debug!(seq, "duplicate frame dropped");
                acks.send_if_modified(|a| raise(a, seq));
                stats.accepted_seq.fetch_max(seq, Ordering::Relaxed);
            }
            Ok(Verdict::Stale) => {
                cut(
                    Status::failed_precondition(
                        "a newer incarnation of this node id is sending frames",
                    ),
                    "stale",
                );
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, seq, "cannot forward a frame; cutting the link");
                cut(e.into(), "bus_error");
                break;
            }
        }
    }
    state.hub.unregister(link_id);
}

fn raise(ack: &mut u64, seq: u64) -> bool {
    if seq > *ack {
        *ack = seq;
        true
    } else {
        false
    }
}

/// What the outbound stream does next; lives for one poll, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Next {
    Cut(Option<Status>),
    Ack(Option<u64>),
    Msg(Option<LinkMessage>),
}

struct Outbound {
    queue: mpsc::Receiver<LinkMessage>,
    cut: Option<oneshot::Receiver<Status>>,
    acks: Option<watch::Receiver<u64>>,
    last_ack: u64,
    done: bool,
}

/// The stream towards the gateway: cut status first, then acks (coalesced), then the queue.
fn outbound(
    queue: mpsc::Receiver<LinkMessage>,
    cut: oneshot::Receiver<Status>,
    acks: watch::Receiver<u64>,
    last_ack: u64,
) -> LinkStream {
    let state = Outbound {
        queue,
        cut: Some(cut),
        acks: Some(acks),
        last_ack,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let next = {
                let Outbound {
                    queue, cut, acks, ..
                } = &mut st;
                let cut = async {
                    match cut.as_mut() {
                        Some(c) => c.await.ok(),
                        None => std::future::pending().await,
                    }
                };
                let ack = async {
                    match acks.as_mut() {
                        Some(a) => match a.changed().await {
                            Ok(()) => Some(*a.borrow_and_update()),
                            Err(_) => None,
                        },
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    status = cut => Next::Cut(status),
                    seq = ack => Next::Ack(seq),
                    msg = queue.recv() => Next::Msg(msg),
                }
            };
            match next {
                Next::Cut(Some(status)) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
                // The handle went away without a cut: the queue ends too.
                Next::Cut(None) => st.cut = None,
                Next::Ack(Some(seq)) if seq > st.last_ack => {
                    st.last_ack = seq;
                    let msg = LinkMessage {
                        kind: Some(Kind::Ack(Ack { seq })),
                    };
                    return Some((Ok(msg), st));
                }
                Next::Ack(Some(_)) => {}
                Next::Ack(None) => st.acks = None,
                Next::Msg(Some(msg)) => return Some((Ok(msg), st)),
                Next::Msg(None) => return None,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    const MAX: usize = 1024;

    fn any_frame() -> impl Strategy<Value = Frame> {
        (
            prop_oneof![Just("/".to_owned()), ".{0,40}"],
            any::<i32>(),
            ".{0,20}",
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..2 * MAX),
            prop_oneof![Just(String::new()), "[a-zA-Z0-9]{1,80}"],
        )
            .prop_map(
                |(namespace, kind, target, seq, payload, request_id)| Frame {
                    namespace,
                    kind,
                    target,
                    seq,
                    payload: payload.into(),
                    request_id,
                    ..Frame::default()
                },
            )
    }

    proptest! {
        /// Whatever bytes reach the link, decoding gives a message or an error, never a panic.
        #[test]
        fn arbitrary_link_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = LinkMessage::decode(bytes.as_slice());
            let _ = Frame::decode(bytes.as_slice());
        }

        /// A frame is admitted only when every field is in range, and then carries the link's
        /// identity, never the one the gateway wrote.
        #[test]
        fn admit_checks_every_field(frame in any_frame()) {
            let expect_ok = frame.payload.len() <= MAX
                && (1..MAX_COUNTER).contains(&frame.seq)
                && check_namespace(&frame.namespace).is_ok()
                && frame.request_id.len() <= MAX_REQUEST_ID
                && match FrameKind::try_from(frame.kind) {
                    Ok(FrameKind::Broadcast | FrameKind::Request) => true,
                    Ok(FrameKind::Response) => !frame.target.is_empty(),
                    _ => false,
                };
            match admit(frame, "gw-1", 7, MAX) {
                Ok(f) => {
                    prop_assert!(expect_ok);
                    prop_assert_eq!(f.origin, "gw-1");
                    prop_assert_eq!(f.incarnation, 7);
                    prop_assert!(f.position.is_none());
                }
                Err(status) => {
                    prop_assert!(!expect_ok);
                    let code = status.code();
                    prop_assert!(code == tonic::Code::InvalidArgument || code == tonic::Code::OutOfRange);
                }
            }
        }

        #[test]
        fn hello_names_are_checked(id in ".{0,300}", namespaces in proptest::collection::vec(".{0,300}", 0..4)) {
            match validate_hello(&id, namespaces.clone()) {
                Ok(ns) => {
                    prop_assert!(node_id::check(&id).is_ok());
                    prop_assert!(!ns.is_empty());
                    prop_assert!(ns.iter().all(|n| check_namespace(n).is_ok()));
                }
                Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
            }
        }
    }
}
