//! The recent changes, for watchers that resume: a ring of batches bounded by event count.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Scope, ServiceChanges};

/// The changes between two consecutive views the hub processed.
#[derive(Debug)]
pub(super) struct Batch {
    /// Registry revision of the previous view.
    pub(super) from: u64,
    /// Registry revision of this view.
    pub(super) to: u64,
    /// The changed services, in name order.
    pub(super) changes: Vec<Arc<ServiceChanges>>,
    events: usize,
}

/// Batches whose changes together hold at most `max_events` events (the newest batch is kept
/// whatever its size).
#[derive(Debug)]
pub(super) struct History {
    batches: VecDeque<Arc<Batch>>,
    events: usize,
    max_events: usize,
    /// Every change after this revision is held.
    oldest: u64,
}

// === impl Batch ===

impl Batch {
    pub(super) fn new(from: u64, to: u64, changes: Vec<Arc<ServiceChanges>>) -> Self {
        let events = changes.iter().map(|c| c.events.len()).sum();
        Self {
            from,
            to,
            changes,
            events,
        }
    }
}

// === impl History ===

impl History {
    /// An empty history that starts at `revision`.
    pub(super) fn new(revision: u64, max_events: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            events: 0,
            max_events,
            oldest: revision,
        }
    }

    pub(super) fn push(&mut self, batch: Arc<Batch>) {
        self.events += batch.events;
        self.batches.push_back(batch);
        while self.events > self.max_events && self.batches.len() > 1 {
            if let Some(old) = self.batches.pop_front() {
                self.events -= old.events;
                self.oldest = old.to;
            }
        }
    }

    /// The changes in `scope` stamped after `after`, or `None` if some of them were dropped.
    pub(super) fn since(&self, scope: &Scope, after: u64) -> Option<Vec<Arc<ServiceChanges>>> {
        if after < self.oldest {
            return None;
        }
        let mut out = Vec::new();
        for batch in self.batches.iter().filter(|b| b.to > after) {
            for change in batch.changes.iter().filter(|c| scope.contains(&c.service)) {
                if batch.from >= after {
                    out.push(Arc::clone(change));
                    continue;
                }
                // The batch straddles `after`: keep only what is stamped later.
                let events: Vec<_> = change
                    .events
                    .iter()
                    .filter(|e| e.revision > after)
                    .cloned()
                    .collect();
                if !events.is_empty() {
                    out.push(Arc::new(ServiceChanges {
                        service: change.service.clone(),
                        events,
                    }));
                }
            }
        }
        Some(out)
    }
}
