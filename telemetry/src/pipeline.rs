//! [`Telemetry`]: the OpenTelemetry providers a [`TelemetryConfig`] asks for.

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Sampling, TelemetryConfig};
use crate::prometheus::Prometheus;

/// How long one export may take before it is abandoned (the SDK's default is 10 s; a
/// collector that slow is as good as down, and a shorter limit bounds shutdown).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The instrumentation scope of Meridian's own spans and metrics.
const SCOPE: &str = "meridian";

/// The tracer and meter providers of one process. The tracer provider exists only when
/// something is exported; the meter provider always does (it feeds [`Telemetry::prometheus`],
/// the `/metrics` text), with an OTLP reader beside it when an endpoint is set.
#[derive(Debug)]
pub struct Telemetry {
    config: TelemetryConfig,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: SdkMeterProvider,
    prometheus: Prometheus,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint or exporter options were refused.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The endpoint configured.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// `RUST_LOG` (or the filter given) does not parse.
    #[error("log filter {filter:?}: {source}")]
    Filter {
        /// The filter text.
        filter: String,
        /// Why it does not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

// === impl Telemetry ===

impl Telemetry {
    /// Builds the providers `config` asks for. Call inside a tokio runtime when it exports
    /// (the OTLP exporters' gRPC channels live on it); connecting is lazy, so a collector
    /// that is down is not an error here.
    pub fn new(config: TelemetryConfig) -> Result<Self, TelemetryError> {
        let resource = resource(&config);
        let (prometheus, scrape_reader) = Prometheus::new();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(scrape_reader);
        let Some(endpoint) = config.otlp_endpoint.clone() else {
            return Ok(Self {
                config,
                tracer_provider: None,
                meter_provider: meter_provider.build(),
                prometheus,
            });
        };
        let exporter_error = |source| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            source,
        };

        let spans = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(exporter_error)?;
        let mut tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(spans);
        if let Some(sampling) = config.sampling {
            tracer_provider = tracer_provider.with_sampler(sampler(sampling));
        }

        let metrics = MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(exporter_error)?;
        let reader = PeriodicReader::builder(metrics)
            .with_interval(config.metric_interval)
            .build();

        Ok(Self {
            config,
            tracer_provider: Some(tracer_provider.build()),
            meter_provider: meter_provider.with_reader(reader).build(),
            prometheus,
        })
    }

    /// The configuration this was built from.
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// The `tracing` layer that records spans as OpenTelemetry spans; `None` when nothing is
    /// exported (then spans are not converted at all).
    pub fn layer<S>(&self) -> Option<OpenTelemetryLayer<S, SdkTracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let tracer = self.tracer_provider.as_ref()?.tracer(SCOPE);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// The tracer for spans built directly with the OpenTelemetry API (the proxy's per-request
    /// spans, where a `tracing` span would cost more than the request); `None` when nothing is
    /// exported.
    pub fn tracer(&self) -> Option<SdkTracer> {
        Some(self.tracer_provider.as_ref()?.tracer(SCOPE))
    }

    /// A meter for Meridian's instruments: rendered by [`Telemetry::prometheus`] always, and
    /// exported over OTLP when an endpoint is set.
    pub fn meter(&self) -> Meter {
        self.meter_provider.meter(SCOPE)
    }

    /// The Prometheus text of every instrument made from [`Telemetry::meter`], for a
    /// `/metrics` endpoint (works with or without an OTLP endpoint).
    pub fn prometheus(&self) -> Prometheus {
        self.prometheus.clone()
    }

    /// Installs this process's global `tracing` subscriber: human-readable logs to stderr
    /// (coloured only when stderr is a terminal) filtered by `RUST_LOG` (or
    /// `default_filter`), plus the OpenTelemetry layer when
    /// exporting (and the same tracer provider as the global one, for spans built with the
    /// OpenTelemetry API); and W3C trace-context propagation for `traceparent` headers.
    pub fn install(&self, default_filter: &str) -> Result<(), TelemetryError> {
        let filter = match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.trim().is_empty() => filter,
            _ => default_filter.to_owned(),
        };
        let filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
            filter: filter.clone(),
            source,
        })?;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(provider) = &self.tracer_provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour for a person at a terminal; plain text for a file, a pipe or
                    // journald, where escape codes only get in the way of grep.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .with(self.layer())
            .try_init()?;
        Ok(())
    }

    /// Exports what is buffered (best effort, bounded by the export timeout) and stops the
    /// exporters, traces and metrics side by side. The SDK's calls block: they run on
    /// blocking threads.
    pub async fn shutdown(self) {
        let traces = self.tracer_provider.map(|provider| {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown() {
                    tracing::debug!(error = %e, "trace exporter shutdown");
                }
            })
        });
        let provider = self.meter_provider;
        let metrics = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "metric exporter shutdown");
            }
        }));
        for task in [traces, metrics].into_iter().flatten() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "telemetry shutdown panicked");
            }
        }
    }

    /// Exports what is buffered now (tests, and before a planned exit). Blocking SDK calls run
    /// on a blocking thread.
    pub async fn flush(&self) {
        let tracer = self.tracer_provider.clone();
        let meter = self.meter_provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(provider) = tracer {
                let _ = provider.force_flush();
            }
            let _ = meter.force_flush();
        })
        .await;
    }
}

/// `service.name`, `service.version`, `service.instance.id` (and what the SDK's detectors
/// add, such as `OTEL_RESOURCE_ATTRIBUTES` and the SDK's own name and version).
fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", config.service_version.clone()),
            KeyValue::new("service.instance.id", config.instance_id.clone()),
        ])
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

fn sampler(sampling: Sampling) -> Sampler {
    match sampling {
        Sampling::ParentBasedRatio(ratio) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        Sampling::Off => Sampler::AlwaysOff,
    }
}
