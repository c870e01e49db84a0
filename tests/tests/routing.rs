//! `meridian.v1.Routing` against a real node on loopback: put/get/list/delete, defaults,
//! every validation rule answering INVALID_ARGUMENT with the field named, NOT_FOUND for
//! unknown services and routes, linearizable reads.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_client::RoutingClient;
use meridian_tests::{TestNode, assert_status};
use tonic::Code;
use tonic::transport::Channel;

fn subset(version: &str) -> HashMap<String, String> {
    HashMap::from([("version".to_string(), version.to_string())])
}

fn target(version: &str, weight: u32) -> pb::WeightedTarget {
    pb::WeightedTarget {
        subset: subset(version),
        weight,
    }
}

fn split(service: &str, v1: u32, v2: u32) -> pb::Route {
    pb::Route {
        service: service.into(),
        rules: vec![pb::RouteRule {
            targets: vec![target("v1", v1), target("v2", v2)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route that uses every field; each bad case below breaks one of them.
fn full(service: &str) -> pb::Route {
    pb::Route {
        service: service.into(),
        rules: vec![
            pb::RouteRule {
                name: "canary".into(),
                r#match: Some(pb::RouteMatch {
                    path_prefix: "/api".into(),
                    method: "GET".into(),
                    headers: vec![pb::HeaderMatch {
                        name: "X-Canary".into(),
                        value: Some(pb::header_match::Value::Exact("1".into())),
                    }],
                    ..Default::default()
                }),
                targets: vec![target("v2", 1)],
                timeout_ms: 2_000,
                retry: Some(pb::RetryPolicy {
                    attempts: 2,
                    per_try_timeout_ms: 500,
                    retry_on: vec![pb::RetryOn::GatewayError as i32],
                    retry_non_idempotent: false,
                }),
            },
            split(service, 90, 10).rules.remove(0),
        ],
        load_balancer: Some(pb::LoadBalancer {
            policy: pb::LoadBalancerPolicy::RingHash as i32,
            hash_header: "X-User".into(),
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_failures: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn routing(node: &TestNode) -> RoutingClient<Channel> {
    RoutingClient::new(node.channel().await)
}

async fn put(
    r: &mut RoutingClient<Channel>,
    route: pb::Route,
) -> Result<pb::PutRouteResponse, tonic::Status> {
    r.put_route(pb::PutRouteRequest { route: Some(route) })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_list_delete() {
    let node = TestNode::start().await;
    let mut registry = node.cafe(&["orders", "menu"]).await;
    let mut r = routing(&node).await;

    let put1 = put(&mut r, full("Orders.Cafe.Local")).await.unwrap();
    let route = put1.route.unwrap();
    assert_eq!(route.service, "orders.cafe.local");
    assert_eq!(
        (route.create_revision, route.mod_revision),
        (put1.revision, put1.revision)
    );
    // Defaults resolved, names lower-cased.
    assert_eq!(route.rules[1].timeout_ms, 15_000);
    assert_eq!(
        route.rules[0].r#match.as_ref().unwrap().headers[0].name,
        "x-canary"
    );
    assert_eq!(route.load_balancer.as_ref().unwrap().hash_header, "x-user");
    let outlier = route.outlier_detection.unwrap();
    assert_eq!(
        (
            outlier.consecutive_failures,
            outlier.base_ejection_ms,
            outlier.max_ejection_percent
        ),
        (3, 30_000, 50)
    );

    // The service's revision moved with its route.
    let service = registry
        .get_service(pb::GetServiceRequest {
            name: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(service.mod_revision, put1.revision);

    // Linearizable get sees the write; replacing keeps the create revision.
    let put2 = put(&mut r, split("orders.cafe.local", 0, 100))
        .await
        .unwrap();
    let got = r
        .get_route(pb::GetRouteRequest {
            service: "orders.cafe.local".into(),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.revision >= put2.revision);
    let got = got.route.unwrap();
    assert_eq!(
        (got.create_revision, got.mod_revision),
        (put1.revision, put2.revision)
    );
    assert_eq!(got.rules.len(), 1);
    assert_eq!(got.rules[0].targets[1].weight, 100);

    // List: all namespaces, one namespace, a namespace without routes.
    put(&mut r, split("menu.cafe.local", 1, 1)).await.unwrap();
    registry
        .create_namespace(pb::CreateNamespaceRequest {
            name: "other.local".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    let all = r
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = all.routes.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(names, ["menu.cafe.local", "orders.cafe.local"]);
    let cafe = r
        .list_routes(pb::ListRoutesRequest {
            namespace: "cafe.local".into(),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cafe.routes.len(), 2);
    let other = r
        .list_routes(pb::ListRoutesRequest {
            namespace: "other.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.routes.is_empty());

    // Delete; then get and delete again are NOT_FOUND.
    let deleted = r
        .delete_route(pb::DeleteRouteRequest {
            service: "orders.cafe.local".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.revision > put2.revision);
    assert_status(
        r.get_route(pb::GetRouteRequest {
            service: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "route of service \"orders.cafe.local\" not found",
    );
    assert_status(
        r.delete_route(pb::DeleteRouteRequest {
            service: "orders.cafe.local".into(),
        })
        .await,
        Code::NotFound,
        "route of service",
    );

    // Deleting a service drops its route.
    registry
        .delete_service(pb::DeleteServiceRequest {
            name: "menu.cafe.local".into(),
            force: true,
        })
        .await
        .unwrap();
    let all = r
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.routes.is_empty());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_services_and_namespaces_are_not_found() {
    let node = TestNode::start().await;
    node.cafe(&["orders"]).await;
    let mut r = routing(&node).await;
    assert_status(
        put(&mut r, split("nope.cafe.local", 1, 1)).await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );
    assert_status(
        r.get_route(pb::GetRouteRequest {
            service: "nope.cafe.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "service",
    );
    assert_status(
        r.list_routes(pb::ListRoutesRequest {
            namespace: "nope.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "namespace",
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_validation_rule_names_the_field() {
    let node = TestNode::start().await;
    node.cafe(&["orders"]).await;
    let mut r = routing(&node).await;
    let s = "orders.cafe.local";
    type Edit = fn(&mut pb::Route);
    let cases: Vec<(&str, Edit)> = vec![
        ("route.service:", |r| r.service = "no dots".into()),
        ("route.rules:", |r| r.rules.clear()),
        ("route.rules:", |r| r.rules = vec![r.rules[1].clone(); 51]),
        ("route.rules[0].name:", |r| {
            r.rules[0].name = "not a label!".into()
        }),
        ("route.rules[0].targets:", |r| r.rules[0].targets.clear()),
        ("route.rules[1].targets:", |r| {
            r.rules[1].targets = vec![target("v1", 1); 11]
        }),
        ("route.rules[1].targets:", |r| {
            r.rules[1].targets[0].weight = 0;
            r.rules[1].targets[1].weight = 0;
        }),
        ("route.rules[1].targets[1].weight:", |r| {
            r.rules[1].targets[1].weight = 10_001
        }),
        ("route.rules[1].targets[0].subset:", |r| {
            r.rules[1].targets[0].subset.clear()
        }),
        ("route.rules[1].targets[0].subset[\"a b\"]:", |r| {
            r.rules[1].targets[0]
                .subset
                .insert("a b".into(), "x".into());
        }),
        ("route.rules[0].match.path_exact:", |r| {
            r.rules[0].r#match.as_mut().unwrap().path_exact = "/exact".into();
        }),
        ("route.rules[0].match.path_prefix:", |r| {
            r.rules[0].r#match.as_mut().unwrap().path_prefix = "api".into();
        }),
        ("route.rules[0].match.path_exact:", |r| {
            let m = r.rules[0].r#match.as_mut().unwrap();
            m.path_prefix.clear();
            m.path_exact = "no-slash".into();
        }),
        ("route.rules[0].match.method:", |r| {
            r.rules[0].r#match.as_mut().unwrap().method = "get".into();
        }),
        ("route.rules[0].match.headers:", |r| {
            let m = r.rules[0].r#match.as_mut().unwrap();
            m.headers = vec![m.headers[0].clone(); 11];
        }),
        ("route.rules[0].match.headers[0].name:", |r| {
            r.rules[0].r#match.as_mut().unwrap().headers[0].name = "bad header".into();
        }),
        ("route.rules[0].match.headers[0]:", |r| {
            r.rules[0].r#match.as_mut().unwrap().headers[0].value = None;
        }),
        ("route.rules[0].match.headers[0].present:", |r| {
            r.rules[0].r#match.as_mut().unwrap().headers[0].value =
                Some(pb::header_match::Value::Present(false));
        }),
        ("route.rules[0].match.headers[0].exact:", |r| {
            r.rules[0].r#match.as_mut().unwrap().headers[0].value =
                Some(pb::header_match::Value::Exact("a\u{1}b".into()));
        }),
        ("route.rules[0].timeout_ms:", |r| {
            r.rules[0].timeout_ms = 3_600_001
        }),
        ("route.rules[0].retry.attempts:", |r| {
            r.rules[0].retry.as_mut().unwrap().attempts = 11
        }),
        ("route.rules[0].retry.per_try_timeout_ms:", |r| {
            r.rules[0].retry.as_mut().unwrap().per_try_timeout_ms = 3_600_001;
        }),
        ("route.rules[0].retry.retry_on[1]:", |r| {
            r.rules[0].retry.as_mut().unwrap().retry_on.push(0);
        }),
        ("route.rules[0].retry.retry_on[1]:", |r| {
            r.rules[0]
                .retry
                .as_mut()
                .unwrap()
                .retry_on
                .push(pb::RetryOn::GatewayError as i32);
        }),
        ("route.load_balancer.policy:", |r| {
            r.load_balancer.as_mut().unwrap().policy = 99
        }),
        ("route.load_balancer.hash_header:", |r| {
            r.load_balancer.as_mut().unwrap().policy = pb::LoadBalancerPolicy::RoundRobin as i32;
        }),
        ("route.load_balancer.hash_header:", |r| {
            r.load_balancer.as_mut().unwrap().hash_header = "x user".into();
        }),
        ("route.outlier_detection.consecutive_failures:", |r| {
            r.outlier_detection.as_mut().unwrap().consecutive_failures = 1001;
        }),
        ("route.outlier_detection.base_ejection_ms:", |r| {
            r.outlier_detection.as_mut().unwrap().base_ejection_ms = 99;
        }),
        ("route.outlier_detection.max_ejection_percent:", |r| {
            r.outlier_detection.as_mut().unwrap().max_ejection_percent = 101;
        }),
    ];
    put(&mut r, full(s)).await.expect("the full route is valid");
    for (prefix, edit) in cases {
        let mut route = full(s);
        edit(&mut route);
        assert_status(put(&mut r, route).await, Code::InvalidArgument, prefix);
    }
    assert_status(
        r.put_route(pb::PutRouteRequest { route: None }).await,
        Code::InvalidArgument,
        "route: must be set",
    );
    assert_status(
        r.get_route(pb::GetRouteRequest {
            service: "x".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "service:",
    );
    assert_status(
        r.get_route(pb::GetRouteRequest {
            service: s.into(),
            consistency: 42,
        })
        .await,
        Code::InvalidArgument,
        "consistency:",
    );
    // None of the refused routes got in: the valid one is still there, unchanged.
    let got = r
        .get_route(pb::GetRouteRequest {
            service: s.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    assert_eq!(got.rules.len(), 2);
    assert_eq!(got.create_revision, got.mod_revision);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_and_discovery_report_serving_and_are_reflected() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let node = TestNode::start().await;
    let mut health = HealthClient::new(node.channel().await);
    for service in ["meridian.v1.Routing", "meridian.v1.Discovery"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(node.channel().await)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["meridian.v1.Routing", "meridian.v1.Discovery"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    node.stop().await.unwrap();
}
