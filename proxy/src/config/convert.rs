//! Generated `meridian.v1` types → the proxy's domain types, validated. The only file of the
//! proxy's routing half that names generated types: a state that fails here is rejected (Nack)
//! as a whole and the proxy keeps its last good config.
//!
//! The control plane validates routes too; the proxy checks again because it must never crash or
//! misroute on what a (possibly newer or buggy) server sends.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, Method};
use meridian_proto::v1 as pb;

use super::{
    DEFAULT_TIMEOUT, HeaderMatch, HeaderValueMatch, Health, Instance, LoadBalancer, OutlierPolicy,
    PathMatch, Protocol, RetryOn, RetryPolicy, Route, RouteMatch, Rule, ServiceState, Subset,
    Target,
};
use crate::authority::is_service_name;

/// Rules per route, targets per rule, header matches per rule: the proto's documented limits.
const MAX_RULES: usize = 50;
const MAX_TARGETS: usize = 10;
const MAX_HEADERS: usize = 10;
const MAX_WEIGHT: u32 = 10_000;
const MAX_ATTEMPTS: u32 = 10;
/// A rule's timeout and a per-try timeout are at most an hour (as the proto says).
const MAX_TIMEOUT_MS: u32 = 3_600_000;

/// Why a streamed service state was rejected; `field` is a path such as
/// `services[0].route.rules[1].targets[0].weight`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConvertError {
    /// A required value is empty or absent.
    #[error("{field}: is required")]
    Missing { field: String },
    /// A number outside its allowed range.
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        field: String,
        value: u64,
        min: u64,
        max: u64,
    },
    /// More elements than allowed.
    #[error("{field}: {len} elements, at most {max} allowed")]
    TooMany {
        field: String,
        len: usize,
        max: usize,
    },
    /// A value that does not parse or contradicts another.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

// === impl ConvertError ===

impl ConvertError {
    fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    fn missing(field: impl Into<String>) -> Self {
        Self::Missing {
            field: field.into(),
        }
    }

    fn field_mut(&mut self) -> &mut String {
        match self {
            Self::Missing { field }
            | Self::OutOfRange { field, .. }
            | Self::TooMany { field, .. }
            | Self::Invalid { field, .. } => field,
        }
    }

    /// Prefixes the field path with the enclosing element (`route`, `rules[3]`, ...).
    pub(crate) fn at(mut self, prefix: impl fmt::Display) -> Self {
        let field = self.field_mut();
        *field = format!("{prefix}.{field}");
        self
    }
}

fn range(field: &str, value: u32, min: u32, max: u32) -> Result<u32, ConvertError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConvertError::OutOfRange {
            field: field.to_owned(),
            value: value.into(),
            min: min.into(),
            max: max.into(),
        })
    }
}

fn at_most<T>(field: &str, items: &[T], max: usize) -> Result<(), ConvertError> {
    if items.len() > max {
        return Err(ConvertError::TooMany {
            field: field.to_owned(),
            len: items.len(),
            max,
        });
    }
    Ok(())
}

// === ServiceState ===

impl TryFrom<pb::ServiceState> for ServiceState {
    type Error = ConvertError;

    fn try_from(state: pb::ServiceState) -> Result<Self, Self::Error> {
        let name = state.service.to_ascii_lowercase();
        if name.is_empty() {
            return Err(ConvertError::missing("service"));
        }
        if !is_service_name(&name) {
            return Err(ConvertError::invalid(
                "service",
                format!("{name:?} is not a service name"),
            ));
        }
        let route = match state.route {
            Some(route) => Some(Route::try_from(route).map_err(|e| e.at("route"))?),
            None => None,
        };
        let instances = state
            .instances
            .into_iter()
            .enumerate()
            .map(|(i, inst)| Instance::try_from(inst).map_err(|e| e.at(format!("instances[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name,
            exists: state.exists,
            revision: state.service_revision,
            route,
            instances,
        })
    }
}

impl TryFrom<pb::Instance> for Instance {
    type Error = ConvertError;

    fn try_from(inst: pb::Instance) -> Result<Self, Self::Error> {
        if inst.id.is_empty() {
            return Err(ConvertError::missing("id"));
        }
        let ip: IpAddr = inst.address.parse().map_err(|_| {
            ConvertError::invalid(
                "address",
                format!("{:?} is not an IP address", inst.address),
            )
        })?;
        let port = range("port", inst.port, 1, u16::MAX.into())?;
        let port = u16::try_from(port).expect("invariant: checked to fit a u16 just above");
        let health = match pb::HealthStatus::try_from(inst.health) {
            Ok(pb::HealthStatus::Healthy) => Health::Healthy,
            Ok(pb::HealthStatus::Unhealthy) => Health::Unhealthy,
            // Unspecified and values this build does not know are not healthy: no traffic.
            Ok(pb::HealthStatus::Unknown | pb::HealthStatus::Unspecified) | Err(_) => {
                Health::Unknown
            }
        };
        let protocol = match inst.attributes.get("protocol").map(String::as_str) {
            Some("h2c") => Protocol::H2c,
            _ => Protocol::Http1,
        };
        Ok(Self {
            id: inst.id,
            addr: SocketAddr::new(ip, port),
            attributes: inst.attributes.into_iter().collect(),
            health,
            protocol,
        })
    }
}

// === Route ===

impl TryFrom<pb::Route> for Route {
    type Error = ConvertError;

    fn try_from(route: pb::Route) -> Result<Self, Self::Error> {
        at_most("rules", &route.rules, MAX_RULES)?;
        if route.rules.is_empty() {
            return Err(ConvertError::missing("rules"));
        }
        let rules = route
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| Rule::try_from(rule).map_err(|e| e.at(format!("rules[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let load_balancer = match route.load_balancer {
            Some(lb) => LoadBalancer::try_from(lb).map_err(|e| e.at("load_balancer"))?,
            None => LoadBalancer::default(),
        };
        let outlier = match route.outlier_detection {
            Some(od) if od.disabled => None,
            Some(od) => Some(OutlierPolicy::try_from(od).map_err(|e| e.at("outlier_detection"))?),
            None => Some(OutlierPolicy::default()),
        };
        Ok(Self {
            rules,
            load_balancer,
            outlier,
        })
    }
}

impl TryFrom<pb::RouteRule> for Rule {
    type Error = ConvertError;

    fn try_from(rule: pb::RouteRule) -> Result<Self, Self::Error> {
        let name = (!rule.name.is_empty()).then_some(rule.name);
        let matcher = match rule.r#match {
            Some(m) => RouteMatch::try_from(m).map_err(|e| e.at("match"))?,
            None => RouteMatch::default(),
        };
        at_most("targets", &rule.targets, MAX_TARGETS)?;
        if rule.targets.is_empty() {
            return Err(ConvertError::missing("targets"));
        }
        let targets = rule
            .targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| Target::try_from(t).map_err(|e| e.at(format!("targets[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.iter().all(|t| t.weight == 0) {
            return Err(ConvertError::invalid(
                "targets",
                "weights must sum to more than 0",
            ));
        }
        let timeout = match range("timeout_ms", rule.timeout_ms, 0, MAX_TIMEOUT_MS)? {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()),
        };
        let retry = match rule.retry {
            Some(r) => Some(RetryPolicy::try_from(r).map_err(|e| e.at("retry"))?),
            None => None,
        };
        Ok(Self {
            name,
            matcher,
            targets,
            timeout,
            retry,
        })
    }
}

impl TryFrom<pb::RouteMatch> for RouteMatch {
    type Error = ConvertError;

    fn try_from(m: pb::RouteMatch) -> Result<Self, Self::Error> {
        let path = match (m.path_prefix.is_empty(), m.path_exact.is_empty()) {
            (true, true) => None,
            (false, false) => {
                return Err(ConvertError::invalid(
                    "path_exact",
                    "set together with path_prefix",
                ));
            }
            (false, true) => Some(PathMatch::Prefix(slash_path("path_prefix", m.path_prefix)?)),
            (true, false) => Some(PathMatch::Exact(slash_path("path_exact", m.path_exact)?)),
        };
        let method = if m.method.is_empty() {
            None
        } else {
            let valid = m
                .method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            let method = Method::from_bytes(m.method.as_bytes())
                .ok()
                .filter(|_| valid);
            Some(method.ok_or_else(|| {
                ConvertError::invalid(
                    "method",
                    format!("{:?} is not an upper-case HTTP method", m.method),
                )
            })?)
        };
        at_most("headers", &m.headers, MAX_HEADERS)?;
        let headers = m
            .headers
            .into_iter()
            .enumerate()
            .map(|(i, h)| HeaderMatch::try_from(h).map_err(|e| e.at(format!("headers[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path,
            method,
            headers,
        })
    }
}

fn slash_path(field: &str, path: String) -> Result<String, ConvertError> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(ConvertError::invalid(
            field,
            format!("{path:?} does not start with '/'"),
        ))
    }
}

impl TryFrom<pb::HeaderMatch> for HeaderMatch {
    type Error = ConvertError;

    fn try_from(h: pb::HeaderMatch) -> Result<Self, Self::Error> {
        if h.name.is_empty() {
            return Err(ConvertError::missing("name"));
        }
        let name =
            HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConvertError::invalid("name", format!("{:?} is not a header name", h.name))
            })?;
        let value = match h.value {
            Some(pb::header_match::Value::Exact(v)) => HeaderValueMatch::Exact(v),
            Some(pb::header_match::Value::Prefix(v)) => HeaderValueMatch::Prefix(v),
            Some(pb::header_match::Value::Present(true)) => HeaderValueMatch::Present,
            Some(pb::header_match::Value::Present(false)) => {
                return Err(ConvertError::invalid("present", "must be true when set"));
            }
            None => return Err(ConvertError::missing("value")),
        };
        Ok(Self { name, value })
    }
}

impl TryFrom<pb::WeightedTarget> for Target {
    type Error = ConvertError;

    fn try_from(t: pb::WeightedTarget) -> Result<Self, Self::Error> {
        if t.subset.is_empty() {
            return Err(ConvertError::missing("subset"));
        }
        if let Some(key) = t.subset.keys().find(|k| k.is_empty()) {
            return Err(ConvertError::invalid(
                "subset",
                format!("empty attribute name {key:?}"),
            ));
        }
        let weight = range("weight", t.weight, 0, MAX_WEIGHT)?;
        Ok(Self {
            subset: Subset(t.subset.into_iter().collect::<BTreeMap<_, _>>()),
            weight,
        })
    }
}

impl TryFrom<pb::RetryPolicy> for RetryPolicy {
    type Error = ConvertError;

    fn try_from(r: pb::RetryPolicy) -> Result<Self, Self::Error> {
        let attempts = range("attempts", r.attempts, 0, MAX_ATTEMPTS)?;
        let per_try_timeout = match range(
            "per_try_timeout_ms",
            r.per_try_timeout_ms,
            0,
            MAX_TIMEOUT_MS,
        )? {
            0 => None,
            ms => Some(Duration::from_millis(ms.into())),
        };
        let retry_on = if r.retry_on.is_empty() {
            RetryOn::default()
        } else {
            let mut set = RetryOn::none();
            for (i, raw) in r.retry_on.iter().enumerate() {
                match pb::RetryOn::try_from(*raw) {
                    Ok(pb::RetryOn::ConnectFailure) => set.connect_failure = true,
                    Ok(pb::RetryOn::Reset) => set.reset = true,
                    Ok(pb::RetryOn::GatewayError) => set.gateway_error = true,
                    Ok(pb::RetryOn::ServerError) => set.server_error = true,
                    Ok(pb::RetryOn::PerTryTimeout) => set.per_try_timeout = true,
                    Ok(pb::RetryOn::Unspecified) | Err(_) => {
                        return Err(ConvertError::invalid(
                            format!("retry_on[{i}]"),
                            format!("{raw} is not a known retry event"),
                        ));
                    }
                }
            }
            set
        };
        Ok(Self {
            attempts,
            per_try_timeout,
            retry_on,
            retry_non_idempotent: r.retry_non_idempotent,
        })
    }
}

impl TryFrom<pb::LoadBalancer> for LoadBalancer {
    type Error = ConvertError;

    fn try_from(lb: pb::LoadBalancer) -> Result<Self, Self::Error> {
        let policy = pb::LoadBalancerPolicy::try_from(lb.policy).map_err(|_| {
            ConvertError::invalid("policy", format!("{} is not a known policy", lb.policy))
        })?;
        if !lb.hash_header.is_empty() && policy != pb::LoadBalancerPolicy::RingHash {
            return Err(ConvertError::invalid(
                "hash_header",
                "only RING_HASH uses a hash header",
            ));
        }
        Ok(match policy {
            pb::LoadBalancerPolicy::Unspecified | pb::LoadBalancerPolicy::P2cEwma => Self::P2cEwma,
            pb::LoadBalancerPolicy::RoundRobin => Self::RoundRobin,
            pb::LoadBalancerPolicy::LeastRequest => Self::LeastRequest,
            pb::LoadBalancerPolicy::RingHash => {
                let hash_header = if lb.hash_header.is_empty() {
                    None
                } else {
                    Some(
                        HeaderName::from_bytes(lb.hash_header.to_ascii_lowercase().as_bytes())
                            .map_err(|_| {
                                ConvertError::invalid(
                                    "hash_header",
                                    format!("{:?} is not a header name", lb.hash_header),
                                )
                            })?,
                    )
                };
                Self::RingHash { hash_header }
            }
        })
    }
}

impl TryFrom<pb::OutlierDetection> for OutlierPolicy {
    type Error = ConvertError;

    fn try_from(od: pb::OutlierDetection) -> Result<Self, Self::Error> {
        let defaults = Self::default();
        let consecutive_failures = match od.consecutive_failures {
            0 => defaults.consecutive_failures,
            n => range("consecutive_failures", n, 1, 1000)?,
        };
        let base_ejection = match od.base_ejection_ms {
            0 => defaults.base_ejection,
            ms => Duration::from_millis(range("base_ejection_ms", ms, 100, MAX_TIMEOUT_MS)?.into()),
        };
        let max_ejection_percent = match od.max_ejection_percent {
            0 => defaults.max_ejection_percent,
            n => range("max_ejection_percent", n, 1, 100)?,
        };
        Ok(Self {
            consecutive_failures,
            base_ejection,
            max_ejection_percent,
        })
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
