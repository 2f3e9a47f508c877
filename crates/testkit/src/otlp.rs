//! An OTLP/gRPC trace receiver that runs inside the test process, so a test can point services
//! at it (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`) and assert on the spans they export.
//!
//! Like the rest of testkit the API is synchronous: the receiver serves from its own thread with
//! its own Tokio runtime, so it keeps answering while the test blocks (for example in
//! [`crate::process::Service::wait_exit`] while a service flushes its spans on SIGTERM).
//! It is stopped when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::wait::eventually_blocking;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};

/// One received span, flattened; ids are lowercase hex (the W3C `traceparent` spelling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    /// `service.name` of the exporting process (`switchyard-placement`, ...).
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Span attributes rendered as strings (tracing fields become attributes).
    pub attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<SpanRecord>>>);

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SpanRecord>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut records = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(render)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                records.push(SpanRecord {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(render).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
        self.lock().extend(records);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn render(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running OTLP trace receiver on a free local port.
pub struct Collector {
    endpoint: String,
    sink: Sink,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Collector {
    /// Binds `127.0.0.1:0` and starts serving `TraceService/Export`.
    pub fn start() -> anyhow::Result<Collector> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let sink = Sink::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the OTLP receiver's runtime")?;
        let service = TraceServiceServer::new(sink.clone());
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(Collector {
            endpoint,
            sink,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:NNNN`: pass as `--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.sink.lock().clone()
    }

    /// Waits until `done(spans)` holds, polling; fails after `timeout` listing what arrived.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[SpanRecord]) -> bool,
    ) -> anyhow::Result<Vec<SpanRecord>> {
        eventually_blocking("the expected spans", timeout, || {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            let seen: Vec<String> = spans
                .iter()
                .map(|s| format!("{}:{}", s.service, s.name))
                .collect();
            bail!("got {seen:?}");
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
