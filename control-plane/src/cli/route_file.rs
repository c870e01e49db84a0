//! The JSON form of a route: what `meridian route set --file` reads and `route get --json`
//! prints (so one's output is the other's input). Field names are the proto's; enums are
//! lower-case words (`ring-hash`, `gateway-error`); a header match names exactly one of
//! `exact`, `prefix` or `present`. Unknown fields are refused, so a typo is an error, not a
//! silently ignored setting. See docs/routing.md.

use std::collections::BTreeMap;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// A route, as the file holds it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    /// Optional in a file (the command names the service); must match it if given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    service: String,
    rules: Vec<RuleFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    load_balancer: Option<LoadBalancerFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<OutlierFile>,
    /// Printed by `route get`; ignored when read.
    #[serde(default, skip_serializing_if = "is_zero")]
    create_revision: u64,
    /// Printed by `route get`; ignored when read.
    #[serde(default, skip_serializing_if = "is_zero")]
    mod_revision: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    matches: Option<MatchFile>,
    targets: Vec<TargetFile>,
    #[serde(default, skip_serializing_if = "is_zero32")]
    timeout_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetryFile>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    path_prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    path_exact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    method: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<HeaderFile>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFile {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    subset: BTreeMap<String, String>,
    weight: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    #[serde(default)]
    attempts: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    per_try_timeout_ms: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retry_on: Vec<String>,
    #[serde(default)]
    retry_non_idempotent: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBalancerFile {
    #[serde(default = "p2c")]
    policy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hash_header: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierFile {
    #[serde(default)]
    consecutive_failures: u32,
    #[serde(default)]
    base_ejection_ms: u32,
    #[serde(default)]
    max_ejection_percent: u32,
    #[serde(default)]
    disabled: bool,
}

/// The words for load-balancing policies, as flags and files spell them.
pub(super) const POLICIES: [(&str, pb::LoadBalancerPolicy); 4] = [
    ("p2c", pb::LoadBalancerPolicy::P2cEwma),
    ("round-robin", pb::LoadBalancerPolicy::RoundRobin),
    ("least-request", pb::LoadBalancerPolicy::LeastRequest),
    ("ring-hash", pb::LoadBalancerPolicy::RingHash),
];

/// The words for retried failures.
pub(super) const RETRY_ON: [(&str, pb::RetryOn); 5] = [
    ("connect-failure", pb::RetryOn::ConnectFailure),
    ("reset", pb::RetryOn::Reset),
    ("gateway-error", pb::RetryOn::GatewayError),
    ("server-error", pb::RetryOn::ServerError),
    ("per-try-timeout", pb::RetryOn::PerTryTimeout),
];

fn p2c() -> String {
    "p2c".into()
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}

/// A policy word as the proto enum.
pub(super) fn policy(word: &str) -> Result<pb::LoadBalancerPolicy, String> {
    POLICIES
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            let words: Vec<&str> = POLICIES.iter().map(|(w, _)| *w).collect();
            format!("{word:?} is not one of {}", words.join(", "))
        })
}

/// A retry-on word as the proto enum value.
pub(super) fn retry_on(word: &str) -> Result<i32, String> {
    RETRY_ON
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, r)| *r as i32)
        .ok_or_else(|| {
            let words: Vec<&str> = RETRY_ON.iter().map(|(w, _)| *w).collect();
            format!("{word:?} is not one of {}", words.join(", "))
        })
}

fn policy_word(p: i32) -> String {
    POLICIES
        .iter()
        .find(|(_, v)| *v as i32 == p)
        .map_or_else(|| p.to_string(), |(w, _)| (*w).to_owned())
}

fn retry_word(r: i32) -> String {
    RETRY_ON
        .iter()
        .find(|(_, v)| *v as i32 == r)
        .map_or_else(|| r.to_string(), |(w, _)| (*w).to_owned())
}

// === impl RouteFile ===

impl RouteFile {
    /// Reads the file's JSON; errors say where (serde names the line and column).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a route in JSON: {e}"))
    }

    /// The route for `service` (the server validates the rest, naming the field).
    pub(super) fn into_route(self, service: &str) -> Result<pb::Route, String> {
        if !self.service.is_empty() && !self.service.eq_ignore_ascii_case(service) {
            return Err(format!(
                "service: the file is for {:?}, the command for {service:?}",
                self.service
            ));
        }
        let mut rules = Vec::new();
        for (i, rule) in self.rules.into_iter().enumerate() {
            rules.push(rule.into_pb().map_err(|e| format!("rules[{i}].{e}"))?);
        }
        let load_balancer = match self.load_balancer {
            None => None,
            Some(lb) => Some(pb::LoadBalancer {
                policy: policy(&lb.policy).map_err(|e| format!("load_balancer.policy: {e}"))?
                    as i32,
                hash_header: lb.hash_header,
            }),
        };
        Ok(pb::Route {
            service: service.to_owned(),
            rules,
            load_balancer,
            outlier_detection: self.outlier_detection.map(|o| pb::OutlierDetection {
                consecutive_failures: o.consecutive_failures,
                base_ejection_ms: o.base_ejection_ms,
                max_ejection_percent: o.max_ejection_percent,
                disabled: o.disabled,
            }),
            create_revision: 0,
            mod_revision: 0,
        })
    }

    /// The file form of a route the server returned.
    pub(super) fn from_pb(route: &pb::Route) -> Self {
        use pb::header_match::Value;
        let rules = route
            .rules
            .iter()
            .map(|r| RuleFile {
                name: r.name.clone(),
                matches: r.r#match.as_ref().map(|m| MatchFile {
                    path_prefix: m.path_prefix.clone(),
                    path_exact: m.path_exact.clone(),
                    method: m.method.clone(),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| {
                            let mut f = HeaderFile {
                                name: h.name.clone(),
                                ..Default::default()
                            };
                            match &h.value {
                                Some(Value::Exact(v)) => f.exact = Some(v.clone()),
                                Some(Value::Prefix(v)) => f.prefix = Some(v.clone()),
                                Some(Value::Present(p)) => f.present = Some(*p),
                                None => {}
                            }
                            f
                        })
                        .collect(),
                }),
                targets: r
                    .targets
                    .iter()
                    .map(|t| TargetFile {
                        subset: t
                            .subset
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        weight: t.weight,
                    })
                    .collect(),
                timeout_ms: r.timeout_ms,
                retry: r.retry.as_ref().map(|p| RetryFile {
                    attempts: p.attempts,
                    per_try_timeout_ms: p.per_try_timeout_ms,
                    retry_on: p.retry_on.iter().map(|v| retry_word(*v)).collect(),
                    retry_non_idempotent: p.retry_non_idempotent,
                }),
            })
            .collect();
        Self {
            service: route.service.clone(),
            rules,
            load_balancer: route.load_balancer.as_ref().map(|lb| LoadBalancerFile {
                policy: policy_word(lb.policy),
                hash_header: lb.hash_header.clone(),
            }),
            outlier_detection: route.outlier_detection.as_ref().map(|o| OutlierFile {
                consecutive_failures: o.consecutive_failures,
                base_ejection_ms: o.base_ejection_ms,
                max_ejection_percent: o.max_ejection_percent,
                disabled: o.disabled,
            }),
            create_revision: route.create_revision,
            mod_revision: route.mod_revision,
        }
    }

    /// As a JSON value.
    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

// === impl RuleFile ===

impl RuleFile {
    fn into_pb(self) -> Result<pb::RouteRule, String> {
        use pb::header_match::Value;
        let r#match = match self.matches {
            None => None,
            Some(m) => {
                let mut headers = Vec::new();
                for (i, h) in m.headers.into_iter().enumerate() {
                    let value = match (h.exact, h.prefix, h.present) {
                        (Some(v), None, None) => Value::Exact(v),
                        (None, Some(v), None) => Value::Prefix(v),
                        (None, None, Some(p)) => Value::Present(p),
                        _ => {
                            return Err(format!(
                                "match.headers[{i}]: set exactly one of exact, prefix or present"
                            ));
                        }
                    };
                    headers.push(pb::HeaderMatch {
                        name: h.name,
                        value: Some(value),
                    });
                }
                Some(pb::RouteMatch {
                    path_prefix: m.path_prefix,
                    path_exact: m.path_exact,
                    method: m.method,
                    headers,
                })
            }
        };
        let retry = match self.retry {
            None => None,
            Some(r) => Some(pb::RetryPolicy {
                attempts: r.attempts,
                per_try_timeout_ms: r.per_try_timeout_ms,
                retry_on: r
                    .retry_on
                    .iter()
                    .enumerate()
                    .map(|(i, w)| retry_on(w).map_err(|e| format!("retry.retry_on[{i}]: {e}")))
                    .collect::<Result<_, _>>()?,
                retry_non_idempotent: r.retry_non_idempotent,
            }),
        };
        Ok(pb::RouteRule {
            name: self.name,
            r#match,
            targets: self
                .targets
                .into_iter()
                .map(|t| pb::WeightedTarget {
                    subset: t.subset.into_iter().collect(),
                    weight: t.weight,
                })
                .collect(),
            timeout_ms: self.timeout_ms,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "rules": [
        {
          "name": "canary-header",
          "match": {"path_prefix": "/api", "method": "GET",
                    "headers": [{"name": "x-canary", "exact": "1"}]},
          "targets": [{"subset": {"version": "v2"}, "weight": 1}],
          "timeout_ms": 2000,
          "retry": {"attempts": 2, "per_try_timeout_ms": 500,
                    "retry_on": ["connect-failure", "gateway-error"]}
        },
        {
          "targets": [{"subset": {"version": "v1"}, "weight": 90},
                      {"subset": {"version": "v2"}, "weight": 10}]
        }
      ],
      "load_balancer": {"policy": "ring-hash", "hash_header": "x-user"},
      "outlier_detection": {"consecutive_failures": 5, "base_ejection_ms": 30000}
    }"#;

    #[test]
    fn the_documented_example_reads_and_prints_back() {
        let route = RouteFile::parse(EXAMPLE)
            .unwrap()
            .into_route("orders.cafe.local")
            .unwrap();
        assert_eq!(route.rules.len(), 2);
        assert_eq!(route.rules[0].retry.as_ref().unwrap().retry_on, [1, 3]);
        assert_eq!(
            route.load_balancer.as_ref().unwrap().policy,
            pb::LoadBalancerPolicy::RingHash as i32
        );
        let printed = RouteFile::from_pb(&route).to_json().to_string();
        let again = RouteFile::parse(&printed)
            .unwrap()
            .into_route("orders.cafe.local")
            .unwrap();
        assert_eq!(again, route);
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = RouteFile::parse(r#"{"rules": [], "rulez": 1}"#).unwrap_err();
        assert!(err.contains("rulez"), "{err}");
        let two = r#"{"rules": [{"match": {"headers": [{"name": "a", "exact": "1", "present": true}]},
                      "targets": []}]}"#;
        let err = RouteFile::parse(two)
            .unwrap()
            .into_route("a.b")
            .unwrap_err();
        assert!(err.starts_with("rules[0].match.headers[0]:"), "{err}");
        let bad = r#"{"rules": [{"targets": [], "retry": {"retry_on": ["sometimes"]}}]}"#;
        let err = RouteFile::parse(bad)
            .unwrap()
            .into_route("a.b")
            .unwrap_err();
        assert!(err.starts_with("rules[0].retry.retry_on[0]:"), "{err}");
        let other = r#"{"service": "menu.cafe.local", "rules": []}"#;
        assert!(
            RouteFile::parse(other)
                .unwrap()
                .into_route("orders.cafe.local")
                .is_err()
        );
    }
}
