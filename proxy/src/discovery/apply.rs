//! One `DiscoveryResponse` → a new routing table, all or nothing: if any service state fails
//! validation the whole version is rejected (Nack, with the field and reason) and the table
//! stays as it was; otherwise the new table is published in one swap and the version is
//! acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use meridian_proto::v1 as pb;
use tokio::sync::watch;

use crate::config::ServiceState;
use crate::config::convert::ConvertError;
use crate::metrics::Metrics;
use crate::table::{ServiceTable, Table};

/// The proto's limit on a Nack's error text.
const MAX_NACK_ERROR: usize = 1024;

/// Owns the table's sending side.
#[derive(Debug)]
pub(crate) struct Applier {
    table: watch::Sender<Arc<Table>>,
    metrics: Arc<Metrics>,
}

/// What applying one response came to.
#[derive(Debug)]
pub(crate) enum Applied {
    Ack(u64),
    Nack { version: u64, error: String },
}

// === impl Applier ===

impl Applier {
    pub(crate) fn new(table: watch::Sender<Arc<Table>>, metrics: Arc<Metrics>) -> Self {
        Self { table, metrics }
    }

    /// The table as last published.
    pub(crate) fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.borrow())
    }

    /// Applies `response` (or refuses it) and says which.
    pub(crate) fn apply(&self, response: pb::DiscoveryResponse) -> Applied {
        let version = response.version;
        let states = response
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                ServiceState::try_from(s).map_err(|e: ConvertError| e.at(format!("services[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>();
        let states = match states {
            Ok(states) => states,
            Err(error) => {
                self.metrics
                    .configs_rejected
                    .fetch_add(1, Ordering::Relaxed);
                let mut error = error.to_string();
                truncate(&mut error, MAX_NACK_ERROR);
                tracing::warn!(version, %error, "rejected discovery update; keeping the last good config");
                return Applied::Nack { version, error };
            }
        };
        let now = Instant::now();
        let current = self.table.borrow().clone();
        let mut services = current.services.clone();
        for state in states {
            tracing::debug!(version, service = %state.name, exists = state.exists, instances = state.instances.len(), "service update");
            let previous = current.services.get(&state.name).map(Arc::clone);
            let built = ServiceTable::build(state, previous.as_deref(), &self.metrics, now);
            services.insert(built.state.name.clone(), Arc::new(built));
        }
        self.table.send_replace(Arc::new(Table {
            version,
            node_id: response.node_id,
            services,
        }));
        self.metrics
            .config_version
            .store(version, Ordering::Relaxed);
        self.metrics.configs_applied.fetch_add(1, Ordering::Relaxed);
        Applied::Ack(version)
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

// === impl Applied ===

impl Applied {
    /// The message to send back on the stream.
    pub(crate) fn into_request(self) -> pb::DiscoveryRequest {
        let body = match self {
            Self::Ack(version) => pb::discovery_request::Body::Ack(pb::Ack { version }),
            Self::Nack { version, error } => {
                pb::discovery_request::Body::Nack(pb::Nack { version, error })
            }
        };
        pb::DiscoveryRequest { body: Some(body) }
    }
}
