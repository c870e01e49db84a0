//! Generated protobuf types ↔ registry types. Nothing past this file sees `meridian_proto`
//! request types; every field is checked here (or by the registry's validators) and errors
//! name the field as the proto spells it.

use std::collections::{BTreeMap, HashMap};

use meridian_proto::v1 as pb;

use crate::registry::discover::{DiscoverQuery, HealthFilter};
use crate::registry::{
    CheckKind, Command, HealthCheck, HealthStatus, Instance, InstanceSpec, Namespace,
    RegistryError, Service, ServiceName, ServiceSpec, names,
};
use crate::replica::Consistency;

pub(crate) mod acl;
mod discovery;
mod route;

pub(crate) use discovery::{StateCache, hello, proxy_pb, wait_pb};
pub(crate) use route::{put_route, route_pb};

type Result<T> = std::result::Result<T, RegistryError>;

/// DNS names are case-insensitive: canonical form is lower case, without a trailing dot.
pub(crate) fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub(crate) fn namespace_name(field: &str, name: &str) -> Result<String> {
    let name = canonical(name);
    names::validate_domain(field, &name)?;
    Ok(name)
}

pub(crate) fn service_name(field: &str, name: &str) -> Result<ServiceName> {
    ServiceName::parse(field, &canonical(name))
}

pub(crate) fn instance_id(field: &str, id: &str) -> Result<String> {
    let id = id.to_ascii_lowercase();
    names::validate_label(field, &id)?;
    Ok(id)
}

pub(crate) fn attributes(
    field: &str,
    map: HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = map.into_iter().collect();
    names::validate_attributes(field, &map)?;
    Ok(map)
}

pub(crate) fn consistency(value: i32) -> Result<Consistency> {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Unspecified | pb::Consistency::Stale) => Ok(Consistency::Stale),
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Err(_) => Err(RegistryError::invalid(
            "consistency",
            format!("{value} is not a Consistency"),
        )),
    }
}

pub(crate) fn create_service(req: pb::CreateServiceRequest) -> Result<Command> {
    let dns_ttl_seconds = match req.dns_ttl_seconds {
        0 => crate::registry::model::DEFAULT_DNS_TTL_SECONDS,
        ttl => ttl,
    };
    let health_check = req
        .health_check
        .map(health_check)
        .transpose()
        .map_err(|e| e.within("health_check."))?;
    Ok(Command::CreateService(ServiceSpec {
        name: service_name("name", &req.name)?,
        description: req.description,
        dns_ttl_seconds,
        health_check,
    }))
}

fn health_check(check: pb::HealthCheck) -> Result<HealthCheck> {
    use pb::health_check::Kind;
    let kind = match check.kind {
        None => {
            return Err(RegistryError::invalid(
                "kind",
                "set one of ttl, http, tcp, grpc",
            ));
        }
        Some(Kind::Ttl(t)) => CheckKind::Ttl { ttl_ms: t.ttl_ms },
        Some(Kind::Http(h)) => CheckKind::Http { path: h.path },
        Some(Kind::Tcp(_)) => CheckKind::Tcp,
        Some(Kind::Grpc(g)) => CheckKind::Grpc { service: g.service },
    };
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    let check = HealthCheck {
        kind,
        interval_ms: or(check.interval_ms, HealthCheck::DEFAULT_INTERVAL_MS),
        timeout_ms: or(check.timeout_ms, HealthCheck::DEFAULT_TIMEOUT_MS),
        healthy_threshold: or(
            check.healthy_threshold,
            HealthCheck::DEFAULT_HEALTHY_THRESHOLD,
        ),
        unhealthy_threshold: or(
            check.unhealthy_threshold,
            HealthCheck::DEFAULT_UNHEALTHY_THRESHOLD,
        ),
        deregister_after_ms: check.deregister_after_ms,
    };
    check.validate()?;
    Ok(check)
}

pub(crate) fn register(req: pb::RegisterInstanceRequest) -> Result<Command> {
    Ok(Command::RegisterInstance {
        service: service_name("service", &req.service)?,
        instance: InstanceSpec {
            id: instance_id("id", &req.id)?,
            address: names::parse_address("address", &req.address)?,
            port: names::validate_port("port", req.port)?,
            attributes: attributes("attributes", req.attributes)?,
        },
    })
}

pub(crate) fn health_status(value: i32) -> Result<HealthStatus> {
    match pb::HealthStatus::try_from(value) {
        Ok(pb::HealthStatus::Healthy) => Ok(HealthStatus::Healthy),
        Ok(pb::HealthStatus::Unhealthy) => Ok(HealthStatus::Unhealthy),
        Ok(pb::HealthStatus::Unknown) => Ok(HealthStatus::Unknown),
        Ok(pb::HealthStatus::Unspecified) | Err(_) => Err(RegistryError::invalid(
            "health",
            format!("{value} is not HEALTHY, UNHEALTHY or UNKNOWN"),
        )),
    }
}

pub(crate) fn discover_query(req: &mut pb::DiscoverInstancesRequest) -> Result<DiscoverQuery> {
    let health = match pb::HealthFilter::try_from(req.health_filter) {
        Ok(pb::HealthFilter::Unspecified | pb::HealthFilter::Healthy) => HealthFilter::Healthy,
        Ok(pb::HealthFilter::Unhealthy) => HealthFilter::Unhealthy,
        Ok(pb::HealthFilter::All) => HealthFilter::All,
        Ok(pb::HealthFilter::HealthyOrElseAll) => HealthFilter::HealthyOrElseAll,
        Err(_) => {
            return Err(RegistryError::invalid(
                "health_filter",
                format!("{} is not a HealthFilter", req.health_filter),
            ));
        }
    };
    DiscoverQuery {
        query_parameters: attributes(
            "query_parameters",
            std::mem::take(&mut req.query_parameters),
        )?,
        optional_parameters: attributes(
            "optional_parameters",
            std::mem::take(&mut req.optional_parameters),
        )?,
        health,
        max_results: req.max_results,
    }
    .validated()
}

// --- registry → proto ---

pub(crate) fn namespace(ns: &Namespace) -> pb::Namespace {
    pb::Namespace {
        name: ns.name.clone(),
        description: ns.description.clone(),
        create_revision: ns.create_revision,
        mod_revision: ns.mod_revision,
        service_count: saturating_u32(ns.services.len()),
    }
}

pub(crate) fn service(s: &Service) -> pb::Service {
    pb::Service {
        name: s.full_name(),
        namespace: s.namespace.clone(),
        description: s.description.clone(),
        dns_ttl_seconds: s.dns_ttl_seconds,
        health_check: s.health_check.as_ref().map(health_check_pb),
        create_revision: s.create_revision,
        mod_revision: s.mod_revision,
        instance_count: saturating_u32(s.instances.len()),
    }
}

fn health_check_pb(c: &HealthCheck) -> pb::HealthCheck {
    use pb::health_check::Kind;
    pb::HealthCheck {
        kind: Some(match &c.kind {
            CheckKind::Ttl { ttl_ms } => Kind::Ttl(pb::TtlCheck { ttl_ms: *ttl_ms }),
            CheckKind::Http { path } => Kind::Http(pb::HttpCheck { path: path.clone() }),
            CheckKind::Tcp => Kind::Tcp(pb::TcpCheck {}),
            CheckKind::Grpc { service } => Kind::Grpc(pb::GrpcCheck {
                service: service.clone(),
            }),
        }),
        interval_ms: c.interval_ms,
        timeout_ms: c.timeout_ms,
        healthy_threshold: c.healthy_threshold,
        unhealthy_threshold: c.unhealthy_threshold,
        deregister_after_ms: c.deregister_after_ms,
    }
}

pub(crate) fn instance(service: &ServiceName, i: &Instance) -> pb::Instance {
    pb::Instance {
        service: service.to_string(),
        id: i.id.clone(),
        address: i.address.to_string(),
        port: u32::from(i.port),
        attributes: i
            .attributes
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        health: health_pb(i.health) as i32,
        create_revision: i.create_revision,
        mod_revision: i.mod_revision,
    }
}

pub(crate) fn health_pb(h: HealthStatus) -> pb::HealthStatus {
    match h {
        HealthStatus::Healthy => pb::HealthStatus::Healthy,
        HealthStatus::Unhealthy => pb::HealthStatus::Unhealthy,
        HealthStatus::Unknown => pb::HealthStatus::Unknown,
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
