//! An OTLP/gRPC collector in the test process, built on the official OpenTelemetry protos
//! (`opentelemetry-proto`): it records every span and metric exported to it, so tests check
//! what Meridian's binaries really send over the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A running collector; stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
}

/// A span as received, with the resource attributes of its batch.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name`, `service.instance.id`, … of the process that sent it.
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: Span,
}

/// A metric as received, with the resource attributes of its batch.
#[derive(Debug, Clone)]
pub struct ReceivedMetric {
    /// The resource attributes of the sender.
    pub resource: Vec<KeyValue>,
    /// The metric with its data points.
    pub metric: Metric,
}

#[derive(Default)]
struct Received {
    /// Keep what arrives (tests), or only count it (the benchmark, where a 100%-sampled
    /// proxy would fill memory).
    keep: bool,
    span_count: u64,
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Received>>);

// === impl Collector ===

impl Collector {
    /// Starts a collector on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts a collector that counts spans ([`Collector::span_count`]) and keeps nothing.
    pub async fn start_counting() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(keep: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let received = Arc::new(Mutex::new(Received {
            keep,
            ..Received::default()
        }));
        let stop = CancellationToken::new();
        let sink = Sink(Arc::clone(&received));
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()))
                .add_service(MetricsServiceServer::new(sink))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
                .await
                .expect("collector serves");
        });
        Self {
            addr,
            received,
            stop,
        }
    }

    /// The endpoint URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many spans arrived so far.
    pub fn span_count(&self) -> u64 {
        self.received.lock().expect("collector lock").span_count
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().expect("collector lock").spans.clone()
    }

    /// Every metric received so far (one entry per metric per export).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.received
            .lock()
            .expect("collector lock")
            .metrics
            .clone()
    }

    /// Waits until a span named `name` arrived; returns it.
    pub async fn wait_for_span(&self, name: &str, patience: Duration) -> ReceivedSpan {
        crate::wait_for(&format!("span {name:?} at the collector"), patience, || {
            let found = self.spans().into_iter().find(|s| s.span.name == name);
            async move { found }
        })
        .await
    }

    /// Waits until a metric named `name` arrived; returns its latest export.
    pub async fn wait_for_metric(&self, name: &str, patience: Duration) -> ReceivedMetric {
        crate::wait_for(
            &format!("metric {name:?} at the collector"),
            patience,
            || {
                let found = self
                    .metrics()
                    .into_iter()
                    .rev()
                    .find(|m| m.metric.name == name);
                async move { found }
            },
        )
        .await
    }

    /// Waits until a span of trace `trace_id` (hex) whose span id is `span_id` (hex; `None`:
    /// any) arrived; returns it.
    pub async fn wait_for_span_in(
        &self,
        trace_id: &str,
        span_id: Option<&str>,
        patience: Duration,
    ) -> ReceivedSpan {
        crate::wait_for(
            &format!("a span of trace {trace_id} at the collector"),
            patience,
            || {
                let found = self.spans().into_iter().find(|s| {
                    hex(&s.span.trace_id) == trace_id
                        && span_id.is_none_or(|id| hex(&s.span.span_id) == id)
                });
                async move { found }
            },
        )
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The string value of attribute `key`, if present.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

// === impl Sink ===

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.0.lock().expect("collector lock");
        for batch in request.into_inner().resource_spans {
            let resource = batch.resource.map(|r| r.attributes).unwrap_or_default();
            for scope in batch.scope_spans {
                received.span_count += scope.spans.len() as u64;
                if !received.keep {
                    continue;
                }
                for span in scope.spans {
                    received.spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut received = self.0.lock().expect("collector lock");
        for batch in request.into_inner().resource_metrics {
            let resource = batch.resource.map(|r| r.attributes).unwrap_or_default();
            for scope in batch.scope_metrics {
                if !received.keep {
                    continue;
                }
                for metric in scope.metrics {
                    received.metrics.push(ReceivedMetric {
                        resource: resource.clone(),
                        metric,
                    });
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The integer value of attribute `key`, if present.
pub fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(n)),
            }) => Some(*n),
            _ => None,
        })
}

/// Lower-case hex of an id as OTLP carries it (bytes), as trace headers write it.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
