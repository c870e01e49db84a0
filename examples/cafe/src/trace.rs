//! Server and client spans, built with the OpenTelemetry API on `meridian-telemetry`'s tracer,
//! and the W3C `traceparent` / `tracestate` headers in and out.
//!
//! A request handled here gets a SERVER span whose parent is the caller's `traceparent` (a new
//! trace when there is none); each call it makes gets a CLIENT span under it, injected into the
//! call's headers, so the next hop (the proxy, then orders) continues the same trace. With no
//! OTLP endpoint there is no tracer: nothing is recorded, and an incoming `traceparent` /
//! `tracestate` (or B3 headers) are passed on unchanged, as a proxy would, so the trace is not cut here.
//!
//! Header parsing and writing are `meridian_telemetry::propagation`'s, the proxy's own (W3C,
//! and B3 for Zipkin-era callers, answered in kind).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use meridian_telemetry::propagation::{self, B3Forms};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

/// The trace-context headers passed on unchanged when nothing is recorded.
const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Starts spans, or nothing when no tracer is configured. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    inner: Option<SdkTracer>,
}

/// The SERVER span of one incoming request (or, untraced, its incoming trace headers).
#[derive(Debug)]
pub struct ServerSpan {
    tracer: Tracer,
    cx: Option<Context>,
    b3: B3Forms,
    incoming: Vec<(HeaderName, HeaderValue)>,
}

/// The CLIENT span of one outgoing call.
#[derive(Debug)]
pub struct ClientSpan {
    cx: Option<Context>,
}

// === impl Tracer ===

impl Tracer {
    /// Spans from `tracer` (`Telemetry::tracer()`); `None` records nothing.
    pub fn new(tracer: Option<SdkTracer>) -> Self {
        Self { inner: tracer }
    }

    /// Starts the SERVER span of a request that arrived with `headers`, named e.g.
    /// `GET /orders`, as a child of the caller's span if the headers carry one.
    pub fn server(&self, name: &str, headers: &HeaderMap, attributes: Vec<KeyValue>) -> ServerSpan {
        let Some(tracer) = &self.inner else {
            let incoming = TRACE_HEADERS
                .iter()
                .filter_map(|name| {
                    let value = headers.get(*name)?;
                    Some((HeaderName::from_static(name), value.clone()))
                })
                .collect();
            return ServerSpan {
                tracer: self.clone(),
                cx: None,
                b3: B3Forms::default(),
                incoming,
            };
        };
        let extracted = propagation::extract(headers);
        let parent = extracted.to_context();
        let span = tracer
            .span_builder(name.to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ServerSpan {
            tracer: self.clone(),
            cx: Some(parent.with_span(span)),
            b3: extracted.b3(),
            incoming: Vec::new(),
        }
    }

    /// Starts a CLIENT span that begins a new trace (the customer's call), and puts its
    /// `traceparent` into `headers`.
    pub fn root_client(
        &self,
        name: &str,
        attributes: Vec<KeyValue>,
        headers: &mut HeaderMap,
    ) -> ClientSpan {
        self.client_under(
            &Context::new(),
            B3Forms::default(),
            name,
            attributes,
            headers,
        )
    }

    fn client_under(
        &self,
        parent: &Context,
        b3: B3Forms,
        name: &str,
        attributes: Vec<KeyValue>,
        headers: &mut HeaderMap,
    ) -> ClientSpan {
        let Some(tracer) = &self.inner else {
            return ClientSpan { cx: None };
        };
        let span = tracer
            .span_builder(name.to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        let cx = parent.with_span(span);
        propagation::inject(cx.span().span_context(), b3, headers);
        ClientSpan { cx: Some(cx) }
    }
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Starts a CLIENT span for a call made while serving this request and writes the trace
    /// context into the call's `headers` (untraced: the incoming trace headers, unchanged).
    pub fn client(
        &self,
        name: &str,
        attributes: Vec<KeyValue>,
        headers: &mut HeaderMap,
    ) -> ClientSpan {
        match &self.cx {
            Some(cx) => self
                .tracer
                .client_under(cx, self.b3, name, attributes, headers),
            None => {
                for (name, value) in &self.incoming {
                    headers.insert(name.clone(), value.clone());
                }
                ClientSpan { cx: None }
            }
        }
    }

    /// The trace id, as 32 hex digits, when this request is traced.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.trace_id().to_string())
    }

    /// Records an attribute on the span.
    pub fn set_attribute(&self, attribute: KeyValue) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(attribute);
        }
    }

    /// Ends the span with the response's status (5xx marks the span as an error).
    pub fn finish(self, status: StatusCode) {
        if let Some(cx) = self.cx {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_status(Status::error(status.to_string()));
            }
            span.end();
        }
    }
}

// === impl ClientSpan ===

impl ClientSpan {
    /// Ends the span with the answer's status and `attributes`, or with `error` when the call
    /// got no answer. 4xx and 5xx mark it as an error.
    pub fn finish(
        self,
        outcome: Result<StatusCode, &dyn std::fmt::Display>,
        attributes: Vec<KeyValue>,
    ) {
        let Some(cx) = self.cx else { return };
        let span = cx.span();
        span.set_attributes(attributes);
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_client_error() || status.is_server_error() {
                    span.set_status(Status::error(status.to_string()));
                }
            }
            Err(error) => {
                span.set_attribute(KeyValue::new("error.type", "request_failed"));
                span.set_status(Status::error(error.to_string()));
            }
        }
        span.end();
    }
}
