//! [`TelemetryConfig`]: what to export where, from the environment and flags.
//!
//! The variables are the OpenTelemetry SDK's standard ones, so a Meridian binary drops into
//! any set-up that already configures its collectors this way:
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4317`): unset or empty exports
//!   nothing;
//! - `OTEL_SERVICE_NAME`: the `service.name` resource attribute (default: the binary's own,
//!   `meridian-control-plane` or `meridian-proxy`);
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`: read by the SDK itself when no
//!   sampling flag is given (default `parentbased_always_on`);
//! - `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds): how often metrics are pushed (default 60 s).

use std::time::Duration;

/// Where and how telemetry is exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The `service.version` resource attribute.
    pub service_version: String,
    /// The `service.instance.id` resource attribute: unique per process (e.g. node id and
    /// address, or proxy id).
    pub instance_id: String,
    /// The OTLP/gRPC collector; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// Trace sampling; `None` leaves it to `OTEL_TRACES_SAMPLER(_ARG)`.
    pub sampling: Option<Sampling>,
    /// Between two metric exports.
    pub metric_interval: Duration,
    /// More resource attributes of the binary's own (e.g. the proxy's
    /// `meridian.proxy.service`); empty by default.
    pub resource_attributes: Vec<(String, String)>,
}

/// Which traces are recorded and exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Follow the caller's decision (a `traceparent` with the sampled flag); sample this
    /// ratio (0.0–1.0) of the traces that start here.
    ParentBasedRatio(f64),
    /// Record no trace.
    Off,
}

// === impl TelemetryConfig ===

impl TelemetryConfig {
    /// Default between two metric exports, as the SDK's.
    pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

    /// The configuration the environment asks for, for a binary whose default service name is
    /// `default_service_name`. Apply flags on top with the `with_*` methods.
    pub fn from_env(default_service_name: &str, service_version: &str, instance_id: &str) -> Self {
        Self::from_vars(
            |name| std::env::var(name).ok(),
            default_service_name,
            service_version,
            instance_id,
        )
    }

    /// [`TelemetryConfig::from_env`] over any source of variables (tests pass a map).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service_name: &str,
        service_version: &str,
        instance_id: &str,
    ) -> Self {
        let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        Self {
            service_name: non_empty("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| default_service_name.to_owned()),
            service_version: service_version.to_owned(),
            instance_id: instance_id.to_owned(),
            otlp_endpoint: non_empty("OTEL_EXPORTER_OTLP_ENDPOINT"),
            sampling: None,
            metric_interval: non_empty("OTEL_METRIC_EXPORT_INTERVAL")
                .and_then(|ms| ms.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map_or(Self::DEFAULT_METRIC_INTERVAL, Duration::from_millis),
            resource_attributes: Vec::new(),
        }
    }

    /// Adds resource attribute `key` = `value`.
    #[must_use]
    pub fn with_resource_attribute(mut self, key: &str, value: &str) -> Self {
        self.resource_attributes
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// Overrides the collector endpoint (a flag); an empty string turns export off.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        if let Some(endpoint) = endpoint {
            self.otlp_endpoint = Some(endpoint).filter(|e| !e.trim().is_empty());
        }
        self
    }

    /// Overrides the service name (a flag).
    #[must_use]
    pub fn with_service_name(mut self, name: Option<String>) -> Self {
        if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
            self.service_name = name;
        }
        self
    }

    /// Overrides the sampling (a flag).
    #[must_use]
    pub fn with_sampling(mut self, sampling: Option<Sampling>) -> Self {
        if sampling.is_some() {
            self.sampling = sampling;
        }
        self
    }

    /// Whether anything is exported.
    pub fn exports(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

// === impl Sampling ===

impl Sampling {
    /// Parses a sampling flag: a ratio from 0 to 1 (`0.01` samples 1% of new traces), or
    /// `off`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        match text.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(Self::ParentBasedRatio(ratio)),
            _ => Err(format!(
                "{text:?} is not a sampling ratio from 0 to 1, or \"off\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetryConfig::from_vars(|k| vars.get(k).cloned(), "meridian-proxy", "0.1.0", "p-1")
    }

    #[test]
    fn nothing_set_exports_nothing_under_the_default_name() {
        let c = config(&[]);
        assert_eq!(c.service_name, "meridian-proxy");
        assert_eq!(c.otlp_endpoint, None);
        assert!(!c.exports());
        assert_eq!(c.metric_interval, TelemetryConfig::DEFAULT_METRIC_INTERVAL);
    }

    #[test]
    fn variables_are_honoured_and_flags_win() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SERVICE_NAME", "orders-proxy"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ]);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(c.service_name, "orders-proxy");
        assert_eq!(c.metric_interval, Duration::from_millis(500));

        let c = c
            .with_endpoint(Some("http://10.0.0.1:4317".into()))
            .with_service_name(Some("edge".into()))
            .with_sampling(Some(Sampling::ParentBasedRatio(0.01)));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://10.0.0.1:4317"));
        assert_eq!(c.service_name, "edge");
        assert_eq!(c.sampling, Some(Sampling::ParentBasedRatio(0.01)));
        // An empty endpoint flag turns export off; absent flags change nothing.
        let c = c.with_endpoint(Some(String::new())).with_service_name(None);
        assert!(!c.exports());
        assert_eq!(c.service_name, "edge");
    }

    #[test]
    fn empty_or_bad_variables_fall_back_to_defaults() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "  "),
            ("OTEL_SERVICE_NAME", ""),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ]);
        assert!(!c.exports());
        assert_eq!(c.service_name, "meridian-proxy");
        assert_eq!(c.metric_interval, TelemetryConfig::DEFAULT_METRIC_INTERVAL);
    }

    #[test]
    fn sampling_flags_parse_or_say_why_not() {
        assert_eq!(Sampling::parse("off"), Ok(Sampling::Off));
        assert_eq!(Sampling::parse("1"), Ok(Sampling::ParentBasedRatio(1.0)));
        assert_eq!(
            Sampling::parse("0.01"),
            Ok(Sampling::ParentBasedRatio(0.01))
        );
        for bad in ["1.5", "-0.1", "all", ""] {
            let err = Sampling::parse(bad).unwrap_err();
            assert!(err.contains("sampling ratio"), "{bad}: {err}");
        }
    }
}
