//! [`Prometheus`]: the process's OpenTelemetry metrics as Prometheus text (format 0.0.4), for a
//! `/metrics` endpoint.
//!
//! The instruments are the single source: the meter provider carries a manual reader beside
//! the OTLP one, and a scrape collects from it (cumulative temporality, so counters only
//! grow) and renders the result. Nothing is kept between scrapes, and recording costs what
//! the OpenTelemetry SDK's aggregation costs, whether anyone scrapes or not.
//!
//! Names follow the OpenTelemetry → Prometheus conventions: dots and other characters become
//! `_`, a histogram or gauge in seconds (unit `s`) gets `_seconds`, a monotonic sum gets
//! `_total`; attribute keys become label names the same way (`rpc.method` → `rpc_method`).
//! Histograms render as `_bucket{le=…}` (cumulative, ending with `+Inf`), `_sum` and
//! `_count`. Exponential histograms are not used by Meridian and are skipped.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// Renders the metrics of one meter provider as Prometheus text. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Prometheus {
    reader: Arc<ManualReader>,
}

/// The reader registered with the meter provider: the same manual reader [`Prometheus`]
/// collects from (the provider takes its readers by value).
#[derive(Debug)]
pub(crate) struct SharedReader(Arc<ManualReader>);

/// Why a scrape failed (the meter provider was shut down).
#[derive(Debug, thiserror::Error)]
#[error("metrics collection failed: {0}")]
pub struct ScrapeError(String);

/// The content type of [`Prometheus::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// === impl Prometheus ===

impl Prometheus {
    /// A renderer and the reader to register with the meter provider.
    pub(crate) fn new() -> (Self, SharedReader) {
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        );
        (
            Self {
                reader: Arc::clone(&reader),
            },
            SharedReader(reader),
        )
    }

    /// Collects every instrument now (observable ones run their callbacks) and renders them.
    pub fn render(&self) -> Result<String, ScrapeError> {
        let mut collected = ResourceMetrics::default();
        self.reader
            .collect(&mut collected)
            .map_err(|e| ScrapeError(e.to_string()))?;
        let mut out = String::with_capacity(4096);
        for scope in collected.scope_metrics() {
            for metric in scope.metrics() {
                render_metric(&mut out, metric);
            }
        }
        Ok(out)
    }
}

// === impl SharedReader ===

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

// === rendering ===

fn render_metric(out: &mut String, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(data) => render_data(out, metric, data, |v| *v),
        AggregatedMetrics::U64(data) => render_data(out, metric, data, |v| *v as f64),
        AggregatedMetrics::I64(data) => render_data(out, metric, data, |v| *v as f64),
    }
}

fn render_data<T>(out: &mut String, metric: &Metric, data: &MetricData<T>, f: impl Fn(&T) -> f64)
where
    T: Copy,
{
    let base = metric_name(metric.name(), metric.unit());
    match data {
        MetricData::Gauge(gauge) => {
            header(out, &base, metric.description(), "gauge");
            for point in gauge.data_points() {
                sample(out, &base, "", point.attributes(), None, f(&point.value()));
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base, "gauge")
            };
            header(out, &name, metric.description(), kind);
            for point in sum.data_points() {
                sample(out, &name, "", point.attributes(), None, f(&point.value()));
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, &base, metric.description(), "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let counts: Vec<u64> = point.bucket_counts().collect();
                for (bound, count) in point.bounds().zip(&counts) {
                    cumulative += count;
                    let le = format_value(bound);
                    sample(
                        out,
                        &base,
                        "_bucket",
                        point.attributes(),
                        Some(&le),
                        cumulative as f64,
                    );
                }
                sample(
                    out,
                    &base,
                    "_bucket",
                    point.attributes(),
                    Some("+Inf"),
                    point.count() as f64,
                );
                sample(
                    out,
                    &base,
                    "_sum",
                    point.attributes(),
                    None,
                    f(&point.sum()),
                );
                sample(
                    out,
                    &base,
                    "_count",
                    point.attributes(),
                    None,
                    point.count() as f64,
                );
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn header(out: &mut String, name: &str, description: &str, kind: &str) {
    if !description.is_empty() {
        let help = description.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample<'a>(
    out: &mut String,
    name: &str,
    suffix: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut first = true;
    let mut label = |out: &mut String, key: &str, value: &str| {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    };
    // Sorted: the SDK keeps each series' attributes in the order they were first recorded.
    let mut attributes: Vec<&KeyValue> = attributes.collect();
    attributes.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    for kv in attributes {
        label(out, &sanitize(kv.key.as_str()), &kv.value.as_str());
    }
    if let Some(le) = le {
        label(out, "le", le);
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// The Prometheus name of an instrument: sanitized, with the unit's suffix.
fn metric_name(name: &str, unit: &str) -> String {
    let mut name = sanitize(name);
    let suffix = match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    if !suffix.is_empty() && !name.ends_with(suffix) {
        name.push_str(suffix);
    }
    name
}

/// Letters, digits and `_` (and `:` in names); anything else becomes `_`, and a leading digit
/// gets a `_` in front.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        let (prometheus, reader) = Prometheus::new();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let meter = provider.meter("test");
        let requests = meter
            .u64_counter("meridian.api.requests")
            .with_description("Calls, by method")
            .build();
        requests.add(2, &[KeyValue::new("rpc.method", "Get\"Thing")]);
        let latency = meter
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_boundaries(vec![0.001, 0.01])
            .build();
        latency.record(0.005, &[]);
        latency.record(0.5, &[]);
        let _term = meter
            .u64_observable_gauge("meridian.raft.term")
            .with_callback(|o| o.observe(7, &[]))
            .build();

        let text = prometheus.render().unwrap();
        assert!(
            text.contains("# TYPE meridian_api_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("meridian_api_requests_total{rpc_method=\"Get\\\"Thing\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rpc_server_call_duration_seconds histogram\n"));
        assert!(text.contains("rpc_server_call_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("rpc_server_call_duration_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("rpc_server_call_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("rpc_server_call_duration_seconds_count 2\n"));
        assert!(text.contains("rpc_server_call_duration_seconds_sum 0.505\n"));
        assert!(text.contains("meridian_raft_term 7\n"), "{text}");
        // Counters are cumulative across scrapes.
        requests.add(1, &[KeyValue::new("rpc.method", "Get\"Thing")]);
        let text = prometheus.render().unwrap();
        assert!(text.contains("meridian_api_requests_total{rpc_method=\"Get\\\"Thing\"} 3\n"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            metric_name("rpc.server.call.duration", "s"),
            "rpc_server_call_duration_seconds"
        );
        assert_eq!(metric_name("x_seconds", "s"), "x_seconds");
        assert_eq!(sanitize("9lives-x"), "_9lives_x");
    }
}
