//! Name → answer: the pure mapping from a DNS question to what the registry says about it.
//!
//! No sockets, no clock, no randomness: [`resolve`] reads one registry snapshot and returns a
//! [`Resolution`]; shuffling and capping happen later, in `answer.rs`. [`scope`] names the
//! registry object an answer depends on, so that a cached answer can be checked with two map
//! lookups instead of being rebuilt.
//!
//! Names inside a namespace `NS` (the longest namespace that is a suffix of the name wins):
//!
//! | name | answers |
//! |---|---|
//! | `NS` | SOA; every other type NODATA |
//! | `SVC.NS` | A/AAAA/SRV of the service's healthy instances (all if none is healthy) |
//! | `_SVC._tcp.NS` | SRV of the same set (RFC 2782) |
//! | `ID.SVC.NS` | A/AAAA/SRV of that one instance, whatever its health |
//! | `VALUE.KEY.SVC.NS` | like `SVC.NS`, for the instances whose attribute `KEY` is `VALUE` |
//!
//! A name that could lead to existing names below it (`_tcp.NS`, `KEY.SVC.NS`) is an empty
//! non-terminal and answers NODATA, not NXDOMAIN (RFC 8020: resolvers may treat everything
//! under an NXDOMAIN as nonexistent).

use std::sync::Arc;

use hickory_proto::rr::RecordType;

use crate::registry::model::DEFAULT_DNS_TTL_SECONDS;
use crate::registry::{HealthStatus, Instance, Namespace, Registry, Service};

/// What the registry says about one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name lies outside every namespace (answered REFUSED, or forwarded).
    Outside,
    /// The name does not exist (NXDOMAIN, with the SOA).
    NxDomain(Soa),
    /// The name exists without records of the asked type (NOERROR, no answers, the SOA).
    NoData(Soa),
    /// The SOA of a namespace apex.
    Apex(Soa),
    /// Instances answer the question.
    Found(Found),
}

/// What a negative answer's SOA says: the namespace and the revision the answer reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// The namespace (the zone apex), lower-case, without the trailing dot.
    pub namespace: String,
    /// The revision of the object the answer depends on, as a 32-bit serial.
    pub serial: u32,
    /// How long resolvers may cache the negative answer (RFC 2308).
    pub negative_ttl: u32,
}

/// A positive answer, before shuffling and capping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The service's full name (SRV targets are `ID.` + this).
    pub service: String,
    /// The service's TTL.
    pub ttl: u32,
    /// Which records to produce.
    pub kind: Kind,
    /// The instances, in id order; never empty, and all of the asked family for addresses.
    pub instances: Vec<Arc<Instance>>,
}

/// The records a positive answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A and/or AAAA records.
    Addresses {
        /// A records.
        v4: bool,
        /// AAAA records.
        v6: bool,
    },
    /// SRV records, with the targets' addresses as additionals.
    Srv,
}

/// The registry object an answer depends on. A cached answer stays valid while the scope of
/// its name is unchanged: every change to a service moves its `mod_revision`, and every
/// change inside a namespace moves the namespace's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Outside every namespace: never cached.
    Outside,
    /// Depends on the namespace (apex, names of no service): its revisions.
    Namespace {
        /// The namespace's `create_revision`.
        created: u64,
        /// The namespace's `mod_revision`.
        modified: u64,
    },
    /// Depends on one service: its revisions.
    Service {
        /// The service's `create_revision`.
        created: u64,
        /// The service's `mod_revision`.
        modified: u64,
    },
}

/// Where a name falls: its namespace and the labels before it (`""` at the apex).
struct Located<'r, 'n> {
    namespace: &'r Arc<Namespace>,
    prefix: &'n str,
}

/// The scope of `name` (lower-case, no trailing dot) in `registry`: cheap, no allocation.
pub fn scope(registry: &Registry, name: &str) -> Scope {
    let Some(at) = locate(registry, name) else {
        return Scope::Outside;
    };
    let service = (!at.prefix.is_empty())
        .then(|| service_label(at.prefix))
        .and_then(|l| at.namespace.services.get(l));
    match service {
        Some(s) => Scope::Service {
            created: s.create_revision,
            modified: s.mod_revision,
        },
        None => Scope::Namespace {
            created: at.namespace.create_revision,
            modified: at.namespace.mod_revision,
        },
    }
}

/// What `registry` answers to `name` (lower-case, no trailing dot) and `qtype`.
pub fn resolve(registry: &Registry, name: &str, qtype: RecordType) -> Resolution {
    let Some(at) = locate(registry, name) else {
        return Resolution::Outside;
    };
    let ns = at.namespace;
    let ns_soa = || Soa {
        namespace: ns.name.clone(),
        serial: serial(ns.mod_revision),
        negative_ttl: DEFAULT_DNS_TTL_SECONDS,
    };
    if at.prefix.is_empty() {
        return if qtype == RecordType::SOA {
            Resolution::Apex(ns_soa())
        } else {
            Resolution::NoData(ns_soa())
        };
    }
    let labels: Vec<&str> = at.prefix.split('.').collect();
    let Some(service) = ns.services.get(service_label(at.prefix)) else {
        // `_tcp.NS` leads to `_SVC._tcp.NS`: an empty non-terminal while any service exists.
        if labels == ["_tcp"] && !ns.services.is_empty() {
            return Resolution::NoData(ns_soa());
        }
        return Resolution::NxDomain(ns_soa());
    };
    let svc_soa = || Soa {
        namespace: ns.name.clone(),
        serial: serial(service.mod_revision),
        negative_ttl: service.dns_ttl_seconds,
    };
    let all: Vec<&Arc<Instance>> = service.instances.values().collect();
    match labels.as_slice() {
        [_svc] => answer(service, fail_open(all), qtype, svc_soa()),
        [svc, "_tcp"] if svc.starts_with('_') => {
            if qtype == RecordType::SRV {
                answer(service, fail_open(all), qtype, svc_soa())
            } else {
                Resolution::NoData(svc_soa())
            }
        }
        [id, _svc] => match service.instances.get(*id) {
            Some(instance) => answer(service, vec![instance], qtype, svc_soa()),
            None if all.iter().any(|i| has_key(i, id)) => Resolution::NoData(svc_soa()),
            None => Resolution::NxDomain(svc_soa()),
        },
        [value, key, _svc] => {
            let subset: Vec<&Arc<Instance>> = all
                .into_iter()
                .filter(|i| {
                    i.attributes
                        .iter()
                        .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case(value))
                })
                .collect();
            if subset.is_empty() {
                Resolution::NxDomain(svc_soa())
            } else {
                answer(service, fail_open(subset), qtype, svc_soa())
            }
        }
        _ => Resolution::NxDomain(svc_soa()),
    }
}

/// The label that names the service in `prefix` (the labels before the namespace): the
/// last one, or the first without its `_` in `_SVC._tcp`.
fn service_label(prefix: &str) -> &str {
    match prefix.split_once('.') {
        Some((first, "_tcp")) if first.len() > 1 && first.starts_with('_') => &first[1..],
        _ => prefix.rsplit('.').next().unwrap_or(prefix),
    }
}

/// The longest namespace that `name` ends with.
fn locate<'r, 'n>(registry: &'r Registry, name: &'n str) -> Option<Located<'r, 'n>> {
    let namespaces = registry.namespaces();
    let mut start = 0;
    loop {
        let suffix = &name[start..];
        if suffix.is_empty() {
            return None;
        }
        if let Some(namespace) = namespaces.get(suffix) {
            let prefix = if start == 0 { "" } else { &name[..start - 1] };
            return Some(Located { namespace, prefix });
        }
        start += suffix.find('.')? + 1;
    }
}

/// The healthy instances, or every one of them if none is healthy (fail open, as Route 53
/// and Cloud Map's HEALTHY_OR_ELSE_ALL do: better a chance than certain failure).
fn fail_open(instances: Vec<&Arc<Instance>>) -> Vec<&Arc<Instance>> {
    if instances.iter().any(|i| i.health == HealthStatus::Healthy) {
        instances
            .into_iter()
            .filter(|i| i.health == HealthStatus::Healthy)
            .collect()
    } else {
        instances
    }
}

/// The positive answer for `qtype` over `set`, or NODATA when it has no such records.
fn answer(service: &Service, set: Vec<&Arc<Instance>>, qtype: RecordType, soa: Soa) -> Resolution {
    let kind = match qtype {
        RecordType::A => Kind::Addresses {
            v4: true,
            v6: false,
        },
        RecordType::AAAA => Kind::Addresses {
            v4: false,
            v6: true,
        },
        RecordType::ANY => Kind::Addresses { v4: true, v6: true },
        RecordType::SRV => Kind::Srv,
        _ => return Resolution::NoData(soa),
    };
    let instances: Vec<Arc<Instance>> = set
        .into_iter()
        .filter(|i| match kind {
            Kind::Addresses { v4, v6 } => {
                (v4 && i.address.is_ipv4()) || (v6 && i.address.is_ipv6())
            }
            Kind::Srv => true,
        })
        .map(Arc::clone)
        .collect();
    if instances.is_empty() {
        return Resolution::NoData(soa);
    }
    Resolution::Found(Found {
        service: service.full_name(),
        ttl: service.dns_ttl_seconds,
        kind,
        instances,
    })
}

fn has_key(instance: &Instance, key: &str) -> bool {
    instance
        .attributes
        .keys()
        .any(|k| k.eq_ignore_ascii_case(key))
}

/// A revision as an SOA serial: its low 32 bits (serials compare modulo 2^32, RFC 1982).
fn serial(revision: u64) -> u32 {
    (revision & u64::from(u32::MAX)) as u32
}
