//! [`GrpcLayer`]: one tower layer around every gRPC service of the node: a `tracing` span per
//! call (continuing the caller's `traceparent`), and the API metrics.
//!
//! The span is named after the method (`meridian.v1.Registry/RegisterInstance`, kind SERVER)
//! with the OpenTelemetry semantic-convention attributes `rpc.system`, `rpc.service`,
//! `rpc.method` and `rpc.grpc.status_code`; a status other than OK marks it as an error. The
//! handler runs inside it, so the spans it opens (`raft.propose`, the relay to the leader)
//! are its children. Raft peer streams (`meridian.v1.Peer`) are counted but get no span: a
//! long-lived internal stream per peer link is no request anyone follows.
//!
//! A gRPC status arrives in the response headers (a trailers-only response: every error a
//! handler returns) or in the trailers after the body. The call is recorded when that status
//! is known and the body has ended — or when the body is dropped early (the client went away:
//! `CANCELLED`). So a stream is recorded when it closes, its duration being its lifetime.
//! A method answered `UNIMPLEMENTED` is recorded as service and method `_OTHER`, so clients
//! cannot create unbounded label values by calling made-up paths.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use tower::{Layer, Service};

use super::NodeMetrics;
use super::context;

/// `rpc.method` / `rpc.service` of calls to methods that do not exist.
const OTHER: &str = "_OTHER";
/// gRPC status codes used here.
const OK: i64 = 0;
const CANCELLED: i64 = 1;
const UNKNOWN: i64 = 2;
const UNIMPLEMENTED: i64 = 12;

/// Wraps each service of the server in [`GrpcService`].
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    metrics: NodeMetrics,
}

/// The service [`GrpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
    metrics: NodeMetrics,
}

/// One call being served: recorded once, when its status is known.
#[derive(Debug)]
struct Call {
    metrics: NodeMetrics,
    span: tracing::Span,
    path: String,
    started: Instant,
}

/// The response body, watched for the trailers that carry the status.
#[derive(Debug)]
pub struct ObservedBody<B> {
    inner: B,
    /// The status from the response headers, if any.
    header_status: Option<i64>,
    /// `None` once recorded.
    call: Option<Call>,
}

// === impl GrpcLayer ===

impl GrpcLayer {
    /// Records calls into `metrics`.
    pub fn new(metrics: NodeMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

// === impl GrpcService ===

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let span = if path.starts_with("meridian.v1.Peer/") {
            tracing::Span::none()
        } else {
            let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
            let span = tracing::info_span!(
                "grpc",
                otel.name = %path,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            context::continue_from(&span, request.headers());
            span
        };
        let call = Call {
            metrics: self.metrics.clone(),
            span: span.clone(),
            path,
            started: Instant::now(),
        };
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let result = tracing::Instrument::instrument(future, span).await;
            match result {
                Ok(response) => {
                    let header_status = grpc_status(response.headers());
                    Ok(response.map(|inner| ObservedBody {
                        inner,
                        header_status,
                        call: Some(call),
                    }))
                }
                Err(e) => {
                    call.finish(UNKNOWN);
                    Err(e)
                }
            }
        })
    }
}

// === impl Call ===

impl Call {
    fn finish(self, code: i64) {
        let (service, method) = if code == UNIMPLEMENTED {
            (OTHER, OTHER)
        } else {
            self.path
                .split_once('/')
                .unwrap_or((self.path.as_str(), ""))
        };
        let attributes = [
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
            KeyValue::new("rpc.grpc.status_code", code),
        ];
        self.metrics.api_requests.add(1, &attributes);
        self.metrics
            .api_duration
            .record(self.started.elapsed().as_secs_f64(), &attributes);
        self.span.record("rpc.grpc.status_code", code);
        if code != OK {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

// === impl ObservedBody ===

impl<B: Body + Unpin> ObservedBody<B> {
    fn finish(&mut self, trailer_status: Option<i64>, ended: bool) {
        if let Some(call) = self.call.take() {
            let code =
                trailer_status
                    .or(self.header_status)
                    .unwrap_or(if ended { OK } else { CANCELLED });
            call.finish(code);
        }
    }
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = grpc_status(trailers);
                    self.finish(status, true);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some(UNKNOWN), true),
            Poll::Ready(None) => self.finish(None, true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Dropped before its end: the status sent in the headers, or the client left.
            call.finish(self.header_status.unwrap_or(CANCELLED));
        }
    }
}

/// The `grpc-status` of a header map, if it has one.
fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
