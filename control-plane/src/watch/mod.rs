//! Watch streams: the registry's changes pushed to watchers the moment they are applied.
//!
//! # What it owns
//! One hub task per node (`hub.rs`) follows the replica's published views. For each new view
//! it finds the services that changed by comparing `mod_revision`s with the previous view
//! (`diff.rs`: cost proportional to what changed), turns them into per-service
//! [`ServiceChanges`], keeps the recent ones in a bounded history (`history.rs`) and hands each
//! watcher only the services in its [`Scope`]: a watcher of service A is never woken by a
//! change to service B.
//!
//! # Back-pressure
//! Each watcher has a bounded queue. The hub never waits for a watcher: when a queue has one
//! free slot left, the hub puts a "lagged" marker in it and stops feeding that watcher; the
//! watcher, once it has drained its queue, asks for a full state (reason `Resync`) and is fed
//! again. So a stalled client costs one bounded queue, never delays the hub, the other
//! watchers or the Raft apply loop (which only replaces a `watch` channel value).
//!
//! # Resuming
//! A watcher that resumes from revision R gets, in one delta, every change stamped after R that
//! the history still holds; if its scope has not changed since R it gets nothing; if R is older
//! than the history, it gets a full state flagged `Compacted`.
//!
//! # Depends on
//! `registry` (types, pure) and `replica` (the published [`View`](crate::replica::View)s);
//! tokio. No tonic: the API converts [`Update`]s to protobuf.

mod diff;
mod history;
mod hub;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::registry::{Registry, ServiceName};

pub use diff::{Event, EventKind, ServiceChanges, changes_since, diff};
pub use hub::{Hub, HubConfig};

/// Which part of the registry a watcher follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every service of every namespace.
    All,
    /// Every service of one namespace.
    Namespace(String),
    /// One service.
    Service(ServiceName),
}

/// Why a watcher receives a full state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The watch did not resume from a revision.
    Initial,
    /// It resumed from a revision older than the history.
    Compacted,
    /// It fell behind and its missed deltas were dropped.
    Resync,
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub enum Update {
    /// The whole registry at its revision: the watcher replaces what it knows of its scope
    /// with the scope's part of it.
    Snapshot {
        /// Why.
        reason: SnapshotReason,
        /// The registry (shared, immutable).
        registry: Arc<Registry>,
    },
    /// Changes in scope between two revisions.
    Delta {
        /// The revision the watcher was at.
        from: u64,
        /// The revision it is at once it applied these changes.
        to: u64,
        /// The changed services in scope (shared between the watchers of the same scope).
        changes: Arc<[Arc<ServiceChanges>]>,
    },
}

/// The watch room's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The hub stopped (the node is shutting down).
    #[error("the watch hub is stopped")]
    Stopped,
}

/// What travels in a watcher's queue.
#[derive(Debug)]
enum Msg {
    Update(Update),
    /// The hub stopped feeding this watcher: it must ask for a resync.
    Lagged,
}

/// Requests to the hub.
#[derive(Debug)]
enum Cmd {
    Subscribe {
        id: u64,
        scope: Scope,
        start_revision: u64,
        tx: mpsc::Sender<Msg>,
    },
    Resync {
        id: u64,
    },
}

/// A cheap, cloneable handle on the hub.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    cmd: mpsc::Sender<Cmd>,
    // Unbounded, but each watcher sends at most one id: bounded by the number of watchers.
    unsubscribe: mpsc::UnboundedSender<u64>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    queue: usize,
    /// Live subscriptions (the watchers gauge).
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// One watcher's feed. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Msg>,
    handle: WatchHandle,
}

// === impl Scope ===

impl Scope {
    /// Whether `service` is in scope.
    pub fn contains(&self, service: &ServiceName) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(ns) => *ns == service.namespace,
            Self::Service(s) => s == service,
        }
    }

    /// Whether nothing in scope changed after `revision`, judging by `mod_revision`s alone
    /// (a deleted and re-created object has a newer `create_revision`, so it counts as changed).
    pub fn unchanged_since(&self, registry: &Registry, revision: u64) -> bool {
        match self {
            Self::All => registry.revision() <= revision,
            Self::Namespace(ns) => registry
                .namespaces()
                .get(ns)
                .is_some_and(|ns| ns.mod_revision <= revision),
            Self::Service(name) => registry
                .service(name)
                .is_ok_and(|s| s.mod_revision <= revision),
        }
    }
}

// === impl WatchHandle ===

impl WatchHandle {
    /// Starts watching `scope`: from a full state (`start_revision` 0) or resuming after
    /// `start_revision`.
    pub async fn subscribe(
        &self,
        scope: Scope,
        start_revision: u64,
    ) -> Result<Subscription, WatchError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        self.cmd
            .send(Cmd::Subscribe {
                id,
                scope,
                start_revision,
                tx,
            })
            .await
            .map_err(|_| WatchError::Stopped)?;
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Subscription {
            id,
            rx,
            handle: self.clone(),
        })
    }

    /// How many watch subscriptions are open on this node.
    pub fn watchers(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// === impl Subscription ===

impl Subscription {
    /// The next update; `None` once the hub stopped.
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            match self.rx.recv().await? {
                Msg::Update(update) => return Some(update),
                // Everything before the marker was delivered; the hub sends nothing after it
                // until asked, so the full state it answers with follows right on.
                Msg::Lagged => self
                    .handle
                    .cmd
                    .send(Cmd::Resync { id: self.id })
                    .await
                    .ok()?,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.handle
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // If the hub is gone there is nobody to tell.
        let _ = self.handle.unsubscribe.send(self.id);
    }
}
