//! Requests no well-behaved client sends, for the bad-input tests: raw HTTP/1.1 over TCP
//! ([`http_exchange`]) and gRPC calls whose messages are arbitrary bytes ([`RawCodec`]: a real
//! HTTP/2 gRPC client, tonic, sending the given bytes as the message). A service must still
//! answer them with a clear refusal (a 4xx, a gRPC status), never panic.

use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
