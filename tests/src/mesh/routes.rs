//! Route builders for tests: [`SERVICE`]'s routes in a line each.

use std::collections::HashMap;

use meridian_proto::v1 as pb;

use super::SERVICE;

/// A route for [`SERVICE`] with these rules.
pub fn route(rules: Vec<pb::RouteRule>) -> pb::Route {
    pb::Route {
        service: SERVICE.to_owned(),
        rules,
        ..Default::default()
    }
}

/// `route` with its endpoints picked by `policy` (no hash header: a ring hash then keys on the
/// client's IP).
pub fn with_balancer(policy: pb::LoadBalancerPolicy, route: pb::Route) -> pb::Route {
    pb::Route {
        load_balancer: Some(pb::LoadBalancer {
            policy: policy as i32,
            hash_header: String::new(),
        }),
        ..route
    }
}

/// A rule matching every request, splitting it by `version`: `[("v1", 80), ("v2", 20)]`.
pub fn split(weights: &[(&str, u32)]) -> pb::RouteRule {
    pb::RouteRule {
        targets: weights
            .iter()
            .map(|(version, weight)| pb::WeightedTarget {
                subset: HashMap::from([("version".to_owned(), (*version).to_owned())]),
                weight: *weight,
            })
            .collect(),
        ..Default::default()
    }
}

/// A route sending everything to `version`, retrying with `retry`, whose endpoints take turns
/// (round robin) with outlier detection off: a failing endpoint stays in rotation and gets
/// every other request. (P2C-EWMA would send sequential requests all to the endpoint with the
/// lower latency estimate, and a fast failure looks fast: the failing endpoint would get all
/// of them, or none.)
pub fn retrying_in_turn(version: &str, retry: pb::RetryPolicy) -> pb::Route {
    let outlier = pb::OutlierDetection {
        disabled: true,
        ..Default::default()
    };
    with_balancer(
        pb::LoadBalancerPolicy::RoundRobin,
        with_retry(split(&[(version, 1)]), retry, outlier),
    )
}

/// A route whose every rule retries with `retry`, and with these outlier settings.
pub fn with_retry(
    mut rule: pb::RouteRule,
    retry: pb::RetryPolicy,
    outlier: pb::OutlierDetection,
) -> pb::Route {
    rule.retry = Some(retry);
    pb::Route {
        outlier_detection: Some(outlier),
        ..route(vec![rule])
    }
}

/// A rule named `canary` for requests whose header `name` is exactly `exact`.
pub fn header_rule(name: &str, exact: &str, weights: &[(&str, u32)]) -> pb::RouteRule {
    pb::RouteRule {
        name: "canary".into(),
        r#match: Some(pb::RouteMatch {
            headers: vec![pb::HeaderMatch {
                name: name.into(),
                value: Some(pb::header_match::Value::Exact(exact.into())),
            }],
            ..Default::default()
        }),
        ..split(weights)
    }
}

/// A rule for requests whose path starts with `prefix`.
pub fn prefix_rule(prefix: &str, weights: &[(&str, u32)]) -> pb::RouteRule {
    pb::RouteRule {
        r#match: Some(pb::RouteMatch {
            path_prefix: prefix.into(),
            ..Default::default()
        }),
        ..split(weights)
    }
}
