//! Discovery: generated types ↔ the discovery room's types, and the per-revision cache of
//! service states that pushes share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meridian_proto::v1 as pb;

use super::route::service_state;
use crate::discovery::{Hello, ProxyStatus, Push, ServiceState, WaitOutcome};
use crate::registry::ServiceName;

/// Most services whose state the cache keeps; past it, it starts over (a mesh this large
/// rebuilds a few states, nothing breaks).
const CACHE_SERVICES: usize = 100_000;

/// The protobuf state of each followed service, built once per service revision and shared
/// by every stream that pushes it (a change to a service followed by 1,000 proxies converts
/// its instances once, not 1,000 times).
#[derive(Debug, Default)]
pub(crate) struct StateCache {
    states: Mutex<HashMap<ServiceName, Cached>>,
}

#[derive(Debug)]
struct Cached {
    create_revision: u64,
    mod_revision: u64,
    state: Arc<pb::ServiceState>,
}

// === impl StateCache ===

impl StateCache {
    /// The response that carries `push`, from node `node_id`.
    pub(crate) fn response(&self, push: &Push, node_id: u64) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version: push.version,
            services: push.states.iter().map(|s| self.state(s)).collect(),
            node_id,
        }
    }

    fn state(&self, s: &ServiceState) -> pb::ServiceState {
        let Some(service) = &s.service else {
            return service_state(&s.name, None);
        };
        let key = (service.create_revision, service.mod_revision);
        if let Some(c) = self.lock().get(&s.name)
            && (c.create_revision, c.mod_revision) == key
        {
            return (*c.state).clone();
        }
        // Built outside the lock: streams pushing other services do not wait for it.
        let state = Arc::new(service_state(&s.name, Some(service)));
        let mut states = self.lock();
        if states.len() >= CACHE_SERVICES {
            states.clear();
        }
        states.insert(
            s.name.clone(),
            Cached {
                create_revision: key.0,
                mod_revision: key.1,
                state: Arc::clone(&state),
            },
        );
        Arc::unwrap_or_clone(state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceName, Cached>> {
        self.states
            .lock()
            .expect("invariant: the state cache lock is never held across a panic")
    }
}

pub(crate) fn hello(h: pb::ProxyHello) -> Hello {
    Hello {
        proxy_id: h.proxy_id,
        service_name: h.service_name,
        build: h.build,
    }
}

pub(crate) fn proxy_pb(p: &ProxyStatus) -> pb::ProxyStatus {
    pb::ProxyStatus {
        proxy_id: p.proxy_id.clone(),
        service_name: p.service_name.clone(),
        build: p.build.clone(),
        node_id: p.node_id,
        remote_address: p.remote_address.clone(),
        connected_at_unix_ms: p.connected_at_unix_ms,
        services: p.services.iter().map(ToString::to_string).collect(),
        sent_version: p.sent_version,
        acked_version: p.acked_version,
        rejected_version: p.rejected_version,
        rejected_error: p.rejected_error.clone(),
    }
}

pub(crate) fn wait_pb(w: &WaitOutcome) -> pb::WaitAppliedResponse {
    pb::WaitAppliedResponse {
        subscribed: w.subscribed,
        applied: w.applied,
        rejected: w.rejected.iter().map(proxy_pb).collect(),
        pending: w.pending.iter().map(proxy_pb).collect(),
        unreachable_nodes: Vec::new(),
    }
}
