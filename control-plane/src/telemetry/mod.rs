//! The control plane's own telemetry: metrics, spans around gRPC calls, and the admin port.
//!
//! # Layout
//! - [`metrics`]: [`NodeMetrics`] (instruments recorded on request paths) and [`Observers`]
//!   (gauges and counters read from the rooms at collection time);
//! - [`grpc`]: [`GrpcLayer`], the tower layer around every gRPC service: a span per call
//!   continuing the caller's trace, and the API metrics;
//! - `context`: W3C trace context in and out of gRPC metadata;
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/ready`, `/health`).
//!
//! The set-up itself (exporters, the `tracing` subscriber, flags and `OTEL_*` variables) is
//! the shared `meridian-telemetry` crate's; this room only uses its meter and its Prometheus
//! renderer. May depend on `replica`, `raft` (progress), `watch`, `discovery` and `dns`
//! (their counts) — only `node.rs` and `api` depend on it.

pub mod admin;
pub(crate) mod context;
pub mod grpc;
pub mod metrics;

pub use admin::Admin;
pub use grpc::GrpcLayer;
pub use metrics::{NodeMetrics, Observers};
