//! The telemetry pipeline shared by both binaries, against a real OTLP/gRPC collector.

use std::time::{Duration, Instant};

use meridian_telemetry::{Sampling, Telemetry, TelemetryConfig};
use meridian_tests::otlp::{Collector, attribute};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use tracing_subscriber::layer::SubscriberExt as _;

const PATIENCE: Duration = Duration::from_secs(20);

fn config(endpoint: Option<String>) -> TelemetryConfig {
    TelemetryConfig::from_vars(
        |_| None,
        "meridian-proxy",
        "0.1.0-test",
        "proxy-7@127.0.0.1",
    )
    .with_endpoint(endpoint)
}

/// Runs `body` with a subscriber that sends spans through `telemetry` only.
fn traced(telemetry: &Telemetry, body: impl FnOnce()) {
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_resource_attributes_and_parent_links() {
    let collector = Collector::start().await;
    let telemetry = Telemetry::new(config(Some(collector.endpoint()))).unwrap();
    traced(&telemetry, || {
        let parent = tracing::info_span!("route.put", service = "orders.cafe.local");
        let _entered = parent.enter();
        tracing::info_span!("raft.propose").in_scope(|| {});
    });
    telemetry.flush().await;

    let parent = collector.wait_for_span("route.put", PATIENCE).await;
    let child = collector.wait_for_span("raft.propose", PATIENCE).await;
    assert_eq!(
        attribute(&parent.resource, "service.name"),
        Some("meridian-proxy")
    );
    assert_eq!(
        attribute(&parent.resource, "service.version"),
        Some("0.1.0-test")
    );
    assert_eq!(
        attribute(&parent.resource, "service.instance.id"),
        Some("proxy-7@127.0.0.1")
    );
    assert_eq!(
        attribute(&parent.span.attributes, "service"),
        Some("orders.cafe.local")
    );
    assert_eq!(child.span.trace_id, parent.span.trace_id, "one trace");
    assert_eq!(
        child.span.parent_span_id, parent.span.span_id,
        "child of route.put"
    );
    assert!(
        parent.span.parent_span_id.is_empty(),
        "route.put is a root span"
    );
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_with_their_attributes() {
    let collector = Collector::start().await;
    let mut config = config(Some(collector.endpoint()));
    config.metric_interval = Duration::from_millis(200);
    let telemetry = Telemetry::new(config).unwrap();
    let requests = telemetry
        .meter()
        .u64_counter("meridian_test_requests")
        .build();
    requests.add(3, &[KeyValue::new("code", "OK")]);
    requests.add(1, &[KeyValue::new("code", "NOT_FOUND")]);
    telemetry.flush().await;

    let received = collector
        .wait_for_metric("meridian_test_requests", PATIENCE)
        .await;
    let Some(metric::Data::Sum(sum)) = received.metric.data else {
        panic!("a counter is exported as a sum: {:?}", received.metric.data);
    };
    let ok = sum
        .data_points
        .iter()
        .find(|p| attribute(&p.attributes, "code") == Some("OK"))
        .expect("a data point for code=OK");
    assert_eq!(ok.value, Some(number_data_point::Value::AsInt(3)));
    assert_eq!(sum.data_points.len(), 2);
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_neither_blocks_nor_fails_the_caller() {
    // A port that was free a moment ago: connections are refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let telemetry = Telemetry::new(config(Some(dead))).unwrap();
    let started = Instant::now();
    traced(&telemetry, || {
        for i in 0..20_000u32 {
            tracing::info_span!("request", i).in_scope(|| {});
        }
    });
    let recorded = started.elapsed();
    let counter = telemetry.meter().u64_counter("meridian_test_dead").build();
    counter.add(1, &[]);
    // Shutdown tries one last export, bounded by the export timeout; it must return.
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), telemetry.shutdown())
        .await
        .expect("shutdown returns although the collector is down");
    println!(
        "20,000 spans recorded in {recorded:?} with the collector down; shutdown took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_builds_nothing_and_instruments_still_work() {
    let telemetry = Telemetry::new(config(None)).unwrap();
    assert!(!telemetry.config().exports());
    assert!(telemetry.layer::<tracing_subscriber::Registry>().is_none());
    telemetry.meter().u64_counter("unused").build().add(1, &[]);
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_off_exports_no_span() {
    let collector = Collector::start().await;
    let telemetry =
        Telemetry::new(config(Some(collector.endpoint())).with_sampling(Some(Sampling::Off)))
            .unwrap();
    traced(&telemetry, || {
        tracing::info_span!("unsampled").in_scope(|| {});
    });
    telemetry.flush().await;
    // A metric exported after the flush proves the collector was reachable meanwhile.
    telemetry
        .meter()
        .u64_counter("meridian_test_marker")
        .build()
        .add(1, &[]);
    telemetry.flush().await;
    collector
        .wait_for_metric("meridian_test_marker", PATIENCE)
        .await;
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
    telemetry.shutdown().await;
}
