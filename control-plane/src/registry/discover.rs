//! The filtering behind `DiscoverInstances`, as AWS Cloud Map defines it.
//!
//! Order of filters: the hard attribute filter (every pair must match), then health, then
//! the soft attribute filter (kept only if it leaves at least one instance). Shuffling and
//! the `max_results` cap are the caller's: this room has no randomness.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{HealthStatus, Instance, Service};
use super::{RegistryError, names};

/// Most instances one discovery may return.
pub const MAX_RESULTS_LIMIT: u32 = 1000;
/// What `max_results = 0` means.
pub const DEFAULT_MAX_RESULTS: u32 = 100;

/// Which instances to return, by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthFilter {
    /// Healthy instances only.
    #[default]
    Healthy,
    /// Unhealthy instances only.
    Unhealthy,
    /// Every instance, whatever its health.
    All,
    /// The healthy instances, or every instance if none is healthy (fail open).
    HealthyOrElseAll,
}

/// A discovery query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverQuery {
    /// Every pair must match.
    pub query_parameters: BTreeMap<String, String>,
    /// Applied only when some instances match it.
    pub optional_parameters: BTreeMap<String, String>,
    /// Health filter.
    pub health: HealthFilter,
    /// 1–1000.
    pub max_results: u32,
}

// === impl DiscoverQuery ===

impl DiscoverQuery {
    /// Checks the filters and resolves `max_results = 0` to the default.
    pub fn validated(mut self) -> Result<Self, RegistryError> {
        names::validate_attributes("query_parameters", &self.query_parameters)?;
        names::validate_attributes("optional_parameters", &self.optional_parameters)?;
        if self.max_results == 0 {
            self.max_results = DEFAULT_MAX_RESULTS;
        }
        if self.max_results > MAX_RESULTS_LIMIT {
            return Err(RegistryError::invalid(
                "max_results",
                format!(
                    "{} is above the limit of {MAX_RESULTS_LIMIT}",
                    self.max_results
                ),
            ));
        }
        Ok(self)
    }

    /// The instances of `service` that pass the filters, in id order, uncapped.
    pub fn filter(&self, service: &Service) -> Vec<Arc<Instance>> {
        let matching: Vec<&Arc<Instance>> = service
            .instances
            .values()
            .filter(|i| matches_all(i, &self.query_parameters))
            .collect();

        let healthy = |i: &&Arc<Instance>| i.health == HealthStatus::Healthy;
        let by_health: Vec<&Arc<Instance>> = match self.health {
            HealthFilter::All => matching,
            HealthFilter::Healthy => matching.into_iter().filter(healthy).collect(),
            HealthFilter::Unhealthy => matching
                .into_iter()
                .filter(|i| i.health == HealthStatus::Unhealthy)
                .collect(),
            HealthFilter::HealthyOrElseAll => {
                if matching.iter().any(healthy) {
                    matching.into_iter().filter(healthy).collect()
                } else {
                    matching
                }
            }
        };

        let preferred: Vec<&Arc<Instance>> = by_health
            .iter()
            .copied()
            .filter(|i| matches_all(i, &self.optional_parameters))
            .collect();
        let chosen = if preferred.is_empty() {
            by_health
        } else {
            preferred
        };
        chosen.into_iter().map(Arc::clone).collect()
    }
}

fn matches_all(instance: &Instance, wanted: &BTreeMap<String, String>) -> bool {
    wanted
        .iter()
        .all(|(k, v)| instance.attributes.get(k) == Some(v.as_str()))
}
