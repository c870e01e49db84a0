//! The routing table the data path reads: every known service with its rules resolved to
//! subsets of live endpoints. Immutable once built and published as one `Arc` through a watch
//! channel, so a config swap is atomic: a request holds the table (and the endpoint) it started
//! with, the next request sees the new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Endpoint, Pool};
use crate::config::{Health, Protocol, Route, ServiceState, Subset};
use crate::metrics::{Metrics, ServiceMetrics, SubsetMetrics};

/// Everything the proxy knows, as of one discovery version.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// The discovery version applied (0: nothing yet).
    pub(crate) version: u64,
    /// The control-plane node that sent it.
    pub(crate) node_id: u64,
    pub(crate) services: HashMap<String, Arc<ServiceTable>>,
}

/// One service, ready to route.
#[derive(Debug)]
pub(crate) struct ServiceTable {
    pub(crate) state: ServiceState,
    /// The service's route, or the default one.
    pub(crate) route: Route,
    /// Per rule of `route`, its targets' weights and subsets.
    pub(crate) rules: Vec<RuleTable>,
    /// One per instance of `state.instances`, same order (healthy or not).
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

/// A rule's targets, resolved.
#[derive(Debug)]
pub(crate) struct RuleTable {
    pub(crate) weights: Vec<u32>,
    pub(crate) subsets: Vec<Arc<SubsetTable>>,
}

/// A subset's healthy endpoints and its policy state, shared by every rule naming the subset.
#[derive(Debug)]
pub(crate) struct SubsetTable {
    /// `version=v2`, or `*` for the whole service.
    pub(crate) label: String,
    pub(crate) pool: Pool,
    pub(crate) metrics: Arc<SubsetMetrics>,
}

// === impl ServiceTable ===

impl ServiceTable {
    /// Builds a service's table, carrying endpoint state over from `previous` for every
    /// instance that is still there with the same id, address and protocol.
    pub(crate) fn build(
        state: ServiceState,
        previous: Option<&ServiceTable>,
        metrics: &Metrics,
        now: Instant,
    ) -> Self {
        let mut old: HashMap<(&str, std::net::SocketAddr, Protocol), &Arc<Endpoint>> =
            HashMap::new();
        if let Some(prev) = previous {
            for e in &prev.endpoints {
                old.insert((e.id.as_str(), e.addr, e.protocol), e);
            }
        }
        let endpoints: Vec<Arc<Endpoint>> = state
            .instances
            .iter()
            .map(|i| match old.get(&(i.id.as_str(), i.addr, i.protocol)) {
                Some(e) => Arc::clone(e),
                None => Arc::new(Endpoint::new(i.id.clone(), i.addr, i.protocol, now)),
            })
            .collect();
        let route = state.route.clone().unwrap_or_else(Route::default_route);
        let service_metrics = metrics.service(&state.name);
        let mut subsets: HashMap<&Subset, Arc<SubsetTable>> = HashMap::new();
        let mut rules = Vec::with_capacity(route.rules.len());
        for rule in &route.rules {
            let mut table = RuleTable {
                weights: Vec::new(),
                subsets: Vec::new(),
            };
            for target in &rule.targets {
                let subset = subsets.entry(&target.subset).or_insert_with(|| {
                    let members = state
                        .instances
                        .iter()
                        .zip(&endpoints)
                        .filter(|(i, _)| {
                            i.health == Health::Healthy && target.subset.selects(&i.attributes)
                        })
                        .map(|(_, e)| Arc::clone(e))
                        .collect();
                    let label = target.subset.to_string();
                    Arc::new(SubsetTable {
                        pool: Pool::new(route.load_balancer.clone(), members),
                        metrics: service_metrics.subset(&label),
                        label,
                    })
                });
                table.weights.push(target.weight);
                table.subsets.push(Arc::clone(subset));
            }
            rules.push(table);
        }
        Self {
            state,
            route,
            rules,
            endpoints,
            metrics: service_metrics,
        }
    }
}
