//! The replicated registry: the registry state machine driven by Raft, as the API sees it.
//!
//! [`RegistryMachine`] adapts the pure [`Registry`] to the Raft room's [`StateMachine`]
//! trait and publishes an immutable [`View`] after every applied batch. [`Replica`] is the
//! handle the API uses: writes are validated, proposed, committed, applied and only then
//! acknowledged; reads come from the latest published view, optionally after a Raft
//! ReadIndex round (linearizable).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::raft::{self, FatalError, ProposeError, RaftHandle, StateMachine};
use crate::registry::{Change, Command, Outcome, Registry, RegistryError};

/// How often a request waiting for an election asks again.
const ELECTION_POLL: Duration = Duration::from_millis(20);

/// What one applied command hands back to its proposer.
pub type ApplyResult = Result<Outcome, RegistryError>;

/// The registry as of one applied Raft index, shared read-only with every reader.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The Raft index applied when this view was published (counts no-op entries too).
    pub applied_index: u64,
    /// The registry at that index.
    pub registry: Arc<Registry>,
    /// The change feed of the most recent applied batches, oldest first (a persistent vector:
    /// cloning a view does not copy it). A reader that last saw index `i` finds everything
    /// since in [`View::changes_since`]; empty right after a snapshot was restored.
    pub feed: imbl::Vector<Arc<FeedBatch>>,
}

/// What one applied batch changed.
#[derive(Debug)]
pub struct FeedBatch {
    /// The applied index of the view before this batch.
    pub previous_index: u64,
    /// The applied index after it.
    pub applied_index: u64,
    /// The changes, in log order.
    pub changes: Vec<Change>,
}

/// How much change history views carry: enough for a reader that fell a few thousand batches
/// behind to catch up from the feed; older readers compare registries instead.
const FEED_BATCHES: usize = 4096;
/// ... and at most this many changes in all (a bound on memory).
const FEED_CHANGES: usize = 1 << 17;

/// The registry as a Raft [`StateMachine`].
#[derive(Debug)]
pub struct RegistryMachine {
    registry: Registry,
    publish: watch::Sender<View>,
    /// Changes applied since the last published view.
    pending: Vec<Change>,
    /// The applied index of the last published view.
    published: u64,
    /// The recent batches views carry, and how many changes they hold.
    feed: imbl::Vector<Arc<FeedBatch>>,
    feed_changes: usize,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The local replica, as applied so far.
    #[default]
    Stale,
    /// At least as fresh as every write acknowledged before the read began (ReadIndex).
    Linearizable,
}

/// Why a write or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The registry refused the command.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Raft could not commit the command (or confirm the read).
    #[error(transparent)]
    Raft(#[from] ProposeError),
    /// The write was not committed (or the read not confirmed) within the deadline; a write
    /// may still commit later.
    #[error("not committed or confirmed within {0:?}; a write's outcome is unknown")]
    Timeout(Duration),
}

/// The API's handle on the replicated registry. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    raft: RaftHandle<ApplyResult>,
    view: watch::Receiver<View>,
    write_timeout: Duration,
}

// === impl View ===

impl View {
    /// The batches applied after index `seen` up to this view, in log order, if the feed
    /// still holds all of them (`None`: the reader is too far behind, or a snapshot was
    /// restored in between).
    pub fn changes_since(&self, seen: u64) -> Option<imbl::Vector<Arc<FeedBatch>>> {
        if seen == self.applied_index {
            return Some(imbl::Vector::new());
        }
        let start = self
            .feed
            .binary_search_by_key(&seen, |b| b.previous_index)
            .ok()?;
        // O(log n): the tail shares the feed's nodes (iterating past `start` would be O(n)).
        Some(self.feed.skip(start))
    }
}

// === impl RegistryMachine ===

impl RegistryMachine {
    /// An empty registry, and the receiver readers subscribe to.
    pub fn new() -> (Self, watch::Receiver<View>) {
        let (publish, view) = watch::channel(View::default());
        let machine = Self {
            registry: Registry::new(),
            publish,
            pending: Vec::new(),
            published: 0,
            feed: imbl::Vector::new(),
            feed_changes: 0,
        };
        (machine, view)
    }
}

impl StateMachine for RegistryMachine {
    type Output = ApplyResult;

    fn apply(&mut self, index: u64, command: &[u8]) -> Result<ApplyResult, FatalError> {
        // A committed command that cannot be decoded means this binary cannot follow the
        // log: stop rather than diverge from the replicas that can.
        let command = Command::decode(command).map_err(|e| {
            FatalError(format!(
                "undecodable registry command at index {index}: {e}"
            ))
        })?;
        Ok(self
            .registry
            .apply_logged(index, &command, &mut self.pending))
    }

    fn applied(&mut self, applied_index: u64) {
        let changes = std::mem::take(&mut self.pending);
        self.feed_changes += changes.len();
        self.feed.push_back(Arc::new(FeedBatch {
            previous_index: self.published,
            applied_index,
            changes,
        }));
        while self.feed.len() > FEED_BATCHES || self.feed_changes > FEED_CHANGES {
            match self.feed.pop_front() {
                Some(old) => self.feed_changes -= old.changes.len(),
                None => break,
            }
        }
        self.publish.send_replace(View {
            applied_index,
            registry: Arc::new(self.registry.clone()),
            feed: self.feed.clone(),
        });
        self.published = applied_index;
    }

    fn snapshotter(&self) -> raft::Snapshotter {
        // O(1): the registry's maps are shared, not copied.
        let registry = self.registry.clone();
        Box::new(move || registry.snapshot())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), FatalError> {
        self.registry = Registry::restore(data).map_err(|e| {
            FatalError(format!(
                "unreadable registry snapshot at index {index}: {e}"
            ))
        })?;
        self.applied(index);
        Ok(())
    }
}

// === impl Replica ===

impl Replica {
    /// How long a write waits for its commit before answering "unknown outcome".
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A handle over a started Raft node and the views its state machine publishes.
    pub fn new(raft: RaftHandle<ApplyResult>, view: watch::Receiver<View>) -> Self {
        Self {
            raft,
            view,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// Validates, proposes and waits until `command` is committed and applied here.
    /// Returns the revision (log index) and what the command produced.
    ///
    /// While no leader is known (an election), the write waits for one, within the same
    /// deadline: nothing was proposed, so trying again cannot apply it twice.
    pub async fn write(&self, command: Command) -> Result<(u64, Outcome), ReplicaError> {
        command.validate()?;
        let bytes = command.encode();
        let attempt = async {
            loop {
                match self.raft.propose(bytes.clone()).await {
                    Err(ProposeError::NotLeader { leader_id: None }) => {
                        tokio::time::sleep(ELECTION_POLL).await;
                    }
                    other => return other,
                }
            }
        };
        let (index, applied) = tokio::time::timeout(self.write_timeout, attempt)
            .await
            .map_err(|_| ReplicaError::Timeout(self.write_timeout))??;
        Ok((index, applied?))
    }

    /// The registry, as fresh as `consistency` asks.
    pub async fn read(&self, consistency: Consistency) -> Result<View, ReplicaError> {
        if consistency == Consistency::Linearizable {
            let confirm = async {
                loop {
                    match self.raft.read_index().await {
                        Err(ProposeError::NotLeader { leader_id: None }) => {
                            tokio::time::sleep(ELECTION_POLL).await;
                        }
                        other => return other,
                    }
                }
            };
            // A read the leader never confirms (lost on the way, leader gone) fails here.
            let index = tokio::time::timeout(self.write_timeout, confirm)
                .await
                .map_err(|_| ReplicaError::Timeout(self.write_timeout))??;
            let mut view = self.view.clone();
            // The driver publishes before it answers; waiting here keeps this correct even
            // if that order ever changes.
            view.wait_for(|v| v.applied_index >= index)
                .await
                .map_err(|_| ReplicaError::Raft(ProposeError::Stopped))?;
        }
        Ok(self.view.borrow().clone())
    }

    /// The latest published view, without waiting.
    pub fn current(&self) -> View {
        self.view.borrow().clone()
    }

    /// A receiver of every view published from now on (the watch hub and the health checker
    /// follow the registry through it).
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The Raft node, for cluster administration.
    pub fn raft(&self) -> &RaftHandle<ApplyResult> {
        &self.raft
    }

    /// Starts a Raft node over a fresh [`RegistryMachine`], talking to its peers through
    /// `transport`.
    pub fn start(
        config: raft::RaftConfig,
        transport: impl raft::Transport,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<(), raft::RaftError>>), raft::RaftError> {
        let (machine, view) = RegistryMachine::new();
        let (handle, driver) = raft::start_with_transport(config, machine, transport, shutdown)?;
        Ok((Self::new(handle, view), driver))
    }
}
