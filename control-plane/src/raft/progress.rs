//! [`RaftProgress`]: the driver's term, leader, commit and applied index, readable without
//! asking the driver.
//!
//! The driver stores them once per loop turn, after it has processed every `Ready` (relaxed
//! atomic stores: a handful of nanoseconds per turn). Metrics and readiness probes read them
//! at any time from any thread; each value is at most one loop turn old, and the values need
//! not be mutually consistent to the nanosecond (a scrape is not a transaction).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The latest progress of one raft node; shared by the driver (writer) and readers.
#[derive(Debug, Default)]
pub struct RaftProgress {
    term: AtomicU64,
    /// 0 while no leader is known.
    leader_id: AtomicU64,
    leading: AtomicBool,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    leader_changes: AtomicU64,
}

/// One reading of a [`RaftProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSnapshot {
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Whether this node is the leader.
    pub leading: bool,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// How many times this node saw the leader change to a known leader (its first leader
    /// counts) since it started.
    pub leader_changes: u64,
}

// === impl RaftProgress ===

impl RaftProgress {
    /// Records the driver's state (driver only).
    pub(crate) fn record(
        &self,
        term: u64,
        leader_id: u64,
        leading: bool,
        commit: u64,
        applied: u64,
    ) {
        self.term.store(term, Ordering::Relaxed);
        let previous = self.leader_id.swap(leader_id, Ordering::Relaxed);
        if leader_id != ::raft::INVALID_ID && leader_id != previous {
            self.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.leading.store(leading, Ordering::Relaxed);
        self.commit_index.store(commit, Ordering::Relaxed);
        self.applied_index.store(applied, Ordering::Relaxed);
    }

    /// The values as last recorded.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let leader = self.leader_id.load(Ordering::Relaxed);
        ProgressSnapshot {
            term: self.term.load(Ordering::Relaxed),
            leader_id: (leader != ::raft::INVALID_ID).then_some(leader),
            leading: self.leading.load(Ordering::Relaxed),
            commit_index: self.commit_index.load(Ordering::Relaxed),
            applied_index: self.applied_index.load(Ordering::Relaxed),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
        }
    }
}

// === impl ProgressSnapshot ===

impl ProgressSnapshot {
    /// Ready to serve: a leader is known and this node has applied every entry it knows to be
    /// committed (a restarted or lagging node is not ready until it has caught up).
    pub fn ready(&self) -> bool {
        self.leader_id.is_some() && self.applied_index >= self.commit_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_changes_count_new_known_leaders_only() {
        let progress = RaftProgress::default();
        assert!(!progress.snapshot().ready());
        progress.record(1, 0, false, 0, 0);
        progress.record(2, 1, true, 5, 4);
        let s = progress.snapshot();
        assert_eq!((s.term, s.leader_id, s.leader_changes), (2, Some(1), 1));
        assert!(!s.ready(), "applied behind commit");
        progress.record(2, 1, true, 5, 5);
        assert!(progress.snapshot().ready());
        progress.record(3, 0, false, 5, 5); // election: no leader, not a change yet
        progress.record(3, 2, false, 6, 6);
        assert_eq!(progress.snapshot().leader_changes, 2);
    }
}
