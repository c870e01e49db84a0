//! [`RaftHandle`]: how the rest of the process talks to the driver task — by message, through a
//! bounded queue (a full queue makes callers wait: backpressure, not unbounded memory).

use std::time::Duration;

use ::raft::StateRole;
use ::raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot};

use super::ProposeError;

/// How often [`RaftHandle::hand_off_leadership`] checks whether the heir leads yet.
const HAND_OFF_POLL: Duration = Duration::from_millis(5);

/// Where the driver sends one answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

/// A request to the driver.
pub(crate) enum Msg<O> {
    /// Append `command` to the log; answer once applied here.
    Propose {
        command: Vec<u8>,
        reply: Reply<(u64, O)>,
    },
    /// Confirm leadership with a quorum; answer with a safe read index once applied here.
    ReadIndex { reply: Reply<u64> },
    /// A message from a peer.
    Step(Box<Message>),
    /// Report the node's state.
    Status { reply: Reply<RaftStatus> },
    /// Snapshot the state machine and compact the log now.
    Snapshot { reply: Reply<u64> },
    /// Change the membership (leader only); answer once applied here.
    ChangeMembership {
        change: MembershipChange,
        reply: Reply<(u64, ())>,
    },
    /// Hand leadership to another voter (leader only).
    TransferLeader { to: u64, reply: Reply<()> },
}

/// One step of a membership change. Adding a node goes learner first (it catches up without
/// weakening the quorum), then promotion to voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add `id`, reachable at `address`, as a non-voting learner.
    AddLearner {
        /// The new node.
        id: u64,
        /// Its peer address; replicated in the conf change so every member learns it.
        address: String,
    },
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove `id` (voter or learner).
    Remove {
        /// The member.
        id: u64,
    },
}

/// A cheap, cloneable handle on a running raft node.
pub struct RaftHandle<O> {
    tx: mpsc::Sender<Msg<O>>,
    progress: std::sync::Arc<super::RaftProgress>,
}

/// A node's view of itself and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// Its current role.
    pub role: Role,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// The current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// Index of the last snapshot (0 before the first); the log starts right after it.
    pub snapshot_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Current members, by id.
    pub members: Vec<MemberStatus>,
}

/// The role of a raft node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning for votes in a new term.
    Candidate,
    /// Checking, without bumping the term, whether it could win an election (pre-vote).
    PreCandidate,
    /// The leader.
    Leader,
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub id: u64,
    /// Its address from [`RaftConfig::peers`](super::RaftConfig::peers); empty if unknown.
    pub address: String,
    /// Whether it votes (false for learners).
    pub voter: bool,
    /// Highest log index known replicated on it. Tracked by the leader only: on other nodes
    /// this is 0 (or stale).
    pub match_index: u64,
}

// === impl RaftHandle ===

impl<O> Clone for RaftHandle<O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            progress: std::sync::Arc::clone(&self.progress),
        }
    }
}

impl<O> std::fmt::Debug for RaftHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<O: Send + 'static> RaftHandle<O> {
    pub(crate) fn new(
        tx: mpsc::Sender<Msg<O>>,
        progress: std::sync::Arc<super::RaftProgress>,
    ) -> Self {
        Self { tx, progress }
    }

    /// Term, leader, commit and applied index as the driver last recorded them (at most one
    /// loop turn old), without a round trip to the driver.
    pub fn progress(&self) -> super::ProgressSnapshot {
        self.progress.snapshot()
    }

    /// Proposes `command`; resolves once it is committed and applied on this node, with its
    /// log index and the state machine's output.
    ///
    /// Errors: [`ProposeError::NotLeader`] (nothing proposed), [`ProposeError::Dropped`]
    /// (outcome unknown), [`ProposeError::Stopped`]. Dropping the future does not withdraw a
    /// proposal that was already queued.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, O), ProposeError> {
        self.call(|reply| Msg::Propose { command, reply }).await
    }

    /// ReadIndex: resolves with an index that a quorum confirmed as committed while this node
    /// was leader, once this node has applied at least that index. Reading the local state
    /// machine after that is linearizable.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        self.call(|reply| Msg::ReadIndex { reply }).await
    }

    /// The node's current status.
    pub async fn status(&self) -> Result<RaftStatus, ProposeError> {
        self.call(|reply| Msg::Status { reply }).await
    }

    /// Snapshots the state machine at the applied index and compacts the log up to it;
    /// returns the snapshot's index.
    pub async fn snapshot(&self) -> Result<u64, ProposeError> {
        self.call(|reply| Msg::Snapshot { reply }).await
    }

    /// Proposes a membership change; resolves with its log index once applied on this node.
    /// Leader only ([`ProposeError::NotLeader`] elsewhere).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, ProposeError> {
        self.call(|reply| Msg::ChangeMembership { change, reply })
            .await
            .map(|(index, ())| index)
    }

    /// Asks the leader to hand leadership to voter `to`; resolves once the transfer started
    /// (watch [`RaftHandle::status`] for its outcome).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.call(|reply| Msg::TransferLeader { to, reply }).await
    }

    /// Before this node stops: if it leads a cluster with other voters, hands leadership to
    /// the voter with the highest match index (the most caught up: it can take over without
    /// first catching up) and waits up to `patience` for it to lead. A planned restart then
    /// costs the cluster one leader transfer (about a round trip), not an election timeout,
    /// and fails no write that could have been served (etcd hands off on shutdown too).
    ///
    /// `Ok(Some(id))`: node `id` leads now. `Ok(None)`: nothing to hand over (not the leader,
    /// or the only voter), or the transfer did not finish within `patience` (the caller stops
    /// anyway; the followers elect a leader without this node).
    pub async fn hand_off_leadership(
        &self,
        patience: Duration,
    ) -> Result<Option<u64>, ProposeError> {
        let status = self.status().await?;
        if status.role != Role::Leader {
            return Ok(None);
        }
        let Some(heir) = status
            .members
            .iter()
            .filter(|m| m.voter && m.id != status.id)
            .max_by_key(|m| (m.match_index, std::cmp::Reverse(m.id)))
            .map(|m| m.id)
        else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + patience;
        // raft-rs drops a transfer that has not finished within an election timeout, and a
        // transferee that lost its chance (say, a vote went elsewhere) needs asking again.
        while tokio::time::Instant::now() < deadline {
            let status = self.status().await?;
            match (status.role, status.leader_id) {
                // The node can step down between the status and the request (the transfer
                // asked for on the last turn succeeded): the election under way decides.
                (Role::Leader, _) => match self.transfer_leader(heir).await {
                    Ok(()) | Err(ProposeError::NotLeader { .. }) => {}
                    Err(e) => return Err(e),
                },
                (_, Some(leader)) => return Ok(Some(leader)),
                (_, None) => {}
            }
            tokio::time::sleep(HAND_OFF_POLL).await;
        }
        Ok(None)
    }

    /// Hands the driver a message from a peer (for the peer transport). Resolves once queued.
    pub async fn step(&self, msg: Message) -> Result<(), ProposeError> {
        self.tx
            .send(Msg::Step(Box::new(msg)))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Msg<O>) -> Result<T, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        // A dropped reply means the driver ended without answering.
        answer.await.map_err(|_| ProposeError::Stopped)?
    }
}

// === impl Role ===

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}
