//! `meridian-proxy` end to end: real backends on loopback, the real control plane in-process,
//! the real proxy in-process (`meridian_tests::mesh`). One test per item of issue 6: weighted
//! split, traffic shift without failures, deregistered and unhealthy endpoints, retries around
//! a killed backend and no retry of a POST past a reset, fail static, header matching,
//! timeouts and retry limits, HTTP/2, 503/404 answers, the admin port, and `WaitApplied`.
//!
//! Nothing here asserts on time: conditions are waited for with generous patience, and the
//! times the issue cares about (how fast a shift lands) are measured and printed.

use std::time::Instant;

use hyper::{StatusCode, Version};
use meridian_proto::v1 as pb;
use meridian_tests::mesh::{
    Call, Mesh, Outcome, PATIENCE, SERVICE, header_rule, prefix_rule, prometheus, retrying_in_turn,
    route, split, with_balancer, with_retry,
};
use meridian_tests::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_80_20_lands_within_4_sigma() {
    let mut mesh = Mesh::start(&[("v1", 2), ("v2", 2)]).await;
    mesh.apply(route(vec![split(&[("v1", 80), ("v2", 20)])]))
        .await;

    let n = 3000;
    let tally = mesh.client().tally(&Call::get("/"), n, 8).await;
    assert_eq!(
        tally.failures, 0,
        "first failure: {:?}",
        tally.first_failure
    );
    assert_eq!(tally.ok(), n);
    let (v1, v2) = (tally.with_prefix("v1-"), tally.with_prefix("v2-"));
    // v2's count is Binomial(n, 0.2): mean n·p, standard deviation sqrt(n·p·(1 − p)).
    let (p, nf) = (0.2, n as f64);
    let sigma = (nf * p * (1.0 - p)).sqrt();
    let off = (v2 as f64 - nf * p).abs();
    println!(
        "80/20 split over {n} requests: v1 {v1}, v2 {v2} (expected {:.0} ± {:.1} at 4σ), \
         per backend {:?}",
        nf * p,
        4.0 * sigma,
        tally.by_backend
    );
    assert!(
        off <= 4.0 * sigma,
        "v2 got {v2} of {n}: {off:.1} away from {:.0}, more than 4σ = {:.1}",
        nf * p,
        4.0 * sigma
    );
    for id in ["v1-0", "v1-1", "v2-0", "v2-1"] {
        assert!(
            tally.by_backend.get(id).is_some_and(|&c| c > 0),
            "every endpoint of a chosen subset gets traffic: {:?}",
            tally.by_backend
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_to_0_100_lands_without_a_failed_request() {
    let mut mesh = Mesh::start(&[("v1", 2), ("v2", 2)]).await;
    mesh.apply(route(vec![split(&[("v1", 100), ("v2", 0)])]))
        .await;
    mesh.wait_all_served_by("v1 only", 20, |id| id.starts_with("v1-"))
        .await;

    let load = mesh.client().load(&Call::get("/"), 4);
    wait_for("the load to warm up", PATIENCE, || {
        let done = load.completed();
        async move { (done >= 200).then_some(()) }
    })
    .await;
    let start = Instant::now();
    let revision = mesh.put_split(&[("v1", 0), ("v2", 100)]).await;
    let put = start.elapsed();
    let applied = mesh.wait_applied(revision).await;
    let confirmed = start.elapsed();
    assert_eq!((applied.subscribed, applied.applied), (1, 1), "{applied:?}");
    // The functional condition: the latest 100 completed requests were all served by v2.
    wait_for("traffic to move to v2", PATIENCE, || {
        let recent = load.outcomes();
        async move {
            let tail = recent.get(recent.len().checked_sub(100)?..)?;
            tail.iter()
                .all(|o| o.result.as_ref().is_ok_and(|id| id.starts_with("v2-")))
                .then_some(())
        }
    })
    .await;
    let outcomes = load.stop().await;

    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let since = |o: &Outcome| o.at.saturating_duration_since(start);
    let last_v1 = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|id| id.starts_with("v1-")))
        .map(since)
        .max();
    let first_v2 = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|id| id.starts_with("v2-")))
        .map(since)
        .min();
    println!(
        "shift v1=100 → v2=100 under load ({} requests, 4 concurrent): PutRoute acknowledged \
         in {put:?}, WaitApplied confirmed the proxy at {confirmed:?}, first v2 response at \
         {first_v2:?}, last v1 response at {last_v1:?} after the PutRoute call",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the shift, first: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_and_unhealthy_endpoints_stop_getting_traffic() {
    let mut mesh = Mesh::start(&[("v1", 3)]).await;
    // Round robin, so that an endpoint back in the pool gets the very next turns (P2C-EWMA
    // would rightly prefer the endpoints it has fast measurements of, for a while).
    mesh.apply(with_balancer(
        pb::LoadBalancerPolicy::RoundRobin,
        route(vec![split(&[("v1", 1)])]),
    ))
    .await;
    let tally = mesh.client().tally(&Call::get("/"), 60, 1).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    assert_eq!(tally.by_backend.len(), 3, "all three serve: {tally:?}");

    mesh.deregister("v1-0").await;
    mesh.wait_all_served_by("v1-0 gone after deregistration", 30, |id| id != "v1-0")
        .await;
    let before = mesh.backend("v1-0").requests();
    let tally = mesh.client().tally(&Call::get("/"), 200, 4).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    assert_eq!(
        mesh.backend("v1-0").requests(),
        before,
        "a deregistered endpoint gets nothing: {:?}",
        tally.by_backend
    );

    mesh.set_health("v1-1", pb::HealthStatus::Unhealthy).await;
    mesh.wait_all_served_by("v1-1 gone once unhealthy", 30, |id| id == "v1-2")
        .await;
    let before = mesh.backend("v1-1").requests();
    let tally = mesh.client().tally(&Call::get("/"), 200, 4).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    assert_eq!(tally.with_prefix("v1-2"), 200, "{:?}", tally.by_backend);
    assert_eq!(mesh.backend("v1-1").requests(), before);

    // Healthy again: back in rotation.
    mesh.set_health("v1-1", pb::HealthStatus::Healthy).await;
    mesh.wait_until("v1-1 back once healthy", |r| {
        r.as_ref().is_ok_and(|id| id == "v1-1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_load_is_retried_around_for_get() {
    let mut mesh = Mesh::start(&[("v1", 3)]).await;
    let retry = pb::RetryPolicy {
        attempts: 5,
        ..Default::default() // connect failures, resets, gateway errors
    };
    let outlier = pb::OutlierDetection {
        consecutive_failures: 2,
        ..Default::default()
    };
    mesh.apply(with_retry(split(&[("v1", 1)]), retry, outlier))
        .await;

    // Each request takes 20 ms at the backend, so the kill finds requests in flight.
    let load = mesh.client().load(&Call::get("/?delay_ms=20"), 6);
    wait_for("v1-0 to be serving the load", PATIENCE, || {
        let served = mesh.backend("v1-0").requests();
        async move { (served >= 20).then_some(()) }
    })
    .await;
    mesh.kill_backend("v1-0").await;
    let killed_at = load.completed();
    wait_for("200 requests after the kill", PATIENCE, || {
        let done = load.completed();
        async move { (done >= killed_at + 200).then_some(()) }
    })
    .await;
    let outcomes = load.stop().await;

    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let after_kill = &outcomes[killed_at..];
    println!(
        "killed v1-0 after {killed_at} requests; {} more completed, {} failures",
        after_kill.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed around the kill, first: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
    assert!(
        after_kill
            .iter()
            .skip(20)
            .all(|o| o.result.as_ref().is_ok_and(|id| id != "v1-0")),
        "nothing is served by the killed backend once the requests in flight are done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_past_a_reset_unless_allowed() {
    let mut mesh = Mesh::start(&[("v1", 2)]).await;
    let retry = pb::RetryPolicy {
        attempts: 3,
        retry_on: vec![pb::RetryOn::Reset as i32],
        ..Default::default()
    };
    // The backends take turns, and the resetting one stays in rotation for the counts.
    mesh.apply(retrying_in_turn("v1", retry.clone())).await;
    mesh.backend("v1-0").set_reset(true);

    // Sequential POSTs, counting what each backend saw from here on.
    let post = Call::get("/orders").post("{\"coffee\":1}");
    let hits = |mesh: &Mesh| {
        (
            mesh.backend("v1-0").requests(),
            mesh.backend("v1-1").requests(),
        )
    };
    let before = hits(&mesh);
    let (mut ok, mut failed, sent) = (0u64, 0u64, 40u64);
    for _ in 0..sent {
        let reply = mesh.send(&post).await.expect("the proxy answers");
        if reply.status.is_success() {
            assert_eq!(reply.backend.as_deref(), Some("v1-1"));
            ok += 1;
        } else {
            assert_eq!(
                reply.status,
                StatusCode::BAD_GATEWAY,
                "a reset answers 502: {}",
                reply.body
            );
            failed += 1;
        }
    }
    let after = hits(&mesh);
    let (reset, served) = (after.0 - before.0, after.1 - before.1);
    println!(
        "{sent} POSTs: {ok} ok, {failed} failed with 502; v1-0 (resets) saw {reset}, v1-1 {served}"
    );
    assert_eq!(
        reset,
        sent / 2,
        "round robin sends every other POST to v1-0"
    );
    assert_eq!(
        (failed, ok),
        (reset, served),
        "every POST that reached the resetting backend failed and went nowhere else"
    );

    // The same route retries GETs around the reset.
    let tally = mesh.client().tally(&Call::get("/"), 40, 1).await;
    assert_eq!(tally.failures, 0, "GETs retried: {:?}", tally.first_failure);
    assert_eq!(tally.with_prefix("v1-1"), 40);

    // With retry_non_idempotent, POSTs are retried too.
    let retry_all = pb::RetryPolicy {
        retry_non_idempotent: true,
        ..retry
    };
    mesh.apply(retrying_in_turn("v1", retry_all)).await;
    let tally = mesh.client().tally(&post, 40, 1).await;
    assert_eq!(
        tally.failures, 0,
        "POSTs retried: {:?}",
        tally.first_failure
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_serving_when_the_control_plane_stops() {
    let mut mesh = Mesh::start(&[("v1", 1), ("v2", 1)]).await;
    mesh.apply(route(vec![split(&[("v1", 50), ("v2", 50)])]))
        .await;
    assert_eq!(config_json(&mesh).await["connected"], true);
    mesh.stop_control_plane().await;
    // The proxy has noticed: it says so on /config, and keeps serving its last config.
    wait_for("the proxy to see the control plane gone", PATIENCE, || {
        let mesh = &mesh;
        async move { (config_json(mesh).await["connected"] == false).then_some(()) }
    })
    .await;

    for round in 0..3 {
        let tally = mesh.client().tally(&Call::get("/"), 200, 4).await;
        assert_eq!(
            tally.failures, 0,
            "round {round}: {:?}",
            tally.first_failure
        );
        assert!(
            tally.with_prefix("v1-") > 0 && tally.with_prefix("v2-") > 0,
            "round {round}: the last route still splits: {:?}",
            tally.by_backend
        );
        let ready = mesh.admin("/ready").await;
        assert_eq!(ready.status, StatusCode::OK, "/ready: {}", ready.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_sends_canaries_to_v2() {
    let mut mesh = Mesh::start(&[("v1", 1), ("v2", 1)]).await;
    let rules = vec![
        header_rule("x-canary", "true", &[("v2", 1)]),
        split(&[("v1", 1)]),
    ];
    mesh.apply(route(rules)).await;

    let canary = Call::get("/").header("x-canary", "true");
    let tally = mesh.client().tally(&canary, 50, 4).await;
    assert_eq!(tally.with_prefix("v2-"), 50, "{tally:?}");
    let seen = mesh.backend("v2-0").last_seen().expect("v2-0 saw requests");
    assert_eq!(
        seen.headers.get("x-canary").map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "the header is forwarded"
    );

    for call in [Call::get("/"), Call::get("/").header("x-canary", "false")] {
        let tally = mesh.client().tally(&call, 50, 4).await;
        assert_eq!(tally.with_prefix("v1-"), 50, "{call:?}: {tally:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_504_and_retries_stop_at_the_limit() {
    let mut mesh = Mesh::start(&[("v1", 1)]).await;
    let retried = pb::RouteRule {
        timeout_ms: 20_000,
        retry: Some(pb::RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: 300,
            retry_on: vec![pb::RetryOn::PerTryTimeout as i32],
            ..Default::default()
        }),
        ..prefix_rule("/retried", &[("v1", 1)])
    };
    let once = pb::RouteRule {
        timeout_ms: 300,
        ..split(&[("v1", 1)])
    };
    let outlier = pb::OutlierDetection {
        disabled: true,
        ..Default::default()
    };
    mesh.apply(pb::Route {
        outlier_detection: Some(outlier),
        ..route(vec![retried, once])
    })
    .await;

    for (path, tries) in [("/once?delay_ms=10000", 1), ("/retried?delay_ms=10000", 3)] {
        let before = mesh.backend("v1-0").requests();
        let started = Instant::now();
        let reply = mesh
            .send(&Call::get(path))
            .await
            .expect("the proxy answers");
        println!("GET {path}: {} after {:?}", reply.status, started.elapsed());
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
        assert!(!reply.body.trim().is_empty(), "a 504 says why");
        // Every try was sent before the 504; the backend may count the last one a moment later.
        wait_for("the backend to count every try", PATIENCE, || {
            let n = mesh.backend("v1-0").requests() - before;
            async move { (n >= tries).then_some(()) }
        })
        .await;
        assert_eq!(
            mesh.backend("v1-0").requests() - before,
            tries,
            "GET {path}: 1 try + the retries allowed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_go_through_and_h2c_upstreams_get_http2() {
    let mut mesh = Mesh::start(&[("v1", 2)]).await;
    let h2 = Call::get("/").http2();
    let reply = mesh.send(&h2).await.expect("an h2c request");
    assert_eq!(reply.version, Version::HTTP_2);
    assert!(reply.status.is_success(), "{}", reply.body);
    // 200 requests multiplexed, 20 at a time.
    let tally = mesh.client().tally(&h2, 200, 20).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);
    assert_eq!(tally.ok(), 200);
    let upstream = mesh.backend("v1-0").last_seen().expect("v1-0 saw requests");
    assert_eq!(
        upstream.version,
        Version::HTTP_11,
        "upstream is HTTP/1.1 unless the instance says protocol=h2c"
    );

    mesh.add_backend("v2-0", "v2", &[("protocol", "h2c")]).await;
    mesh.apply(route(vec![split(&[("v2", 1)])])).await;
    for call in [Call::get("/"), Call::get("/").http2()] {
        let reply = mesh.send(&call).await.expect("a request");
        assert_eq!(reply.backend.as_deref(), Some("v2-0"), "{}", reply.body);
        let upstream = mesh.backend("v2-0").last_seen().expect("v2-0 saw it");
        assert_eq!(upstream.version, Version::HTTP_2, "protocol=h2c upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_and_unknown_services_get_503_and_no_rule_gets_404() {
    let mut mesh = Mesh::start(&[("v1", 1)]).await;
    mesh.create_service("empty").await;
    for host in ["empty.cafe.local", "nope.cafe.local"] {
        let reply = mesh
            .send(&Call::get("/").host(host))
            .await
            .expect("the proxy answers");
        println!("{host}: {} {:?}", reply.status, reply.body.trim());
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
        assert!(!reply.body.trim().is_empty(), "{host}: a 503 says why");
    }

    // The only instance of orders goes unhealthy: no endpoints.
    mesh.set_health("v1-0", pb::HealthStatus::Unhealthy).await;
    mesh.wait_until("503 once orders has no healthy endpoint", |r| {
        r.as_ref().is_err_and(|e| e.starts_with("503"))
    })
    .await;
    mesh.set_health("v1-0", pb::HealthStatus::Healthy).await;

    mesh.apply(route(vec![prefix_rule("/api", &[("v1", 1)])]))
        .await;
    let reply = mesh.send(&Call::get("/api/orders")).await.expect("answer");
    assert!(reply.status.is_success(), "/api matches: {}", reply.body);
    let reply = mesh.send(&Call::get("/other")).await.expect("answer");
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert!(!reply.body.trim().is_empty(), "a 404 says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_service_and_subset() {
    let mut mesh = Mesh::start(&[("v1", 1), ("v2", 1)]).await;
    mesh.apply(route(vec![split(&[("v1", 50), ("v2", 50)])]))
        .await;
    let tally = mesh.client().tally(&Call::get("/"), 100, 4).await;
    assert_eq!(tally.failures, 0, "{:?}", tally.first_failure);

    let reply = mesh.admin("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let samples = prometheus::parse(&reply.body).unwrap_or_else(|e| panic!("{e}"));
    // Request counters and latency histograms of orders, per subset (all answers were 200).
    let sum = |name: &str, version: &str| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| s.label("service") == Some(SERVICE))
            .filter(|s| s.label("subset") == Some(format!("version={version}").as_str()))
            .filter(|s| s.label("code").is_none_or(|c| c == "200"))
            .map(|s| s.value)
            .sum()
    };
    for version in ["v1", "v2"] {
        let served = tally.with_prefix(&format!("{version}-")) as f64;
        let counted = sum("meridian_proxy_requests_total", version);
        let timed = sum("meridian_proxy_request_duration_seconds_count", version);
        println!("/metrics {version}: served {served}, counted {counted}, timed {timed}");
        assert_eq!(
            counted, served,
            "requests_total of {version}:\n{}",
            reply.body
        );
        assert_eq!(
            timed, served,
            "duration histogram of {version}:\n{}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_json_shows_the_route_version_and_wait_applied_confirms_it() {
    let mut mesh = Mesh::start(&[("v1", 1), ("v2", 1)]).await;
    let started = Instant::now();
    let revision = mesh.put_split(&[("v1", 90), ("v2", 10)]).await;
    let applied = mesh.wait_applied(revision).await;
    println!(
        "PutRoute + WaitApplied: {:?} ({applied:?})",
        started.elapsed()
    );
    assert_eq!((applied.subscribed, applied.applied), (1, 1));
    assert!(applied.rejected.is_empty() && applied.pending.is_empty());

    let proxies = mesh
        .discovery()
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .expect("ListProxies")
        .into_inner();
    let ours = proxies
        .proxies
        .iter()
        .find(|p| p.proxy_id == "test-proxy")
        .expect("the proxy is listed");
    assert!(ours.acked_version >= revision, "{ours:?}");
    assert!(ours.services.iter().any(|s| s == SERVICE), "{ours:?}");

    let config = config_json(&mesh).await;
    assert!(
        config["version"].as_u64() >= Some(revision),
        "the proxy's version: {config}"
    );
    let orders = &config["services"][SERVICE];
    assert_eq!(
        orders["revision"].as_u64(),
        Some(revision),
        "the route's revision is the service's: {orders}"
    );
    let weights: Vec<_> = orders["route"]["rules"][0]["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("the route's targets: {orders}"))
        .iter()
        .map(|t| t["weight"].as_u64())
        .collect();
    assert_eq!(weights, [Some(90), Some(10)], "{orders}");
}

/// The proxy's `/config`, parsed.
async fn config_json(mesh: &Mesh) -> serde_json::Value {
    let reply = mesh.admin("/config").await;
    assert_eq!(reply.status, StatusCode::OK);
    serde_json::from_str(&reply.body).expect("/config is JSON")
}
