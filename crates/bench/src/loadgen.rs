//! A Socket.IO load generator: many websocket clients in one process, speaking Engine.IO v4 /
//! Socket.IO v5 directly over tokio-tungstenite (no client library in the way, so thousands of
//! clients cost little more than their sockets).
//!
//! What one [`Client`] does:
//! - opens `ws://host:port/socket.io/?EIO=4&transport=websocket` from a chosen source address
//!   (`127.0.0.x`, so the ephemeral ports of one address do not run out), reads the `0{...}`
//!   open packet, sends `40{"token":...}` (or `40`) and waits for the namespace's `40{...}`;
//! - answers every ping `2` with `3`;
//! - emits with acks (`42<id>["join","room"]`) and resolves them from `43<id>[...]`;
//! - records each event carrying a bench [`Stamp`] (`{"s": seq, "t": ns}`) with its arrival
//!   time on the shared [`Clock`], so latency = arrival − send and skew can be computed per
//!   message across clients.
//!
//! Only the root namespace `/` and text frames are used: both systems under test get exactly
//! the same bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The event name benchmark publishes use.
pub const BENCH_EVENT: &str = "m";

/// One time base for the whole process: publishers stamp with it, receivers read it, so
/// latency needs no clock synchronisation (everything runs in this process).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the clock was made.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The payload every benchmark message carries: its sequence number and its send time.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
pub struct Stamp {
    pub s: u64,
    pub t: u64,
}

/// One delivery: message `seq`, sent at `sent_ns`, arrived at `arrived_ns` (both on the
/// shared [`Clock`]).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub seq: u64,
    pub sent_ns: u64,
    pub arrived_ns: u64,
}

/// Where a client connects and with what.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` (a gateway's public URL or a Node process).
    pub url: String,
    /// `auth.token` for the CONNECT packet; `None` sends a bare `40`.
    pub token: Option<String>,
}

/// The source address for client number `index`: `127.0.0.2` .. `127.0.0.(1 + spread)`.
pub fn source_ip(index: usize, spread: usize) -> IpAddr {
    let spread = spread.clamp(1, 250);
    let last = 2 + (index % spread);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8))
}

/// Counters shared by every client of a run.
#[derive(Debug, Default)]
pub struct Shared {
    /// Stamped events received, all clients together.
    pub delivered: AtomicU64,
    /// Clients whose connection ended (error or close) after they were connected.
    pub dropped: AtomicU64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected Socket.IO client. Dropping it closes the connection.
#[derive(Debug)]
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_ack: AtomicU64,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Turns `true` when the reader ends (the connection is gone).
    closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

#[derive(Debug, Deserialize)]
struct OpenPacket {
    #[serde(rename = "pingInterval", default)]
    _ping_interval: u64,
}

/// `["m", {"s":..,"t":..}, ...]`: the event name and the stamp; further elements (the
/// delivery metadata) are skipped.
#[derive(Debug)]
struct EventFrame(String, Stamp);

impl<'de> Deserialize<'de> for EventFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EventFrame;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event array [name, stamp, ...]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EventFrame, A::Error> {
                use serde::de::Error;
                let name: String = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let stamp: Stamp = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EventFrame(name, stamp))
            }
        }
        d.deserialize_seq(V)
    }
}

impl Client {
    /// Connects from `source` to `target` and completes the Socket.IO CONNECT to `/`.
    pub async fn connect(
        target: &Target,
        source: Option<IpAddr>,
        clock: Clock,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Client> {
        let rest = target
            .url
            .strip_prefix("http://")
            .with_context(|| format!("only http:// targets are supported, got {}", target.url))?;
        let host_port = rest.trim_end_matches('/');
        let addr: SocketAddr = host_port
            .parse()
            .with_context(|| format!("target {} is not ip:port", target.url))?;
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding source address {ip}"))?;
        }
        socket.set_nodelay(true)?;
        let tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let url = format!("ws://{host_port}/socket.io/?EIO=4&transport=websocket");
        // tungstenite zeroes its whole read buffer (128 KiB by default) before every read: with
        // thousands of clients that memset was a quarter of the machine, taken from the systems
        // under test. Bench messages are small; 4 KiB reads them in one go.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config))
            .await
            .with_context(|| format!("websocket handshake with {url}"))?;
        let (mut sink, mut stream) = ws.split();

        // Engine.IO open packet.
        let open = next_text(&mut stream).await?;
        let Some(body) = open.strip_prefix('0') else {
            bail!("expected an Engine.IO open packet, got {open:?}");
        };
        let _: OpenPacket = serde_json::from_str(body).context("parsing the open packet")?;

        // Socket.IO CONNECT to `/`.
        let connect = match &target.token {
            Some(token) => format!("40{}", serde_json::json!({ "token": token })),
            None => "40".to_owned(),
        };
        sink.send(Message::text(connect)).await?;
        loop {
            let frame = next_text(&mut stream).await?;
            if frame == "2" {
                sink.send(Message::text("3")).await?;
                continue;
            }
            if frame.starts_with("40") {
                break;
            }
            if frame.starts_with("44") {
                bail!("CONNECT refused: {frame}");
            }
            bail!("unexpected frame before CONNECT ack: {frame:?}");
        }

        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = watch::channel(false);
        let reader = {
            let out = out.clone();
            let pending = Arc::clone(&pending);
            let arrivals = Arc::clone(&arrivals);
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    let text = text.as_str();
                    if text == "2" {
                        let _ = out.send(Message::text("3"));
                    } else if let Some(event) = text.strip_prefix("42") {
                        let arrived_ns = clock.now_ns();
                        if let Ok(EventFrame(name, stamp)) = serde_json::from_str(event)
                            && name == BENCH_EVENT
                        {
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut a) = arrivals.lock() {
                                a.push(Arrival {
                                    seq: stamp.s,
                                    sent_ns: stamp.t,
                                    arrived_ns,
                                });
                            }
                        }
                    } else if let Some(ack) = text.strip_prefix("43") {
                        let digits = ack.bytes().take_while(u8::is_ascii_digit).count();
                        let (id, body) = ack.split_at(digits);
                        if let Ok(id) = id.parse::<u64>() {
                            let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                            if let Some(waiter) = waiter {
                                let value = serde_json::from_str(body).unwrap_or(Value::Null);
                                let _ = waiter.send(value);
                            }
                        }
                    } else if text.starts_with('1') || text.starts_with("41") {
                        break;
                    }
                }
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                let _ = closed_tx.send(true);
            })
        };

        Ok(Client {
            out,
            pending,
            next_ack: AtomicU64::new(1),
            arrivals,
            closed,
            reader,
            writer,
        })
    }

    /// Emits `event(args...)` and waits for the ack's arguments (a JSON array).
    pub async fn emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        self.out
            .send(Message::text(frame(Some(id), event, args)))
            .context("connection closed")?;
        let reply = tokio::time::timeout(timeout, rx)
            .await
            .with_context(|| format!("no ack for {event} within {timeout:?}"))?
            .context("connection closed before the ack")?;
        Ok(reply)
    }

    /// Joins `room` with the built-in `join` event; fails unless the ack says `ok: true`.
    pub async fn join(&self, room: &str) -> anyhow::Result<()> {
        let reply = self
            .emit_with_ack("join", &[Value::from(room)], Duration::from_secs(30))
            .await?;
        if reply[0]["ok"] != Value::Bool(true) {
            bail!("join {room} refused: {reply}");
        }
        Ok(())
    }

    /// Publishes a stamped [`BENCH_EVENT`] to `room` without waiting for the ack (the ack
    /// still travels; the reader drops it).
    pub fn publish_stamp(&self, room: &str, stamp: Stamp) -> anyhow::Result<()> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({"room": room, "event": BENCH_EVENT, "data": stamp});
        self.out
            .send(Message::text(frame(Some(id), "publish", &[body])))
            .context("publisher connection closed")
    }

    /// Takes the deliveries recorded so far.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Resolves once the connection is gone (closed by the server, reset, or a protocol close).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        // An error means the reader was dropped (aborted): closed as well.
        let _ = closed.wait_for(|c| *c).await;
    }
}

/// `42[<id>]["event",args...]`.
fn frame(ack: Option<u64>, event: &str, args: &[Value]) -> String {
    let mut items = Vec::with_capacity(args.len() + 1);
    items.push(Value::from(event));
    items.extend(args.iter().cloned());
    let array = Value::Array(items);
    match ack {
        Some(id) => format!("42{id}{array}"),
        None => format!("42{array}"),
    }
}

async fn next_text<S>(stream: &mut S) -> anyhow::Result<String>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout(deadline, stream.next())
            .await
            .context("no frame within 30 s")?
            .context("connection closed during the handshake")??;
        match msg {
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(c) => bail!("closed during the handshake: {c:?}"),
            _ => continue,
        }
    }
}

/// How to reach one client's server: fixed targets (round robin) or a placement service.
#[derive(Debug, Clone)]
pub enum Dialer {
    /// Client `i` connects to `targets[i % len]`, without a token.
    RoundRobin(Vec<String>),
    /// Each client asks placement's `/v1/assign` for its gateway and token first.
    Placement { http_url: String },
}

impl Dialer {
    /// The same dialer without `url`: what a load balancer in front of the round-robin
    /// servers does once its health check saw `url` die. Placement needs no such help.
    pub fn without(&self, url: &str) -> Dialer {
        match self {
            Dialer::RoundRobin(urls) => {
                Dialer::RoundRobin(urls.iter().filter(|u| *u != url).cloned().collect())
            }
            Dialer::Placement { .. } => self.clone(),
        }
    }

    /// Where client `index` should connect now (for placement: a fresh assignment).
    pub async fn target(&self, index: usize, http: &reqwest::Client) -> anyhow::Result<Target> {
        match self {
            Dialer::RoundRobin(urls) => {
                if urls.is_empty() {
                    bail!("no targets");
                }
                Ok(Target {
                    url: urls[index % urls.len()].clone(),
                    token: None,
                })
            }
            Dialer::Placement { http_url } => {
                let a = switchyard_testkit::assign::assign_with(http, http_url, "/").await?;
                Ok(Target {
                    url: a.url,
                    token: Some(a.token),
                })
            }
        }
    }
}

/// How a batch of clients is set up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Loopback source addresses to rotate over.
    pub spread: usize,
    /// The time base arrivals are recorded on.
    pub clock: Clock,
}

/// Client `index` (counted from 0 within a batch of `n`) joins `rooms[index * len / n]`: rooms
/// are contiguous blocks of clients, so with round-robin servers each room spans every server.
/// No room when `rooms` is empty.
pub fn room_of(rooms: &[String], index: usize, n: usize) -> Option<&str> {
    if rooms.is_empty() || n == 0 {
        return None;
    }
    let k = (index.min(n - 1) * rooms.len()) / n;
    rooms.get(k).map(String::as_str)
}

/// When each step of one successful dial ended, on the setup's clock (ns).
#[derive(Debug, Clone, Copy, Default)]
pub struct DialTimes {
    pub started: u64,
    /// Where to go is known (for Switchyard: placement's assignment answered).
    pub targeted: u64,
    /// The Socket.IO CONNECT was accepted (the token checked).
    pub connected: u64,
    /// Every room joined (for Switchyard: the join's history position read).
    pub joined: u64,
}

/// One attempt to bring client `index` up: ask `dialer` where to go, connect from its source
/// address, join each of `rooms`. Returns the client, where it went and when each step ended.
pub async fn connect_one(
    dialer: &Dialer,
    index: usize,
    rooms: &[&str],
    setup: Setup,
    http: &reqwest::Client,
    shared: Arc<Shared>,
) -> anyhow::Result<(Client, Target, DialTimes)> {
    let started = setup.clock.now_ns();
    let target = dialer.target(index, http).await?;
    let targeted = setup.clock.now_ns();
    let client = Client::connect(
        &target,
        Some(source_ip(index, setup.spread)),
        setup.clock,
        shared,
    )
    .await?;
    let connected = setup.clock.now_ns();
    for room in rooms {
        client.join(room).await?;
    }
    let times = DialTimes {
        started,
        targeted,
        connected,
        joined: setup.clock.now_ns(),
    };
    Ok((client, target, times))
}

/// Connects `n` clients numbered from `first_index` (at most `setup.concurrency` handshakes
/// at a time), each joining its block's room of `rooms` ([`room_of`]) when given. Source
/// addresses rotate over `setup.spread` loopback addresses. Each client is retried a few times
/// before the batch fails.
pub async fn connect_many(
    dialer: &Dialer,
    n: usize,
    first_index: usize,
    rooms: &[String],
    setup: Setup,
    shared: Arc<Shared>,
) -> anyhow::Result<Vec<Client>> {
    let memberships: Vec<Vec<&str>> = (0..n)
        .map(|i| room_of(rooms, i, n).into_iter().collect())
        .collect();
    let clients = connect_members(dialer, first_index, &memberships, setup, shared).await?;
    Ok(clients.into_iter().map(|(c, _)| c).collect())
}

/// The publishing client of a delivery scenario: client `index`, in no room, with counters of
/// its own (what it receives is not a delivery).
pub async fn connect_publisher(
    dialer: &Dialer,
    index: usize,
    setup: Setup,
) -> anyhow::Result<Client> {
    let one = Setup {
        concurrency: 1,
        ..setup
    };
    connect_members(dialer, index, &[Vec::new()], one, Arc::default())
        .await?
        .pop()
        .map(|(client, _)| client)
        .context("no publisher")
}

/// [`connect_many`] with any rooms per client: client `first_index + i` joins
/// `memberships[i]`. Returns each client with where it went, in the order of `memberships`.
pub async fn connect_members(
    dialer: &Dialer,
    first_index: usize,
    memberships: &[Vec<&str>],
    setup: Setup,
    shared: Arc<Shared>,
) -> anyhow::Result<Vec<(Client, Target)>> {
    let http = reqwest::Client::new();
    let results: Vec<anyhow::Result<(Client, Target)>> = futures::stream::iter(memberships)
        .enumerate()
        .map(|(i, rooms)| {
            let http = http.clone();
            let shared = Arc::clone(&shared);
            async move {
                let index = first_index + i;
                let mut last_err = None;
                // A few attempts: a listen backlog overflow under a connect burst is not what
                // is being measured.
                for attempt in 0..5u32 {
                    match connect_one(dialer, index, rooms, setup, &http, Arc::clone(&shared)).await
                    {
                        Ok((client, target, _)) => return Ok((client, target)),
                        Err(e) => {
                            last_err = Some(e);
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1)))
                                .await;
                        }
                    }
                }
                Err(last_err.unwrap_or_else(|| anyhow::anyhow!("connect failed")))
                    .with_context(|| format!("client {index}"))
            }
        })
        .buffered(setup.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_ack_ids() {
        assert_eq!(
            frame(Some(7), "join", &[Value::from("r")]),
            r#"427["join","r"]"#
        );
        assert_eq!(frame(None, "x", &[]), r#"42["x"]"#);
    }

    #[test]
    fn event_frames_parse_with_or_without_meta() -> anyhow::Result<()> {
        let EventFrame(name, stamp) =
            serde_json::from_str(r#"["m",{"s":3,"t":99},{"room":"r","epoch":null}]"#)?;
        assert_eq!((name.as_str(), stamp.s, stamp.t), ("m", 3, 99));
        let EventFrame(_, stamp) = serde_json::from_str(r#"["m",{"s":4,"t":1}]"#)?;
        assert_eq!(stamp.s, 4);
        Ok(())
    }

    #[test]
    fn rooms_are_contiguous_blocks_of_clients() {
        let rooms: Vec<String> = (0..3).map(|r| format!("r{r}")).collect();
        let got: Vec<_> = (0..9).map(|i| room_of(&rooms, i, 9)).collect();
        assert_eq!(
            got,
            [
                Some("r0"),
                Some("r0"),
                Some("r0"),
                Some("r1"),
                Some("r1"),
                Some("r1"),
                Some("r2"),
                Some("r2"),
                Some("r2")
            ]
        );
        assert_eq!(room_of(&[], 0, 9), None);
    }

    #[test]
    fn source_addresses_rotate_over_loopback() {
        assert_eq!(source_ip(0, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(5, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    }
}
