//! Routes in the registry: validation (every rule, naming the field), put/delete semantics,
//! revisions, the change feed, snapshots with and without routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::route::*;
use super::*;

fn svc(full: &str) -> ServiceName {
    ServiceName::parse("service", full).unwrap()
}

fn target(version: &str, weight: u32) -> WeightedTarget {
    WeightedTarget {
        subset: BTreeMap::from([("version".into(), version.into())]),
        weight,
    }
}

fn split(v1: u32, v2: u32) -> RouteSpec {
    RouteSpec::split(vec![target("v1", v1), target("v2", v2)])
}

fn put(full: &str, route: RouteSpec) -> Command {
    Command::PutRoute {
        service: svc(full),
        route,
    }
}

fn setup() -> Vec<Command> {
    vec![
        Command::CreateNamespace {
            name: "cafe.local".into(),
            description: String::new(),
        },
        Command::CreateService(ServiceSpec {
            name: svc("orders.cafe.local"),
            description: String::new(),
            dns_ttl_seconds: 5,
            health_check: None,
        }),
        Command::CreateService(ServiceSpec {
            name: svc("menu.cafe.local"),
            description: String::new(),
            dns_ttl_seconds: 5,
            health_check: None,
        }),
    ]
}

fn registry() -> Registry {
    let mut r = Registry::new();
    for (i, c) in setup().iter().enumerate() {
        r.apply(i as u64 + 1, c).unwrap();
    }
    r
}

/// A rich route that passes validation; each case below breaks one field of it.
fn full_route() -> RouteSpec {
    RouteSpec {
        rules: vec![
            RouteRule {
                name: "canary".into(),
                matches: Some(RouteMatch {
                    path: Some(PathMatch::Prefix("/api".into())),
                    method: Some("GET".into()),
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value: HeaderValueMatch::Exact("1".into()),
                    }],
                }),
                targets: vec![target("v2", 1)],
                timeout_ms: 2_000,
                retry: Some(RetryPolicy {
                    attempts: 2,
                    per_try_timeout_ms: 500,
                    retry_on: RetryPolicy::DEFAULT_RETRY_ON.to_vec(),
                    retry_non_idempotent: false,
                }),
            },
            split(90, 10).rules.remove(0),
        ],
        load_balancer: LoadBalancer {
            policy: LoadBalancerPolicy::RingHash,
            hash_header: Some("x-user".into()),
        },
        outlier_detection: OutlierDetection::default(),
    }
}

#[test]
fn validation_names_the_field() {
    type Edit = fn(&mut RouteSpec);
    let cases: Vec<(&str, Edit)> = vec![
        ("route.rules:", |r| r.rules.clear()),
        ("route.rules:", |r| {
            let rule = r.rules[1].clone();
            r.rules = vec![rule; MAX_RULES + 1];
        }),
        ("route.rules[0].name:", |r| {
            r.rules[0].name = "Bad Name".into()
        }),
        ("route.rules[0].targets:", |r| r.rules[0].targets.clear()),
        ("route.rules[1].targets:", |r| {
            r.rules[1].targets = vec![target("v1", 1); MAX_TARGETS + 1];
        }),
        ("route.rules[1].targets:", |r| {
            r.rules[1].targets[0].weight = 0;
            r.rules[1].targets[1].weight = 0;
        }),
        ("route.rules[1].targets[1].weight:", |r| {
            r.rules[1].targets[1].weight = MAX_WEIGHT + 1;
        }),
        ("route.rules[1].targets[0].subset:", |r| {
            r.rules[1].targets[0].subset.clear();
        }),
        ("route.rules[1].targets[0].subset[\"bad key\"]:", |r| {
            r.rules[1].targets[0]
                .subset
                .insert("bad key".into(), "x".into());
        }),
        ("route.rules[0].match.path_prefix:", |r| {
            r.rules[0].matches.as_mut().unwrap().path = Some(PathMatch::Prefix("api".into()));
        }),
        ("route.rules[0].match.path_exact:", |r| {
            r.rules[0].matches.as_mut().unwrap().path = Some(PathMatch::Exact("/a b".into()));
        }),
        ("route.rules[0].match.method:", |r| {
            r.rules[0].matches.as_mut().unwrap().method = Some("get".into());
        }),
        ("route.rules[0].match.headers:", |r| {
            let m = r.rules[0].matches.as_mut().unwrap();
            m.headers = vec![m.headers[0].clone(); MAX_HEADERS + 1];
        }),
        ("route.rules[0].match.headers[0].name:", |r| {
            r.rules[0].matches.as_mut().unwrap().headers[0].name = "X-Canary".into();
        }),
        ("route.rules[0].match.headers[0].exact:", |r| {
            r.rules[0].matches.as_mut().unwrap().headers[0].value =
                HeaderValueMatch::Exact("a\nb".into());
        }),
        ("route.rules[0].timeout_ms:", |r| r.rules[0].timeout_ms = 0),
        ("route.rules[0].timeout_ms:", |r| {
            r.rules[0].timeout_ms = MAX_TIMEOUT_MS + 1;
        }),
        ("route.rules[0].retry.attempts:", |r| {
            r.rules[0].retry.as_mut().unwrap().attempts = 11;
        }),
        ("route.rules[0].retry.per_try_timeout_ms:", |r| {
            r.rules[0].retry.as_mut().unwrap().per_try_timeout_ms = MAX_TIMEOUT_MS + 1;
        }),
        ("route.rules[0].retry.retry_on:", |r| {
            r.rules[0].retry.as_mut().unwrap().retry_on.clear();
        }),
        ("route.rules[0].retry.retry_on[1]:", |r| {
            r.rules[0].retry.as_mut().unwrap().retry_on = vec![RetryOn::Reset, RetryOn::Reset];
        }),
        ("route.load_balancer.hash_header:", |r| {
            r.load_balancer.policy = LoadBalancerPolicy::RoundRobin;
        }),
        ("route.load_balancer.hash_header:", |r| {
            r.load_balancer.hash_header = Some("x user".into());
        }),
        ("route.outlier_detection.consecutive_failures:", |r| {
            r.outlier_detection.consecutive_failures = 0;
        }),
        ("route.outlier_detection.base_ejection_ms:", |r| {
            r.outlier_detection.base_ejection_ms = 99;
        }),
        ("route.outlier_detection.max_ejection_percent:", |r| {
            r.outlier_detection.max_ejection_percent = 101;
        }),
    ];
    assert!(put("orders.cafe.local", full_route()).validate().is_ok());
    for (expect, edit) in cases {
        let mut route = full_route();
        edit(&mut route);
        let err = put("orders.cafe.local", route.clone())
            .validate()
            .expect_err(expect);
        assert!(matches!(err, RegistryError::InvalidArgument { .. }));
        assert!(
            err.to_string().starts_with(expect),
            "want {expect}, got {err}"
        );
        // apply refuses it too, and leaves the registry untouched.
        let mut r = registry();
        let before = r.clone();
        assert!(r.apply(10, &put("orders.cafe.local", route)).is_err());
        assert_eq!(r, before);
    }
    // A zero weight beside a positive one is fine (listed, sent nothing).
    assert!(put("orders.cafe.local", split(0, 100)).validate().is_ok());
}

#[test]
fn put_get_replace_delete() {
    let mut r = registry();
    let before = r.service(&svc("orders.cafe.local")).unwrap().mod_revision;
    let menu_before = Arc::clone(r.service(&svc("menu.cafe.local")).unwrap());

    let Outcome::Route(route) = r
        .apply(10, &put("orders.cafe.local", split(90, 10)))
        .unwrap()
    else {
        panic!("a route outcome");
    };
    assert_eq!((route.create_revision, route.mod_revision), (10, 10));
    let orders = r.service(&svc("orders.cafe.local")).unwrap();
    assert!(orders.mod_revision > before);
    assert_eq!(orders.mod_revision, 10);
    assert_eq!(orders.route.as_deref(), Some(&*route));
    assert_eq!(r.namespace("cafe.local").unwrap().mod_revision, 10);
    // Another service is not touched (its watchers are not woken).
    assert!(Arc::ptr_eq(
        r.service(&svc("menu.cafe.local")).unwrap(),
        &menu_before
    ));

    // Replacing keeps the create revision.
    r.apply(11, &put("orders.cafe.local", split(0, 100)))
        .unwrap();
    let route = r
        .service(&svc("orders.cafe.local"))
        .unwrap()
        .route
        .clone()
        .unwrap();
    assert_eq!((route.create_revision, route.mod_revision), (10, 11));
    assert_eq!(route.spec, split(0, 100));

    r.apply(
        12,
        &Command::DeleteRoute {
            service: svc("orders.cafe.local"),
        },
    )
    .unwrap();
    let orders = r.service(&svc("orders.cafe.local")).unwrap();
    assert!(orders.route.is_none());
    assert_eq!(orders.mod_revision, 12);

    // Deleting again, or a route of an unknown service: not found, nothing changes.
    let before = r.clone();
    let err = r
        .apply(
            13,
            &Command::DeleteRoute {
                service: svc("orders.cafe.local"),
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::NotFound {
            kind: error::Kind::Route,
            ..
        }
    ));
    let err = r
        .apply(14, &put("nope.cafe.local", split(1, 1)))
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::NotFound {
            kind: error::Kind::Service,
            ..
        }
    ));
    assert_eq!(r, before);
}

#[test]
fn deleting_a_service_drops_its_route() {
    let mut r = registry();
    r.apply(10, &put("orders.cafe.local", split(90, 10)))
        .unwrap();
    r.apply(
        11,
        &Command::DeleteService {
            name: svc("orders.cafe.local"),
            force: false,
        },
    )
    .unwrap();
    r.apply(
        12,
        &Command::CreateService(ServiceSpec {
            name: svc("orders.cafe.local"),
            description: String::new(),
            dns_ttl_seconds: 5,
            health_check: None,
        }),
    )
    .unwrap();
    assert!(
        r.service(&svc("orders.cafe.local"))
            .unwrap()
            .route
            .is_none()
    );
}

#[test]
fn route_changes_are_in_the_feed() {
    let mut r = registry();
    let mut log = Vec::new();
    r.apply_logged(10, &put("orders.cafe.local", split(90, 10)), &mut log)
        .unwrap();
    r.apply_logged(
        11,
        &Command::DeleteRoute {
            service: svc("orders.cafe.local"),
        },
        &mut log,
    )
    .unwrap();
    // A refused one logs nothing.
    let _ = r.apply_logged(12, &put("orders.cafe.local", split(0, 0)), &mut log);
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].revision, &log[0].service),
        (10, &svc("orders.cafe.local"))
    );
    assert!(
        matches!(&log[0].kind, ChangeKind::RouteChanged(Some(route)) if route.spec == split(90, 10))
    );
    assert!(matches!(&log[1].kind, ChangeKind::RouteChanged(None)));
    assert!(log[1].kind.instance().is_none());
}

#[test]
fn snapshots_carry_routes_and_old_snapshots_restore() {
    let mut r = registry();
    r.apply(10, &put("orders.cafe.local", full_route()))
        .unwrap();
    let restored = Registry::restore(&r.snapshot()).unwrap();
    assert_eq!(restored, r);
    assert_eq!(restored.snapshot(), r.snapshot());

    // A service without a route serializes exactly as before routes existed, so a snapshot
    // written by an older binary restores (and re-encodes byte-identically).
    let old = registry().snapshot();
    assert!(!String::from_utf8_lossy(&old).contains("route"));
    let restored = Registry::restore(&old).unwrap();
    assert_eq!(restored.snapshot(), old);
}

#[test]
fn route_commands_round_trip_through_the_log_encoding() {
    let command = put("orders.cafe.local", full_route());
    let bytes = command.encode();
    assert!(bytes.starts_with(br#"{"op":"PutRoute""#));
    assert_eq!(Command::decode(&bytes).unwrap(), command);
    let delete = Command::DeleteRoute {
        service: svc("orders.cafe.local"),
    };
    assert_eq!(Command::decode(&delete.encode()).unwrap(), delete);
}
