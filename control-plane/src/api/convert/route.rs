//! Routes and discovery states: generated types ↔ registry route types.

use meridian_proto::v1 as pb;

use super::{Result, instance, service_name};
use crate::registry::route::{
    self, HeaderMatch, HeaderValueMatch, LoadBalancer, LoadBalancerPolicy, OutlierDetection,
    PathMatch, RetryOn, RetryPolicy, RouteMatch, RouteRule, WeightedTarget,
};
use crate::registry::{Command, RegistryError, Route, RouteSpec, Service, ServiceName};

/// A `PutRoute` request as a command, with "0 means the default" resolved. Errors name the
/// field as the proto spells it (`route.rules[0].targets[1].weight`).
pub(crate) fn put_route(req: pb::PutRouteRequest) -> Result<Command> {
    let Some(route) = req.route else {
        return Err(RegistryError::invalid("route", "must be set"));
    };
    let service = service_name("route.service", &route.service)?;
    let route = route_spec(route).map_err(|e| e.within("route."))?;
    Ok(Command::PutRoute { service, route })
}

fn route_spec(route: pb::Route) -> Result<RouteSpec> {
    let rules = route
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, rule)| route_rule(rule).map_err(|e| e.within(&format!("rules[{i}]."))))
        .collect::<Result<_>>()?;
    let load_balancer = match route.load_balancer {
        None => LoadBalancer::default(),
        Some(lb) => load_balancer(lb).map_err(|e| e.within("load_balancer."))?,
    };
    let outlier_detection = route
        .outlier_detection
        .map_or_else(OutlierDetection::default, |o| {
            let or = |v: u32, default: u32| if v == 0 { default } else { v };
            OutlierDetection {
                consecutive_failures: or(
                    o.consecutive_failures,
                    route::DEFAULT_CONSECUTIVE_FAILURES,
                ),
                base_ejection_ms: or(o.base_ejection_ms, route::DEFAULT_BASE_EJECTION_MS),
                max_ejection_percent: or(
                    o.max_ejection_percent,
                    route::DEFAULT_MAX_EJECTION_PERCENT,
                ),
                disabled: o.disabled,
            }
        });
    let spec = RouteSpec {
        rules,
        load_balancer,
        outlier_detection,
    };
    spec.validate()?;
    Ok(spec)
}

fn route_rule(rule: pb::RouteRule) -> Result<RouteRule> {
    let matches = rule
        .r#match
        .map(route_match)
        .transpose()
        .map_err(|e| e.within("match."))?
        .filter(|m| *m != RouteMatch::default());
    let targets = rule
        .targets
        .into_iter()
        .map(|t| WeightedTarget {
            subset: t.subset.into_iter().collect(),
            weight: t.weight,
        })
        .collect();
    let retry = rule
        .retry
        .map(retry_policy)
        .transpose()
        .map_err(|e| e.within("retry."))?;
    Ok(RouteRule {
        name: rule.name,
        matches,
        targets,
        timeout_ms: match rule.timeout_ms {
            0 => route::DEFAULT_TIMEOUT_MS,
            ms => ms,
        },
        retry,
    })
}

fn route_match(m: pb::RouteMatch) -> Result<RouteMatch> {
    use pb::header_match::Value;
    let path = match (m.path_prefix.is_empty(), m.path_exact.is_empty()) {
        (true, true) => None,
        (false, true) => Some(PathMatch::Prefix(m.path_prefix)),
        (true, false) => Some(PathMatch::Exact(m.path_exact)),
        (false, false) => {
            return Err(RegistryError::invalid(
                "path_exact",
                "set path_prefix or path_exact, not both",
            ));
        }
    };
    let headers = m
        .headers
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let value = match h.value {
                Some(Value::Exact(v)) => HeaderValueMatch::Exact(v),
                Some(Value::Prefix(v)) => HeaderValueMatch::Prefix(v),
                Some(Value::Present(true)) => HeaderValueMatch::Present,
                Some(Value::Present(false)) => {
                    return Err(RegistryError::invalid(
                        format!("headers[{i}].present"),
                        "must be true (match a value with exact or prefix)",
                    ));
                }
                None => {
                    return Err(RegistryError::invalid(
                        format!("headers[{i}]"),
                        "set one of exact, prefix or present",
                    ));
                }
            };
            Ok(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value,
            })
        })
        .collect::<Result<_>>()?;
    Ok(RouteMatch {
        path,
        method: (!m.method.is_empty()).then_some(m.method),
        headers,
    })
}

fn retry_policy(r: pb::RetryPolicy) -> Result<RetryPolicy> {
    let retry_on = if r.retry_on.is_empty() {
        RetryPolicy::DEFAULT_RETRY_ON.to_vec()
    } else {
        r.retry_on
            .iter()
            .enumerate()
            .map(|(i, v)| match pb::RetryOn::try_from(*v) {
                Ok(pb::RetryOn::ConnectFailure) => Ok(RetryOn::ConnectFailure),
                Ok(pb::RetryOn::Reset) => Ok(RetryOn::Reset),
                Ok(pb::RetryOn::GatewayError) => Ok(RetryOn::GatewayError),
                Ok(pb::RetryOn::ServerError) => Ok(RetryOn::ServerError),
                Ok(pb::RetryOn::PerTryTimeout) => Ok(RetryOn::PerTryTimeout),
                Ok(pb::RetryOn::Unspecified) | Err(_) => Err(RegistryError::invalid(
                    format!("retry_on[{i}]"),
                    format!("{v} is not a RetryOn"),
                )),
            })
            .collect::<Result<_>>()?
    };
    Ok(RetryPolicy {
        attempts: r.attempts,
        per_try_timeout_ms: r.per_try_timeout_ms,
        retry_on,
        retry_non_idempotent: r.retry_non_idempotent,
    })
}

fn load_balancer(lb: pb::LoadBalancer) -> Result<LoadBalancer> {
    let policy = match pb::LoadBalancerPolicy::try_from(lb.policy) {
        Ok(pb::LoadBalancerPolicy::Unspecified | pb::LoadBalancerPolicy::P2cEwma) => {
            LoadBalancerPolicy::P2cEwma
        }
        Ok(pb::LoadBalancerPolicy::RoundRobin) => LoadBalancerPolicy::RoundRobin,
        Ok(pb::LoadBalancerPolicy::LeastRequest) => LoadBalancerPolicy::LeastRequest,
        Ok(pb::LoadBalancerPolicy::RingHash) => LoadBalancerPolicy::RingHash,
        Err(_) => {
            return Err(RegistryError::invalid(
                "policy",
                format!("{} is not a LoadBalancerPolicy", lb.policy),
            ));
        }
    };
    Ok(LoadBalancer {
        policy,
        hash_header: (!lb.hash_header.is_empty()).then(|| lb.hash_header.to_ascii_lowercase()),
    })
}

/// A stored route as the API shows it.
pub(crate) fn route_pb(service: &ServiceName, route: &Route) -> pb::Route {
    let spec = &route.spec;
    pb::Route {
        service: service.to_string(),
        rules: spec.rules.iter().map(route_rule_pb).collect(),
        load_balancer: Some(pb::LoadBalancer {
            policy: match spec.load_balancer.policy {
                LoadBalancerPolicy::P2cEwma => pb::LoadBalancerPolicy::P2cEwma,
                LoadBalancerPolicy::RoundRobin => pb::LoadBalancerPolicy::RoundRobin,
                LoadBalancerPolicy::LeastRequest => pb::LoadBalancerPolicy::LeastRequest,
                LoadBalancerPolicy::RingHash => pb::LoadBalancerPolicy::RingHash,
            } as i32,
            hash_header: spec.load_balancer.hash_header.clone().unwrap_or_default(),
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_failures: spec.outlier_detection.consecutive_failures,
            base_ejection_ms: spec.outlier_detection.base_ejection_ms,
            max_ejection_percent: spec.outlier_detection.max_ejection_percent,
            disabled: spec.outlier_detection.disabled,
        }),
        create_revision: route.create_revision,
        mod_revision: route.mod_revision,
    }
}

fn route_rule_pb(rule: &RouteRule) -> pb::RouteRule {
    use pb::header_match::Value;
    pb::RouteRule {
        name: rule.name.clone(),
        r#match: rule.matches.as_ref().map(|m| {
            let (path_prefix, path_exact) = match &m.path {
                Some(PathMatch::Prefix(p)) => (p.clone(), String::new()),
                Some(PathMatch::Exact(p)) => (String::new(), p.clone()),
                None => (String::new(), String::new()),
            };
            pb::RouteMatch {
                path_prefix,
                path_exact,
                method: m.method.clone().unwrap_or_default(),
                headers: m
                    .headers
                    .iter()
                    .map(|h| pb::HeaderMatch {
                        name: h.name.clone(),
                        value: Some(match &h.value {
                            HeaderValueMatch::Exact(v) => Value::Exact(v.clone()),
                            HeaderValueMatch::Prefix(v) => Value::Prefix(v.clone()),
                            HeaderValueMatch::Present => Value::Present(true),
                        }),
                    })
                    .collect(),
            }
        }),
        targets: rule
            .targets
            .iter()
            .map(|t| pb::WeightedTarget {
                subset: t
                    .subset
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                weight: t.weight,
            })
            .collect(),
        timeout_ms: rule.timeout_ms,
        retry: rule.retry.as_ref().map(|r| pb::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout_ms: r.per_try_timeout_ms,
            retry_on: r
                .retry_on
                .iter()
                .map(|on| {
                    (match on {
                        RetryOn::ConnectFailure => pb::RetryOn::ConnectFailure,
                        RetryOn::Reset => pb::RetryOn::Reset,
                        RetryOn::GatewayError => pb::RetryOn::GatewayError,
                        RetryOn::ServerError => pb::RetryOn::ServerError,
                        RetryOn::PerTryTimeout => pb::RetryOn::PerTryTimeout,
                    }) as i32
                })
                .collect(),
            retry_non_idempotent: r.retry_non_idempotent,
        }),
    }
}

/// What a proxy learns of one service: `None` for a service that does not exist.
pub(crate) fn service_state(name: &ServiceName, service: Option<&Service>) -> pb::ServiceState {
    match service {
        None => pb::ServiceState {
            service: name.to_string(),
            exists: false,
            ..Default::default()
        },
        Some(s) => pb::ServiceState {
            service: name.to_string(),
            exists: true,
            service_revision: s.mod_revision,
            route: s.route.as_ref().map(|r| route_pb(name, r)),
            instances: s.instances.values().map(|i| instance(name, i)).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> pb::Route {
        use pb::header_match::Value;
        pb::Route {
            service: "orders.cafe.local".into(),
            rules: vec![
                pb::RouteRule {
                    name: "canary".into(),
                    r#match: Some(pb::RouteMatch {
                        path_exact: "/checkout".into(),
                        method: "POST".into(),
                        headers: vec![
                            pb::HeaderMatch {
                                name: "X-Canary".into(),
                                value: Some(Value::Prefix("yes".into())),
                            },
                            pb::HeaderMatch {
                                name: "x-debug".into(),
                                value: Some(Value::Present(true)),
                            },
                        ],
                        ..Default::default()
                    }),
                    targets: vec![
                        pb::WeightedTarget {
                            subset: [("version".to_string(), "v2".to_string())].into(),
                            weight: 0,
                        },
                        pb::WeightedTarget {
                            subset: [
                                ("version".to_string(), "v1".to_string()),
                                ("zone".to_string(), "a".to_string()),
                            ]
                            .into(),
                            weight: 7,
                        },
                    ],
                    timeout_ms: 1234,
                    retry: Some(pb::RetryPolicy {
                        attempts: 3,
                        per_try_timeout_ms: 100,
                        retry_on: vec![
                            pb::RetryOn::PerTryTimeout as i32,
                            pb::RetryOn::ServerError as i32,
                        ],
                        retry_non_idempotent: true,
                    }),
                },
                pb::RouteRule {
                    r#match: Some(pb::RouteMatch::default()),
                    targets: vec![pb::WeightedTarget {
                        subset: [("version".to_string(), "v1".to_string())].into(),
                        weight: 1,
                    }],
                    ..Default::default()
                },
            ],
            load_balancer: Some(pb::LoadBalancer {
                policy: pb::LoadBalancerPolicy::LeastRequest as i32,
                hash_header: String::new(),
            }),
            outlier_detection: Some(pb::OutlierDetection {
                disabled: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec(route: pb::Route) -> RouteSpec {
        let Command::PutRoute { route, .. } =
            put_route(pb::PutRouteRequest { route: Some(route) }).unwrap()
        else {
            panic!("a PutRoute");
        };
        route
    }

    #[test]
    fn a_route_survives_proto_round_trips_with_defaults_resolved() {
        let first = spec(full());
        // An empty match means "match everything": stored as no match.
        assert!(first.rules[1].matches.is_none());
        assert_eq!(first.rules[1].timeout_ms, route::DEFAULT_TIMEOUT_MS);
        assert_eq!(
            first.rules[0].matches.as_ref().unwrap().headers[0].name,
            "x-canary"
        );
        assert!(first.outlier_detection.disabled);
        assert_eq!(
            first.outlier_detection.consecutive_failures,
            route::DEFAULT_CONSECUTIVE_FAILURES
        );
        let stored = Route {
            spec: first.clone(),
            create_revision: 3,
            mod_revision: 4,
        };
        let shown = route_pb(
            &ServiceName::parse("s", "orders.cafe.local").unwrap(),
            &stored,
        );
        assert_eq!((shown.create_revision, shown.mod_revision), (3, 4));
        assert_eq!(spec(shown), first);
    }
}
