//! The raft room's errors: what a caller of [`RaftHandle`](super::RaftHandle) sees
//! ([`ProposeError`]), what ends the driver ([`RaftError`]), and what a state machine reports
//! when it cannot apply a committed command ([`FatalError`]).

use std::path::PathBuf;

/// A committed command the state machine cannot apply (e.g. it does not decode).
///
/// Every replica applies the same log, so such a command means this replica's code or data
/// cannot follow the cluster: the node stops rather than let its state diverge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fatal: {0}")]
pub struct FatalError(pub String);

/// Why a call on a [`RaftHandle`](super::RaftHandle) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader_id` is the leader it knows of, if any. Nothing was
    /// proposed: retrying on the leader is safe.
    #[error("not the leader{}", leader_hint(*leader_id))]
    NotLeader {
        /// The current leader, if this node knows it.
        leader_id: Option<u64>,
    },
    /// Leadership or the term changed (or raft refused the entry) before the proposal was
    /// applied here. The entry may still commit later, or may never: the outcome is unknown.
    #[error(
        "proposal dropped: leadership changed before it was applied (it may or may not commit)"
    )]
    Dropped,
    /// The raft node stopped (shutdown or a fatal error) before answering.
    #[error("the raft node is stopped")]
    Stopped,
    /// The raft log store failed to carry out the request (e.g. taking a snapshot).
    #[error("raft storage: {0}")]
    Storage(String),
}

/// Why the raft node could not start, or why its driver ended.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The [`RaftConfig`](super::RaftConfig) is not usable.
    #[error("invalid raft config: {0}")]
    Config(String),
    /// The data directory could not be created.
    #[error("raft data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store (redb) failed.
    #[error("raft storage ({context}): {source}")]
    Storage {
        /// What the storage was doing.
        context: &'static str,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// The write-ahead log's files failed.
    #[error("raft WAL ({context}): {source}")]
    Wal {
        /// What the WAL was doing.
        context: &'static str,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The stored raft state contradicts itself (e.g. a gap in the log).
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    /// A raft message or entry could not be encoded or decoded.
    #[error("raft codec: {0}")]
    Codec(#[from] protobuf::ProtobufError),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] ::raft::Error),
    /// A committed entry could not be applied; the node stopped to avoid diverging.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

// === impl ProposeError ===

fn leader_hint(leader_id: Option<u64>) -> String {
    match leader_id {
        Some(id) => format!(" (the leader is node {id})"),
        None => " (no leader known)".to_owned(),
    }
}

// === impl RaftError ===

impl RaftError {
    /// Wraps a redb error with what the storage was doing.
    pub(crate) fn storage<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> Self {
        move |source| RaftError::Storage {
            context,
            source: source.into(),
        }
    }
}
