//! The proxy's metrics over OTLP: the counters and gauges behind `/metrics`, registered as
//! observable instruments on the exporting meter. Their callbacks read the atomics when the
//! SDK collects (every export interval), so the data path pays nothing for them.
//!
//! The one instrument recorded on the data path is `http.server.request.duration`
//! ([`latency_histogram`]): OpenTelemetry has no observable histogram, so a subset records into
//! it beside its own buckets, and only when this proxy exports (see [`crate::metrics`]).
//!
//! | OTLP | `/metrics` |
//! |---|---|
//! | `http.server.request.duration` (s; `meridian.service`, `meridian.subset`, `http.response.status_code`) | `meridian_proxy_request_duration_seconds` |
//! | `meridian.proxy.requests` (`meridian.service`, `meridian.subset`, `http.response.status_code`) | `meridian_proxy_requests_total` |
//! | `meridian.proxy.retries` (`meridian.service`) | `meridian_proxy_retries_total` |
//! | `meridian.proxy.ejections` (`meridian.service`) | `meridian_proxy_ejections_total` |
//! | `meridian.proxy.config.version` | `meridian_proxy_config_version` |
//! | `meridian.proxy.discovery.connected` | `meridian_proxy_discovery_connected` |
//! | `meridian.proxy.config.applied` | `meridian_proxy_config_applied_total` |
//! | `meridian.proxy.config.rejected` | `meridian_proxy_config_rejected_total` |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::metrics::{BUCKETS, Metrics};

/// A process-wide metric: name, description, whether a counter (else a gauge), its atomic.
type ProcessWide = (&'static str, &'static str, bool, fn(&Metrics) -> &AtomicU64);

/// The request latency histogram, with the same bucket bounds as `/metrics` (the SDK's
/// defaults are meant for milliseconds).
pub(crate) fn latency_histogram(meter: &Meter) -> opentelemetry::metrics::Histogram<f64> {
    meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_description("Time to the response head, by service, subset and status code.")
        .with_boundaries(BUCKETS.to_vec())
        .build()
}

/// Registers the observable instruments over `metrics` (they live as long as the meter's
/// provider).
pub(crate) fn register(meter: &Meter, metrics: &Arc<Metrics>) {
    let m = Arc::clone(metrics);
    meter
        .u64_observable_counter("meridian.proxy.requests")
        .with_unit("{request}")
        .with_description("Requests answered, by service, subset and status code.")
        .with_callback(move |observer| {
            for (service, s) in m.services() {
                for (subset, sub) in s.subsets() {
                    for (code, n) in sub.codes() {
                        observer.observe(
                            n,
                            &[
                                KeyValue::new("meridian.service", service.clone()),
                                KeyValue::new("meridian.subset", subset.clone()),
                                KeyValue::new("http.response.status_code", i64::from(code)),
                            ],
                        );
                    }
                }
            }
        })
        .build();
    for (name, description, field) in [
        (
            "meridian.proxy.retries",
            "Retries sent, by service.",
            (|s| &s.retries) as fn(&crate::metrics::ServiceMetrics) -> &AtomicU64,
        ),
        (
            "meridian.proxy.ejections",
            "Outlier ejections, by service.",
            |s| &s.ejections,
        ),
    ] {
        let m = Arc::clone(metrics);
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (service, s) in m.services() {
                    observer.observe(
                        field(&s).load(Ordering::Relaxed),
                        &[KeyValue::new("meridian.service", service)],
                    );
                }
            })
            .build();
    }
    let process_wide: [ProcessWide; 4] = [
        (
            "meridian.proxy.config.version",
            "The discovery version last applied.",
            false,
            |m| &m.config_version,
        ),
        (
            "meridian.proxy.discovery.connected",
            "1 while a discovery stream is up.",
            false,
            |m| &m.discovery_connected,
        ),
        (
            "meridian.proxy.config.applied",
            "Discovery updates applied (acknowledged).",
            true,
            |m| &m.configs_applied,
        ),
        (
            "meridian.proxy.config.rejected",
            "Discovery updates rejected (nacked).",
            true,
            |m| &m.configs_rejected,
        ),
    ];
    for (name, description, counter, field) in process_wide {
        let m = Arc::clone(metrics);
        let read = move || field(&m).load(Ordering::Relaxed);
        if counter {
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(), &[]))
                .build();
        } else {
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(), &[]))
                .build();
        }
    }
}
