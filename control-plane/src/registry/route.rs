//! Routes: how a service's traffic is split across subsets of its instances.
//!
//! A service has at most one route ([`Route`], stored in [`super::Service::route`]). A route is
//! an ordered list of rules; the first rule whose match accepts a request routes it to one of
//! its weighted targets, each target being a subset of the service's instances (those whose
//! attributes hold every pair of the subset, e.g. `version=v2`). Rules carry a timeout and a
//! retry policy; the route carries the load-balancing policy inside a subset and the outlier
//! detection settings.
//!
//! The API resolves "0 means the default" into explicit values before a [`RouteSpec`] reaches
//! the log, so what is stored is what the proxies run, and validation here can be strict.
//! Field names in errors are relative to the route (`rules[0].targets[1].weight`); the command
//! prefixes them (`route.`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::names::{
    self, validate_header_name, validate_header_value, validate_method, validate_path,
};

/// Most rules in one route.
pub const MAX_RULES: usize = 50;
/// Most weighted targets in one rule.
pub const MAX_TARGETS: usize = 10;
/// Largest weight of one target.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most header conditions in one match.
pub const MAX_HEADERS: usize = 10;
/// Most retries after the first try.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Default timeout of a whole request, all tries included.
pub const DEFAULT_TIMEOUT_MS: u32 = 15_000;
/// Longest timeout: one hour.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Default consecutive failures that eject an endpoint.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default length of a first ejection.
pub const DEFAULT_BASE_EJECTION_MS: u32 = 30_000;
/// Default share of a subset's endpoints that may be ejected at once, in percent.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// A service's route as stored: the spec and the revisions that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// What the route says.
    pub spec: RouteSpec,
    /// Revision that first gave the service a route (since its last deletion).
    pub create_revision: u64,
    /// Revision that last replaced it.
    pub mod_revision: u64,
}

/// What a route says, as `PutRoute` carries it (defaults already resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Tried in order; the first whose match accepts a request routes it (1 to 50).
    pub rules: Vec<RouteRule>,
    /// How an endpoint is chosen inside the chosen subset.
    pub load_balancer: LoadBalancer,
    /// When a proxy stops sending to an endpoint that keeps failing.
    pub outlier_detection: OutlierDetection,
}

/// One rule: a match, and where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRule {
    /// Label for metrics and traces; empty for none.
    pub name: String,
    /// `None` matches every request.
    pub matches: Option<RouteMatch>,
    /// 1 to 10 targets, weights relative, total above 0.
    pub targets: Vec<WeightedTarget>,
    /// Whole request, all tries included, in milliseconds (1 ms to 1 hour).
    pub timeout_ms: u32,
    /// `None`: no retries.
    pub retry: Option<RetryPolicy>,
}

/// Conditions on a request; every one set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// A path condition, if any.
    pub path: Option<PathMatch>,
    /// An upper-case HTTP method token; `None` matches any method.
    pub method: Option<String>,
    /// Header conditions (at most 10).
    pub headers: Vec<HeaderMatch>,
}

/// A condition on the request path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    /// The path starts with this (which starts with `/`).
    Prefix(String),
    /// The path is exactly this (which starts with `/`).
    Exact(String),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// The header name, lower-case.
    pub name: String,
    /// What its value must be.
    pub value: HeaderValueMatch,
}

/// What a header's value must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderValueMatch {
    /// Exactly this.
    Exact(String),
    /// Starting with this.
    Prefix(String),
    /// Anything, as long as the header is there.
    Present,
}

/// A subset of the service's instances and its share of the rule's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedTarget {
    /// Instances whose attributes hold every pair (at least one pair).
    pub subset: BTreeMap<String, String>,
    /// Relative weight, 0 to 10,000; 0 keeps the target listed but sends it nothing.
    pub weight: u32,
}

/// Which failures are retried, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first try, 0 to 10.
    pub attempts: u32,
    /// Each try's own limit in milliseconds; 0: only the rule's timeout applies.
    pub per_try_timeout_ms: u32,
    /// The failures retried (at least one; no duplicates).
    pub retry_on: Vec<RetryOn>,
    /// Retry non-idempotent methods too.
    pub retry_non_idempotent: bool,
}

/// A kind of failure that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// The connection could not be made.
    ConnectFailure,
    /// The connection broke before a response arrived.
    Reset,
    /// 502, 503 or 504.
    GatewayError,
    /// Any 5xx.
    ServerError,
    /// One try exceeded its per-try timeout.
    PerTryTimeout,
}

/// How an endpoint is chosen inside a subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    /// The algorithm.
    pub policy: LoadBalancerPolicy,
    /// Ring hash only: hash this header (lower-case) instead of the client IP.
    pub hash_header: Option<String>,
}

/// The load-balancing algorithms a proxy offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoadBalancerPolicy {
    /// Power of two choices over a peak-EWMA latency (the default).
    P2cEwma,
    /// Round robin.
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Consistent hashing on the client IP or a header.
    RingHash,
}

/// Outlier detection settings (defaults already resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint, 1 to 1,000.
    pub consecutive_failures: u32,
    /// First ejection's length in milliseconds, 100 ms to 1 hour.
    pub base_ejection_ms: u32,
    /// Largest share of a subset ejected at once, 1 to 100 percent.
    pub max_ejection_percent: u32,
    /// Outlier detection is off.
    pub disabled: bool,
}

// === impl RouteSpec ===

impl RouteSpec {
    /// Checks every field; errors name it relative to the route (`rules[0].targets[1].weight`).
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(RegistryError::invalid(
                "rules",
                format!("{} rules; 1 to {MAX_RULES} are allowed", self.rules.len()),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| e.within(&format!("rules[{i}].")))?;
        }
        self.load_balancer
            .validate()
            .map_err(|e| e.within("load_balancer."))?;
        self.outlier_detection
            .validate()
            .map_err(|e| e.within("outlier_detection."))
    }

    /// A route of one rule that splits all traffic across `targets`, with the defaults.
    pub fn split(targets: Vec<WeightedTarget>) -> Self {
        Self {
            rules: vec![RouteRule {
                name: String::new(),
                matches: None,
                targets,
                timeout_ms: DEFAULT_TIMEOUT_MS,
                retry: None,
            }],
            load_balancer: LoadBalancer::default(),
            outlier_detection: OutlierDetection::default(),
        }
    }
}

// === impl RouteRule ===

impl RouteRule {
    fn validate(&self) -> Result<(), RegistryError> {
        if !self.name.is_empty() {
            names::validate_label("name", &self.name)?;
        }
        if let Some(m) = &self.matches {
            m.validate().map_err(|e| e.within("match."))?;
        }
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            return Err(RegistryError::invalid(
                "targets",
                format!(
                    "{} targets; 1 to {MAX_TARGETS} are allowed",
                    self.targets.len()
                ),
            ));
        }
        for (i, target) in self.targets.iter().enumerate() {
            target
                .validate()
                .map_err(|e| e.within(&format!("targets[{i}].")))?;
        }
        if self.targets.iter().all(|t| t.weight == 0) {
            return Err(RegistryError::invalid(
                "targets",
                "the weights add up to 0; at least one must be positive",
            ));
        }
        in_range("timeout_ms", self.timeout_ms, 1, MAX_TIMEOUT_MS)?;
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| e.within("retry."))?;
        }
        Ok(())
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    fn validate(&self) -> Result<(), RegistryError> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => validate_path("path_prefix", p)?,
            Some(PathMatch::Exact(p)) => validate_path("path_exact", p)?,
            None => {}
        }
        if let Some(method) = &self.method {
            validate_method("method", method)?;
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(RegistryError::invalid(
                "headers",
                format!(
                    "{} header conditions; at most {MAX_HEADERS} are allowed",
                    self.headers.len()
                ),
            ));
        }
        for (i, header) in self.headers.iter().enumerate() {
            let at = format!("headers[{i}].");
            validate_header_name("name", &header.name).map_err(|e| e.within(&at))?;
            match &header.value {
                HeaderValueMatch::Exact(v) => validate_header_value("exact", v),
                HeaderValueMatch::Prefix(v) => validate_header_value("prefix", v),
                HeaderValueMatch::Present => Ok(()),
            }
            .map_err(|e| e.within(&at))?;
        }
        Ok(())
    }
}

// === impl WeightedTarget ===

impl WeightedTarget {
    fn validate(&self) -> Result<(), RegistryError> {
        if self.subset.is_empty() {
            return Err(RegistryError::invalid(
                "subset",
                "must name at least one attribute, e.g. {version: v2}",
            ));
        }
        names::validate_attributes("subset", &self.subset)?;
        if self.weight > MAX_WEIGHT {
            return Err(RegistryError::invalid(
                "weight",
                format!("{} is outside 0-{MAX_WEIGHT}", self.weight),
            ));
        }
        Ok(())
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// What an empty `retry_on` means: failures that are safe and cheap to retry.
    pub const DEFAULT_RETRY_ON: [RetryOn; 3] = [
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ];

    fn validate(&self) -> Result<(), RegistryError> {
        in_range("attempts", self.attempts, 0, MAX_RETRY_ATTEMPTS)?;
        if self.per_try_timeout_ms != 0 {
            in_range(
                "per_try_timeout_ms",
                self.per_try_timeout_ms,
                1,
                MAX_TIMEOUT_MS,
            )?;
        }
        if self.retry_on.is_empty() {
            return Err(RegistryError::invalid(
                "retry_on",
                "must name at least one kind of failure",
            ));
        }
        for (i, on) in self.retry_on.iter().enumerate() {
            if self.retry_on[..i].contains(on) {
                return Err(RegistryError::invalid(
                    format!("retry_on[{i}]"),
                    format!("{on:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

// === impl LoadBalancer ===

impl Default for LoadBalancer {
    fn default() -> Self {
        Self {
            policy: LoadBalancerPolicy::P2cEwma,
            hash_header: None,
        }
    }
}

impl LoadBalancer {
    fn validate(&self) -> Result<(), RegistryError> {
        if let Some(header) = &self.hash_header {
            if self.policy != LoadBalancerPolicy::RingHash {
                return Err(RegistryError::invalid(
                    "hash_header",
                    "is only allowed with the RING_HASH policy",
                ));
            }
            validate_header_name("hash_header", header)?;
        }
        Ok(())
    }
}

// === impl OutlierDetection ===

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection_ms: DEFAULT_BASE_EJECTION_MS,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            disabled: false,
        }
    }
}

impl OutlierDetection {
    fn validate(&self) -> Result<(), RegistryError> {
        in_range("consecutive_failures", self.consecutive_failures, 1, 1000)?;
        in_range(
            "base_ejection_ms",
            self.base_ejection_ms,
            100,
            MAX_TIMEOUT_MS,
        )?;
        in_range("max_ejection_percent", self.max_ejection_percent, 1, 100)
    }
}

fn in_range(field: &str, v: u32, min: u32, max: u32) -> Result<(), RegistryError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            field,
            format!("{v} is outside {min}-{max}"),
        ))
    }
}
