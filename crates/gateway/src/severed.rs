//! The task that disconnects the sockets the gates severed ([`crate::gates`]): a socket that
//! missed an event (its send buffer was full, or the relay links had a gap) gets nothing more,
//! and is disconnected here so its client reconnects and resumes from the last offset it got.

use std::time::Duration;

use socketioxide::{SocketIo, adapter::Adapter};
use tokio::sync::mpsc;

use crate::gates::Severed;

/// How often, and how many times, the disconnect of a severed socket is retried while its send
/// buffer stays full (10 s in all; a client that reads nothing for that long also misses its
/// heartbeats).
const SEVER_RETRY: Duration = Duration::from_millis(50);
const SEVER_ATTEMPTS: u32 = 200;

/// Disconnects every socket the gates severed, so its client reconnects and resumes from the
/// last offset it got. The disconnect packet waits in the same full buffer, so it is retried
/// until queued, until the socket is gone, or for `SEVER_ATTEMPTS` tries (10 s).
pub async fn disconnect_severed<A: Adapter>(
    io: SocketIo<A>,
    mut severed: mpsc::UnboundedReceiver<Severed>,
) {
    while let Some((ns, sid)) = severed.recv().await {
        let io = io.clone();
        tokio::spawn(async move {
            for _ in 0..SEVER_ATTEMPTS {
                let Some(socket) = io.of(&ns).and_then(|op| op.get_socket(sid)) else {
                    return;
                };
                if socket.disconnect().is_ok() {
                    return;
                }
                tokio::time::sleep(SEVER_RETRY).await;
            }
            tracing::warn!(%sid, ns, "severed socket: its send buffer never drained");
        });
    }
}
