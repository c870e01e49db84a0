//! The proxy's metrics, rendered as Prometheus text on the admin port's `/metrics`.
//!
//! Hand-rolled over atomics rather than the `prometheus` crate: the set is small and fixed, the
//! hot path is one map-free update (a request's subset holds its own counters, found when the
//! config was built), and it adds no crate to the build.
//!
//! The same atomics are exported over OTLP when an endpoint is set ([`crate::otlp`]): counters
//! and gauges as observable instruments read at export time; the latency histogram is the one
//! metric recorded twice, into an OpenTelemetry histogram beside the atomics, and only then.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::Histogram;
use opentelemetry::{Key, KeyValue, StringValue, Value};

/// Histogram bucket bounds in seconds: from sub-millisecond loopback hops to the 15 s default
/// timeout.
pub(crate) const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Status codes 100..=599 are counted in a flat array.
const CODES: usize = 500;
/// The service label of requests that never reached a known service.
pub(crate) const UNKNOWN_SERVICE: &str = "_unknown";

/// Every metric of one proxy.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    services: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    pub(crate) config_version: AtomicU64,
    pub(crate) discovery_connected: AtomicU64,
    pub(crate) configs_applied: AtomicU64,
    pub(crate) configs_rejected: AtomicU64,
    /// `http.server.request.duration`, when exporting over OTLP.
    latency: Option<Histogram<f64>>,
}

/// Per-service counters and the subsets' histograms.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    pub(crate) retries: AtomicU64,
    pub(crate) ejections: AtomicU64,
    subsets: Mutex<BTreeMap<String, Arc<SubsetMetrics>>>,
    /// The service's name as an attribute value (shared, cloned without allocating).
    name: StringValue,
    latency: Option<Histogram<f64>>,
}

/// Requests by status code and a latency histogram, for one subset of one service.
#[derive(Debug)]
pub(crate) struct SubsetMetrics {
    codes: Box<[AtomicU64]>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    otlp: Option<OtlpLatency>,
}

/// The OpenTelemetry histogram a subset also records into, and its fixed attributes.
#[derive(Debug)]
struct OtlpLatency {
    histogram: Histogram<f64>,
    service: KeyValue,
    subset: KeyValue,
}

static SERVICE_KEY: Key = Key::from_static_str("meridian.service");
static SUBSET_KEY: Key = Key::from_static_str("meridian.subset");
static STATUS_KEY: Key = Key::from_static_str("http.response.status_code");

// === impl Metrics ===

impl Metrics {
    /// Metrics whose request latencies are also recorded into `latency` (OTLP export on).
    pub(crate) fn with_latency(latency: Histogram<f64>) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }

    /// The metrics of `service` (created on first use; kept for the process's life).
    pub(crate) fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(services.entry(service.to_owned()).or_insert_with(|| {
            Arc::new(ServiceMetrics {
                retries: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
                subsets: Mutex::default(),
                name: StringValue::from(Arc::<str>::from(service)),
                latency: self.latency.clone(),
            })
        }))
    }

    /// Every service's metrics so far, by name.
    pub(crate) fn services(&self) -> Vec<(String, Arc<ServiceMetrics>)> {
        let map = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let services = self.services();
        let subsets: Vec<(&str, String, Arc<SubsetMetrics>)> = services
            .iter()
            .flat_map(|(name, s)| s.subsets().into_iter().map(|(k, v)| (name.as_str(), k, v)))
            .collect();

        header(
            &mut out,
            "meridian_proxy_requests_total",
            "counter",
            "Requests answered, by service, subset and status code.",
        );
        for (service, subset, m) in &subsets {
            for (code, n) in m.codes() {
                let _ = writeln!(
                    out,
                    "meridian_proxy_requests_total{{service=\"{}\",subset=\"{}\",code=\"{code}\"}} {n}",
                    esc(service),
                    esc(subset)
                );
            }
        }
        header(
            &mut out,
            "meridian_proxy_request_duration_seconds",
            "histogram",
            "Time to the response head, by service and subset.",
        );
        for (service, subset, m) in &subsets {
            let labels = format!("service=\"{}\",subset=\"{}\"", esc(service), esc(subset));
            let mut cumulative = 0;
            for (bound, b) in BUCKETS.iter().zip(&m.buckets) {
                cumulative += b.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "meridian_proxy_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = m.count.load(Ordering::Relaxed);
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "meridian_proxy_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "meridian_proxy_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "meridian_proxy_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        header(
            &mut out,
            "meridian_proxy_retries_total",
            "counter",
            "Retries sent, by service.",
        );
        for (service, m) in &services {
            let _ = writeln!(
                out,
                "meridian_proxy_retries_total{{service=\"{}\"}} {}",
                esc(service),
                m.retries.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "meridian_proxy_ejections_total",
            "counter",
            "Outlier ejections, by service.",
        );
        for (service, m) in &services {
            let _ = writeln!(
                out,
                "meridian_proxy_ejections_total{{service=\"{}\"}} {}",
                esc(service),
                m.ejections.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "meridian_proxy_config_version",
                "gauge",
                "The discovery version last applied.",
                &self.config_version,
            ),
            (
                "meridian_proxy_discovery_connected",
                "gauge",
                "1 while a discovery stream is up.",
                &self.discovery_connected,
            ),
            (
                "meridian_proxy_config_applied_total",
                "counter",
                "Discovery updates applied (acknowledged).",
                &self.configs_applied,
            ),
            (
                "meridian_proxy_config_rejected_total",
                "counter",
                "Discovery updates rejected (nacked).",
                &self.configs_rejected,
            ),
        ];
        for (name, kind, help, value) in gauges {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label value escaping per the exposition format.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// === impl ServiceMetrics ===

impl ServiceMetrics {
    /// The metrics of one subset, labelled like `version=v2` (created on first use).
    pub(crate) fn subset(&self, label: &str) -> Arc<SubsetMetrics> {
        let mut subsets = self
            .subsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(subsets.entry(label.to_owned()).or_insert_with(|| {
            let otlp = self.latency.as_ref().map(|histogram| OtlpLatency {
                histogram: histogram.clone(),
                service: KeyValue::new(SERVICE_KEY.clone(), Value::String(self.name.clone())),
                subset: KeyValue::new(
                    SUBSET_KEY.clone(),
                    Value::String(StringValue::from(Arc::<str>::from(label))),
                ),
            });
            Arc::new(SubsetMetrics::new(otlp))
        }))
    }

    /// This service's subsets so far, by label.
    pub(crate) fn subsets(&self) -> Vec<(String, Arc<SubsetMetrics>)> {
        let map = self
            .subsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

// === impl SubsetMetrics ===

impl SubsetMetrics {
    fn new(otlp: Option<OtlpLatency>) -> Self {
        Self {
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            otlp,
        }
    }

    /// The status codes answered at least once, with their counts.
    pub(crate) fn codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        (100u16..).zip(self.codes.iter()).filter_map(|(code, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((code, n))
        })
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, status: u16, latency: Duration) {
        if let Some(c) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.codes.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(otlp) = &self.otlp {
            // The attribute values are shared strings: cloning them allocates nothing.
            otlp.histogram.record(
                secs,
                &[
                    otlp.service.clone(),
                    otlp.subset.clone(),
                    KeyValue::new(STATUS_KEY.clone(), i64::from(status)),
                ],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let s = m.service("orders.cafe.local");
        let sub = s.subset("version=v2");
        sub.record(200, Duration::from_micros(700));
        sub.record(200, Duration::from_millis(40));
        sub.record(503, Duration::from_secs(60));
        s.retries.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        let l = "service=\"orders.cafe.local\",subset=\"version=v2\"";
        assert!(
            text.contains(&format!(
                "meridian_proxy_requests_total{{{l},code=\"200\"}} 2"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "meridian_proxy_requests_total{{{l},code=\"503\"}} 1"
        )));
        assert!(text.contains(&format!(
            "meridian_proxy_request_duration_seconds_bucket{{{l},le=\"0.001\"}} 1"
        )));
        assert!(text.contains(&format!(
            "meridian_proxy_request_duration_seconds_bucket{{{l},le=\"0.05\"}} 2"
        )));
        assert!(text.contains(&format!(
            "meridian_proxy_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"
        )));
        assert!(text.contains("meridian_proxy_retries_total{service=\"orders.cafe.local\"} 2"));
        assert!(text.contains("meridian_proxy_config_rejected_total 0"));
    }
}
