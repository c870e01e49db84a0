use std::collections::HashMap;

use super::*;

fn instance(id: &str, address: &str, port: u32) -> pb::Instance {
    pb::Instance {
        service: "orders.cafe.local".into(),
        id: id.into(),
        address: address.into(),
        port,
        attributes: HashMap::from([("version".to_owned(), "v1".to_owned())]),
        health: pb::HealthStatus::Healthy as i32,
        create_revision: 1,
        mod_revision: 1,
    }
}

fn target(version: &str, weight: u32) -> pb::WeightedTarget {
    pb::WeightedTarget {
        subset: HashMap::from([("version".to_owned(), version.to_owned())]),
        weight,
    }
}

fn rule(targets: Vec<pb::WeightedTarget>) -> pb::RouteRule {
    pb::RouteRule {
        name: String::new(),
        r#match: None,
        targets,
        timeout_ms: 0,
        retry: None,
    }
}

fn state(route: Option<pb::Route>) -> pb::ServiceState {
    pb::ServiceState {
        service: "orders.cafe.local".into(),
        exists: true,
        service_revision: 7,
        route,
        instances: vec![instance("i-1", "127.0.0.1", 8081)],
    }
}

fn route(rules: Vec<pb::RouteRule>) -> pb::Route {
    pb::Route {
        service: "orders.cafe.local".into(),
        rules,
        ..Default::default()
    }
}

fn field_of(e: ConvertError) -> String {
    match e {
        ConvertError::Missing { field }
        | ConvertError::OutOfRange { field, .. }
        | ConvertError::TooMany { field, .. }
        | ConvertError::Invalid { field, .. } => field,
    }
}

#[test]
fn a_valid_state_converts_with_defaults() {
    let s = ServiceState::try_from(state(Some(route(vec![rule(vec![
        target("v1", 90),
        target("v2", 10),
    ])]))))
    .unwrap();
    assert_eq!(s.name, "orders.cafe.local");
    assert_eq!(s.revision, 7);
    assert_eq!(s.instances[0].addr, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(s.instances[0].health, Health::Healthy);
    assert_eq!(s.instances[0].protocol, Protocol::Http1);
    let route = s.route.unwrap();
    assert_eq!(route.rules[0].timeout, DEFAULT_TIMEOUT);
    assert_eq!(route.rules[0].targets[1].weight, 10);
    assert_eq!(route.load_balancer, LoadBalancer::P2cEwma);
    assert_eq!(route.outlier, Some(OutlierPolicy::default()));
}

#[test]
fn protocol_attribute_selects_h2c() {
    let mut inst = instance("i-1", "::1", 50051);
    inst.attributes.insert("protocol".into(), "h2c".into());
    let i = Instance::try_from(inst).unwrap();
    assert_eq!(i.protocol, Protocol::H2c);
    assert_eq!(i.addr, "[::1]:50051".parse().unwrap());
}

#[test]
fn bad_instances_name_the_field() {
    let mut s = state(None);
    s.instances.push(instance("i-2", "not-an-ip", 80));
    let e = ServiceState::try_from(s).unwrap_err();
    assert_eq!(field_of(e.clone()), "instances[1].address");
    assert!(e.to_string().contains("not an IP address"), "{e}");

    let mut s = state(None);
    s.instances[0].port = 70_000;
    assert_eq!(
        field_of(ServiceState::try_from(s).unwrap_err()),
        "instances[0].port"
    );

    let mut s = state(None);
    s.instances[0].id.clear();
    assert_eq!(
        field_of(ServiceState::try_from(s).unwrap_err()),
        "instances[0].id"
    );
}

#[test]
fn weights_are_checked() {
    let too_heavy = state(Some(route(vec![rule(vec![
        target("v1", 1),
        target("v2", 10_001),
    ])])));
    let e = ServiceState::try_from(too_heavy).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route.rules[0].targets[1].weight: 10001 is outside 0..=10000"
    );

    let all_zero = state(Some(route(vec![rule(vec![
        target("v1", 0),
        target("v2", 0),
    ])])));
    assert_eq!(
        field_of(ServiceState::try_from(all_zero).unwrap_err()),
        "route.rules[0].targets"
    );
}

#[test]
fn targets_need_a_subset_and_a_bounded_count() {
    let no_subset = pb::WeightedTarget {
        subset: HashMap::new(),
        weight: 1,
    };
    let e = ServiceState::try_from(state(Some(route(vec![rule(vec![no_subset])])))).unwrap_err();
    assert_eq!(field_of(e), "route.rules[0].targets[0].subset");

    let eleven = (0..11).map(|i| target(&format!("v{i}"), 1)).collect();
    let e = ServiceState::try_from(state(Some(route(vec![rule(eleven)])))).unwrap_err();
    assert!(
        matches!(
            e,
            ConvertError::TooMany {
                len: 11,
                max: 10,
                ..
            }
        ),
        "{e}"
    );

    let e = ServiceState::try_from(state(Some(route(vec![rule(vec![])])))).unwrap_err();
    assert_eq!(field_of(e), "route.rules[0].targets");
}

#[test]
fn matches_are_checked() {
    let mut r = rule(vec![target("v1", 1)]);
    r.r#match = Some(pb::RouteMatch {
        path_prefix: "api".into(),
        ..Default::default()
    });
    let e = ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err();
    assert_eq!(field_of(e), "route.rules[0].match.path_prefix");

    r.r#match = Some(pb::RouteMatch {
        path_prefix: "/a".into(),
        path_exact: "/b".into(),
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].match.path_exact"
    );

    r.r#match = Some(pb::RouteMatch {
        method: "get".into(),
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].match.method"
    );

    r.r#match = Some(pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "x canary".into(),
            value: Some(pb::header_match::Value::Exact("1".into())),
        }],
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].match.headers[0].name"
    );

    r.r#match = Some(pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "X-Canary".into(),
            value: None,
        }],
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r])))).unwrap_err()),
        "route.rules[0].match.headers[0].value"
    );
}

#[test]
fn retry_and_timeouts_are_checked() {
    let mut r = rule(vec![target("v1", 1)]);
    r.retry = Some(pb::RetryPolicy {
        attempts: 11,
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].retry.attempts"
    );

    r.retry = Some(pb::RetryPolicy {
        attempts: 2,
        retry_on: vec![pb::RetryOn::ServerError as i32, 99],
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].retry.retry_on[1]"
    );

    r.retry = Some(pb::RetryPolicy {
        attempts: 2,
        per_try_timeout_ms: 250,
        ..Default::default()
    });
    r.timeout_ms = 3_600_001;
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(route(vec![r.clone()])))).unwrap_err()),
        "route.rules[0].timeout_ms"
    );

    r.timeout_ms = 1500;
    let s = ServiceState::try_from(state(Some(route(vec![r])))).unwrap();
    let rule = &s.route.unwrap().rules[0];
    assert_eq!(rule.timeout, Duration::from_millis(1500));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(retry.retry_on, RetryOn::default());
}

#[test]
fn load_balancer_and_outlier_detection() {
    let mut r = route(vec![rule(vec![target("v1", 1)])]);
    r.load_balancer = Some(pb::LoadBalancer {
        policy: pb::LoadBalancerPolicy::RoundRobin as i32,
        hash_header: "x-user".into(),
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(r.clone()))).unwrap_err()),
        "route.load_balancer.hash_header"
    );

    r.load_balancer = Some(pb::LoadBalancer {
        policy: 42,
        hash_header: String::new(),
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(r.clone()))).unwrap_err()),
        "route.load_balancer.policy"
    );

    r.load_balancer = Some(pb::LoadBalancer {
        policy: pb::LoadBalancerPolicy::RingHash as i32,
        hash_header: "X-User".into(),
    });
    r.outlier_detection = Some(pb::OutlierDetection {
        max_ejection_percent: 101,
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(r.clone()))).unwrap_err()),
        "route.outlier_detection.max_ejection_percent"
    );

    r.outlier_detection = Some(pb::OutlierDetection {
        base_ejection_ms: 50,
        ..Default::default()
    });
    assert_eq!(
        field_of(ServiceState::try_from(state(Some(r.clone()))).unwrap_err()),
        "route.outlier_detection.base_ejection_ms"
    );

    r.outlier_detection = Some(pb::OutlierDetection {
        disabled: true,
        ..Default::default()
    });
    let route = ServiceState::try_from(state(Some(r)))
        .unwrap()
        .route
        .unwrap();
    assert_eq!(route.outlier, None);
    assert_eq!(
        route.load_balancer,
        LoadBalancer::RingHash {
            hash_header: Some(HeaderName::from_static("x-user"))
        }
    );
}

#[test]
fn service_names_are_checked_and_lower_cased() {
    let mut s = state(None);
    s.service = "Orders.Cafe.Local".into();
    assert_eq!(ServiceState::try_from(s).unwrap().name, "orders.cafe.local");
    let mut s = state(None);
    s.service = "nodots".into();
    assert_eq!(field_of(ServiceState::try_from(s).unwrap_err()), "service");
    let mut s = state(None);
    s.service.clear();
    assert!(matches!(
        ServiceState::try_from(s).unwrap_err(),
        ConvertError::Missing { .. }
    ));
}

#[test]
fn unhealthy_and_unknown_health() {
    let mut inst = instance("i-1", "127.0.0.1", 1);
    inst.health = pb::HealthStatus::Unhealthy as i32;
    assert_eq!(
        Instance::try_from(inst.clone()).unwrap().health,
        Health::Unhealthy
    );
    inst.health = 17;
    assert_eq!(Instance::try_from(inst).unwrap().health, Health::Unknown);
}
