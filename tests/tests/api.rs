//! The gRPC API against a real node on loopback: every RPC's answers to good and bad input,
//! discovery semantics, the standard health service and reflection.

use std::collections::HashMap;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_tests::{TestNode, assert_status};
use tonic::Code;

fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn register(service: &str, id: &str, port: u32, version: &str) -> pb::RegisterInstanceRequest {
    pb::RegisterInstanceRequest {
        service: service.into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
        attributes: attrs(&[("version", version)]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_return_revisions_and_reads_see_them() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    let one = r
        .register_instance(register("orders.cafe.local", "i-1", 8081, "v1"))
        .await
        .unwrap()
        .into_inner();
    let two = r
        .register_instance(register("orders.cafe.local", "i-2", 8082, "v2"))
        .await
        .unwrap()
        .into_inner();
    assert!(two.revision > one.revision && !two.replaced);
    let instance = two.instance.unwrap();
    assert_eq!(
        (instance.id.as_str(), instance.port, instance.health),
        ("i-2", 8082, pb::HealthStatus::Healthy as i32)
    );

    // Re-registering the same id replaces it.
    let again = r
        .register_instance(register("orders.cafe.local", "i-2", 9092, "v2"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replaced);
    assert_eq!(
        again.instance.unwrap().create_revision,
        instance.create_revision
    );

    let svc = r
        .get_service(pb::GetServiceRequest {
            name: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(svc.revision, again.revision);
    let svc = svc.service.unwrap();
    assert_eq!(
        (svc.instance_count, svc.mod_revision, svc.dns_ttl_seconds),
        (2, again.revision, 5)
    );

    let ns = r
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ns.namespaces.len(), 1);
    assert_eq!(
        (
            ns.namespaces[0].name.as_str(),
            ns.namespaces[0].service_count
        ),
        ("cafe.local", 1)
    );

    let listed = r
        .list_instances(pb::ListInstancesRequest {
            service: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["i-1", "i-2"]);

    let dereg = r
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dereg.revision > again.revision);
    assert_status(
        r.get_instance(pb::GetInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "instance \"i-1.orders.cafe.local\" not found",
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn names_are_case_insensitive() {
    let node = TestNode::start().await;
    let mut r = node.registry().await;
    let ns = r
        .create_namespace(pb::CreateNamespaceRequest {
            name: "Cafe.Local.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ns.namespace.unwrap().name, "cafe.local");
    r.create_service(pb::CreateServiceRequest {
        name: "ORDERS.cafe.local".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    r.register_instance(register("Orders.Cafe.Local", "I-1", 80, "v1"))
        .await
        .unwrap();
    let found = r
        .get_instance(pb::GetInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.instance.unwrap().service, "orders.cafe.local");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    let svc = "orders.cafe.local";

    // Namespaces.
    assert_status(
        r.create_namespace(pb::CreateNamespaceRequest {
            name: "café.local".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "name: label \"café\" contains 'é'",
    );
    assert_status(
        r.create_namespace(pb::CreateNamespaceRequest {
            name: "".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "name: must not be empty",
    );
    assert_status(
        r.create_namespace(pb::CreateNamespaceRequest {
            name: "cafe.local".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        "namespace \"cafe.local\" already exists",
    );
    assert_status(
        r.create_namespace(pb::CreateNamespaceRequest {
            name: "x.local".into(),
            description: "d".repeat(2000),
        })
        .await,
        Code::InvalidArgument,
        "description: longer than 1024 bytes",
    );
    assert_status(
        r.get_namespace(pb::GetNamespaceRequest {
            name: "nope.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "namespace \"nope.local\" not found",
    );
    assert_status(
        r.delete_namespace(pb::DeleteNamespaceRequest {
            name: "cafe.local".into(),
        })
        .await,
        Code::FailedPrecondition,
        "namespace \"cafe.local\" still has 1 service(s)",
    );
    assert_status(
        r.list_namespaces(pb::ListNamespacesRequest { consistency: 7 })
            .await,
        Code::InvalidArgument,
        "consistency: 7 is not a Consistency",
    );

    // Services.
    assert_status(
        r.create_service(pb::CreateServiceRequest {
            name: "orders".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "name: \"orders\" is not SERVICE.NAMESPACE",
    );
    assert_status(
        r.create_service(pb::CreateServiceRequest {
            name: "orders.bank.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "namespace \"bank.local\" not found",
    );
    assert_status(
        r.create_service(pb::CreateServiceRequest {
            name: "x.cafe.local".into(),
            dns_ttl_seconds: 100_000,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "dns_ttl_seconds: 100000 is outside 1-86400",
    );
    let bad_check = pb::HealthCheck {
        kind: Some(pb::health_check::Kind::Http(pb::HttpCheck {
            path: "healthz".into(),
        })),
        ..Default::default()
    };
    assert_status(
        r.create_service(pb::CreateServiceRequest {
            name: "x.cafe.local".into(),
            health_check: Some(bad_check),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "health_check.http.path: \"healthz\" is not an absolute URL path",
    );
    assert_status(
        r.create_service(pb::CreateServiceRequest {
            name: "x.cafe.local".into(),
            health_check: Some(pb::HealthCheck::default()),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "health_check.kind: set one of",
    );
    assert_status(
        r.get_service(pb::GetServiceRequest {
            name: "nope.cafe.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );
    assert_status(
        r.list_services(pb::ListServicesRequest {
            namespace: "nope.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "namespace \"nope.local\" not found",
    );
    assert_status(
        r.delete_service(pb::DeleteServiceRequest {
            name: "nope.cafe.local".into(),
            force: false,
        })
        .await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );

    // Instances.
    assert_status(
        r.register_instance(register(svc, "i-1", 0, "v1")).await,
        Code::InvalidArgument,
        "port: 0 is not a port (1-65535)",
    );
    assert_status(
        r.register_instance(register(svc, "i-1", 70_000, "v1"))
            .await,
        Code::InvalidArgument,
        "port: 70000 is not a port",
    );
    assert_status(
        r.register_instance(register(svc, "i_1", 80, "v1")).await,
        Code::InvalidArgument,
        "id: label \"i_1\" contains '_'",
    );
    assert_status(
        r.register_instance(pb::RegisterInstanceRequest {
            address: "10.0.0.256".into(),
            ..register(svc, "i-1", 80, "v1")
        })
        .await,
        Code::InvalidArgument,
        "address: \"10.0.0.256\" is not an IPv4 or IPv6 address",
    );
    assert_status(
        r.register_instance(pb::RegisterInstanceRequest {
            attributes: attrs(&[("version", &"x".repeat(300))]),
            ..register(svc, "i-1", 80, "v1")
        })
        .await,
        Code::InvalidArgument,
        "attributes[\"version\"]: value is 300 bytes",
    );
    let many: HashMap<String, String> = (0..31).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_status(
        r.register_instance(pb::RegisterInstanceRequest {
            attributes: many,
            ..register(svc, "i-1", 80, "v1")
        })
        .await,
        Code::InvalidArgument,
        "attributes: 31 attributes; at most 30",
    );
    assert_status(
        r.register_instance(register("nope.cafe.local", "i-1", 80, "v1"))
            .await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );
    assert_status(
        r.deregister_instance(pb::DeregisterInstanceRequest {
            service: svc.into(),
            id: "i-9".into(),
        })
        .await,
        Code::NotFound,
        "instance \"i-9.orders.cafe.local\" not found",
    );
    assert_status(
        r.update_instance_health(pb::UpdateInstanceHealthRequest {
            service: svc.into(),
            id: "i-9".into(),
            health: 0,
        })
        .await,
        Code::InvalidArgument,
        "health: 0 is not HEALTHY, UNHEALTHY or UNKNOWN",
    );
    assert_status(
        r.list_instances(pb::ListInstancesRequest {
            service: "nope.cafe.local".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );

    // Discovery.
    let discover = |f: fn(&mut pb::DiscoverInstancesRequest)| {
        let mut req = pb::DiscoverInstancesRequest {
            service: svc.into(),
            ..Default::default()
        };
        f(&mut req);
        req
    };
    assert_status(
        r.discover_instances(discover(|q| q.max_results = 1001))
            .await,
        Code::InvalidArgument,
        "max_results: 1001 is above the limit of 1000",
    );
    assert_status(
        r.discover_instances(discover(|q| q.health_filter = 42))
            .await,
        Code::InvalidArgument,
        "health_filter: 42 is not a HealthFilter",
    );
    assert_status(
        r.discover_instances(discover(|q| q.service = "nope.cafe.local".into()))
            .await,
        Code::NotFound,
        "service \"nope.cafe.local\" not found",
    );
    assert_status(
        r.discover_instances(discover(|q| {
            q.query_parameters = attrs(&[("bad key", "v")])
        }))
        .await,
        Code::InvalidArgument,
        "query_parameters[\"bad key\"]: key contains ' '",
    );

    // After all that, nothing got in and the node still serves.
    let listed = r
        .list_instances(pb::ListInstancesRequest {
            service: svc.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.into_inner().instances.is_empty());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_filters_by_attributes_and_health() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    for (i, v) in ["v1", "v1", "v1", "v2"].iter().enumerate() {
        r.register_instance(register(
            "orders.cafe.local",
            &format!("i-{i}"),
            8080 + i as u32,
            v,
        ))
        .await
        .unwrap();
    }
    let discover = |query: &[(&str, &str)],
                    optional: &[(&str, &str)],
                    health: pb::HealthFilter,
                    max: u32| pb::DiscoverInstancesRequest {
        service: "orders.cafe.local".into(),
        query_parameters: attrs(query),
        optional_parameters: attrs(optional),
        health_filter: health as i32,
        max_results: max,
        consistency: pb::Consistency::Linearizable as i32,
    };
    let ids = |resp: pb::DiscoverInstancesResponse| {
        let mut ids: Vec<String> = resp.instances.into_iter().map(|i| i.id).collect();
        ids.sort();
        ids
    };
    use pb::HealthFilter as H;

    let all = r
        .discover_instances(discover(&[], &[], H::Unspecified, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(all.revision > 0 && all.service_revision == all.revision);
    assert_eq!(ids(all), ["i-0", "i-1", "i-2", "i-3"]);
    let v2 = r
        .discover_instances(discover(&[("version", "v2")], &[], H::Healthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(v2), ["i-3"]);
    let prefer = r
        .discover_instances(discover(&[], &[("version", "v2")], H::Healthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(prefer), ["i-3"]);
    let none_preferred = r
        .discover_instances(discover(&[], &[("version", "v9")], H::Healthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none_preferred.instances.len(), 4);

    // max_results samples: answers are capped, and over many calls every instance appears.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let two = r
            .discover_instances(discover(&[], &[], H::All, 2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(two.instances.len(), 2);
        seen.extend(two.instances.into_iter().map(|i| i.id));
    }
    assert_eq!(
        seen.len(),
        4,
        "random order should reach every instance: {seen:?}"
    );

    // Health: mark i-3 (the only v2) unhealthy, custom health takes effect at commit.
    let marked = r
        .update_instance_health(pb::UpdateInstanceHealthRequest {
            service: "orders.cafe.local".into(),
            id: "i-3".into(),
            health: pb::HealthStatus::Unhealthy as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        marked.instance.unwrap().health,
        pb::HealthStatus::Unhealthy as i32
    );
    let v2 = r
        .discover_instances(discover(&[("version", "v2")], &[], H::Healthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(v2.instances.is_empty());
    assert_eq!(v2.revision, marked.revision);
    let v2 = r
        .discover_instances(discover(&[("version", "v2")], &[], H::HealthyOrElseAll, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(v2), ["i-3"]);
    let sick = r
        .discover_instances(discover(&[], &[], H::Unhealthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(sick), ["i-3"]);
    let healthy = r
        .discover_instances(discover(&[], &[], H::Healthy, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(healthy), ["i-0", "i-1", "i-2"]);
    let or_else = r
        .discover_instances(discover(&[], &[], H::HealthyOrElseAll, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(or_else), ["i-0", "i-1", "i-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_health_service_and_reflection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let node = TestNode::start().await;
    let mut health = HealthClient::new(node.channel().await);
    for service in ["", "meridian.v1.Registry", "meridian.v1.Cluster"] {
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

    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "meridian.v1.Registry",
        "meridian.v1.Cluster",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_reports_a_single_node_leader() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    let written = r
        .register_instance(register("orders.cafe.local", "i-1", 80, "v1"))
        .await
        .unwrap()
        .into_inner();
    let status = node
        .cluster()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.node_id, status.leader_id, status.role),
        (1, 1, pb::Role::Leader as i32)
    );
    assert!(status.term >= 1);
    assert!(status.commit_index >= written.revision && status.applied_index >= written.revision);
    assert_eq!(status.revision, written.revision);
    assert_eq!(status.members.len(), 1);
    assert!(status.members[0].voter);
}
