//! Unit tests of the DNS room: the pure name → records mapping and encoding here; the
//! responder over in-memory packets (no sockets), forwarding and property tests over hostile
//! bytes in `packets.rs`; the UDP threads over a loopback socket in `udp.rs`.

mod packets;
mod udp;

use std::collections::BTreeMap;

use hickory_proto::rr::{Name, RData, RecordType};

use super::answer::{self, orders, records};
use super::resolve::{Kind, Resolution, Scope, resolve, scope};
use crate::registry::{Command, HealthStatus, InstanceSpec, Registry, ServiceName, ServiceSpec};

// === fixtures ===

struct Fixture {
    registry: Registry,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let mut f = Self {
            registry: Registry::new(),
            index: 0,
        };
        f.namespace("cafe.local");
        f.service("orders.cafe.local", 7);
        f.service("empty.cafe.local", 30);
        f.register(
            "orders.cafe.local",
            "i-1",
            "10.0.0.1",
            8081,
            &[("version", "v1")],
        );
        f.register(
            "orders.cafe.local",
            "i-2",
            "10.0.0.2",
            8082,
            &[("version", "v2"), ("weight", "5"), ("priority", "2")],
        );
        f.register(
            "orders.cafe.local",
            "i-3",
            "fd00::3",
            8083,
            &[("version", "V2")],
        );
        f.namespace("eu.cafe.local");
        f.service("orders.eu.cafe.local", 5);
        f.register("orders.eu.cafe.local", "e-1", "10.1.0.1", 9000, &[]);
        f
    }

    fn apply(&mut self, command: Command) {
        self.index += 1;
        self.registry.apply(self.index, &command).unwrap();
    }

    fn namespace(&mut self, name: &str) {
        self.apply(Command::CreateNamespace {
            name: name.into(),
            description: String::new(),
        });
    }

    fn service(&mut self, full: &str, ttl: u32) {
        self.apply(Command::CreateService(ServiceSpec {
            name: svc(full),
            description: String::new(),
            dns_ttl_seconds: ttl,
            health_check: None,
        }));
    }

    fn register(&mut self, full: &str, id: &str, ip: &str, port: u16, attrs: &[(&str, &str)]) {
        self.apply(Command::RegisterInstance {
            service: svc(full),
            instance: InstanceSpec {
                id: id.into(),
                address: ip.parse().unwrap(),
                port,
                attributes: attrs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            },
        });
    }

    fn health(&mut self, full: &str, id: &str, health: HealthStatus) {
        self.apply(Command::SetHealth {
            service: svc(full),
            id: id.into(),
            health,
        });
    }
}

fn svc(full: &str) -> ServiceName {
    ServiceName::parse("service", full).unwrap()
}

/// The instance ids a resolution answers with, or its kind of negative answer.
fn ids(r: &Resolution) -> String {
    match r {
        Resolution::Outside => "OUTSIDE".into(),
        Resolution::NxDomain(soa) => format!("NXDOMAIN {}", soa.namespace),
        Resolution::NoData(soa) => format!("NODATA {}", soa.namespace),
        Resolution::Apex(soa) => format!("SOA {}", soa.namespace),
        Resolution::Found(f) => f
            .instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
    }
}

// === resolve: the pure mapping ===

#[test]
fn names_map_to_records() {
    let f = Fixture::new();
    let cases: &[(&str, RecordType, &str)] = &[
        ("orders.cafe.local", RecordType::A, "i-1,i-2"),
        ("orders.cafe.local", RecordType::AAAA, "i-3"),
        ("orders.cafe.local", RecordType::SRV, "i-1,i-2,i-3"),
        ("orders.cafe.local", RecordType::ANY, "i-1,i-2,i-3"),
        ("orders.cafe.local", RecordType::TXT, "NODATA cafe.local"),
        ("_orders._tcp.cafe.local", RecordType::SRV, "i-1,i-2,i-3"),
        (
            "_orders._tcp.cafe.local",
            RecordType::A,
            "NODATA cafe.local",
        ),
        (
            "_orders._udp.cafe.local",
            RecordType::SRV,
            "NXDOMAIN cafe.local",
        ),
        (
            "_nope._tcp.cafe.local",
            RecordType::SRV,
            "NXDOMAIN cafe.local",
        ),
        ("_tcp.cafe.local", RecordType::SRV, "NODATA cafe.local"),
        ("i-1.orders.cafe.local", RecordType::A, "i-1"),
        (
            "i-1.orders.cafe.local",
            RecordType::AAAA,
            "NODATA cafe.local",
        ),
        ("i-3.orders.cafe.local", RecordType::AAAA, "i-3"),
        (
            "i-9.orders.cafe.local",
            RecordType::A,
            "NXDOMAIN cafe.local",
        ),
        // Subsets: attribute values compare case-insensitively, like DNS names.
        ("v2.version.orders.cafe.local", RecordType::SRV, "i-2,i-3"),
        ("v2.version.orders.cafe.local", RecordType::A, "i-2"),
        (
            "v1.version.orders.cafe.local",
            RecordType::AAAA,
            "NODATA cafe.local",
        ),
        (
            "v9.version.orders.cafe.local",
            RecordType::A,
            "NXDOMAIN cafe.local",
        ),
        // An empty non-terminal: names exist below it.
        (
            "version.orders.cafe.local",
            RecordType::A,
            "NODATA cafe.local",
        ),
        (
            "a.b.c.orders.cafe.local",
            RecordType::A,
            "NXDOMAIN cafe.local",
        ),
        ("nope.cafe.local", RecordType::A, "NXDOMAIN cafe.local"),
        ("empty.cafe.local", RecordType::A, "NODATA cafe.local"),
        ("empty.cafe.local", RecordType::SRV, "NODATA cafe.local"),
        ("cafe.local", RecordType::SOA, "SOA cafe.local"),
        ("cafe.local", RecordType::A, "NODATA cafe.local"),
        // The longest namespace wins.
        ("orders.eu.cafe.local", RecordType::A, "e-1"),
        ("eu.cafe.local", RecordType::SOA, "SOA eu.cafe.local"),
        ("example.com", RecordType::A, "OUTSIDE"),
        ("local", RecordType::A, "OUTSIDE"),
        ("", RecordType::A, "OUTSIDE"),
        ("x?y.cafe.local", RecordType::A, "NXDOMAIN cafe.local"),
    ];
    for (name, qtype, want) in cases {
        let got = ids(&resolve(&f.registry, name, *qtype));
        assert_eq!(&got, want, "{name} {qtype}");
    }
}

#[test]
fn ttls_and_negative_ttls() {
    let f = Fixture::new();
    let Resolution::Found(found) = resolve(&f.registry, "orders.cafe.local", RecordType::A) else {
        panic!("found");
    };
    assert_eq!(found.ttl, 7);
    assert_eq!(
        found.kind,
        Kind::Addresses {
            v4: true,
            v6: false
        }
    );
    let Resolution::NoData(soa) = resolve(&f.registry, "empty.cafe.local", RecordType::A) else {
        panic!("nodata");
    };
    assert_eq!(soa.negative_ttl, 30, "NODATA of a service: its TTL");
    let Resolution::NxDomain(soa) = resolve(&f.registry, "nope.cafe.local", RecordType::A) else {
        panic!("nxdomain");
    };
    assert_eq!(soa.negative_ttl, 5, "NXDOMAIN: the default TTL");
}

#[test]
fn unhealthy_instances_drop_out_unless_none_is_healthy() {
    let mut f = Fixture::new();
    f.health("orders.cafe.local", "i-1", HealthStatus::Unhealthy);
    let a = |f: &Fixture, name| ids(&resolve(&f.registry, name, RecordType::A));
    assert_eq!(a(&f, "orders.cafe.local"), "i-2");
    // Asked by name, an instance answers whatever its health (SRV targets must resolve).
    assert_eq!(a(&f, "i-1.orders.cafe.local"), "i-1");
    f.health("orders.cafe.local", "i-2", HealthStatus::Unknown);
    f.health("orders.cafe.local", "i-3", HealthStatus::Unhealthy);
    assert_eq!(a(&f, "orders.cafe.local"), "i-1,i-2", "fail open");
    f.health("orders.cafe.local", "i-3", HealthStatus::Healthy);
    assert_eq!(
        ids(&resolve(
            &f.registry,
            "v2.version.orders.cafe.local",
            RecordType::SRV
        )),
        "i-3",
        "health filters subsets too"
    );
}

#[test]
fn scope_moves_only_with_its_service() {
    let mut f = Fixture::new();
    let orders = scope(&f.registry, "orders.cafe.local");
    let srv = scope(&f.registry, "_orders._tcp.cafe.local");
    let sub = scope(&f.registry, "v2.version.orders.cafe.local");
    let empty = scope(&f.registry, "empty.cafe.local");
    let nx = scope(&f.registry, "nope.cafe.local");
    assert_eq!(orders, srv);
    assert_eq!(orders, sub);
    assert!(matches!(orders, Scope::Service { .. }));
    assert!(matches!(nx, Scope::Namespace { .. }));
    assert_eq!(scope(&f.registry, "example.com"), Scope::Outside);

    f.register("orders.cafe.local", "i-4", "10.0.0.4", 1, &[]);
    assert_ne!(scope(&f.registry, "orders.cafe.local"), orders);
    assert_eq!(
        scope(&f.registry, "empty.cafe.local"),
        empty,
        "other services untouched"
    );
    assert_ne!(
        scope(&f.registry, "nope.cafe.local"),
        nx,
        "namespace-level answers move"
    );
}

// === answer: records and encoding ===

#[test]
fn srv_records_carry_priority_weight_and_targets() {
    let f = Fixture::new();
    let Resolution::Found(found) = resolve(&f.registry, "orders.cafe.local", RecordType::SRV)
    else {
        panic!("found");
    };
    let qname = Name::from_ascii("orders.cafe.local.").unwrap();
    let s = records(&qname, &found, &[1, 0, 2], 8);
    let srvs: Vec<(u16, u16, u16, String)> = s
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => (srv.priority, srv.weight, srv.port, srv.target.to_ascii()),
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    // Priority 1 (the default) before i-2's priority 2; the shuffle kept within a priority.
    assert_eq!(
        srvs,
        vec![
            (1, 1, 8081, "i-1.orders.cafe.local.".to_owned()),
            (1, 1, 8083, "i-3.orders.cafe.local.".to_owned()),
            (2, 5, 8082, "i-2.orders.cafe.local.".to_owned()),
        ]
    );
    assert_eq!(s.additionals.len(), 3);
    assert_eq!(s.additionals[1].record_type(), RecordType::AAAA);
    assert!(s.answers.iter().all(|r| r.ttl == 7));

    let capped = records(&qname, &found, &[2, 1, 0], 1);
    assert_eq!(capped.answers.len(), 1);
    assert_eq!(capped.additionals.len(), 1);
}

#[test]
fn orders_are_rotations_of_one_permutation() {
    for n in [0usize, 1, 2, 5, 8, 9, 100] {
        let all = orders(n, 42);
        assert_eq!(all.len(), n.clamp(1, answer::MAX_ORDERS));
        for order in &all {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        }
        if (1..=answer::MAX_ORDERS).contains(&n) {
            let mut firsts: Vec<usize> = all.iter().map(|o| o[0]).collect();
            firsts.sort_unstable();
            assert_eq!(
                firsts,
                (0..n).collect::<Vec<_>>(),
                "each instance leads once"
            );
        }
    }
}
