use std::time::Duration;

use http::StatusCode;
use meridian_proto::v1 as pb;

use super::backend::TestBackend;
use super::*;

const DRAIN: Duration = Duration::from_secs(5);

fn id_of(reply: &Reply) -> &str {
    reply.body.split(' ').next().unwrap_or("")
}

#[tokio::test]
async fn weighted_split_lands_within_4_sigma_and_a_shift_applies_at_once() {
    let (v1, v2) = (
        TestBackend::start("v1").await,
        TestBackend::start("v2").await,
    );
    let mut proxy = Harness::start(None, DRAIN).await;
    let instances = vec![
        instance("i-1", v1.addr, "v1", true),
        instance("i-2", v2.addr, "v2", true),
    ];
    let applied = proxy.push(vec![service(
        ORDERS,
        Some(route(vec![split(&[("v1", 80), ("v2", 20)])])),
        instances.clone(),
    )]);
    assert!(matches!(applied, Applied::Ack(1)), "{applied:?}");
    let client = TestClient::new(proxy.addr, false);
    let n = 2000;
    let mut v2_count = 0;
    for _ in 0..n {
        let reply = client.get("orders.cafe.local:15001", "/menu").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if id_of(&reply) == "v2" {
            v2_count += 1;
        }
    }
    // Binomial(2000, 0.2): mean 400, sd ≈ 17.9, 4 sigma ≈ 72.
    assert!((328..=472).contains(&v2_count), "v2 got {v2_count} of {n}");

    proxy.push(vec![service(
        ORDERS,
        Some(route(vec![split(&[("v1", 0), ("v2", 100)])])),
        instances,
    )]);
    for _ in 0..200 {
        assert_eq!(id_of(&client.get(ORDERS, "/menu").await), "v2");
    }
}

#[tokio::test]
async fn unhealthy_and_removed_endpoints_get_no_traffic() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let mut proxy = Harness::start(None, DRAIN).await;
    proxy.push(vec![service(
        ORDERS,
        None,
        vec![
            instance("a", a.addr, "v1", true),
            instance("b", b.addr, "v1", false),
        ],
    )]);
    let client = TestClient::new(proxy.addr, false);
    for _ in 0..50 {
        assert_eq!(id_of(&client.get(ORDERS, "/").await), "a");
    }
    assert_eq!(b.hits(), 0);
    proxy.serve_orders_from("b", b.addr);
    for _ in 0..50 {
        assert_eq!(id_of(&client.get(ORDERS, "/").await), "b");
    }
}

#[tokio::test]
async fn error_statuses_say_why() {
    let a = TestBackend::start("a").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut only_api = split(&[("v1", 1), ("v2", 0)]);
    only_api.r#match = Some(pb::RouteMatch {
        path_prefix: "/api".into(),
        ..Default::default()
    });
    let mut to_v2 = split(&[("v2", 1)]);
    to_v2.r#match = Some(pb::RouteMatch {
        path_prefix: "/v2".into(),
        ..Default::default()
    });
    proxy.push(vec![
        service(
            ORDERS,
            Some(route(vec![only_api, to_v2])),
            vec![instance("a", a.addr, "v1", true)],
        ),
        pb::ServiceState {
            service: "gone.cafe.local".into(),
            exists: false,
            ..Default::default()
        },
        service(
            "dead.cafe.local",
            None,
            vec![instance("d", closed_port().await, "v1", true)],
        ),
    ]);
    let client = TestClient::new(proxy.addr, false);

    let ok = client.get(ORDERS, "/api/x").await;
    assert_eq!(ok.status, StatusCode::OK);
    let no_rule = client.get(ORDERS, "/other").await;
    assert_eq!(no_rule.status, StatusCode::NOT_FOUND);
    assert!(
        no_rule
            .body
            .contains("no route rule of orders.cafe.local matches GET /other"),
        "{}",
        no_rule.body
    );
    let empty = client.get(ORDERS, "/v2/x").await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        empty
            .body
            .contains("no healthy endpoints for orders.cafe.local subset version=v2"),
        "{}",
        empty.body
    );
    let gone = client.get("gone.cafe.local", "/").await;
    assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(gone.body.contains("does not exist"), "{}", gone.body);
    let dead = client.get("dead.cafe.local", "/").await;
    assert_eq!(dead.status, StatusCode::BAD_GATEWAY);
    assert!(dead.body.contains("cannot connect"), "{}", dead.body);
    // Not subscribed and no stream up: 503 at once (fail static never waits on a dead control plane).
    let unknown = client.get("never.cafe.local", "/").await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
    let no_host = client.get("localhost", "/").await;
    assert_eq!(no_host.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        no_host.body.contains("unknown service localhost"),
        "{}",
        no_host.body
    );

    let metrics = proxy.metrics.render();
    assert!(metrics.contains("meridian_proxy_requests_total{service=\"orders.cafe.local\",subset=\"-\",code=\"404\"} 1"), "{metrics}");
    assert!(metrics.contains("meridian_proxy_requests_total{service=\"orders.cafe.local\",subset=\"version=v1\",code=\"200\"} 1"));
}

#[tokio::test]
async fn default_service_takes_what_is_not_a_service() {
    let a = TestBackend::start("a").await;
    let mut proxy = Harness::start(Some(ORDERS), DRAIN).await;
    proxy.push(vec![
        service(ORDERS, None, vec![instance("a", a.addr, "v1", true)]),
        pb::ServiceState {
            service: "gone.cafe.local".into(),
            exists: false,
            ..Default::default()
        },
    ]);
    let client = TestClient::new(proxy.addr, false);
    for host in ["127.0.0.1:15001", "localhost", "gone.cafe.local"] {
        let reply = client.get(host, "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{host}: {}", reply.body);
        assert_eq!(id_of(&reply), "a");
        // The request's own authority is kept.
        assert!(
            reply.body.contains(&format!("host={host}")),
            "{}",
            reply.body
        );
        assert!(reply.body.contains("xff=127.0.0.1"), "{}", reply.body);
    }
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() {
    let good = TestBackend::start("good").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut rule = split(&[("v1", 1)]);
    rule.retry = Some(pb::RetryPolicy {
        attempts: 2,
        ..Default::default()
    });
    let mut r = route(vec![rule]);
    // Keep the dead endpoint in rotation: this test is about retries, not ejection.
    r.outlier_detection = Some(pb::OutlierDetection {
        disabled: true,
        ..Default::default()
    });
    let instances = vec![
        instance("dead", closed_port().await, "v1", true),
        instance("good", good.addr, "v1", true),
    ];
    proxy.push(vec![service(ORDERS, Some(r), instances)]);
    let client = TestClient::new(proxy.addr, false);
    for method in ["GET", "POST"] {
        for _ in 0..50 {
            let reply = client.send(method, ORDERS, "/", &[], "order=1").await;
            assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.body);
        }
    }
    let metrics = proxy.metrics.render();
    assert!(
        !metrics.contains("meridian_proxy_retries_total{service=\"orders.cafe.local\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn gateway_errors_are_retried_only_for_idempotent_methods() {
    let bad = TestBackend::start("bad").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut rule = split(&[("v1", 1)]);
    rule.retry = Some(pb::RetryPolicy {
        attempts: 3,
        ..Default::default()
    });
    proxy.push(vec![service(
        ORDERS,
        Some(route(vec![rule])),
        vec![instance("bad", bad.addr, "v1", true)],
    )]);
    let client = TestClient::new(proxy.addr, false);
    let reply = client.get(ORDERS, "/?status=503").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bad.hits(), 4, "1 try + 3 retries");
    let reply = client.send("POST", ORDERS, "/?status=503", &[], "x").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bad.hits(), 5, "POST is not retried");
}

#[tokio::test]
async fn timeouts_answer_504_and_per_try_timeouts_retry() {
    let slow = TestBackend::start("slow").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut rule = split(&[("v1", 1)]);
    rule.timeout_ms = 300;
    rule.retry = Some(pb::RetryPolicy {
        attempts: 1,
        per_try_timeout_ms: 100,
        retry_on: vec![pb::RetryOn::PerTryTimeout as i32],
        ..Default::default()
    });
    proxy.push(vec![service(
        ORDERS,
        Some(route(vec![rule])),
        vec![instance("slow", slow.addr, "v1", true)],
    )]);
    let client = TestClient::new(proxy.addr, false);
    let reply = client.get(ORDERS, "/?delay_ms=5000").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(reply.body.contains("upstream timeout"), "{}", reply.body);
    assert_eq!(
        slow.hits(),
        2,
        "one try and one retry after the per-try timeout"
    );
}

#[tokio::test]
async fn header_rules_route_to_their_subset() {
    let (v1, v2) = (
        TestBackend::start("v1").await,
        TestBackend::start("v2").await,
    );
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut canary = split(&[("v2", 1)]);
    canary.r#match = Some(pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "X-Canary".into(),
            value: Some(pb::header_match::Value::Exact("yes".into())),
        }],
        ..Default::default()
    });
    let instances = vec![
        instance("v1", v1.addr, "v1", true),
        instance("v2", v2.addr, "v2", true),
    ];
    proxy.push(vec![service(
        ORDERS,
        Some(route(vec![canary, split(&[("v1", 1)])])),
        instances,
    )]);
    let client = TestClient::new(proxy.addr, false);
    for _ in 0..20 {
        assert_eq!(
            id_of(
                &client
                    .send("GET", ORDERS, "/", &[("x-canary", "yes")], "")
                    .await
            ),
            "v2"
        );
        assert_eq!(id_of(&client.get(ORDERS, "/").await), "v1");
    }
}

#[tokio::test]
async fn http2_clients_and_h2c_endpoints() {
    let a = TestBackend::start("a").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut h1 = instance("h1", a.addr, "v1", true);
    let mut h2 = instance("h2", a.addr, "v2", true);
    h1.attributes.insert("protocol".into(), "http1".into());
    h2.attributes.insert("protocol".into(), "h2c".into());
    let mut to_h2 = split(&[("v2", 1)]);
    to_h2.r#match = Some(pb::RouteMatch {
        path_prefix: "/h2".into(),
        ..Default::default()
    });
    proxy.push(vec![service(
        ORDERS,
        Some(route(vec![to_h2, split(&[("v1", 1)])])),
        vec![h1, h2],
    )]);
    let h2_client = TestClient::new(proxy.addr, true);
    let reply = h2_client.get(ORDERS, "/h1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body.starts_with("a HTTP/1.1 host=orders.cafe.local"),
        "{}",
        reply.body
    );
    let reply = h2_client.get(ORDERS, "/h2").await;
    assert!(reply.body.starts_with("a HTTP/2.0"), "{}", reply.body);
    let h1_client = TestClient::new(proxy.addr, false);
    assert!(
        h1_client
            .get(ORDERS, "/h2")
            .await
            .body
            .starts_with("a HTTP/2.0")
    );
}

#[tokio::test]
async fn a_bad_update_is_rejected_and_the_last_good_config_keeps_routing() {
    let a = TestBackend::start("a").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let good = service(ORDERS, None, vec![instance("a", a.addr, "v1", true)]);
    assert!(matches!(proxy.push(vec![good]), Applied::Ack(1)));
    let bad_route = route(vec![split(&[("v1", 20_000)])]);
    let other = service(
        "reports.cafe.local",
        None,
        vec![instance("r", a.addr, "v1", true)],
    );
    let applied = proxy.push(vec![other, service(ORDERS, Some(bad_route), vec![])]);
    match applied {
        Applied::Nack { version, error } => {
            assert_eq!(version, 2);
            assert_eq!(
                error,
                "services[1].route.rules[0].targets[0].weight: 20000 is outside 0..=10000"
            );
        }
        Applied::Ack(v) => panic!("acked bad version {v}"),
    }
    let table = proxy.discovery.table();
    assert_eq!(table.version, 1, "the whole update is refused");
    assert!(!table.services.contains_key("reports.cafe.local"));
    let client = TestClient::new(proxy.addr, false);
    assert_eq!(client.get(ORDERS, "/").await.status, StatusCode::OK);
    assert!(
        proxy
            .metrics
            .render()
            .contains("meridian_proxy_config_rejected_total 1")
    );
}

#[tokio::test]
async fn failing_endpoints_are_ejected_and_state_survives_updates() {
    let (bad, good) = (
        TestBackend::start("bad").await,
        TestBackend::start("good").await,
    );
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut r = route(vec![split(&[("v1", 1)])]);
    r.load_balancer = Some(pb::LoadBalancer {
        policy: pb::LoadBalancerPolicy::RoundRobin as i32,
        hash_header: String::new(),
    });
    r.outlier_detection = Some(pb::OutlierDetection {
        consecutive_failures: 2,
        base_ejection_ms: 600_000,
        ..Default::default()
    });
    let instances = vec![
        instance("bad", bad.addr, "v1", true),
        instance("good", good.addr, "v1", true),
    ];
    proxy.push(vec![service(ORDERS, Some(r.clone()), instances.clone())]);
    let client = TestClient::new(proxy.addr, false);
    // Every request asks for a 500: the backend "bad" answers so; both do, in fact, so the
    // first endpoint to reach 2 failures is ejected and the 50 % cap spares the other.
    for _ in 0..4 {
        client.get(ORDERS, "/?status=500").await;
    }
    let table = proxy.discovery.table();
    let ejected: Vec<_> = table.services[ORDERS]
        .endpoints
        .iter()
        .filter(|e| e.is_ejected(std::time::Instant::now()))
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    // A new version (weights unchanged, one more attribute) keeps the ejection.
    let mut more = instances;
    more[0].attributes.insert("zone".into(), "a".into());
    proxy.push(vec![service(ORDERS, Some(r), more)]);
    let before = (bad.hits(), good.hits());
    for _ in 0..20 {
        client.get(ORDERS, "/").await;
    }
    let (bad_delta, good_delta) = (bad.hits() - before.0, good.hits() - before.1);
    let expected = if ejected[0] == "bad" {
        (0, 20)
    } else {
        (20, 0)
    };
    assert_eq!((bad_delta, good_delta), expected);
    assert!(
        proxy
            .metrics
            .render()
            .contains("meridian_proxy_ejections_total{service=\"orders.cafe.local\"} 1")
    );
}

#[tokio::test]
async fn in_flight_requests_finish_during_drain_and_new_connections_are_refused() {
    let slow = TestBackend::start("slow").await;
    let mut proxy = Harness::start(None, Duration::from_secs(10)).await;
    proxy.serve_orders_from("slow", slow.addr);
    let client = TestClient::new(proxy.addr, false);
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { client.get(ORDERS, "/?delay_ms=500").await });
    // Wait until the request reached the backend, then shut down.
    slow.wait_for_hits(1).await;
    proxy.shutdown_token().cancel();
    let task = proxy.take_task();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    task.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test]
async fn a_request_body_is_replayed_on_retry() {
    let good = TestBackend::start("good").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    let mut rule = split(&[("v1", 1)]);
    rule.retry = Some(pb::RetryPolicy {
        attempts: 1,
        retry_non_idempotent: true,
        ..Default::default()
    });
    let mut r = route(vec![rule]);
    r.load_balancer = Some(pb::LoadBalancer {
        policy: pb::LoadBalancerPolicy::RoundRobin as i32,
        hash_header: String::new(),
    });
    r.outlier_detection = Some(pb::OutlierDetection {
        disabled: true,
        ..Default::default()
    });
    let instances = vec![
        instance("dead", closed_port().await, "v1", true),
        instance("good", good.addr, "v1", true),
    ];
    proxy.push(vec![service(ORDERS, Some(r), instances)]);
    let client = TestClient::new(proxy.addr, false);
    let body = "x".repeat(10_000);
    for _ in 0..4 {
        assert_eq!(
            client.send("PUT", ORDERS, "/", &[], &body).await.status,
            StatusCode::OK
        );
    }
    proxy.stop().await;
}
