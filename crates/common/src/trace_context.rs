//! W3C trace context (`traceparent`, `tracestate`) across process boundaries.
//!
//! One trace follows a request through several services: the caller injects its current span's
//! context into the carrier (gRPC metadata, HTTP headers, or the string map a relay frame
//! carries), and the callee sets its span's parent from that carrier. The propagator is the
//! global one [`crate::telemetry::init`] installs (W3C trace context).
//!
//! With no OTLP export configured, spans have no OpenTelemetry context: injecting writes nothing
//! and extracting yields an empty context, so every helper here is a cheap no-op. Setting a
//! parent must happen before the span is first entered (tracing-opentelemetry builds the span
//! then); a failure to set it only loses the link, so it is not an error for the caller.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes into tonic request/response metadata.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads from tonic metadata; non-ASCII values are ignored.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Reads from HTTP request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn propagate<T>(mut f: impl FnMut(&dyn opentelemetry::propagation::TextMapPropagator) -> T) -> T {
    opentelemetry::global::get_text_map_propagator(|p| f(p))
}

/// Puts `span`'s trace context into outgoing gRPC metadata (`traceparent`, `tracestate`).
pub fn inject_metadata(span: &tracing::Span, metadata: &mut MetadataMap) {
    let cx = span.context();
    propagate(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// A gRPC request carrying the current span's trace context, for outgoing calls:
/// `client.stamp(trace_context::request(msg))` continues the caller's trace on the server.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    inject_metadata(&tracing::Span::current(), req.metadata_mut());
    req
}

/// Makes the trace context found in incoming gRPC metadata the parent of `span` (which must not
/// have been entered yet). No context in the metadata: `span` stays as it is.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &MetadataMap) {
    let cx = propagate(|p| p.extract(&MetadataExtractor(metadata)));
    set_parent(span, cx);
}

/// Makes the trace context found in incoming HTTP headers the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = propagate(|p| p.extract(&HeaderExtractor(headers)));
    set_parent(span, cx);
}

/// `span`'s trace context as a string map, for carriers that are not metadata (the relay
/// `Frame.trace_context` field). Empty when there is nothing to propagate.
pub fn to_map(span: &tracing::Span) -> HashMap<String, String> {
    let cx = span.context();
    let mut map = HashMap::new();
    propagate(|p| p.inject_context(&cx, &mut map));
    map
}

/// Makes the trace context in `map` (from [`to_map`]) the parent of `span`.
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let cx = propagate(|p| p.extract(map));
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "could not continue the caller's trace");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriers_without_a_context_change_nothing() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let span = tracing::Span::none();
        let mut md = MetadataMap::new();
        inject_metadata(&span, &mut md);
        assert!(md.is_empty());
        assert!(to_map(&span).is_empty());
        set_parent_from_metadata(&span, &md);
        set_parent_from_headers(&span, &http::HeaderMap::new());
        set_parent_from_map(&span, &HashMap::new());
    }

    #[test]
    fn metadata_round_trips_a_traceparent() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut md = MetadataMap::new();
        MetadataInjector(&mut md).set("traceparent", traceparent.to_owned());
        let cx = propagate(|p| p.extract(&MetadataExtractor(&md)));
        let mut out = HashMap::new();
        propagate(|p| p.inject_context(&cx, &mut out));
        assert_eq!(
            out.get("traceparent").map(String::as_str),
            Some(traceparent)
        );
    }
}
