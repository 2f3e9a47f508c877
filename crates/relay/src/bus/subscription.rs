//! The subscriber connection of a replica: one per replica, in the pub/sub mode it resolved.
//!
//! Sharded pub/sub (SPUBLISH/SSUBSCRIBE) is used when the server has it (Redis >= 7, detected
//! with `INFO server` under `--pubsub auto`), classic PUBLISH/SUBSCRIBE otherwise. Every channel
//! carries the cluster's hash tag, so on Redis Cluster all of a cluster's channels live on one
//! shard and a sharded message is not broadcast to every node. redis-rs 1.x has SSUBSCRIBE
//! only on cluster connections, so on a single server the sharded subscriber is a RESP3
//! multiplexed connection whose pushes (`smessage`) arrive on a channel; SSUBSCRIBE is sent one
//! channel at a time and its confirmation push is its reply, so a refused subscription (an ACL
//! user without the channel) fails the subscribe instead of passing unnoticed.
//!
//! On a Redis Cluster (`redis+cluster://…`) the subscriber is a RESP3 cluster connection with a
//! push channel, in both modes: its `ssubscribe` goes to the master that owns the channels' slot
//! and waits for the confirmation; classic `subscribe` works too (a classic PUBLISH reaches
//! every node). The publishing scripts run on that same master (their keys share the hash tag).
//! A dropped socket to ANY node counts as a lost subscription (conservative: links are cut and
//! resync, never a silent gap).

use futures::StreamExt;
use switchyard_redis::{Connection, Pool};
use tokio::sync::mpsc;

use super::BusError;

/// Opens the subscriber connection, sharded or classic (see the module docs). Subscribes to
/// nothing yet.
pub(super) async fn connect(pool: &Pool, sharded: bool) -> Result<(SubSink, SubStream), BusError> {
    if let Some(pubsub) = pool.classic_pubsub().filter(|_| !sharded) {
        let (sink, stream) = pubsub.await?.split();
        return Ok((SubSink::Classic(sink), SubStream::Classic(stream)));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = pool.push_connection(tx).await?;
    Ok((SubSink::Push { conn, sharded }, SubStream::Push(rx)))
}

/// The subscribing half of the subscriber connection.
pub(super) enum SubSink {
    /// Classic pub/sub on a single server.
    Classic(redis::aio::PubSubSink),
    /// A RESP3 connection whose pushes feed [`SubStream::Push`]: sharded on a single server,
    /// either mode on a cluster.
    Push { conn: Connection, sharded: bool },
}

impl SubSink {
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), BusError> {
        match self {
            SubSink::Classic(sink) => sink.subscribe(channels).await?,
            SubSink::Push {
                conn: Connection::Cluster(conn),
                sharded,
            } => {
                if *sharded {
                    conn.ssubscribe(channels).await?;
                } else {
                    conn.subscribe(channels).await?;
                }
            }
            SubSink::Push { conn, .. } => {
                // One channel per command: its one confirmation (a push that redis-rs also
                // hands back as the command's reply) or its refusal (`NOPERM` when the ACL
                // user lacks the channel) is then the reply, so a subscription that failed is
                // an error here, never a replica that believes it listens.
                for channel in channels {
                    let _: redis::Value = redis::cmd("SSUBSCRIBE")
                        .arg(channel)
                        .query_async(conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// The receiving half of the subscriber connection.
pub(super) enum SubStream {
    Classic(redis::aio::PubSubStream),
    Push(mpsc::UnboundedReceiver<redis::PushInfo>),
}

impl SubStream {
    /// The next `(channel, payload)`; `None` once the connection is lost.
    pub(super) async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            SubStream::Classic(stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            SubStream::Push(rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        let mut data = push.data.into_iter();
                        if let (
                            Some(redis::Value::BulkString(channel)),
                            Some(redis::Value::BulkString(payload)),
                        ) = (data.next(), data.next())
                        {
                            return Some((String::from_utf8_lossy(&channel).into_owned(), payload));
                        }
                    }
                    redis::PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}
