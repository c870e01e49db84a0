//! The proxy's domain view of what the control plane streams: services, their instances and
//! routes. Built from the generated protobuf types in [`convert`] (the only file here that names
//! them) and validated on the way in, so everything downstream can trust these values.

pub(crate) mod convert;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method};

/// The timeout of a rule that does not set one (and of the default route).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// One service as the last applied discovery update described it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceState {
    /// Full service name, lower-case.
    pub(crate) name: String,
    /// False: the registry has no such service (yet).
    pub(crate) exists: bool,
    /// The registry revision that last changed the service.
    pub(crate) revision: u64,
    /// `None`: the default route (every request to all healthy instances).
    pub(crate) route: Option<Route>,
    /// Every instance, healthy or not.
    pub(crate) instances: Vec<Instance>,
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) health: Health,
    /// From the `protocol` attribute: `h2c` speaks HTTP/2 without TLS, anything else HTTP/1.1.
    pub(crate) protocol: Protocol,
}

/// An instance's health as the registry reports it; only `Healthy` ones get traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

/// How the proxy talks to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    Http1,
    H2c,
}

/// A service's route: ordered rules plus the per-service balancing and ejection policies.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    pub(crate) rules: Vec<Rule>,
    pub(crate) load_balancer: LoadBalancer,
    /// `None`: outlier detection is off.
    pub(crate) outlier: Option<OutlierPolicy>,
}

/// One route rule: the first whose match accepts a request routes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    /// Label for metrics and logs.
    pub(crate) name: Option<String>,
    pub(crate) matcher: RouteMatch,
    /// 1 to 10 targets with a positive total weight.
    pub(crate) targets: Vec<Target>,
    /// Whole request, all tries included.
    pub(crate) timeout: Duration,
    /// `None`: no retries.
    pub(crate) retry: Option<RetryPolicy>,
}

/// Conditions a request must all meet; the default matches every request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RouteMatch {
    pub(crate) path: Option<PathMatch>,
    pub(crate) method: Option<Method>,
    pub(crate) headers: Vec<HeaderMatch>,
}

/// How a rule matches the request path (the query string is not part of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Plain string prefix, as Envoy and App Mesh do it: `/api` matches `/api2` too.
    Prefix(String),
    Exact(String),
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderMatch {
    pub(crate) name: HeaderName,
    pub(crate) value: HeaderValueMatch,
}

/// What a matched header's value must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderValueMatch {
    Exact(String),
    Prefix(String),
    Present,
}

/// A weighted subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) subset: Subset,
    /// 0 to 10,000; relative to the rule's other targets.
    pub(crate) weight: u32,
}

/// Instances whose attributes hold every pair; empty selects every instance (the default route).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Subset(pub(crate) BTreeMap<String, String>);

/// When and how often a failed try is repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first try, 0 to 10.
    pub(crate) attempts: u32,
    /// `None`: only the rule's timeout applies.
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) retry_on: RetryOn,
    pub(crate) retry_non_idempotent: bool,
}

/// The set of failures a retry policy retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryOn {
    pub(crate) connect_failure: bool,
    pub(crate) reset: bool,
    pub(crate) gateway_error: bool,
    pub(crate) server_error: bool,
    pub(crate) per_try_timeout: bool,
}

/// The per-service load-balancing policy inside a subset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × (in flight + 1).
    #[default]
    P2cEwma,
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Consistent hashing on the client IP, or on this header's value when present.
    RingHash {
        hash_header: Option<HeaderName>,
    },
}

/// Consecutive failures eject an endpoint for `base_ejection × times ejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutlierPolicy {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection_percent: u32,
}

// === impl Route ===

impl Route {
    /// The route of a service that has none: one catch-all rule over every healthy instance.
    pub(crate) fn default_route() -> Self {
        Self {
            rules: vec![Rule {
                name: None,
                matcher: RouteMatch::default(),
                targets: vec![Target {
                    subset: Subset::default(),
                    weight: 1,
                }],
                timeout: DEFAULT_TIMEOUT,
                retry: None,
            }],
            load_balancer: LoadBalancer::default(),
            outlier: Some(OutlierPolicy::default()),
        }
    }
}

// === impl Subset ===

impl Subset {
    /// Whether an instance with these attributes belongs to the subset.
    pub(crate) fn selects(&self, attributes: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| attributes.get(k) == Some(v))
    }
}

impl fmt::Display for Subset {
    /// `version=v2` (pairs sorted, comma-separated); `*` for the whole service.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

// === impl RetryOn ===

impl Default for RetryOn {
    /// The proto's default for an empty list: connect failures, resets and gateway errors.
    fn default() -> Self {
        Self {
            connect_failure: true,
            reset: true,
            gateway_error: true,
            server_error: false,
            per_try_timeout: false,
        }
    }
}

impl RetryOn {
    /// Nothing selected (the starting point when the policy lists its events).
    pub(crate) fn none() -> Self {
        Self {
            connect_failure: false,
            reset: false,
            gateway_error: false,
            server_error: false,
            per_try_timeout: false,
        }
    }
}

// === impl OutlierPolicy ===

impl Default for OutlierPolicy {
    /// The proto's defaults: 5 consecutive failures, 30 s base ejection, at most 50 %.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}
