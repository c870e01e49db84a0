//! The hub task: follows the published views and marks, in each subscribed stream's outbox,
//! the services that changed. It never waits for a stream.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::session::Outbox;
use super::{Cmd, DiscoveryHandle, ProxyTable};
use crate::registry::{Registry, ServiceName};
use crate::replica::View;

/// The hub task, before it runs.
pub struct DiscoveryHub {
    views: watch::Receiver<View>,
    cmds: mpsc::Receiver<Cmd>,
    closes: mpsc::UnboundedReceiver<u64>,
    registry: Arc<Registry>,
    /// The applied index of the view `registry` came from.
    seen: u64,
    streams: HashMap<u64, Stream>,
    by_service: HashMap<ServiceName, HashSet<u64>>,
}

#[derive(Debug)]
struct Stream {
    outbox: Arc<Outbox>,
    services: HashSet<ServiceName>,
}

// === impl DiscoveryHub ===

impl DiscoveryHub {
    /// A hub over `views` (starting from the current one) for node `node_id`, and its handle.
    pub fn new(views: watch::Receiver<View>, node_id: u64) -> (Self, DiscoveryHandle) {
        // Subscriptions are small and the hub handles them in microseconds; the bound only
        // makes a flood of subscribes wait instead of growing memory.
        let (cmd_tx, cmds) = mpsc::channel(1024);
        let (close_tx, closes) = mpsc::unbounded_channel();
        let (registry, seen) = {
            let view = views.borrow();
            (Arc::clone(&view.registry), view.applied_index)
        };
        let handle = DiscoveryHandle {
            node_id,
            cmds: cmd_tx,
            closes: close_tx,
            next_id: Arc::new(AtomicU64::new(1)),
            proxies: Arc::new(ProxyTable::default()),
            views: views.clone(),
        };
        let hub = Self {
            views,
            cmds,
            closes,
            registry,
            seen,
            streams: HashMap::new(),
            by_service: HashMap::new(),
        };
        (hub, handle)
    }

    /// Runs until `shutdown` is cancelled or the views stop; then ends every stream.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(revision = self.registry.revision(), "discovery hub started");
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = self.views.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let view = self.views.borrow_and_update().clone();
                    self.advance(view);
                }
                Some(id) = self.closes.recv() => self.remove(id),
                Some(cmd) = self.cmds.recv() => self.command(cmd),
            }
        }
        for stream in self.streams.values() {
            stream.outbox.close();
        }
        tracing::debug!(streams = self.streams.len(), "discovery hub stopped");
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open { id, outbox } => {
                self.streams.insert(
                    id,
                    Stream {
                        outbox,
                        services: HashSet::new(),
                    },
                );
            }
            Cmd::Subscribe { id, services } => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                for s in &services {
                    if stream.services.insert(s.clone()) {
                        self.by_service.entry(s.clone()).or_default().insert(id);
                    }
                }
                // The answer to a subscription: the current state of each service named.
                stream.outbox.mark(services, &self.registry);
            }
            Cmd::Unsubscribe { id, services } => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return;
                };
                for s in &services {
                    if stream.services.remove(s) {
                        remove_from(&mut self.by_service, s, id);
                    }
                }
                stream.outbox.forget(&services);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(stream) = self.streams.remove(&id) {
            for s in &stream.services {
                remove_from(&mut self.by_service, s, id);
            }
        }
    }

    /// Takes in a new view: finds the followed services that changed and marks them in the
    /// outbox of each stream that follows them (one mark, so one push, per stream per view).
    fn advance(&mut self, view: View) {
        let seen = std::mem::replace(&mut self.seen, view.applied_index);
        if view.registry.revision() == self.registry.revision() {
            // Only no-op entries were applied: nothing changed for anyone.
            self.registry = view.registry;
            return;
        }
        let changed = self.changed_services(seen, &view);
        let mut marks: HashMap<u64, Vec<ServiceName>> = HashMap::new();
        for service in changed {
            if let Some(ids) = self.by_service.get(&service) {
                for id in ids {
                    marks.entry(*id).or_default().push(service.clone());
                }
            }
        }
        self.registry = Arc::clone(&view.registry);
        for (id, services) in marks {
            if let Some(stream) = self.streams.get(&id) {
                stream.outbox.mark(services, &self.registry);
            }
        }
    }

    /// The followed services that changed between the hub's registry and `view`: from the
    /// change feed while it reaches back to `seen` (cost: the changes), else by comparing each
    /// followed service's revisions (cost: the followed services, not the registry).
    fn changed_services(&self, seen: u64, view: &View) -> BTreeSet<ServiceName> {
        if let Some(batches) = view.changes_since(seen) {
            return batches
                .iter()
                .flat_map(|b| b.changes.iter())
                .filter(|c| self.by_service.contains_key(&c.service))
                .map(|c| c.service.clone())
                .collect();
        }
        tracing::debug!(
            seen,
            applied = view.applied_index,
            "feed too short; comparing"
        );
        self.by_service
            .keys()
            .filter(|name| {
                let old = self.registry.service(name).ok();
                let new = view.registry.service(name).ok();
                match (old, new) {
                    (None, None) => false,
                    (Some(a), Some(b)) => {
                        !Arc::ptr_eq(a, b)
                            && (a.create_revision, a.mod_revision)
                                != (b.create_revision, b.mod_revision)
                    }
                    _ => true,
                }
            })
            .cloned()
            .collect()
    }
}

fn remove_from(map: &mut HashMap<ServiceName, HashSet<u64>>, key: &ServiceName, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}
