//! The proxies connected to this node and what each runs.
//!
//! Each stream owns its row (inserted at hello, removed when the stream ends); readers
//! (`ListProxies`, `WaitApplied`) take copies. The lock is held only to copy or update one
//! row, never across an `await`. Every change that can decide a wait (an ack, a rejection, a
//! subscription, a departure) bumps a `watch` counter that waiters sleep on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::registry::ServiceName;

/// One proxy as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    /// The id it gave in its hello.
    pub proxy_id: String,
    /// The service it fronts (empty for an ingress).
    pub service_name: String,
    /// Its build.
    pub build: String,
    /// The node it streams from (this one).
    pub node_id: u64,
    /// Its address as this node sees it (empty if unknown).
    pub remote_address: String,
    /// When its stream started, Unix milliseconds.
    pub connected_at_unix_ms: u64,
    /// The services it follows.
    pub services: BTreeSet<ServiceName>,
    /// The last version sent to it (0: none).
    pub sent_version: u64,
    /// The last version it acknowledged (0: none).
    pub acked_version: u64,
    /// The last version it rejected (0: none).
    pub rejected_version: u64,
    /// Why it rejected it.
    pub rejected_error: String,
}

/// The connected proxies, by stream id.
#[derive(Debug)]
pub struct ProxyTable {
    rows: Mutex<HashMap<u64, ProxyStatus>>,
    changed: watch::Sender<u64>,
}

// === impl ProxyTable ===

impl Default for ProxyTable {
    fn default() -> Self {
        Self {
            rows: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl ProxyTable {
    /// Every connected proxy, ordered by proxy id (then connection time).
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<ProxyStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.proxy_id, a.connected_at_unix_ms).cmp(&(&b.proxy_id, b.connected_at_unix_ms))
        });
        all
    }

    /// The proxies that follow `service`.
    pub fn subscribed_to(&self, service: &ServiceName) -> Vec<ProxyStatus> {
        let mut found: Vec<ProxyStatus> = self
            .lock()
            .values()
            .filter(|p| p.services.contains(service))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        found
    }

    /// How many proxies that follow `service` have neither acknowledged nor rejected a version
    /// at or after `target`. Counts under the lock without copying rows: a wait calls it on
    /// every ack, so with 1,000 proxies it must stay cheap.
    pub(super) fn pending(&self, service: &ServiceName, target: u64) -> usize {
        self.lock()
            .values()
            .filter(|p| {
                p.services.contains(service)
                    && p.acked_version < target
                    && p.rejected_version < target
            })
            .count()
    }

    /// How many proxies are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that changes whenever an ack, a rejection, a subscription or a departure
    /// may have decided a wait.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) fn insert(&self, id: u64, status: ProxyStatus) {
        self.lock().insert(id, status);
        self.bump();
    }

    pub(super) fn remove(&self, id: u64) {
        if self.lock().remove(&id).is_some() {
            self.bump();
        }
    }

    /// Updates row `id`; `wakes` says whether waiters should look again.
    pub(super) fn update(&self, id: u64, wakes: bool, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(row) = self.lock().get_mut(&id) {
            f(row);
        }
        if wakes {
            self.bump();
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        self.rows
            .lock()
            .expect("invariant: the proxy table lock is never held across a panic")
    }
}
