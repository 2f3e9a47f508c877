//! Requests no well-behaved client sends, for the bad-input tests: raw HTTP/1.1 over TCP
//! ([`http_exchange`]) and gRPC calls whose messages are arbitrary bytes ([`RawCodec`]: a real
//! HTTP/2 gRPC client, tonic, sending the given bytes as the message), and Socket.IO over a raw
//! websocket ([`RawSocket`]). A service must still answer them with a clear refusal (a 4xx, a
//! gRPC status, an `{ok: false}` ack, a closed connection), never panic.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::{Buf, BufMut, Bytes};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Status, Streaming, transport::Channel};

/// What a server answered to a raw HTTP request.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code of the status line; `None` when the server closed without answering.
    pub status: Option<u16>,
    /// The head (status line and headers) as text.
    pub head: String,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Writes `request` as-is to `addr` (`host:port`) and reads the answer until the server closes
/// the connection or `timeout` passes (send `Connection: close` to get the close). A write the
/// server cut short is not an error: whatever it answered is still read.
pub async fn http_exchange(
    addr: &str,
    request: &[u8],
    timeout: Duration,
) -> anyhow::Result<RawResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = tokio::time::timeout(timeout, stream.write_all(request)).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut raw)).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&raw[..i], raw[i + 4..].to_vec()),
        None => (&raw[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Ok(RawResponse { status, head, body })
}

/// Sends and receives gRPC messages as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A gRPC client on `grpc_url` that sends raw message bytes.
pub async fn client(grpc_url: &str) -> anyhow::Result<tonic::client::Grpc<Channel>> {
    let channel = Channel::from_shared(grpc_url.to_owned())?.connect().await?;
    Ok(tonic::client::Grpc::new(channel))
}

/// Calls the unary method `path` (`/package.Service/Method`) with raw bytes as the request.
pub async fn unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    request: tonic::Request<Bytes>,
) -> Result<Bytes, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
}

/// Opens the bidirectional method `path` and sends `messages` as its request stream.
pub async fn streaming(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    messages: Vec<Bytes>,
) -> Result<Streaming<Bytes>, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    let request = tonic::Request::new(tokio_stream::iter(messages));
    Ok(grpc.streaming(request, path, RawCodec).await?.into_inner())
}

/// How long [`RawSocket`] waits for the server to answer or close.
pub const SOCKET_WAIT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// How a raw connection ended up after a bad frame.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The gateway closed the connection.
    Closed,
    /// The connection lives on and answered the probe with this ack.
    Acked(Value),
}

/// A raw Socket.IO v5 client over one websocket: it sends exactly what it is told, so a test can
/// send what no well-behaved client does (floods, garbage, half-built packets).
pub struct RawSocket {
    /// The websocket, for frames the helpers below do not cover.
    pub ws: Ws,
    next_ack: u64,
}

impl RawSocket {
    /// Opens the Engine.IO websocket (reads the OPEN packet), without a Socket.IO CONNECT.
    pub async fn open(gateway_url: &str) -> anyhow::Result<RawSocket> {
        let host = gateway_url.trim_start_matches("http://");
        let tcp = tokio::net::TcpStream::connect(host).await?;
        let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        let mut raw = RawSocket { ws, next_ack: 0 };
        let open = raw.next_text().await?.context("closed before OPEN")?;
        ensure!(
            open.starts_with('0'),
            "expected the Engine.IO OPEN, got {open}"
        );
        Ok(raw)
    }

    /// Opens and connects to `/` with a fresh assignment token from placement's `/v1/assign`.
    pub async fn connected(placement_http: &str) -> anyhow::Result<RawSocket> {
        let a = crate::assign::assign(placement_http, "/").await?;
        RawSocket::connect(&a.url, &a.token).await
    }

    /// Opens the websocket on `gateway_url` and connects to `/` with `token`; an error names the
    /// refusal when the CONNECT is not accepted.
    pub async fn connect(gateway_url: &str, token: &str) -> anyhow::Result<RawSocket> {
        let mut raw = RawSocket::open(gateway_url).await?;
        raw.send(&format!("40{}", json!({"token": token}))).await?;
        let reply = raw
            .next_text()
            .await?
            .context("closed before CONNECT was answered")?;
        ensure!(reply.starts_with("40"), "CONNECT refused: {reply}");
        Ok(raw)
    }

    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next text message (Engine.IO pings answered), `None` once the connection is closed
    /// (a websocket close, an Engine.IO CLOSE packet or a dropped connection).
    pub async fn next_text(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            let msg = tokio::time::timeout(SOCKET_WAIT, self.ws.next())
                .await
                .context("the gateway neither answered nor closed")?;
            match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                // The Engine.IO CLOSE packet.
                Some(Ok(Message::Text(t))) if t.as_str() == "1" => return Ok(None),
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    let _ = self.ws.send(Message::text("3")).await;
                }
                Some(Ok(Message::Text(t))) => return Ok(Some(t.as_str().to_owned())),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Emits `event(args...)` with an ack id; returns the id.
    pub async fn emit(&mut self, event: &str, args: &[Value]) -> anyhow::Result<u64> {
        self.next_ack += 1;
        let mut packet = vec![json!(event)];
        packet.extend_from_slice(args);
        self.send(&format!("42{}{}", self.next_ack, Value::Array(packet)))
            .await?;
        Ok(self.next_ack)
    }

    /// Waits for the ack `id` (skipping events); `None` if the connection closed first.
    pub async fn ack(&mut self, id: u64) -> anyhow::Result<Option<Value>> {
        let prefix = format!("43{id}");
        while let Some(t) = self.next_text().await? {
            if let Some(rest) = t.strip_prefix(&prefix)
                && rest.starts_with('[')
            {
                let args: Value = serde_json::from_str(rest)?;
                return Ok(Some(args[0].clone()));
            }
        }
        Ok(None)
    }

    /// Waits for the acks of every id in `ids`, in whatever order they arrive (handlers of one
    /// socket run concurrently, so acks of pipelined emits can overtake each other); events in
    /// between are skipped. An error if the connection closes first.
    pub async fn acks(&mut self, ids: &[u64]) -> anyhow::Result<HashMap<u64, Value>> {
        let mut acks = HashMap::with_capacity(ids.len());
        while acks.len() < ids.len() {
            let Some(text) = self.next_text().await? else {
                anyhow::bail!("closed after {} of {} acks", acks.len(), ids.len());
            };
            let Some(rest) = text.strip_prefix("43") else {
                continue;
            };
            let split = rest.find('[').context("an ack without arguments")?;
            let id: u64 = rest[..split].parse()?;
            let args: Value = serde_json::from_str(&rest[split..])?;
            if ids.contains(&id) {
                acks.insert(id, args[0].clone());
            }
        }
        Ok(acks)
    }

    /// Emits and waits for the ack; an error if the connection closed.
    pub async fn call(&mut self, event: &str, args: &[Value]) -> anyhow::Result<Value> {
        let id = self.emit(event, args).await?;
        self.ack(id)
            .await?
            .with_context(|| format!("the connection closed before `{event}` was acked"))
    }

    /// After a bad frame: either the connection is closed, or a `join` probe is acked.
    pub async fn outcome(&mut self) -> anyhow::Result<Outcome> {
        let Ok(id) = self.emit("join", &[json!("probe")]).await else {
            return Ok(Outcome::Closed);
        };
        Ok(match self.ack(id).await? {
            Some(v) => Outcome::Acked(v),
            None => Outcome::Closed,
        })
    }
}
