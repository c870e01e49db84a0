//! `meridian server` with an OTLP endpoint, as a user runs it: flags and resource attributes,
//! spans and metrics at a collector, the flush on SIGTERM, the admin port, and client
//! subcommands that never export.

use std::process::Command;

use meridian_tests::otlp::{Collector, attribute};

use super::{BIN, Server};

#[test]
fn a_server_exports_spans_and_metrics_and_flushes_them_on_sigterm() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let collector = runtime.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let server = Server::start_with(dir.path(), |command| {
        command
            .args(["--otlp-endpoint", &endpoint])
            .args(["--otel-service-name", "cp-under-test"])
            // Longer than the test: metrics can only arrive through the flush at shutdown.
            .env("OTEL_METRIC_EXPORT_INTERVAL", "600000");
    });
    let server_listen = server.url.trim_start_matches("http://").to_owned();
    // A client subcommand with the variables set exports nothing of its own.
    let out = Command::new(BIN)
        .args(["namespace", "create", "cafe.local"])
        .env("MERIDIAN_ADDR", &server.url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");

    let spans = collector.spans();
    let create = spans
        .iter()
        .find(|s| s.span.name == "meridian.v1.Registry/CreateNamespace")
        .expect("the CreateNamespace span, exported by the time the server exited");
    assert_eq!(
        attribute(&create.resource, "service.name"),
        Some("cp-under-test")
    );
    assert_eq!(
        attribute(&create.resource, "service.instance.id"),
        Some(format!("node-1@{}", server_listen).as_str())
    );
    assert!(attribute(&create.resource, "service.version").is_some());
    assert!(spans.iter().any(|s| s.span.name == "raft.propose"));
    let metrics = collector.metrics();
    assert!(
        metrics
            .iter()
            .any(|m| m.metric.name == "meridian.api.requests"),
        "the API counter, flushed at shutdown"
    );
    assert!(
        metrics
            .iter()
            .any(|m| m.metric.name == "meridian.raft.term")
    );
    // Everything came from the server: the client exported nothing.
    for service in spans
        .iter()
        .map(|s| &s.resource)
        .chain(metrics.iter().map(|m| &m.resource))
        .map(|r| attribute(r, "service.name"))
    {
        assert_eq!(service, Some("cp-under-test"));
    }
}
