use std::collections::BTreeMap;

use proptest::prelude::*;

use super::discover::{DiscoverQuery, HealthFilter};
use super::*;

fn svc(full: &str) -> ServiceName {
    ServiceName::parse("service", full).unwrap()
}

fn ns(name: &str) -> Command {
    Command::CreateNamespace {
        name: name.into(),
        description: String::new(),
    }
}

fn service(full: &str) -> Command {
    Command::CreateService(ServiceSpec {
        name: svc(full),
        description: String::new(),
        dns_ttl_seconds: 5,
        health_check: None,
    })
}

fn register(full: &str, id: &str, port: u16, version: &str) -> Command {
    Command::RegisterInstance {
        service: svc(full),
        instance: InstanceSpec {
            id: id.into(),
            address: "10.0.0.1".parse().unwrap(),
            port,
            attributes: BTreeMap::from([("version".into(), version.into())]),
        },
    }
}

fn apply_all(log: &[Command]) -> (Registry, Vec<Result<Outcome, RegistryError>>) {
    let mut r = Registry::new();
    let results = log
        .iter()
        .enumerate()
        .map(|(i, c)| r.apply(i as u64 + 1, c))
        .collect();
    (r, results)
}

/// What each step of a command sequence must produce: Ok, or the error's Display prefix.
#[test]
fn command_sequences() {
    struct Case {
        name: &'static str,
        log: Vec<Command>,
        expect: Vec<Result<(), &'static str>>,
    }
    let cases = vec![
        Case {
            name: "create namespace, service, instances",
            log: vec![
                ns("cafe.local"),
                service("orders.cafe.local"),
                register("orders.cafe.local", "i-1", 8081, "v1"),
                register("orders.cafe.local", "i-2", 8082, "v2"),
            ],
            expect: vec![Ok(()), Ok(()), Ok(()), Ok(())],
        },
        Case {
            name: "duplicates are refused",
            log: vec![
                ns("cafe.local"),
                ns("cafe.local"),
                service("orders.cafe.local"),
                service("orders.cafe.local"),
            ],
            expect: vec![
                Ok(()),
                Err("namespace \"cafe.local\" already exists"),
                Ok(()),
                Err("service \"orders.cafe.local\" already exists"),
            ],
        },
        Case {
            name: "missing parents",
            log: vec![
                service("orders.cafe.local"),
                ns("cafe.local"),
                register("orders.cafe.local", "i-1", 1, "v1"),
                Command::DeregisterInstance {
                    service: svc("orders.cafe.local"),
                    id: "i-1".into(),
                },
            ],
            expect: vec![
                Err("namespace \"cafe.local\" not found"),
                Ok(()),
                Err("service \"orders.cafe.local\" not found"),
                Err("service \"orders.cafe.local\" not found"),
            ],
        },
        Case {
            name: "non-empty parents are not deleted",
            log: vec![
                ns("cafe.local"),
                service("orders.cafe.local"),
                register("orders.cafe.local", "i-1", 1, "v1"),
                Command::DeleteNamespace {
                    name: "cafe.local".into(),
                },
                Command::DeleteService {
                    name: svc("orders.cafe.local"),
                    force: false,
                },
                Command::DeleteService {
                    name: svc("orders.cafe.local"),
                    force: true,
                },
                Command::DeleteNamespace {
                    name: "cafe.local".into(),
                },
            ],
            expect: vec![
                Ok(()),
                Ok(()),
                Ok(()),
                Err("namespace \"cafe.local\" still has 1 service(s)"),
                Err("service orders.cafe.local still has 1 instance(s)"),
                Ok(()),
                Ok(()),
            ],
        },
        Case {
            name: "deregister twice",
            log: vec![
                ns("cafe.local"),
                service("orders.cafe.local"),
                register("orders.cafe.local", "i-1", 1, "v1"),
                Command::DeregisterInstance {
                    service: svc("orders.cafe.local"),
                    id: "i-1".into(),
                },
                Command::DeregisterInstance {
                    service: svc("orders.cafe.local"),
                    id: "i-1".into(),
                },
            ],
            expect: vec![
                Ok(()),
                Ok(()),
                Ok(()),
                Ok(()),
                Err("instance \"i-1.orders.cafe.local\" not found"),
            ],
        },
        Case {
            name: "invalid commands are refused inside apply too",
            log: vec![
                ns("Cafe.local"),
                ns("cafe..local"),
                ns("cafe.local"),
                service("orders.cafe.local"),
                register("orders.cafe.local", "i-1", 0, "v1"),
                register("orders.cafe.local", "-i", 80, "v1"),
            ],
            expect: vec![
                Err("name: label \"Cafe\" contains 'C'"),
                Err("name: \"cafe..local\" has an empty label"),
                Ok(()),
                Ok(()),
                Err("port: 0 is not a port"),
                Err("id: label \"-i\" must not start or end with '-'"),
            ],
        },
    ];
    for case in cases {
        let (_, results) = apply_all(&case.log);
        for (step, (got, want)) in results.iter().zip(&case.expect).enumerate() {
            match (got, want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(prefix)) => assert!(
                    e.to_string().starts_with(prefix),
                    "{}: step {step}: got {e:?}, want {prefix:?}",
                    case.name
                ),
                _ => panic!("{}: step {step}: got {got:?}, want {want:?}", case.name),
            }
        }
    }
}

#[test]
fn revisions_track_changes_per_service() {
    let (r, _) = apply_all(&[
        ns("cafe.local"),
        service("orders.cafe.local"),
        service("reports.cafe.local"),
        register("orders.cafe.local", "i-1", 1, "v1"),
        register("orders.cafe.local", "i-1", 2, "v1"),
        ns("cafe.local"), // refused: revision stays at 5
    ]);
    assert_eq!(r.revision(), 5);
    let orders = r.service(&svc("orders.cafe.local")).unwrap();
    let reports = r.service(&svc("reports.cafe.local")).unwrap();
    assert_eq!((orders.create_revision, orders.mod_revision), (2, 5));
    assert_eq!((reports.create_revision, reports.mod_revision), (3, 3));
    let i1 = &orders.instances["i-1"];
    assert_eq!((i1.create_revision, i1.mod_revision, i1.port), (4, 5, 2));
    assert_eq!(r.namespace("cafe.local").unwrap().mod_revision, 5);
}

#[test]
fn refused_command_leaves_state_untouched() {
    let (mut r, _) = apply_all(&[ns("cafe.local"), service("orders.cafe.local")]);
    let before = r.snapshot();
    let missing = Command::SetHealth {
        service: svc("orders.cafe.local"),
        id: "nope".into(),
        health: HealthStatus::Unhealthy,
    };
    assert!(r.apply(3, &missing).is_err());
    assert_eq!(r.snapshot(), before);
}

#[test]
fn set_health_to_same_value_does_not_wake_the_service() {
    let (mut r, _) = apply_all(&[ns("a.b"), service("s.a.b"), register("s.a.b", "i", 1, "v1")]);
    let healthy = Command::SetHealth {
        service: svc("s.a.b"),
        id: "i".into(),
        health: HealthStatus::Healthy,
    };
    r.apply(4, &healthy).unwrap();
    assert_eq!(r.service(&svc("s.a.b")).unwrap().mod_revision, 3);
    let unhealthy = Command::SetHealth {
        service: svc("s.a.b"),
        id: "i".into(),
        health: HealthStatus::Unhealthy,
    };
    r.apply(5, &unhealthy).unwrap();
    assert_eq!(r.service(&svc("s.a.b")).unwrap().mod_revision, 5);
    assert_eq!(
        r.instance(&svc("s.a.b"), "i").unwrap().health,
        HealthStatus::Unhealthy
    );
}

#[test]
fn initial_health_follows_the_check_kind() {
    let mut r = Registry::new();
    r.apply(1, &ns("a.b")).unwrap();
    let mut spec = ServiceSpec {
        name: svc("web.a.b"),
        description: String::new(),
        dns_ttl_seconds: 5,
        health_check: Some(HealthCheck::new(CheckKind::Http {
            path: "/healthz".into(),
        })),
    };
    r.apply(2, &Command::CreateService(spec.clone())).unwrap();
    spec.name = svc("ttl.a.b");
    spec.health_check = Some(HealthCheck::new(CheckKind::Ttl { ttl_ms: 10_000 }));
    r.apply(3, &Command::CreateService(spec)).unwrap();
    r.apply(4, &register("web.a.b", "i", 1, "v1")).unwrap();
    r.apply(5, &register("ttl.a.b", "i", 1, "v1")).unwrap();
    assert_eq!(
        r.instance(&svc("web.a.b"), "i").unwrap().health,
        HealthStatus::Unknown
    );
    assert_eq!(
        r.instance(&svc("ttl.a.b"), "i").unwrap().health,
        HealthStatus::Healthy
    );
}

#[test]
fn discovery_filters() {
    let mut log = vec![ns("a.b"), service("s.a.b")];
    for (i, v) in ["v1", "v1", "v2", "v2"].iter().enumerate() {
        log.push(register("s.a.b", &format!("i-{i}"), 80, v));
    }
    let (mut r, _) = apply_all(&log);
    let next = log.len() as u64 + 1;
    r.apply(
        next,
        &Command::SetHealth {
            service: svc("s.a.b"),
            id: "i-2".into(),
            health: HealthStatus::Unhealthy,
        },
    )
    .unwrap();
    r.apply(
        next + 1,
        &Command::SetHealth {
            service: svc("s.a.b"),
            id: "i-3".into(),
            health: HealthStatus::Unhealthy,
        },
    )
    .unwrap();
    let s = r.service(&svc("s.a.b")).unwrap();
    let ids = |q: DiscoverQuery| -> Vec<String> {
        q.validated()
            .unwrap()
            .filter(s)
            .iter()
            .map(|i| i.id.clone())
            .collect()
    };
    let attrs = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);

    assert_eq!(ids(DiscoverQuery::default()), ["i-0", "i-1"]);
    assert_eq!(
        ids(DiscoverQuery {
            health: HealthFilter::All,
            ..Default::default()
        }),
        ["i-0", "i-1", "i-2", "i-3"]
    );
    assert_eq!(
        ids(DiscoverQuery {
            health: HealthFilter::Unhealthy,
            ..Default::default()
        }),
        ["i-2", "i-3"]
    );
    // Hard filter to v2: nothing healthy there; HEALTHY_OR_ELSE_ALL fails open.
    let v2 = attrs("version", "v2");
    assert!(
        ids(DiscoverQuery {
            query_parameters: v2.clone(),
            ..Default::default()
        })
        .is_empty()
    );
    assert_eq!(
        ids(DiscoverQuery {
            query_parameters: v2.clone(),
            health: HealthFilter::HealthyOrElseAll,
            ..Default::default()
        }),
        ["i-2", "i-3"]
    );
    // Soft filter: applied when it matches, ignored when it does not.
    assert_eq!(
        ids(DiscoverQuery {
            optional_parameters: v2.clone(),
            health: HealthFilter::All,
            ..Default::default()
        }),
        ["i-2", "i-3"]
    );
    assert_eq!(
        ids(DiscoverQuery {
            optional_parameters: attrs("version", "v9"),
            ..Default::default()
        }),
        ["i-0", "i-1"]
    );
    // Limits.
    let err = DiscoverQuery {
        max_results: 1001,
        ..Default::default()
    }
    .validated()
    .unwrap_err();
    assert!(err.to_string().starts_with("max_results:"), "{err}");
    assert_eq!(
        DiscoverQuery::default().validated().unwrap().max_results,
        100
    );
}

#[test]
fn validation_names_the_field() {
    let too_many: BTreeMap<String, String> =
        (0..31).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(Result<(), RegistryError>, &str)> = vec![
        (
            names::validate_attributes("attributes", &too_many),
            "attributes: 31 attributes",
        ),
        (
            names::validate_attributes(
                "attributes",
                &BTreeMap::from([("k".into(), "x".repeat(257))]),
            ),
            "attributes[\"k\"]: value is 257 bytes",
        ),
        (
            names::validate_attributes("attributes", &BTreeMap::from([("a b".into(), "v".into())])),
            "attributes[\"a b\"]: key contains ' '",
        ),
        (
            names::parse_address("address", "10.0.0.300").map(|_| ()),
            "address: \"10.0.0.300\" is not an IPv4",
        ),
        (
            names::parse_address("address", "0.0.0.0").map(|_| ()),
            "address: 0.0.0.0 is not a unicast",
        ),
        (
            names::validate_port("port", 65536).map(|_| ()),
            "port: 65536 is not a port",
        ),
        (names::validate_label("id", &"a".repeat(64)), "id: label"),
        (
            ServiceName::parse("service", "orders").map(|_| ()),
            "service: \"orders\" is not SERVICE.NAMESPACE",
        ),
    ];
    for (got, want) in cases {
        let err = got.unwrap_err().to_string();
        assert!(err.starts_with(want), "got {err:?}, want prefix {want:?}");
    }
    assert!(names::parse_address("address", "::1").is_ok());
    assert!(names::parse_address("address", "fe80::1").is_ok());
}

#[test]
fn command_encoding_starts_with_its_type_tag() {
    let bytes = ns("cafe.local").encode();
    assert!(
        bytes.starts_with(br#"{"op":"CreateNamespace""#),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(Command::decode(&bytes).unwrap(), ns("cafe.local"));
    assert!(Command::decode(b"{\"op\":\"Nope\"}").is_err());
}

#[test]
fn an_old_json_registration_still_applies() {
    // A registration as versions before the binary encoding logged it: a data dir written by
    // them replays through the same apply path.
    let old = br#"{"op":"RegisterInstance","service":{"namespace":"cafe.local","service":"orders"},"instance":{"id":"i-1","address":"10.0.0.7","port":9090,"attributes":{"version":"v1"}}}"#;
    let mut r = Registry::new();
    r.apply(1, &ns("cafe.local")).unwrap();
    r.apply(2, &service("orders.cafe.local")).unwrap();
    let command = Command::decode(old).unwrap();
    r.apply(3, &command).unwrap();
    let instance = r.instance(&svc("orders.cafe.local"), "i-1").unwrap();
    assert_eq!(instance.address.to_string(), "10.0.0.7");
    assert_eq!(instance.port, 9090);
    assert_eq!(r.revision(), 3);
    // Written again today, the same command is binary.
    assert_eq!(command.encode()[0], super::codec::BINARY_TAG);
}

// --- property tests ---

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn command(namespaces: Vec<String>) -> impl Strategy<Value = Command> {
    let ns_name = proptest::sample::select(namespaces);
    let service_name = (
        label().prop_map(|l| l.chars().take(3).collect::<String>()),
        ns_name.clone(),
    )
        .prop_map(|(service, namespace)| ServiceName { namespace, service })
        .boxed();
    let id = "i-[0-9]{1,2}";
    prop_oneof![
        ns_name.clone().prop_map(|name| Command::CreateNamespace {
            name,
            description: String::new()
        }),
        ns_name.prop_map(|name| Command::DeleteNamespace { name }),
        (service_name.clone(), 1u32..100).prop_map(|(name, ttl)| Command::CreateService(
            ServiceSpec {
                name,
                description: "d".into(),
                dns_ttl_seconds: ttl,
                health_check: None,
            }
        )),
        (service_name.clone(), any::<bool>())
            .prop_map(|(name, force)| Command::DeleteService { name, force }),
        (service_name.clone(), id, any::<[u8; 4]>(), 1u16.., "v[1-3]").prop_map(
            |(service, id, ip, port, v)| {
                let mut ip = ip;
                ip[0] = ip[0].clamp(1, 223);
                Command::RegisterInstance {
                    service,
                    instance: InstanceSpec {
                        id,
                        address: std::net::IpAddr::from(ip),
                        port,
                        attributes: BTreeMap::from([("version".into(), v)]),
                    },
                }
            }
        ),
        (service_name.clone(), id)
            .prop_map(|(service, id)| Command::DeregisterInstance { service, id }),
        (service_name.clone(), 0u32..3, 0u32..3).prop_map(|(service, w1, w2)| {
            Command::PutRoute {
                service,
                route: route::RouteSpec::split(vec![
                    route::WeightedTarget {
                        subset: BTreeMap::from([("version".into(), "v1".into())]),
                        weight: w1,
                    },
                    route::WeightedTarget {
                        subset: BTreeMap::from([("version".into(), "v2".into())]),
                        weight: w2,
                    },
                ]),
            }
        }),
        service_name
            .clone()
            .prop_map(|service| Command::DeleteRoute { service }),
        (
            service_name,
            id,
            prop_oneof![Just(HealthStatus::Healthy), Just(HealthStatus::Unhealthy)]
        )
            .prop_map(|(service, id, health)| Command::SetHealth {
                service,
                id,
                health
            }),
    ]
}

fn log() -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec(command(vec!["a.b".into(), "cafe.local".into()]), 1..200)
}

proptest! {
    #[test]
    fn random_logs_are_deterministic_and_survive_snapshot_restore(log in log()) {
        // Prepend the namespaces so most commands land.
        let mut full = vec![ns("a.b"), ns("cafe.local")];
        full.extend(log);
        let (first, _) = apply_all(&full);
        let (second, _) = apply_all(&full);
        prop_assert_eq!(first.snapshot(), second.snapshot());

        let restored = Registry::restore(&first.snapshot()).unwrap();
        prop_assert_eq!(&restored, &first);
        prop_assert_eq!(restored.snapshot(), first.snapshot());

        // A log replayed through its own encoding gives the same state (what a follower does).
        let decoded: Vec<Command> = full.iter().map(|c| Command::decode(&c.encode()).unwrap()).collect();
        let (replayed, _) = apply_all(&decoded);
        prop_assert_eq!(replayed.snapshot(), first.snapshot());

        // A refused command changes nothing, not even a revision.
        let mut r = Registry::new();
        for (i, c) in full.iter().enumerate() {
            let before = r.clone();
            if r.apply(i as u64 + 1, c).is_err() {
                prop_assert_eq!(&r, &before, "{:?}", c);
            }
        }

        // Invariants: every object's revisions are within the registry's.
        for n in first.namespaces().values() {
            prop_assert!(n.create_revision <= n.mod_revision && n.mod_revision <= first.revision());
            for s in n.services.values() {
                prop_assert!(s.mod_revision <= n.mod_revision);
                if let Some(r) = &s.route {
                    prop_assert!(r.create_revision <= r.mod_revision && r.mod_revision <= s.mod_revision);
                }
                for i in s.instances.values() {
                    prop_assert!(i.mod_revision <= s.mod_revision);
                }
            }
        }
    }

    #[test]
    fn invalid_names_never_get_in(name in "\\PC{0,70}") {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-') && !l.ends_with('-')
            });
        let mut r = Registry::new();
        let created = r.apply(1, &Command::CreateNamespace { name: name.clone(), description: String::new() });
        prop_assert_eq!(created.is_ok(), valid, "{:?} -> {:?}", name, created);
        if !valid {
            prop_assert!(r.namespaces().is_empty());
            let err = created.unwrap_err().to_string();
            prop_assert!(err.starts_with("name: "), "{}", err);
        }
        let id = r.apply(2, &register("s.a.b", &name, 80, "v1"));
        prop_assert!(id.is_err());
    }
}

#[test]
fn attributes_are_a_sorted_slice_that_serializes_like_a_map() {
    let map: BTreeMap<String, String> = [("version", "v2"), ("weight", "5"), ("az", "b")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let attrs = Attributes::from(&map);
    assert_eq!(attrs.get("version"), Some("v2"));
    assert_eq!(attrs.get("az"), Some("b"));
    assert_eq!(attrs.get("nope"), None);
    assert_eq!(
        attrs.keys().collect::<Vec<_>>(),
        ["az", "version", "weight"]
    );
    assert_eq!(attrs.len(), 3);
    // Same JSON as the map it replaced, so snapshots and their bytes are unchanged.
    assert_eq!(
        serde_json::to_string(&attrs).unwrap(),
        serde_json::to_string(&map).unwrap()
    );
    let back: Attributes = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
    assert_eq!(back, attrs);
    assert!(Attributes::default().is_empty());
}
