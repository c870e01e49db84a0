//! The hub task: follows the published views, diffs them, keeps the history and feeds every
//! watcher the changes in its scope without ever waiting for one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::history::{Batch, History};
use super::{Cmd, Msg, Scope, ServiceChanges, SnapshotReason, Update, WatchHandle, changes_since};
use crate::registry::{Registry, ServiceName};
use crate::replica::View;

/// Tuning of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Updates queued per watcher before it is considered behind and resynced. 64 absorbs a
    /// burst of batches while a client reads; beyond that a full state is cheaper than a backlog.
    pub queue: usize,
    /// Events kept for resuming watchers. 16,384 events of ~100 bytes of bookkeeping each (the
    /// instances themselves are shared with the registry) cost a few MB at most.
    pub history_events: usize,
}

/// The hub task, before it runs.
pub struct Hub {
    views: watch::Receiver<View>,
    cmds: mpsc::Receiver<Cmd>,
    unsubscribes: mpsc::UnboundedReceiver<u64>,
    current: Arc<Registry>,
    /// The applied index of the view `current` came from.
    seen: Option<u64>,
    history: History,
    watchers: HashMap<u64, Watcher>,
    all: HashSet<u64>,
    by_namespace: HashMap<String, HashSet<u64>>,
    by_service: HashMap<ServiceName, HashSet<u64>>,
}

#[derive(Debug)]
struct Watcher {
    scope: Scope,
    tx: mpsc::Sender<Msg>,
    /// The "lagged" marker was queued; nothing more is sent until the watcher asks to resync.
    lagged: bool,
}

// === impl HubConfig ===

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: 64,
            history_events: 16_384,
        }
    }
}

// === impl Hub ===

impl Hub {
    /// A hub over the views of `views` (starting from the current one), and its handle.
    pub fn new(views: watch::Receiver<View>, config: HubConfig) -> (Self, WatchHandle) {
        let (cmd_tx, cmds) = mpsc::channel(1024);
        let (unsub_tx, unsubscribes) = mpsc::unbounded_channel();
        let current = Arc::clone(&views.borrow().registry);
        let seen = Some(views.borrow().applied_index);
        let hub = Self {
            seen,
            views,
            cmds,
            unsubscribes,
            history: History::new(current.revision(), config.history_events),
            current,
            watchers: HashMap::new(),
            all: HashSet::new(),
            by_namespace: HashMap::new(),
            by_service: HashMap::new(),
        };
        let handle = WatchHandle {
            cmd: cmd_tx,
            unsubscribe: unsub_tx,
            next_id: Arc::new(AtomicU64::new(1)),
            // At least two: one slot is always kept for the lagged marker.
            queue: config.queue.max(2),
            active: Arc::default(),
        };
        (hub, handle)
    }

    /// Runs until `shutdown` is cancelled or the views stop (the node is stopping). Dropping
    /// the watchers' queues ends their streams.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(revision = self.current.revision(), "watch hub started");
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
                Some(id) = self.unsubscribes.recv() => self.remove(id),
                Some(cmd) = self.cmds.recv() => self.command(cmd),
            }
        }
        tracing::debug!(watchers = self.watchers.len(), "watch hub stopped");
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe {
                id,
                scope,
                start_revision,
                tx,
            } => self.subscribe(id, scope, start_revision, tx),
            Cmd::Resync { id } => {
                let registry = Arc::clone(&self.current);
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.lagged = false;
                    tracing::debug!(watcher = id, "resyncing a watcher that fell behind");
                    self.send(
                        id,
                        Update::Snapshot {
                            reason: SnapshotReason::Resync,
                            registry,
                        },
                    );
                }
            }
        }
    }

    fn subscribe(&mut self, id: u64, scope: Scope, start: u64, tx: mpsc::Sender<Msg>) {
        let revision = self.current.revision();
        let first = if start == 0 {
            Some(self.snapshot(SnapshotReason::Initial))
        } else if start >= revision || scope.unchanged_since(&self.current, start) {
            None
        } else {
            match self.history.since(&scope, start) {
                Some(changes) if changes.is_empty() => None,
                Some(changes) => Some(Update::Delta {
                    from: start,
                    to: revision,
                    changes: changes.into(),
                }),
                None => Some(self.snapshot(SnapshotReason::Compacted)),
            }
        };
        match &scope {
            Scope::All => {
                self.all.insert(id);
            }
            Scope::Namespace(ns) => {
                self.by_namespace.entry(ns.clone()).or_default().insert(id);
            }
            Scope::Service(s) => {
                self.by_service.entry(s.clone()).or_default().insert(id);
            }
        }
        self.watchers.insert(
            id,
            Watcher {
                scope,
                tx,
                lagged: false,
            },
        );
        if let Some(update) = first {
            self.send(id, update);
        }
    }

    fn snapshot(&self, reason: SnapshotReason) -> Update {
        Update::Snapshot {
            reason,
            registry: Arc::clone(&self.current),
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        match &w.scope {
            Scope::All => {
                self.all.remove(&id);
            }
            Scope::Namespace(ns) => remove_from(&mut self.by_namespace, ns, id),
            Scope::Service(s) => remove_from(&mut self.by_service, s, id),
        }
    }

    /// Takes in a new view: diffs it against the last one, records and dispatches the changes.
    fn advance(&mut self, view: View) {
        let from = self.current.revision();
        let to = view.registry.revision();
        let seen = self.seen.replace(view.applied_index);
        if to == from {
            // Only no-op entries were applied (or nothing): nothing for watchers.
            self.current = view.registry;
            return;
        }
        let changes: Vec<Arc<ServiceChanges>> = changes_since(&self.current, seen, &view)
            .into_iter()
            .map(Arc::new)
            .collect();
        self.current = view.registry;
        if changes.is_empty() {
            return;
        }
        self.dispatch(from, to, &changes);
        self.history.push(Arc::new(Batch::new(from, to, changes)));
    }

    /// One message per interested watcher; each list of changes is built once per scope.
    fn dispatch(&mut self, from: u64, to: u64, changes: &[Arc<ServiceChanges>]) {
        let delta = |changes: Arc<[Arc<ServiceChanges>]>| Update::Delta { from, to, changes };
        let mut targets: Vec<(u64, Arc<[Arc<ServiceChanges>]>)> = Vec::new();
        if !self.all.is_empty() {
            let every: Arc<[Arc<ServiceChanges>]> = changes.into();
            targets.extend(self.all.iter().map(|id| (*id, Arc::clone(&every))));
        }
        for group in changes.chunk_by(|a, b| a.service.namespace == b.service.namespace) {
            if let Some(ids) = self.by_namespace.get(&group[0].service.namespace) {
                let shared: Arc<[Arc<ServiceChanges>]> = group.into();
                targets.extend(ids.iter().map(|id| (*id, Arc::clone(&shared))));
            }
        }
        for change in changes {
            if let Some(ids) = self.by_service.get(&change.service) {
                let shared: Arc<[Arc<ServiceChanges>]> = Arc::new([Arc::clone(change)]);
                targets.extend(ids.iter().map(|id| (*id, Arc::clone(&shared))));
            }
        }
        for (id, changes) in targets {
            self.send(id, delta(changes));
        }
    }

    /// Queues `update` for watcher `id` without waiting: a watcher with one free slot left gets
    /// the lagged marker instead, and nothing more until it asks for a resync.
    fn send(&mut self, id: u64, update: Update) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        if w.lagged {
            return;
        }
        // Only the hub sends, so the free capacity can only grow between check and send.
        let msg = if w.tx.capacity() > 1 {
            Msg::Update(update)
        } else {
            w.lagged = true;
            tracing::debug!(watcher = id, "watcher fell behind; it will be resynced");
            Msg::Lagged
        };
        if w.tx.try_send(msg).is_err() {
            // Closed: the watcher went away (its unsubscribe may still be on its way).
            self.remove(id);
        }
    }
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}
