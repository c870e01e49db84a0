//! The registry's data: namespaces hold services, services hold instances.
//!
//! Children sit behind `Arc`s in persistent maps (`imbl::OrdMap`) so that a published registry
//! snapshot shares everything a write did not touch: `Arc::make_mut` copies only the path from
//! the root to the change, and inserting into a map of n entries copies O(log n) nodes, not n.
//! Every object records the revision that created it and the one that last changed it; a
//! service's `mod_revision` moves with any change to its instances, so a watcher of one
//! service is woken by that service alone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::route::Route;

/// Default TTL of a service's DNS answers, in seconds.
pub const DEFAULT_DNS_TTL_SECONDS: u32 = 5;
/// Longest DNS TTL a service may ask for: one day.
pub const MAX_DNS_TTL_SECONDS: u32 = 86_400;

/// A DNS domain that groups services, e.g. `cafe.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The domain, lower-case.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision that last changed it or anything inside it.
    pub mod_revision: u64,
    /// Its services by label.
    pub services: OrdMap<String, Arc<Service>>,
}

/// A named set of instances, e.g. `orders` in `cafe.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its label within the namespace.
    pub name: String,
    /// The namespace it belongs to.
    pub namespace: String,
    /// Free text.
    pub description: String,
    /// TTL of DNS answers about it.
    pub dns_ttl_seconds: u32,
    /// How its instances are checked; `None`: they are healthy from registration on.
    pub health_check: Option<HealthCheck>,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision that last changed it, its instances, their health or its route.
    pub mod_revision: u64,
    /// Its instances by id.
    pub instances: OrdMap<String, Arc<Instance>>,
    /// How its traffic is split; `None`: every request to all healthy instances. Absent from
    /// snapshots taken before routes existed (and from services without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<Route>>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// A DNS label, unique within its service.
    pub id: String,
    /// Where it listens.
    pub address: IpAddr,
    /// Its port, 1–65535.
    pub port: u16,
    /// Free-form attributes; `version` selects routing and DNS subsets.
    pub attributes: Attributes,
    /// Its current health.
    pub health: HealthStatus,
    /// Revision that registered it (first time).
    pub create_revision: u64,
    /// Revision that last changed it.
    pub mod_revision: u64,
}

/// An instance's attributes: sorted `(key, value)` pairs in one boxed slice.
///
/// A `BTreeMap` allocates a node for 11 pairs even when it holds two, about half a kilobyte
/// per instance; at 100,000 instances that was a fifth of a node's memory. Attributes are
/// few (at most 30) and read far more than written: a sorted slice and a binary search do.
/// Serialized as a map, exactly as the `BTreeMap` was (snapshots are unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(Box<[(Box<str>, Box<str>)]>);

/// An instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Serving.
    Healthy,
    /// Failing its checks, or marked so.
    Unhealthy,
    /// Checked, but no verdict yet.
    Unknown,
}

/// How a service's instances are checked, with the thresholds that turn results into health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is checked.
    pub kind: CheckKind,
    /// Between two active checks, in milliseconds.
    pub interval_ms: u32,
    /// Per attempt, in milliseconds.
    pub timeout_ms: u32,
    /// Consecutive passes before HEALTHY.
    pub healthy_threshold: u32,
    /// Consecutive failures before UNHEALTHY.
    pub unhealthy_threshold: u32,
    /// Deregister after this long UNHEALTHY, in milliseconds; 0 never does.
    pub deregister_after_ms: u32,
}

/// The kinds of health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// The instance heartbeats at least once per `ttl_ms`.
    Ttl {
        /// Longest silence before UNHEALTHY, in milliseconds.
        ttl_ms: u32,
    },
    /// `GET path`; a 2xx answer passes.
    Http {
        /// Absolute path, e.g. `/healthz`.
        path: String,
    },
    /// A TCP connect passes.
    Tcp,
    /// The standard `grpc.health.v1` protocol answers SERVING.
    Grpc {
        /// The service name asked about; empty asks about the whole server.
        service: String,
    },
}

// === impl Namespace ===

impl Namespace {
    /// Total instances across its services.
    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }
}

// === impl Service ===

impl Service {
    /// The full DNS name, e.g. `orders.cafe.local`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// The health a newly registered instance starts with: healthy without checks or with a
    /// TTL check (registering counts as the first heartbeat), unknown until the first result
    /// of an active check.
    pub fn initial_health(&self) -> HealthStatus {
        match self.health_check.as_ref().map(|c| &c.kind) {
            None | Some(CheckKind::Ttl { .. }) => HealthStatus::Healthy,
            Some(_) => HealthStatus::Unknown,
        }
    }
}

// === impl HealthCheck ===

impl HealthCheck {
    /// Default interval between active checks.
    pub const DEFAULT_INTERVAL_MS: u32 = 10_000;
    /// Default timeout of one check.
    pub const DEFAULT_TIMEOUT_MS: u32 = 2_000;
    /// Default consecutive passes before HEALTHY.
    pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
    /// Default consecutive failures before UNHEALTHY.
    pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

    /// A check of `kind` with the default timings.
    pub fn new(kind: CheckKind) -> Self {
        Self {
            kind,
            interval_ms: Self::DEFAULT_INTERVAL_MS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            healthy_threshold: Self::DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: Self::DEFAULT_UNHEALTHY_THRESHOLD,
            deregister_after_ms: 0,
        }
    }

    /// Checks timings and thresholds; field names are relative (`interval_ms`, …).
    pub fn validate(&self) -> Result<(), RegistryError> {
        const HOUR_MS: u32 = 3_600_000;
        let in_range = |field: &str, v: u32, min: u32, max: u32| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(RegistryError::invalid(
                    field,
                    format!("{v} is outside {min}-{max}"),
                ))
            }
        };
        match &self.kind {
            CheckKind::Ttl { ttl_ms } => in_range("ttl.ttl_ms", *ttl_ms, 1_000, HOUR_MS)?,
            CheckKind::Http { path } => {
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|c| c.is_control() || c == ' ')
                {
                    return Err(RegistryError::invalid(
                        "http.path",
                        format!("{path:?} is not an absolute URL path (e.g. /healthz)"),
                    ));
                }
            }
            CheckKind::Tcp => {}
            CheckKind::Grpc { service } => {
                if service.len() > 256 || service.chars().any(char::is_control) {
                    return Err(RegistryError::invalid(
                        "grpc.service",
                        "must be at most 256 printable bytes",
                    ));
                }
            }
        }
        in_range("interval_ms", self.interval_ms, 100, HOUR_MS)?;
        in_range("timeout_ms", self.timeout_ms, 10, 60_000)?;
        if self.timeout_ms > self.interval_ms && !matches!(self.kind, CheckKind::Ttl { .. }) {
            return Err(RegistryError::invalid(
                "timeout_ms",
                format!(
                    "{} exceeds interval_ms {}",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        in_range("healthy_threshold", self.healthy_threshold, 1, 10)?;
        in_range("unhealthy_threshold", self.unhealthy_threshold, 1, 10)?;
        if self.deregister_after_ms != 0 {
            in_range(
                "deregister_after_ms",
                self.deregister_after_ms,
                1_000,
                24 * HOUR_MS,
            )?;
        }
        Ok(())
    }
}

// === impl Attributes ===

impl Attributes {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&BTreeMap<String, String>> for Attributes {
    fn from(map: &BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order: the slice is sorted, as `get` needs.
        Self(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(Self::from(&map))
    }
}
