//! The proxy's traces and OTLP metrics end to end: a caller → the real proxy (in-process, its
//! telemetry built by `ProxyConfig::telemetry_config` as the binary builds it) → real
//! backends, exporting to the in-process OTLP collector (`meridian_tests::otlp`).
//!
//! Checked: the caller's W3C or B3 context is continued (same trace id, the caller's span as
//! parent), a trace starts when none arrives, the backend receives the proxy's span as its
//! parent, spans carry the service, subset, endpoint, status and retries; unsampled requests
//! still propagate (flag `00`); a collector that is down or silent changes nothing for
//! requests; OTLP request counts match the traffic and `/metrics` still parses; and without an
//! endpoint, trace headers pass through untouched. (The binary's own wiring, as a process:
//! `proxy/tests/process.rs`.)

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proxy::ProxyTelemetry;
use meridian_telemetry::{Sampling, Telemetry, TelemetryArgs};
use meridian_tests::mesh::{
    Call, Mesh, PATIENCE, SERVICE, prometheus, retrying_in_turn, route, split,
};
use meridian_tests::otlp::{Collector, attribute, hex, int_attribute};
use meridian_tests::wait_for;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A mesh (v1-0, v2-0 behind the proxy) whose proxy exports to `endpoint`, and its telemetry.
async fn traced_mesh(endpoint: &str, sampling: Option<Sampling>) -> (Mesh, Telemetry) {
    traced_mesh_of(&[("v1", 1), ("v2", 1)], endpoint, sampling).await
}

/// [`traced_mesh`] with these backends (`Mesh::start`'s `versions`).
async fn traced_mesh_of(
    versions: &[(&str, usize)],
    endpoint: &str,
    sampling: Option<Sampling>,
) -> (Mesh, Telemetry) {
    let args = TelemetryArgs {
        otlp_endpoint: Some(endpoint.to_owned()),
        otel_service_name: None,
        trace_sampling: sampling,
    };
    let mut built = None;
    let mesh = Mesh::start_with(versions, |config| {
        config.service_name = Some(SERVICE.to_owned());
        let mut telemetry = config.telemetry_config(&args);
        telemetry.metric_interval = Duration::from_millis(250);
        let telemetry = Telemetry::new(telemetry).expect("telemetry builds");
        config.telemetry = ProxyTelemetry::from_telemetry(&telemetry);
        built = Some(telemetry);
    })
    .await;
    (mesh, built.expect("the mesh configured its proxy"))
}

/// The `traceparent` the backend `id` last received, split into (trace id, parent id, flags).
fn received_traceparent(mesh: &Mesh, id: &str) -> (String, String, String) {
    let seen = mesh
        .backend(id)
        .last_seen()
        .expect("the backend got a request");
    let value = seen
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent upstream: {:?}", seen.headers))
        .to_str()
        .expect("an ASCII traceparent")
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Stops the proxy first (draining), then the telemetry; bounded so a hang fails the test.
async fn stop(mesh: Mesh, telemetry: Telemetry) {
    drop(mesh);
    tokio::time::timeout(Duration::from_secs(60), telemetry.shutdown())
        .await
        .expect("telemetry shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_is_continued_to_the_backend() {
    let collector = Collector::start().await;
    let (mut mesh, telemetry) = traced_mesh(&collector.endpoint(), None).await;
    mesh.apply(route(vec![split(&[("v2", 100)])])).await;

    let reply = mesh
        .send(
            &Call::get("/orders/7?x=1")
                .header("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))
                .header("tracestate", "rojo=00f067aa0ba902b7"),
        )
        .await
        .unwrap();
    assert!(reply.status.is_success(), "{reply:?}");
    assert_eq!(reply.backend.as_deref(), Some("v2-0"));
    let (trace, parent, flags) = received_traceparent(&mesh, "v2-0");
    assert_eq!(trace, TRACE, "the backend continues the caller's trace");
    assert_eq!(flags, "01");
    assert_ne!(
        parent, CALLER_SPAN,
        "the proxy's span is the backend's parent"
    );
    let seen = mesh.backend("v2-0").last_seen().unwrap();
    assert_eq!(seen.headers["tracestate"], "rojo=00f067aa0ba902b7");

    telemetry.flush().await;
    let span = collector
        .wait_for_span_in(TRACE, Some(&parent), PATIENCE)
        .await;
    let s = &span.span;
    assert_eq!(
        hex(&s.parent_span_id),
        CALLER_SPAN,
        "child of the caller's span"
    );
    assert_eq!(s.name, format!("GET {SERVICE}"));
    assert_eq!(s.kind, SpanKind::Server as i32);
    let a = &s.attributes;
    assert_eq!(attribute(a, "http.request.method"), Some("GET"));
    assert_eq!(attribute(a, "url.path"), Some("/orders/7"));
    assert_eq!(attribute(a, "server.address"), Some(SERVICE));
    assert_eq!(attribute(a, "meridian.service"), Some(SERVICE));
    assert_eq!(attribute(a, "meridian.subset"), Some("version=v2"));
    let v2 = mesh.backend("v2-0").addr().to_string();
    assert_eq!(attribute(a, "meridian.endpoint"), Some(v2.as_str()));
    assert_eq!(int_attribute(a, "http.response.status_code"), Some(200));
    assert_eq!(int_attribute(a, "meridian.retries"), Some(0));
    assert_ne!(
        s.status.as_ref().map(|st| st.code),
        Some(StatusCode::Error as i32)
    );
    let r = &span.resource;
    assert_eq!(attribute(r, "service.name"), Some("meridian-proxy"));
    assert_eq!(attribute(r, "service.instance.id"), Some("test-proxy"));
    assert_eq!(attribute(r, "meridian.proxy.service"), Some(SERVICE));
    assert!(attribute(r, "service.version").is_some());

    // A 5xx answer is an error span.
    let reply = mesh
        .send(
            &Call::get("/fail?status=503")
                .header("traceparent", &format!("00-{TRACE}-1111111111111111-01")),
        )
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 503);
    let (_, parent, _) = received_traceparent(&mesh, "v2-0");
    telemetry.flush().await;
    let failed = collector
        .wait_for_span_in(TRACE, Some(&parent), PATIENCE)
        .await;
    assert_eq!(
        int_attribute(&failed.span.attributes, "http.response.status_code"),
        Some(503)
    );
    assert_eq!(
        failed.span.status.as_ref().map(|st| st.code),
        Some(StatusCode::Error as i32)
    );
    stop(mesh, telemetry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_trace_header_the_proxy_starts_the_trace() {
    let collector = Collector::start().await;
    let (mesh, telemetry) = traced_mesh(&collector.endpoint(), None).await;
    let reply = mesh.send(&Call::get("/")).await.unwrap();
    let backend = reply.backend.expect("a backend answered");
    let (trace, parent, flags) = received_traceparent(&mesh, &backend);
    assert_eq!(flags, "01", "new traces are sampled at the default ratio 1");
    telemetry.flush().await;
    let span = collector
        .wait_for_span_in(&trace, Some(&parent), PATIENCE)
        .await;
    assert!(
        span.span.parent_span_id.is_empty(),
        "the proxy's span is the root: {:?}",
        span.span
    );
    assert_eq!(
        attribute(&span.span.attributes, "meridian.subset"),
        Some("*")
    );
    stop(mesh, telemetry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_and_multi_callers_are_continued() {
    let collector = Collector::start().await;
    let (mut mesh, telemetry) = traced_mesh(&collector.endpoint(), None).await;
    mesh.apply(route(vec![split(&[("v1", 100)])])).await;

    // Single header, 64-bit trace id: the backend gets it back in 16 digits.
    let short = "a3ce929d0e0e4736";
    mesh.send(&Call::get("/").header("b3", &format!("{short}-{CALLER_SPAN}-1")))
        .await
        .unwrap();
    let (trace, parent, _) = received_traceparent(&mesh, "v1-0");
    assert_eq!(trace, format!("{:0>32}", short));
    let seen = mesh.backend("v1-0").last_seen().unwrap();
    assert_eq!(seen.headers["b3"], format!("{short}-{parent}-1"));
    telemetry.flush().await;
    let span = collector
        .wait_for_span_in(&trace, Some(&parent), PATIENCE)
        .await;
    assert_eq!(hex(&span.span.parent_span_id), CALLER_SPAN);

    // Multi headers, debug flag.
    mesh.send(
        &Call::get("/")
            .header("x-b3-traceid", TRACE)
            .header("x-b3-spanid", CALLER_SPAN)
            .header("x-b3-parentspanid", "1111111111111111")
            .header("x-b3-flags", "1"),
    )
    .await
    .unwrap();
    let (trace, parent, flags) = received_traceparent(&mesh, "v1-0");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    let seen = mesh.backend("v1-0").last_seen().unwrap();
    assert_eq!(seen.headers["x-b3-traceid"], TRACE);
    assert_eq!(seen.headers["x-b3-spanid"], parent.as_str());
    assert_eq!(seen.headers["x-b3-sampled"], "1");
    assert!(seen.headers.get("x-b3-parentspanid").is_none());
    telemetry.flush().await;
    let span = collector
        .wait_for_span_in(TRACE, Some(&parent), PATIENCE)
        .await;
    assert_eq!(hex(&span.span.parent_span_id), CALLER_SPAN);
    stop(mesh, telemetry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_trace_headers_pass_through_untouched() {
    let mesh = Mesh::start(&[("v1", 1)]).await;
    let sent = [
        ("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01")),
        ("tracestate", "rojo=1".to_owned()),
        ("b3", format!("{TRACE}-{CALLER_SPAN}-1")),
    ];
    let mut call = Call::get("/");
    for (name, value) in &sent {
        call = call.header(name, value);
    }
    assert!(mesh.send(&call).await.unwrap().status.is_success());
    let seen = mesh.backend("v1-0").last_seen().unwrap();
    for (name, value) in &sent {
        assert_eq!(
            seen.headers[*name],
            value.as_str(),
            "{name} as the caller sent it"
        );
    }
    // And none is made up.
    assert!(
        mesh.send(&Call::get("/"))
            .await
            .unwrap()
            .status
            .is_success()
    );
    let seen = mesh.backend("v1-0").last_seen().unwrap();
    for (name, _) in &sent {
        assert!(
            seen.headers.get(*name).is_none(),
            "{name}: {:?}",
            seen.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_names_its_last_endpoint_and_counts_its_retries() {
    let collector = Collector::start().await;
    let (mut mesh, telemetry) = traced_mesh_of(&[("v1", 2)], &collector.endpoint(), None).await;
    let retry = pb::RetryPolicy {
        attempts: 3,
        ..Default::default() // connect failures, resets, gateway errors
    };
    // The backends take turns and the resetting one stays in rotation, so retries happen.
    mesh.apply(retrying_in_turn("v1", retry)).await;
    mesh.backend("v1-0").set_reset(true);
    let tally = mesh.client().tally(&Call::get("/"), 40, 1).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    assert!(
        mesh.backend("v1-0").requests() > 0,
        "the resetting backend was tried"
    );

    telemetry.flush().await;
    let v1_1 = mesh.backend("v1-1").addr().to_string();
    let retried = wait_for("a span of a retried request", PATIENCE, || {
        let found = collector
            .spans()
            .into_iter()
            .find(|s| int_attribute(&s.span.attributes, "meridian.retries").is_some_and(|n| n > 0));
        async move { found }
    })
    .await;
    let a = &retried.span.attributes;
    assert_eq!(attribute(a, "meridian.endpoint"), Some(v1_1.as_str()));
    assert_eq!(int_attribute(a, "http.response.status_code"), Some(200));
    assert_eq!(attribute(a, "meridian.subset"), Some("version=v1"));
    stop(mesh, telemetry).await;
}

/// A listener that accepts connections and never answers; the accept task and its sockets go
/// when dropped.
struct Silent {
    endpoint: String,
    task: JoinHandle<()>,
}

impl Silent {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { endpoint, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_collector_changes_nothing_for_requests() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let silent = Silent::start().await;
    for endpoint in [closed, silent.endpoint.clone()] {
        let (mesh, telemetry) = traced_mesh(&endpoint, None).await;
        let n = 300;
        let tally = mesh.client().tally(&Call::get("/"), n, 4).await;
        assert_eq!(
            (tally.ok(), tally.failures),
            (n, 0),
            "collector {endpoint}: first failure {:?}",
            tally.first_failure
        );
        let ready = mesh.admin("/ready").await;
        assert!(ready.status.is_success(), "{ready:?}");
        let (_, _, flags) = received_traceparent(&mesh, "v1-0");
        assert_eq!(flags, "01");
        stop(mesh, telemetry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_export_nothing_but_still_propagate() {
    for (sampling, incoming) in [
        (Sampling::ParentBasedRatio(0.0), None),
        (Sampling::Off, Some(format!("00-{TRACE}-{CALLER_SPAN}-01"))),
    ] {
        let collector = Collector::start().await;
        let (mut mesh, telemetry) = traced_mesh(&collector.endpoint(), Some(sampling)).await;
        mesh.apply(route(vec![split(&[("v1", 100)])])).await;
        let mut call = Call::get("/");
        if let Some(traceparent) = &incoming {
            call = call.header("traceparent", traceparent);
        }
        let reply = mesh.send(&call).await.unwrap();
        assert!(reply.status.is_success());
        let (trace, parent, flags) = received_traceparent(&mesh, "v1-0");
        assert_eq!(
            flags, "00",
            "{sampling:?}: the not-sampled decision travels on"
        );
        assert_ne!(parent, CALLER_SPAN);
        if incoming.is_some() {
            assert_eq!(trace, TRACE, "the caller's trace id is kept");
        }
        // Metrics exported after the requests prove the collector was reachable meanwhile.
        telemetry.flush().await;
        collector
            .wait_for_metric("meridian.proxy.requests", PATIENCE)
            .await;
        telemetry.flush().await;
        assert!(
            collector.spans().is_empty(),
            "{sampling:?}: {:?}",
            collector.spans()
        );
        stop(mesh, telemetry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_request_counts_match_the_traffic_and_metrics_text_still_parses() {
    let collector = Collector::start().await;
    let (mut mesh, telemetry) = traced_mesh(&collector.endpoint(), None).await;
    mesh.apply(route(vec![split(&[("v1", 50), ("v2", 50)])]))
        .await;
    let n = 200;
    let tally = mesh.client().tally(&Call::get("/"), n, 4).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    let (v1, v2) = (tally.with_prefix("v1-"), tally.with_prefix("v2-"));

    // Counts are cumulative: wait for an export that has seen all of them.
    let requests = |subset: &'static str| {
        let collector = &collector;
        move || {
            let found = collector
                .metrics()
                .into_iter()
                .rev()
                .find(|m| m.metric.name == "meridian.proxy.requests")
                .and_then(|m| match m.metric.data {
                    Some(metric::Data::Sum(sum)) => sum.data_points.into_iter().find(|p| {
                        attribute(&p.attributes, "meridian.subset") == Some(subset)
                            && int_attribute(&p.attributes, "http.response.status_code")
                                == Some(200)
                    }),
                    _ => None,
                })
                .and_then(|p| match p.value {
                    Some(number_data_point::Value::AsInt(v)) => Some(v),
                    _ => None,
                });
            async move { found }
        }
    };
    let want = |subset: &'static str, expected: u64| {
        let read = requests(subset);
        async move {
            wait_for(
                &format!("{expected} requests for {subset} over OTLP"),
                PATIENCE,
                || {
                    let read = read();
                    async move {
                        let got = read.await?;
                        (u64::try_from(got).ok() == Some(expected)).then_some(())
                    }
                },
            )
            .await;
        }
    };
    want("version=v1", v1).await;
    want("version=v2", v2).await;

    let latency = collector
        .wait_for_metric("http.server.request.duration", PATIENCE)
        .await;
    let Some(metric::Data::Histogram(histogram)) = latency.metric.data else {
        panic!("a histogram: {:?}", latency.metric.data);
    };
    let v2_points: u64 = histogram
        .data_points
        .iter()
        .filter(|p| attribute(&p.attributes, "meridian.subset") == Some("version=v2"))
        .map(|p| p.count)
        .sum();
    assert_eq!(v2_points, v2, "one latency observation per v2 request");
    assert_eq!(latency.metric.unit, "s");
    assert!(
        attribute(&latency.resource, "service.name") == Some("meridian-proxy"),
        "{:?}",
        latency.resource
    );
    for name in [
        "meridian.proxy.retries",
        "meridian.proxy.ejections",
        "meridian.proxy.config.version",
    ] {
        collector.wait_for_metric(name, PATIENCE).await;
    }

    let text = mesh.admin("/metrics").await.body;
    let samples = prometheus::parse(&text).expect("/metrics parses");
    let buckets = samples
        .iter()
        .filter(|s| {
            s.name == "meridian_proxy_request_duration_seconds_bucket"
                && s.label("subset") == Some("version=v2")
        })
        .count();
    assert!(buckets > 1, "histogram buckets present: {text}");
    let v2_text = samples
        .iter()
        .find(|s| {
            s.name == "meridian_proxy_requests_total"
                && s.label("subset") == Some("version=v2")
                && s.label("code") == Some("200")
        })
        .map(|s| s.value);
    assert_eq!(v2_text, Some(v2 as f64));
    stop(mesh, telemetry).await;
}
