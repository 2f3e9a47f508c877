//! The one way every service serves HTTP (the gateway's Socket.IO listener, placement's
//! `/v1/assign`, every `/healthz`, `/readyz` and `/metrics`): [`HttpListener::serve`].
//!
//! It exists because a connection that never finishes its request must cost a bounded amount
//! and end on its own. Guarantees, per listener:
//!
//! - **Header-read timeout.** A request whose headers (request line included) have not all
//!   arrived within `--http-header-timeout-ms` of the connection being ready for one (accepted,
//!   or idle after a response on a keep-alive connection) is closed. This is hyper's own
//!   `header_read_timeout` with [`TokioTimer`]; with TLS the handshake gets the same time.
//! - **Bodies keep arriving.** Once a handler reads a request body, every window of
//!   `--http-header-timeout-ms` must bring at least `--http-min-body-rate` bytes per second of
//!   it (or its end); a body that stalls or trickles below that fails ([`BodyTooSlow`]), the
//!   handler answers with an error and the connection is closed, counted as `body_too_slow`.
//! - **Pending connections are bounded.** A connection is *pending* from its accept until its
//!   first request's headers are complete (TLS handshake included). At most
//!   `--max-pending-per-address` pending connections per source IP and
//!   `--max-pending-connections` per listener: one beyond either is closed at once, before any
//!   byte is read, and counted. A WebSocket upgrade or a long-poll is no longer pending: its
//!   lifetime belongs to the protocol above (Engine.IO's ping timeout).
//! - **Open connections are bounded per address.** At most `--max-connections-per-address`
//!   connections per source IP are open at once, from accept to close, upgraded WebSockets
//!   included (0: no bound); one more is closed at once, before any byte is read, and counted.
//!   The slot is a field of the connection's IO object ([`CountedStream`]), so it goes back
//!   when the TCP connection is dropped: by hyper when the connection ends, or, after an
//!   upgrade (hyper moves the IO into `hyper::upgrade::Upgraded`), when whoever holds the
//!   upgraded IO (socketioxide's WebSocket task) drops it at the WebSocket's close.
//! - **Accept errors** (such as `EMFILE` when the process has run out of descriptors) are
//!   counted by kind and logged at most once per [`ACCEPT_ERROR_LOG_EVERY`], with the number
//!   of errors not logged in between; the loop waits [`ACCEPT_ERROR_PAUSE`] after one instead
//!   of spinning.
//! - Every accepted connection has `TCP_NODELAY` on ([`nodelay`]), and every request carries
//!   axum's `ConnectInfo<SocketAddr>` (the client's address) in its extensions.
//!
//! HTTP/1.1 only (with upgrades): Socket.IO's WebSocket upgrade needs it, and TLS offers ALPN
//! `http/1.1` only (see [`crate::tls`]).

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use hyper::{
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::tls::ServerTls;

/// How often at most an accept error is logged (the rest are counted, and the next log line
/// says how many were not logged).
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the accept loop waits after an accept error: with no descriptor left, accepting
/// again at once would fail again and spin a core.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of every HTTP listener; flatten into a service's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpServerArgs {
    /// Milliseconds a client has to send a request's complete headers (and, with TLS, to
    /// finish the handshake) once the connection is ready for a request; then it is closed.
    #[arg(
        long,
        env = "SWITCHYARD_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub http_header_timeout_ms: u64,
    /// Connections one source address may hold open before their first request's headers are
    /// complete; one more is closed at once. A connection counts from its accept, so a burst of
    /// new clients from one address (a NAT, a load test, a proxy) is pending all at once for a
    /// moment: the default lets 1,024 in at once, a quarter of the listener's bound.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_PENDING_PER_ADDRESS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_pending_per_address: u64,
    /// Connections the listener holds open, all addresses together, before their first
    /// request's headers are complete; one more is closed at once.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_PENDING_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_pending_connections: u64,
    /// Connections one source address may hold open on this listener at once, from accept to
    /// close, upgraded WebSockets included; one more is closed at accept. 0: no bound. The
    /// default is well above what one client host needs (each Socket.IO client holds one
    /// connection, two during a polling upgrade) and far below a gateway's descriptors, so one
    /// host cannot hold a gateway's descriptors with sessions that never CONNECT. Behind a
    /// proxy or an Ingress every client shares the proxy's addresses: set it to 0 there and
    /// bound connections per client at the proxy.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 4096
    )]
    pub max_connections_per_address: u64,
    /// Bytes per second a request body must arrive at, at least, measured over windows of
    /// `--http-header-timeout-ms`; a body slower than that is cut and its connection closed.
    #[arg(
        long,
        env = "SWITCHYARD_HTTP_MIN_BODY_RATE",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub http_min_body_rate: u64,
}

impl Default for HttpServerArgs {
    fn default() -> Self {
        HttpServerArgs {
            http_header_timeout_ms: 10_000,
            max_pending_per_address: 1024,
            max_pending_connections: 4096,
            max_connections_per_address: 4096,
            http_min_body_rate: 1024,
        }
    }
}

impl HttpServerArgs {
    /// The header-read (and TLS handshake) timeout.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }
}

/// HELP text of `ListenerMetrics::connections_closed`, the same for every service.
pub const CONNECTIONS_CLOSED_HELP: &str =
    "HTTP connections the listener closed to protect itself, by reason.";
/// HELP text of `ListenerMetrics::pending_connections`.
pub const PENDING_CONNECTIONS_HELP: &str =
    "HTTP connections accepted whose first request's headers are not complete yet.";
/// HELP text of `ListenerMetrics::accept_errors`.
pub const ACCEPT_ERRORS_HELP: &str = "Failed accepts on the HTTP listener, by kind.";

/// The names of one service's listener metrics (declared in that service's `metrics.rs`)."
#[derive(Debug, Clone, Copy)]
pub struct ListenerMetrics {
    /// Counter, `reason` = `handshake` | `timeout`: failed TLS handshakes.
    pub tls_handshake_failures: &'static str,
    /// Counter, `reason` = `connections_per_address` | `pending_per_address` |
    /// `pending_listener` | `header_timeout` | `body_too_slow`: connections the listener closed
    /// to protect itself.
    pub connections_closed: &'static str,
    /// Gauge: connections accepted whose first request's headers are not complete yet.
    pub pending_connections: &'static str,
    /// Counter, `kind` = `fd_limit` | `other`: failed `accept` calls.
    pub accept_errors: &'static str,
}

/// A bound HTTP listener with its limits; [`HttpListener::serve`] runs it.
pub struct HttpListener {
    tcp: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    min_body_rate: u64,
    pending: Arc<SlotTable>,
    /// Open connections per source address; `None` with `--max-connections-per-address 0`.
    open: Option<Arc<SlotTable>>,
    metrics: ListenerMetrics,
}

impl HttpListener {
    /// Binds `addr`; with `tls`, every accepted connection completes a TLS handshake first.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<&ServerTls>,
        args: &HttpServerArgs,
        metrics: ListenerMetrics,
    ) -> std::io::Result<HttpListener> {
        Self::from_tcp(TcpListener::bind(addr).await?, tls, args, metrics)
    }

    /// Wraps an already bound listener (see [`HttpListener::bind`]).
    pub fn from_tcp(
        tcp: TcpListener,
        tls: Option<&ServerTls>,
        args: &HttpServerArgs,
        metrics: ListenerMetrics,
    ) -> std::io::Result<HttpListener> {
        Ok(HttpListener {
            local_addr: tcp.local_addr()?,
            tcp,
            tls: tls.map(ServerTls::http_acceptor),
            header_timeout: args.header_timeout(),
            min_body_rate: args.http_min_body_rate,
            pending: Arc::new(SlotTable::pending(
                usize::try_from(args.max_pending_per_address).unwrap_or(usize::MAX),
                usize::try_from(args.max_pending_connections).unwrap_or(usize::MAX),
                metrics.pending_connections,
            )),
            open: (args.max_connections_per_address > 0).then(|| {
                Arc::new(SlotTable::open(
                    usize::try_from(args.max_connections_per_address).unwrap_or(usize::MAX),
                ))
            }),
            metrics,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// The slots of one more connection from `ip`: among its address's open connections (with
    /// a bound) and among the pending ones; or the reason it is closed at accept.
    fn admit(&self, ip: IpAddr) -> Result<(Option<Slot>, Slot), &'static str> {
        let open = match &self.open {
            Some(open) => Some(open.admit(ip)?),
            None => None,
        };
        // A refusal here drops `open`: its slot goes back at once.
        Ok((open, self.pending.admit(ip)?))
    }

    /// Serves `app` until `shutdown` completes; then stops accepting, lets every open
    /// connection finish its request in progress (hyper's graceful shutdown: idle keep-alive
    /// connections close at once), and returns once all are closed. Callers bound that wait
    /// themselves (a WebSocket stays open until the application closes it).
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let mut accept_errors = AcceptErrors::new(self.metrics.accept_errors);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors.record(&e);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let (open, pending) = match self.admit(addr.ip()) {
                Ok(slots) => slots,
                Err(reason) => {
                    metrics::counter!(self.metrics.connections_closed, "reason" => reason)
                        .increment(1);
                    tracing::debug!(client = %addr, reason, "connection closed at accept");
                    continue;
                }
            };
            tokio::spawn(connection(Accepted {
                tcp,
                addr,
                open,
                pending,
                tls: self.tls.clone(),
                header_timeout: self.header_timeout,
                min_body_rate: self.min_body_rate,
                builder: builder.clone(),
                app: app.clone(),
                metrics: self.metrics,
                stop: stop_rx.clone(),
            }));
        }
        drop(self.tcp);
        stop_tx.send_replace(true);
        drop(stop_rx);
        stop_tx.closed().await;
    }
}

/// Everything one connection's task needs.
struct Accepted {
    tcp: TcpStream,
    addr: SocketAddr,
    /// The connection's slot among its address's open connections, for as long as its IO
    /// lives (see [`CountedStream`]).
    open: Option<Slot>,
    /// Its pending slot, given back when its first request's headers are complete.
    pending: Slot,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    min_body_rate: u64,
    builder: http1::Builder,
    app: Router,
    metrics: ListenerMetrics,
    stop: watch::Receiver<bool>,
}

/// One connection: the TLS handshake (bounded by the header timeout), then HTTP/1.1 with
/// upgrades until the client, hyper's timeout or the shutdown closes it.
async fn connection(accepted: Accepted) {
    let Accepted {
        tcp,
        addr,
        open,
        pending,
        tls,
        header_timeout,
        min_body_rate,
        builder,
        app,
        metrics,
        mut stop,
    } = accepted;
    let tcp = nodelay(tcp);
    let io = match tls {
        None => HttpStream::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => HttpStream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                metrics::counter!(metrics.tls_handshake_failures, "reason" => "handshake")
                    .increment(1);
                tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics::counter!(metrics.tls_handshake_failures, "reason" => "timeout")
                    .increment(1);
                tracing::debug!(client = %addr, "TLS handshake timed out");
                return;
            }
        },
    };
    let pending = Arc::new(pending);
    let service = service_fn(move |mut req: hyper::Request<Incoming>| {
        // Headers are complete: the connection is no longer pending.
        pending.release();
        req.extensions_mut().insert(ConnectInfo(addr));
        let req = req.map(|body| {
            PacedBody::new(
                body,
                header_timeout,
                min_body_rate,
                metrics.connections_closed,
            )
        });
        let mut app = app.clone();
        async move { Service::call(&mut app, req).await }
    });
    // The open-connection slot moves into the IO: after an upgrade hyper hands the IO over and
    // this task ends, and the slot must stay until the upgraded connection is dropped.
    let io = CountedStream { io, _open: open };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!(metrics.connections_closed, "reason" => "header_timeout")
                .increment(1);
            tracing::debug!(client = %addr, "request headers not received in time; closed");
        } else {
            tracing::debug!(client = %addr, error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Connections per source address and in total, checked and counted in one step at accept:
/// the listener's pending connections ([`SlotTable::pending`]) and its open ones
/// ([`SlotTable::open`]).
struct SlotTable {
    max_per_address: usize,
    max_total: usize,
    /// The `reason` a connection over `max_per_address` is counted with.
    over_address: &'static str,
    /// The `reason` a connection over `max_total` is counted with.
    over_total: &'static str,
    /// The gauge set to the total, if any.
    gauge: Option<&'static str>,
    counts: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl SlotTable {
    /// Pending connections: at most `max_per_address` per source address and `max_total` in
    /// all, the total in `gauge`.
    fn pending(max_per_address: usize, max_total: usize, gauge: &'static str) -> SlotTable {
        SlotTable {
            max_per_address,
            max_total,
            over_address: "pending_per_address",
            over_total: "pending_listener",
            gauge: Some(gauge),
            counts: Mutex::new(SlotCounts::default()),
        }
    }

    /// Open connections: at most `max_per_address` per source address (the listener's total is
    /// bounded by the descriptors, and the gateway's reserve reports it).
    fn open(max_per_address: usize) -> SlotTable {
        SlotTable {
            max_per_address,
            max_total: usize::MAX,
            over_address: "connections_per_address",
            // Never counted: no total can reach `usize::MAX`.
            over_total: "connections_listener",
            gauge: None,
            counts: Mutex::new(SlotCounts::default()),
        }
    }

    /// A slot for one more connection from `ip`, or the reason there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(self.over_total);
        }
        let of_address = counts.per_address.entry(ip).or_insert(0);
        if *of_address >= self.max_per_address {
            return Err(self.over_address);
        }
        *of_address += 1;
        counts.total += 1;
        self.set_gauge(counts.total);
        Ok(Slot {
            table: Arc::clone(self),
            ip,
            released: AtomicBool::new(false),
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&ip);
            }
        }
        self.set_gauge(counts.total);
    }

    fn set_gauge(&self, total: usize) {
        if let Some(gauge) = self.gauge {
            metrics::gauge!(gauge).set(total as f64);
        }
    }
}

/// One connection's slot in a [`SlotTable`]: given back by [`Slot::release`] (a pending
/// connection whose first request's headers are complete) or when dropped.
struct Slot {
    table: Arc<SlotTable>,
    ip: IpAddr,
    released: AtomicBool,
}

impl Slot {
    /// Gives the slot back (once; later calls do nothing).
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.table.release(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Accept errors: every one counted, logged at most once per [`ACCEPT_ERROR_LOG_EVERY`].
struct AcceptErrors {
    counter: &'static str,
    last_logged: Option<Instant>,
    not_logged: u64,
}

impl AcceptErrors {
    fn new(counter: &'static str) -> AcceptErrors {
        AcceptErrors {
            counter,
            last_logged: None,
            not_logged: 0,
        }
    }

    fn record(&mut self, e: &std::io::Error) {
        let kind = accept_error_kind(e);
        metrics::counter!(self.counter, "kind" => kind).increment(1);
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_ERROR_LOG_EVERY)
        {
            self.not_logged += 1;
            return;
        }
        tracing::warn!(error = %e, kind, not_logged = self.not_logged, "accepting a connection failed");
        self.last_logged = Some(now);
        self.not_logged = 0;
    }
}

/// `fd_limit` when the process or the system has no descriptor left, else `other`.
fn accept_error_kind(e: &std::io::Error) -> &'static str {
    if out_of_descriptors(e) {
        "fd_limit"
    } else {
        "other"
    }
}

/// Whether `e` says the process or the system has no file descriptor left (`EMFILE`,
/// `ENFILE`).
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Turns `TCP_NODELAY` on (best effort: a socket that refuses it still works). Every service
/// speaks in small writes that someone waits for: answers, acks, streamed frames, one
/// Socket.IO packet to a client. With Nagle's algorithm, such a write waits while an earlier
/// one is unacknowledged, and the peer's delayed ACK can make that 40 ms.
pub fn nodelay(tcp: TcpStream) -> TcpStream {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY refused");
    }
    tcp
}

/// A request body arrived slower than the listener's minimum rate (see the module docs).
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {min_bytes} bytes in {window:?}")]
pub struct BodyTooSlow {
    min_bytes: u64,
    window: Duration,
}

/// A request body held to a minimum rate: each `window` in which the handler waits for more
/// must bring at least `min_bytes` (or the end). Time a handler spends not reading counts
/// for nothing against the client: the window's timer only fails the body when the handler
/// is waiting and no byte is buffered.
struct PacedBody {
    inner: Incoming,
    window: Duration,
    min_bytes: u64,
    in_window: u64,
    check: Pin<Box<tokio::time::Sleep>>,
    closed_counter: &'static str,
}

impl PacedBody {
    fn new(inner: Incoming, window: Duration, rate: u64, closed_counter: &'static str) -> Self {
        PacedBody {
            inner,
            window,
            min_bytes: rate.saturating_mul(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
                / 1000,
            in_window: 0,
            check: Box::pin(tokio::time::sleep(window)),
            closed_counter,
        }
    }
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.in_window += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            match this.check.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if this.in_window < this.min_bytes => {
                    metrics::counter!(this.closed_counter, "reason" => "body_too_slow")
                        .increment(1);
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                        min_bytes: this.min_bytes,
                        window: this.window,
                    }))));
                }
                Poll::Ready(()) => {
                    // A new window; polling the reset timer registers it (next turn).
                    this.in_window = 0;
                    let next = tokio::time::Instant::now() + this.window;
                    this.check.as_mut().reset(next);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One accepted HTTP connection, plain or TLS.
pub enum HttpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            HttpStream::Plain(s) => s.is_write_vectored(),
            HttpStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An accepted connection's IO carrying its slot among its source address's open connections.
/// hyper owns this value while it serves HTTP; on an upgrade it moves it into
/// `hyper::upgrade::Upgraded` (`UpgradeableConnection` takes the IO out of the dispatcher and
/// fulfils the upgrade with it), and socketioxide's WebSocket task keeps that until the
/// WebSocket closes and both its halves are dropped. So the slot is given back exactly when the
/// TCP connection is closed, whoever closes it.
struct CountedStream<S> {
    io: S,
    _open: Option<Slot>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: ListenerMetrics = ListenerMetrics {
        tls_handshake_failures: "test_tls_handshake_failures_total",
        connections_closed: "test_http_connections_closed_total",
        pending_connections: "test_http_pending_connections",
        accept_errors: "test_http_accept_errors_total",
    };

    #[test]
    fn pending_slots_are_bounded_per_address_and_per_listener_and_given_back() {
        let table = Arc::new(SlotTable::pending(2, 3, METRICS.pending_connections));
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = table.admit(a);
        let a2 = table.admit(a);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(table.admit(a).err(), Some("pending_per_address"));
        let b1 = table.admit(b);
        assert!(b1.is_ok());
        assert_eq!(table.admit(b).err(), Some("pending_listener"));
        // Headers complete on one of `a`'s connections: its slot is free, released once.
        if let Ok(p) = &a1 {
            p.release();
            p.release();
        }
        assert!(table.admit(a).is_ok(), "a released slot is free again");
        drop((a2, b1));
        let counts = table.counts.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(counts.total, 0);
        assert!(
            counts.per_address.is_empty(),
            "no entry kept for idle addresses"
        );
    }

    #[test]
    fn open_connections_are_bounded_per_address_and_given_back_on_drop() {
        let table = Arc::new(SlotTable::open(2));
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = table.admit(a).ok();
        let a2 = table.admit(a).ok();
        assert!(a1.is_some() && a2.is_some());
        assert_eq!(table.admit(a).err(), Some("connections_per_address"));
        // Another address has its own bound; no bound on the listener's total.
        let b1 = table.admit(b).ok();
        let b2 = table.admit(b).ok();
        assert!(b1.is_some() && b2.is_some());
        // The connection's IO is dropped (its close): its slot is free again.
        drop(CountedStream { io: (), _open: a1 });
        let a3 = table.admit(a).ok();
        assert!(a3.is_some(), "a dropped connection's slot is free again");
        assert_eq!(table.admit(a).err(), Some("connections_per_address"));
        drop((a2, a3, b1, b2));
        let counts = table.counts.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(counts.total, 0);
        assert!(
            counts.per_address.is_empty(),
            "no entry kept for idle addresses"
        );
    }

    /// The slot outlives hyper's connection task: an upgraded connection holds it until the
    /// upgraded IO is dropped, one more from the address is closed at accept meanwhile, and
    /// `--max-connections-per-address 0` bounds nothing.
    #[tokio::test]
    async fn an_upgraded_connection_holds_its_slot_until_its_io_is_dropped() -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::sync::Notify;
        async fn upgrade(stream: &mut TcpStream) -> anyhow::Result<String> {
            stream
                .write_all(
                    b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n",
                )
                .await?;
            let mut head = vec![0; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await??;
            Ok(String::from_utf8_lossy(&head[..n]).into_owned())
        }
        async fn closed_at_once(addr: SocketAddr) -> anyhow::Result<bool> {
            let mut stream = TcpStream::connect(addr).await?;
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
                    .await?;
            Ok(read.is_err() || answer.is_empty())
        }

        for bound in [1, 0] {
            let args = HttpServerArgs {
                max_connections_per_address: bound,
                ..HttpServerArgs::default()
            };
            let listener = HttpListener::bind("127.0.0.1:0".parse()?, None, &args, METRICS).await?;
            let addr = listener.local_addr()?;
            let hang_up = Arc::new(Notify::new());
            let app = Router::new()
                .route("/", axum::routing::get(async || "ok"))
                .route(
                    "/up",
                    axum::routing::get({
                        let hang_up = Arc::clone(&hang_up);
                        async move |mut req: axum::extract::Request| {
                            let on_upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                // Holds the upgraded IO (as a WebSocket task does) until told.
                                let upgraded = on_upgrade.await;
                                hang_up.notified().await;
                                drop(upgraded);
                            });
                            axum::response::Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "test")
                                .body(axum::body::Body::empty())
                                .unwrap_or_default()
                        }
                    }),
                );
            tokio::spawn(listener.serve(app, std::future::pending()));

            let mut upgraded = TcpStream::connect(addr).await?;
            let head = upgrade(&mut upgraded).await?;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // hyper's connection task has ended; the upgraded IO still holds the slot.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                closed_at_once(addr).await?,
                bound == 1,
                "bound {bound}: a second connection while the upgraded one is open"
            );
            hang_up.notify_one();
            let mut eof = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), upgraded.read_to_end(&mut eof)).await??;
            // Dropping the upgraded IO closed the TCP connection and gave the slot back.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !closed_at_once(addr).await?,
                "bound {bound}: slot given back"
            );
        }
        Ok(())
    }

    #[test]
    fn running_out_of_descriptors_is_its_own_kind_of_accept_error() {
        assert_eq!(
            accept_error_kind(&std::io::Error::from_raw_os_error(24)),
            "fd_limit"
        );
        assert_eq!(
            accept_error_kind(&std::io::Error::from_raw_os_error(104)),
            "other"
        );
    }

    #[tokio::test]
    async fn a_request_whose_headers_never_finish_is_closed_and_a_whole_one_answered()
    -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let args = HttpServerArgs {
            http_header_timeout_ms: 200,
            ..HttpServerArgs::default()
        };
        let listener = HttpListener::bind("127.0.0.1:0".parse()?, None, &args, METRICS).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route(
            "/",
            axum::routing::get(async |ConnectInfo(client): ConnectInfo<SocketAddr>| {
                client.ip().to_string()
            }),
        );
        tokio::spawn(listener.serve(app, std::future::pending()));

        let mut slow = TcpStream::connect(addr).await?;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        let mut rest = Vec::new();
        // hyper closes it at the timeout: the read ends (EOF) instead of waiting forever.
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await??;

        let mut whole = TcpStream::connect(addr).await?;
        whole
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        whole.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with("127.0.0.1"),
            "ConnectInfo is set: {answer}"
        );
        Ok(())
    }
}
