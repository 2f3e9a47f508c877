//! The relay's own origin: every frame the relay writes itself (a backend's `Publish`, an admin
//! request to the gateways, a stamped history event) comes from `relay:<relay_id>`, numbered
//! by one sequence.
//!
//! Gateways keep a high-water mark per origin and drop a frame whose `(incarnation, seq)` is
//! not above it, so frames of one origin must reach the bus in `seq` order: [`Origin::send`]
//! holds a lock from taking a `seq` until the bus has the frame. Stamped history frames are
//! the exception: gateways deduplicate them by offset, not by this mark, so they take a number
//! with [`Origin::number`] without the lock (their order is the offset order the history
//! keeps); the gaps this leaves in the sequence are allowed by the link protocol.
//!
//! Lock order: the send lock, then whatever the bus takes (the hub's state, without Redis).

use std::sync::atomic::{AtomicU64, Ordering};

use switchyard_proto::relay::v1::Frame;

use crate::bus::{Bus, BusError};

/// The origin and sequence of the frames this replica writes itself.
pub struct Origin {
    /// `relay:<relay_id>`; also the target gateways address their answers to.
    name: String,
    /// This process's start time (ms), so the marks of a restarted relay start afresh.
    incarnation: u64,
    /// The last `seq` handed out.
    last_seq: AtomicU64,
    /// Held from taking a `seq` until the bus has the frame (see the module docs). A tokio
    /// mutex: it is held across the bus's await.
    in_order: tokio::sync::Mutex<()>,
}

impl Origin {
    /// The origin of the replica `relay_id`, started at `incarnation` (Unix ms).
    pub fn new(relay_id: &str, incarnation: u64) -> Self {
        Self {
            name: format!("relay:{relay_id}"),
            incarnation,
            last_seq: AtomicU64::new(0),
            in_order: tokio::sync::Mutex::new(()),
        }
    }

    /// `relay:<relay_id>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives `frame` this origin, its incarnation and the next `seq`, with no ordering against
    /// other frames: only for frames receivers do not deduplicate by origin (stamped ones).
    pub fn number(&self, frame: &mut Frame) {
        frame.origin.clone_from(&self.name);
        frame.incarnation = self.incarnation;
        frame.seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
    }

    /// Numbers `frame` and hands it to the bus (no dedup: nobody resends it), so that this
    /// origin's frames reach the bus in `seq` order.
    pub async fn send(&self, bus: &Bus, mut frame: Frame) -> Result<(), BusError> {
        let _in_order = self.in_order.lock().await;
        self.number(&mut frame);
        bus.publish(&frame).await
    }
}
