//! Delivery of events the relay forwarded to this gateway's sockets: stamped room events
//! through the gates, as runs, and backend events (relay `Publish`) as they are.
//!
//! Stamped events of one room that arrived in a row form a **run**. Each local member of the
//! room is offered every event of the run, in offset order, before the next member is: its
//! writer wakes once and sends the run in one write. Frames queue up only when this gateway
//! falls behind, so under load runs grow and the cost of each delivery falls, where one event
//! at a time it would stay the same (a wake-up and a write per event per member). Members are
//! read once per run, which loses nothing: a socket that joins locally after that reads its
//! head (or replays) after every event of the run was stamped, so it needs none of them live.
//!
//! Every event is serialized once per run into a packet; each member gets its own copy of the
//! packet through socketioxide's local broadcast to that one socket, so that a full send buffer
//! is known per socket and only that socket is severed (see [`crate::gates`]).
//!
//! With the admin UI listening to outgoing events ([`Delivery::outgoing`], looked up once per
//! batch of frames), each event delivered to a member is reported to it as sent
//! ([`crate::observe`]): the events of a run are decoded once, and what the members got is
//! reported after the gates' lock is released.

use std::borrow::Cow;

use socketioxide_core::Sid;
use socketioxide_core::adapter::{
    BroadcastFlags, BroadcastOptions, CoreLocalAdapter, SocketEmitter, errors::SocketError,
};
use socketioxide_core::packet::Packet;
use socketioxide_core::parser::Parse;
use switchyard_proto::relay::v1::{BackendEvent, Frame, Position, backend_event};

use crate::gates::{Gates, Stamped};
use crate::metrics;
use crate::observe::{Observer, SentEvent};
use crate::payload::{Encoded, Payload, decode_event_data};

/// Stamped events of one room that arrived in a row, with their encoded packets and
/// `deliver` spans (closed once the run is delivered).
#[derive(Default)]
struct Run {
    events: Vec<Stamped>,
    packets: Vec<Packet>,
    spans: Vec<tracing::Span>,
}

impl Run {
    fn clear(&mut self) {
        self.events.clear();
        self.packets.clear();
        self.spans.clear();
    }
}

/// Delivers the events of one namespace to its local sockets.
pub struct Delivery<'a, E> {
    pub local: &'a CoreLocalAdapter<E>,
    pub gates: &'a Gates,
    pub ns: &'a str,
    pub node_id: &'a str,
    /// The admin UI's observer of outgoing events, when it listens (development mode).
    pub outgoing: Option<&'a Observer>,
}

impl<E: SocketEmitter> Delivery<'_, E> {
    /// Applies `frames` in arrival order: events are delivered here, every other frame goes to
    /// `control`, in its place in the order (a run ends before it).
    pub fn frames(&self, frames: impl IntoIterator<Item = Frame>, mut control: impl FnMut(Frame)) {
        let mut run = Run::default();
        for mut frame in frames {
            let Some(ev) = frame.event.take() else {
                self.deliver_run(&mut run);
                control(frame);
                continue;
            };
            // Continues the publisher's trace, which the relay carried in the frame.
            let span = tracing::info_span!("deliver", node = %self.node_id,
                                           namespace = %self.ns, room = %ev.rooms.join(","),
                                           event = %ev.event,
                                           offset = frame.position.as_ref().map(|p| p.offset),
                                           sockets = tracing::field::Empty,
                                           run = tracing::field::Empty);
            switchyard_common::trace_context::set_parent_from_map(&span, &frame.trace_context);
            match frame.position {
                Some(position)
                    if !self
                        .gates
                        .first_arrival(self.ns, &position.epoch, position.offset) =>
                {
                    // The same event from another relay link: delivered already.
                    continue;
                }
                Some(position) => {
                    let Some((stamped, packet)) =
                        span.in_scope(|| self.encode_stamped(ev, position))
                    else {
                        continue;
                    };
                    if run
                        .events
                        .last()
                        .is_some_and(|last| last.room != stamped.room)
                    {
                        self.deliver_run(&mut run);
                    }
                    run.events.push(stamped);
                    run.packets.push(packet);
                    run.spans.push(span);
                }
                None => {
                    self.deliver_run(&mut run);
                    span.in_scope(|| self.emit_backend(ev));
                }
            }
        }
        self.deliver_run(&mut run);
    }

    /// Decodes a stamped room event (from the relay's `Stamp`) and encodes the packet its
    /// members get: `event(data, {room, epoch, offset})`. `None` (logged) if it cannot be.
    fn encode_stamped(&self, ev: BackendEvent, position: Position) -> Option<(Stamped, Packet)> {
        let room = ev.rooms.first().cloned()?;
        let data = event_data(&ev)?;
        let stamped = Stamped {
            room,
            event: ev.event,
            data,
            epoch: position.epoch,
            offset: position.offset,
        };
        let value = match self
            .local
            .parser()
            .encode_value(&(&stamped.data, stamped.meta()), Some(&stamped.event))
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(event = %stamped.event, error = %e, "stamped event not encodable");
                return None;
            }
        };
        ::metrics::counter!(metrics::HISTORY_EVENTS_TOTAL).increment(1);
        Some((stamped, Packet::event(self.local.path().clone(), value)))
    }

    /// Delivers a run of stamped events of one room to the local members their gates let
    /// through, and empties it.
    fn deliver_run(&self, run: &mut Run) {
        let Some(first) = run.events.first() else {
            return;
        };
        let mut opts = BroadcastOptions::default();
        opts.rooms.push(Cow::Owned(first.room.clone()));
        // Logs of the delivery (sockets cut off) belong to the run's first event.
        let entered = run.spans.first().map(tracing::Span::enter);
        let members = self.local.sockets(opts);
        for span in &run.spans {
            span.record("sockets", members.len());
            span.record("run", run.events.len());
        }
        // With the admin UI listening: each event decoded once, and who got which.
        let sent: Option<Vec<Option<SentEvent>>> = self.outgoing.map(|_| {
            run.packets
                .iter()
                .map(|p| SentEvent::of_packet(self.local.parser(), p))
                .collect()
        });
        let mut delivered: Vec<(Sid, usize)> = Vec::new();
        self.gates.admit(self.ns, &run.events, &members, |sid, i| {
            let Some(packet) = run.packets.get(i) else {
                return true;
            };
            let mut one = BroadcastOptions::default();
            one.sid = Some(sid);
            match self.local.broadcast(packet.clone(), one) {
                Ok(()) => {
                    if sent.is_some() {
                        delivered.push((sid, i));
                    }
                    true
                }
                Err(errors) => {
                    tracing::debug!(%sid, errors = errors.len(), "stamped event: socket unreachable");
                    // A closed socket is forgotten at its disconnect; a full one is severed.
                    !errors
                        .iter()
                        .any(|e| matches!(e, SocketError::InternalChannelFull))
                }
            }
        });
        if let (Some(observer), Some(sent)) = (self.outgoing, &sent) {
            for (sid, i) in delivered {
                if let Some(Some(ev)) = sent.get(i) {
                    observer.sent(self.ns, [sid], ev);
                }
            }
        }
        self.gates.tick(self.ns, run.events.len() as u64, || {
            let mut all = BroadcastOptions::default();
            all.add_flag(BroadcastFlags::Broadcast);
            self.local.sockets(all).into_iter().collect()
        });
        drop(entered);
        run.clear();
    }

    /// Emits a backend event (from the relay's `Publish`) to the local sockets of its rooms
    /// minus `except`, with the decoded data as the single argument.
    fn emit_backend(&self, ev: BackendEvent) {
        let Some(data) = event_data(&ev) else {
            return;
        };
        let value = match self.local.parser().encode_value(&data, Some(&ev.event)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(event = %ev.event, error = %e, "backend event not encodable");
                return;
            }
        };
        let packet = Packet::event(self.local.path().clone(), value);
        let mut opts = BroadcastOptions::default();
        opts.rooms = ev.rooms.into_iter().map(Cow::Owned).collect();
        opts.except = ev.except.into_iter().map(Cow::Owned).collect();
        ::metrics::counter!(metrics::BACKEND_EVENTS_TOTAL).increment(1);
        if let Some(observer) = self.outgoing
            && let Some(sent) = SentEvent::of_packet(self.local.parser(), &packet)
        {
            observer.sent(self.ns, self.local.sockets(opts.clone()), &sent);
        }
        if let Err(e) = self.local.broadcast(packet, opts) {
            tracing::debug!(event = %ev.event, errors = e.len(), "backend event: some sockets unreachable");
        }
    }
}

/// The data of a live event, through the one decoder ([`decode_event_data`]): `None` when it
/// does not decode (the event is dropped and counted).
fn event_data(ev: &BackendEvent) -> Option<Payload> {
    let encoded = match &ev.data {
        Some(backend_event::Data::Json(text)) => Encoded::Json(text),
        Some(backend_event::Data::Msgpack(bytes)) => Encoded::Msgpack(bytes),
        None => return Some(Payload::Null),
    };
    decode_event_data(encoded, &ev.event, "live")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a corrupted frame carries as event data, decoding answers a value or
        /// `None` (the event is dropped) and never panics.
        #[test]
        fn arbitrary_event_data_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            text in ".{0,256}",
        ) {
            let mut ev = BackendEvent {
                rooms: vec!["r".into()],
                except: Vec::new(),
                event: "e".into(),
                data: Some(backend_event::Data::Msgpack(bytes.into())),
            };
            let _ = event_data(&ev);
            ev.data = Some(backend_event::Data::Json(text));
            let _ = event_data(&ev);
        }
    }
}
