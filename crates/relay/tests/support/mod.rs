//! Test support: a relay process and gRPC clients that behave like gateways.
#![allow(dead_code)]

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, bail};
use switchyard_proto::relay::v1::{
    Frame, FrameKind, Hello, LinkMessage, Members, MembersRequest, Welcome, link_message::Kind,
    relay_client::RelayClient,
};
use switchyard_testkit::process::Service;
use switchyard_testkit::redis::RedisAccess;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};

pub const PUBLISH_TOKEN: &str = "test-publish-token";

/// How long a test waits for something that should happen (not a speed assertion).
pub const WAIT: Duration = Duration::from_secs(30);

/// Starts `switchyard-relay` on free ports; `redis` makes it a replica of that Redis.
pub fn start_relay(redis: Option<&str>, extra: &[&str]) -> anyhow::Result<Service> {
    let mut args: Vec<String> = Vec::new();
    if let Some(url) = redis {
        args.push("--redis-url".into());
        args.push(url.into());
    }
    spawn_relay(args, extra, &[])
}

/// Starts `switchyard-relay` on the Redis `access` describes: its URL, CA file and ACL user as
/// flags, the password as `SWITCHYARD_REDIS_PASSWORD` (the way a Secret reaches a pod).
pub fn start_relay_on(access: &RedisAccess, extra: &[&str]) -> anyhow::Result<Service> {
    spawn_relay(access.args(), extra, &access.env())
}

fn spawn_relay(
    redis_args: Vec<String>,
    extra: &[&str],
    env: &[(String, String)],
) -> anyhow::Result<Service> {
    let mut args: Vec<String> = vec![
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--grpc-addr".into(),
        "127.0.0.1:0".into(),
        "--publish-token".into(),
        PUBLISH_TOKEN.into(),
        "--membership-interval-ms".into(),
        "200".into(),
    ];
    args.extend(redis_args);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SWITCHYARD_LOG", "info,switchyard_relay=debug"));
    Service::spawn("switchyard-relay", &args, &env)
}

pub fn grpc_url(relay: &Service) -> anyhow::Result<String> {
    Ok(format!("http://{}", relay.ready_value("grpc")?))
}

pub fn http_url(relay: &Service) -> anyhow::Result<String> {
    Ok(format!("http://{}", relay.ready_value("http")?))
}

pub async fn client(relay: &Service) -> anyhow::Result<RelayClient<Channel>> {
    let channel = Channel::from_shared(grpc_url(relay)?)?.connect().await?;
    Ok(RelayClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

pub fn hello(node_id: &str, namespaces: &[&str], incarnation: u64) -> LinkMessage {
    LinkMessage {
        kind: Some(Kind::Hello(Hello {
            node_id: node_id.into(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            incarnation,
            ..Hello::default()
        })),
    }
}

pub fn frame(
    namespace: &str,
    seq: u64,
    kind: FrameKind,
    payload: &[u8],
    target: &str,
) -> LinkMessage {
    LinkMessage {
        kind: Some(Kind::Frame(Frame {
            namespace: namespace.into(),
            seq,
            kind: kind as i32,
            payload: payload.to_vec().into(),
            target: target.into(),
            ..Frame::default()
        })),
    }
}

/// Opens a link and returns its raw halves, sending `first` (if any) before the call.
pub async fn link_raw(
    relay: &Service,
    first: Option<LinkMessage>,
) -> Result<(mpsc::Sender<LinkMessage>, Streaming<LinkMessage>), Status> {
    let mut client = client(relay)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(4096);
    if let Some(m) = first {
        let _ = tx.send(m).await;
    }
    let stream = client.link(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// A gRPC client acting as a gateway: a link whose messages are read by a background task.
pub struct Gw {
    pub node_id: String,
    pub welcome: Welcome,
    tx: mpsc::Sender<LinkMessage>,
    rx: mpsc::UnboundedReceiver<Result<LinkMessage, Status>>,
    pub seq: u64,
    pub members: HashMap<String, Vec<String>>,
    pub acked: u64,
}

impl Gw {
    pub async fn link(relay: &Service, node_id: &str, namespaces: &[&str]) -> anyhow::Result<Gw> {
        Self::link_as(relay, node_id, namespaces, 1).await
    }

    pub async fn link_as(
        relay: &Service,
        node_id: &str,
        namespaces: &[&str],
        incarnation: u64,
    ) -> anyhow::Result<Gw> {
        Self::link_hello(relay, hello(node_id, namespaces, incarnation)).await
    }

    /// Links with `hello` as the first message (any `Hello`, e.g. with interest routing).
    pub async fn link_hello(relay: &Service, hello: LinkMessage) -> anyhow::Result<Gw> {
        let node_id = match &hello.kind {
            Some(Kind::Hello(h)) => h.node_id.clone(),
            _ => bail!("link_hello needs a Hello"),
        };
        let node_id = node_id.as_str();
        let (tx, mut stream) = link_raw(relay, Some(hello)).await?;
        let first = tokio::time::timeout(WAIT, stream.message()).await??;
        let welcome = match first.and_then(|m| m.kind) {
            Some(Kind::Welcome(w)) => w,
            other => bail!("expected Welcome first, got {other:?}"),
        };
        let (fwd, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        if fwd.send(Ok(m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = fwd.send(Err(s));
                        return;
                    }
                }
            }
        });
        Ok(Gw {
            node_id: node_id.into(),
            seq: welcome.accepted_seq,
            welcome,
            tx,
            rx,
            members: HashMap::new(),
            acked: 0,
        })
    }

    /// Sends a frame with the next seq; returns the seq.
    pub async fn send(
        &mut self,
        namespace: &str,
        kind: FrameKind,
        payload: &[u8],
        target: &str,
    ) -> anyhow::Result<u64> {
        self.seq += 1;
        self.send_seq(namespace, self.seq, kind, payload, target)
            .await?;
        Ok(self.seq)
    }

    pub async fn send_seq(
        &self,
        namespace: &str,
        seq: u64,
        kind: FrameKind,
        payload: &[u8],
        target: &str,
    ) -> anyhow::Result<()> {
        self.tx
            .send(frame(namespace, seq, kind, payload, target))
            .await
            .context("link closed")
    }

    /// Sends `frame` as the next of this link's frames (its `seq` is set here).
    pub async fn send_frame(&mut self, frame: Frame) -> anyhow::Result<u64> {
        self.seq += 1;
        let frame = Frame {
            seq: self.seq,
            ..frame
        };
        self.send_message(LinkMessage {
            kind: Some(Kind::Frame(frame)),
        })
        .await?;
        Ok(self.seq)
    }

    /// Sends any message on the link (a `StampCall`, …).
    pub async fn send_message(&self, msg: LinkMessage) -> anyhow::Result<()> {
        self.tx.send(msg).await.context("link closed")
    }

    pub async fn broadcast(&mut self, payload: &str) -> anyhow::Result<u64> {
        self.send("/", FrameKind::Broadcast, payload.as_bytes(), "")
            .await
    }

    fn note(&mut self, msg: &LinkMessage) {
        match &msg.kind {
            Some(Kind::Members(Members {
                namespace,
                node_ids,
            })) => {
                self.members.insert(namespace.clone(), node_ids.clone());
            }
            Some(Kind::Ack(a)) => self.acked = self.acked.max(a.seq),
            _ => {}
        }
    }

    /// The next message of any kind (errors if the link ends).
    pub async fn next_message(&mut self) -> anyhow::Result<LinkMessage> {
        let msg = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .with_context(|| format!("{}: nothing received within {WAIT:?}", self.node_id))?
            .with_context(|| format!("{}: link ended", self.node_id))??;
        self.note(&msg);
        Ok(msg)
    }

    /// The next frame, skipping (but recording) members and acks.
    pub async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(Kind::Frame(f)) = self.next_message().await?.kind {
                return Ok(f);
            }
        }
    }

    /// Waits until a `Members` for `namespace` lists exactly `count` nodes; frames met on the
    /// way are an error.
    pub async fn wait_members(
        &mut self,
        namespace: &str,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        loop {
            if let Some(m) = self.members.get(namespace)
                && m.len() == count
            {
                return Ok(m.clone());
            }
            let msg = self.next_message().await?;
            if let Some(Kind::Frame(f)) = msg.kind {
                bail!(
                    "{}: unexpected frame while waiting for members: {f:?}",
                    self.node_id
                );
            }
        }
    }

    /// Waits until the relay acknowledged `seq`.
    pub async fn wait_acked(&mut self, seq: u64) -> anyhow::Result<()> {
        while self.acked < seq {
            if let Some(Kind::Frame(f)) = self.next_message().await?.kind {
                bail!(
                    "{}: unexpected frame while waiting for an ack: {f:?}",
                    self.node_id
                );
            }
        }
        Ok(())
    }

    /// Reads until the link ends with an error; returns it and the frames met on the way.
    pub async fn next_error(&mut self) -> anyhow::Result<(Status, usize)> {
        let mut frames = 0;
        loop {
            let item = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .with_context(|| format!("{}: no error within {WAIT:?}", self.node_id))?;
            match item {
                Some(Ok(m)) => {
                    if matches!(m.kind, Some(Kind::Frame(_))) {
                        frames += 1;
                    }
                }
                Some(Err(s)) => return Ok((s, frames)),
                None => bail!("{}: link ended without an error", self.node_id),
            }
        }
    }

    /// Closes our sending half.
    pub fn close(self) {}
}

pub fn payload(f: &Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

pub async fn members(relay: &Service, namespace: &str) -> anyhow::Result<Vec<String>> {
    Ok(client(relay)
        .await?
        .members(MembersRequest {
            namespace: namespace.into(),
        })
        .await?
        .into_inner()
        .node_ids)
}

pub async fn metrics(relay: &Service) -> anyhow::Result<String> {
    Ok(
        switchyard_testkit::reqwest::get(format!("{}/metrics", http_url(relay)?))
            .await?
            .text()
            .await?,
    )
}
