//! Logs, traces and metrics, set up the same way in every service.
//!
//! Traces are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; with it
//! unset nothing is exported and nothing is dialled. The W3C trace-context propagator is
//! installed globally so a span can be continued across gRPC calls (see [`crate::grpc`]).
//!
//! Every service lists the metrics it emits once, as a table of [`Metric`]s in its own
//! `metrics.rs` (`ALL`), and gives them their `# HELP` lines with [`describe`]. Each service's
//! metrics test reads the same table: every name, type and HELP text must match
//! `docs/operations.md`, and a scrape of `/metrics` must pass `promtool check metrics`.

use clap::{Args, ValueEnum};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// What a metric is, as its `# TYPE` line (and `docs/operations.md`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// Rendered as a Prometheus summary (quantiles, sum and count) by the exporter.
    Histogram,
}

impl MetricKind {
    /// The word `docs/operations.md` uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric a service emits: its name, its kind and its `# HELP` text, which is also the first
/// sentence of its row in `docs/operations.md`.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            kind: MetricKind::Counter,
            help,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            kind: MetricKind::Gauge,
            help,
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            kind: MetricKind::Histogram,
            help,
        }
    }
}

/// Gives every metric of `all` its `# HELP` line on `/metrics` (shown once a series exists).
/// Idempotent; without an installed recorder it does nothing.
pub fn describe(all: &[Metric]) {
    for m in all {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Log format of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Telemetry flags shared by every service binary (`#[command(flatten)]`).
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,
    /// OTLP/gRPC endpoint for traces (for example `http://127.0.0.1:4317`); unset, no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracer provider alive; dropping it flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Renders the Prometheus text exposition for `/metrics`.
    pub metrics: PrometheusHandle,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global tracing subscriber, the OTLP exporter when configured, and the Prometheus
/// recorder. Call once, early in `main`.
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&args.log)?;
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let provider = match &args.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build(),
            )
        }
        _ => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    let metrics = PrometheusBuilder::new().install_recorder()?;
    Ok(Telemetry { provider, metrics })
}
