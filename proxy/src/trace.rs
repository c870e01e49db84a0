//! One OpenTelemetry SERVER span per proxied request, built with the OpenTelemetry API (not a
//! `tracing` span): the sampler decides first, and an unsampled request pays for reading its
//! trace headers and writing a `traceparent`, nothing more.
//!
//! Exists only when the proxy has a tracer (an OTLP endpoint is set). Without one the data path
//! never calls in here: trace headers are not parsed and pass through untouched.
//!
//! The parent is the caller's span from `traceparent` / `b3` / `X-B3-*`
//! ([`meridian_telemetry::propagation`]); without one the span starts a trace. The upstream
//! request carries the proxy's span as its parent, sampled or not, so every hop after the
//! proxy follows the same decision.

use std::borrow::Cow;
use std::time::SystemTime;

use http::{HeaderMap, Method};
use meridian_telemetry::propagation::{self, B3Forms};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::forward::Tries;

/// The name of a span while the sampler decides (static: an unsampled span allocates none).
const UNNAMED: &str = "proxy";

/// The proxy's tracer.
#[derive(Debug, Clone)]
pub(crate) struct Tracing {
    tracer: SdkTracer,
}

/// The span of one request, and the B3 forms its caller used (written upstream too).
#[derive(Debug)]
pub(crate) struct RequestSpan {
    span: Span,
    b3: B3Forms,
}

// === impl Tracing ===

impl Tracing {
    pub(crate) fn new(tracer: SdkTracer) -> Self {
        Self { tracer }
    }

    /// Starts the span of a request for `service` (`None`: not resolved to one) that arrived
    /// at `start`, continuing the trace in `headers`.
    pub(crate) fn start(
        &self,
        method: &Method,
        path: &str,
        authority: Option<&str>,
        service: Option<&str>,
        headers: &HeaderMap,
        start: SystemTime,
    ) -> RequestSpan {
        let extracted = propagation::extract(headers);
        let parent = extracted.to_context();
        let mut span = self
            .tracer
            .span_builder(Cow::Borrowed(UNNAMED))
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            // Method and service, never the path: span names stay few (as many as routes).
            span.update_name(match service {
                Some(service) => format!("{method} {service}"),
                None => method.as_str().to_owned(),
            });
            let mut attributes = Vec::with_capacity(4);
            attributes.push(KeyValue::new(
                "http.request.method",
                method.as_str().to_owned(),
            ));
            attributes.push(KeyValue::new("url.path", path.to_owned()));
            if let Some(authority) = authority {
                attributes.push(KeyValue::new("server.address", authority.to_owned()));
            }
            if let Some(service) = service {
                attributes.push(KeyValue::new("meridian.service", service.to_owned()));
            }
            span.set_attributes(attributes);
        }
        RequestSpan {
            span,
            b3: extracted.b3(),
        }
    }
}

// === impl RequestSpan ===

impl RequestSpan {
    /// Writes this span as the parent of the upstream request (W3C, plus the caller's B3
    /// forms), replacing the caller's trace headers.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        propagation::inject(self.span.span_context(), self.b3, headers);
    }

    /// Ends the span with the request's outcome: the answered status (5xx: error status), the
    /// subset (`None`: the request was refused before one was chosen) and where the tries went.
    pub(crate) fn finish(mut self, status: u16, subset: Option<&str>, tries: Tries) {
        if !self.span.is_recording() {
            return;
        }
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(subset) = subset {
            attributes.push(KeyValue::new("meridian.subset", subset.to_owned()));
            attributes.push(KeyValue::new("meridian.retries", i64::from(tries.retries)));
        }
        if let Some(endpoint) = tries.endpoint {
            attributes.push(KeyValue::new("meridian.endpoint", endpoint.to_string()));
        }
        self.span.set_attributes(attributes);
        if status >= 500 {
            // Semantic conventions: a SERVER span is an error for 5xx only, with no message
            // beyond the status code.
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}
