//! [`RaftConfig`]: who this node is, who its peers are, where its log lives, and its timing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::RaftError;

/// Largest total size of entries raft-rs puts into one append message to a follower (1 MiB):
/// big enough to batch thousands of small registry commands, small enough to keep one message
/// well below gRPC's default 4 MiB frame limit.
const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;

/// Append messages in flight per follower before the leader waits for acknowledgements
/// (raft-rs' default; bounds the memory a slow follower can pin on the leader).
const MAX_INFLIGHT_MSGS: usize = 256;

/// How one raft node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub id: u64,
    /// Every member as (id, address), this node included. On an empty data dir the ids become
    /// the initial voter set; afterwards membership comes from the log and the addresses are
    /// only used to label members in [`RaftStatus`](super::RaftStatus).
    pub peers: Vec<(u64, String)>,
    /// Directory of the raft log store (`raft.redb`); created if missing.
    pub data_dir: PathBuf,
    /// Length of one raft tick. Default 100 ms.
    pub tick_interval: Duration,
    /// Ticks without hearing from a leader before a follower starts an election. Default 10.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log once at least this many entries were applied since
    /// the last snapshot, and their commands add up to at least that snapshot's size (so the
    /// work stays proportional to the writes, not to the registry). Default 10 000.
    pub snapshot_every: u64,
    /// Most requests the driver takes from its queue per loop turn; they share one fsync.
    /// Also the capacity of that queue. Default 1024.
    pub max_batch: usize,
    /// Join an existing cluster instead of bootstrapping one from `peers`: storage starts
    /// with no membership, and the leader (which added this node) sends a snapshot.
    pub join: bool,
}

// === impl RaftConfig ===

impl RaftConfig {
    /// A config with the default timing, snapshot and batch settings.
    pub fn new(id: u64, peers: Vec<(u64, String)>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            peers,
            data_dir: data_dir.into(),
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            max_batch: 1024,
            join: false,
        }
    }

    /// Checks the settings raft-rs does not check itself (and those it does, early).
    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |why: String| Err(RaftError::Config(why));
        if self.id == 0 {
            return fail("id must not be 0 (raft reserves it for \"none\")".into());
        }
        let mut seen = HashSet::new();
        for (id, _) in &self.peers {
            if *id == 0 {
                return fail("peer id 0 is reserved".into());
            }
            if !seen.insert(*id) {
                return fail(format!("peer id {id} is listed twice"));
            }
        }
        if !seen.contains(&self.id) {
            return fail(format!("peers must include this node ({})", self.id));
        }
        if self.tick_interval.is_zero() {
            return fail("tick_interval must be positive".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail(format!(
                "need 0 < heartbeat_ticks ({}) < election_ticks ({})",
                self.heartbeat_ticks, self.election_ticks
            ));
        }
        if self.snapshot_every == 0 {
            return fail("snapshot_every must be at least 1".into());
        }
        if self.max_batch == 0 {
            return fail("max_batch must be at least 1".into());
        }
        self.raft_config(0).map(drop)
    }

    /// How often a leader sends heartbeats.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        let ticks = u32::try_from(self.heartbeat_ticks).unwrap_or(u32::MAX);
        self.tick_interval.saturating_mul(ticks)
    }

    /// The voter ids to bootstrap an empty data dir with.
    pub(crate) fn voter_ids(&self) -> Vec<u64> {
        if self.join {
            // A joining node learns the membership from the leader (a snapshot).
            return Vec::new();
        }
        self.peers.iter().map(|(id, _)| *id).collect()
    }

    /// The raft-rs config: pre-vote (a partitioned node rejoining does not bump the term and
    /// depose a healthy leader) and check-quorum (a leader cut off from a quorum steps down).
    pub(crate) fn raft_config(&self, applied: u64) -> Result<::raft::Config, RaftError> {
        let config = ::raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ::raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RaftError::Config(e.to_string()))?;
        Ok(config)
    }
}
