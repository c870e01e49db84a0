//! [`TelemetryArgs`]: the telemetry flags both binaries take, one definition for both.

use clap::Args;

use crate::config::{Sampling, TelemetryConfig};

/// `--otlp-endpoint`, `--otel-service-name`, `--trace-sampling`: each overrides its standard
/// `OTEL_*` variable. Flatten into a binary's clap arguments with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// OTLP/gRPC collector to export traces and metrics to, e.g. http://127.0.0.1:4317
    /// (overrides OTEL_EXPORTER_OTLP_ENDPOINT; an empty value exports nothing).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The `service.name` resource attribute of exported spans and metrics (overrides
    /// OTEL_SERVICE_NAME).
    #[arg(long, value_name = "NAME")]
    pub otel_service_name: Option<String>,

    /// Share of new traces recorded, 0 to 1, or "off"; a caller's sampled `traceparent` is
    /// always followed (overrides OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG).
    #[arg(long, value_name = "RATIO", value_parser = Sampling::parse)]
    pub trace_sampling: Option<Sampling>,
}

// === impl TelemetryArgs ===

impl TelemetryArgs {
    /// The environment's configuration for a binary named `default_service_name`, with these
    /// flags on top.
    pub fn config(
        &self,
        default_service_name: &str,
        service_version: &str,
        instance_id: &str,
    ) -> TelemetryConfig {
        self.apply(TelemetryConfig::from_env(
            default_service_name,
            service_version,
            instance_id,
        ))
    }

    /// These flags over `config` (a flag wins over its variable).
    pub fn apply(&self, config: TelemetryConfig) -> TelemetryConfig {
        config
            .with_endpoint(self.otlp_endpoint.clone())
            .with_service_name(self.otel_service_name.clone())
            .with_sampling(self.trace_sampling)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    fn parse(args: &[&str]) -> Result<TelemetryArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
            .map(|cli| cli.telemetry)
    }

    #[test]
    fn flags_override_the_variables() {
        let args = parse(&[
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--otel-service-name",
            "edge",
            "--trace-sampling",
            "0.25",
        ])
        .unwrap();
        let base = TelemetryConfig::from_vars(
            |name| (name == "OTEL_SERVICE_NAME").then(|| "from-env".to_owned()),
            "meridian-proxy",
            "0.1.0",
            "p-1",
        );
        let config = args.apply(base.clone());
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(config.service_name, "edge");
        assert_eq!(config.sampling, Some(Sampling::ParentBasedRatio(0.25)));
        // No flags: the environment stands.
        assert_eq!(parse(&[]).unwrap().apply(base.clone()), base);
    }

    #[test]
    fn a_bad_ratio_names_the_flag() {
        let err = parse(&["--trace-sampling", "2"]).unwrap_err().to_string();
        assert!(err.contains("--trace-sampling"), "{err}");
        assert!(err.contains("sampling ratio"), "{err}");
    }
}
