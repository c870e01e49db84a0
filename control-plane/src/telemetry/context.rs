//! W3C trace context in and out of gRPC metadata, through the global propagator that
//! `meridian_telemetry::Telemetry::install` sets (W3C `traceparent`/`tracestate`).

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata key of a W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// Reads propagation headers of an incoming call.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

/// Writes propagation headers into an outgoing call's metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

// === functions ===

/// Makes `span` a child of the caller's span if `headers` carry a `traceparent` (nothing is
/// parsed when they do not).
pub(crate) fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when the span is disabled (no OpenTelemetry layer): nothing to continue.
    let _ = span.set_parent(parent);
}

/// Adds the current span's trace context to `request`, so the node it goes to continues
/// the trace (a no-op without an OpenTelemetry layer: the context is then invalid).
pub(crate) fn inject<T>(request: &mut tonic::Request<T>) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
}

// === impl HeaderExtractor ===

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

// === impl MetadataInjector ===

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}
