//! Telemetry set-up shared by the `meridian` and `meridian-proxy` binaries: structured logs
//! through `tracing`, and OpenTelemetry traces and metrics exported over OTLP/gRPC.
//!
//! # Layout
//! - [`args`]: [`TelemetryArgs`], the flags both binaries take;
//! - [`config`]: [`TelemetryConfig`], from the standard `OTEL_*` variables and the binaries'
//!   flags (a flag wins over its variable);
//! - [`pipeline`]: [`Telemetry`], the tracer and meter providers built from a config, the
//!   `tracing` layer that turns spans into OpenTelemetry spans, and their shutdown.
//!
//! # Contract
//! - No endpoint configured: nothing is exported, no exporter, channel or thread is created,
//!   and the `tracing` layer is not installed (spans cost what `tracing` alone costs).
//! - An endpoint that is down never blocks the caller: finished spans go into the SDK's
//!   bounded batch queue (2,048 spans by default, `OTEL_BSP_MAX_QUEUE_SIZE`), which drops
//!   when full; exports run on the SDK's own thread with a timeout.
//! - Exporters are built inside a tokio runtime (the tonic channel needs one); shutdown and
//!   flush block, so [`Telemetry::shutdown`] runs them on a blocking thread (never on a
//!   current-thread runtime, where they would wait for themselves).
//!
//! Depends on no other Meridian crate: both binaries use it.

pub mod args;
pub mod config;
pub mod pipeline;
pub mod prometheus;
pub mod propagation;

pub use args::TelemetryArgs;
pub use config::{Sampling, TelemetryConfig};
pub use pipeline::{Telemetry, TelemetryError};
pub use prometheus::Prometheus;
