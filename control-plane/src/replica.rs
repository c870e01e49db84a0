//! The replicated registry: the registry state machine driven by Raft, as the API sees it.
//!
//! [`RegistryMachine`] adapts the pure [`Registry`] to the Raft room's [`StateMachine`]
//! trait and publishes an immutable [`View`] after every applied batch. [`Replica`] is the
//! handle the API uses: writes are validated, proposed, committed, applied and only then
//! acknowledged; reads come from the latest published view, optionally after a Raft
//! ReadIndex round (linearizable).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::metrics::Histogram;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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
    /// When the state machine started and finished applying the batch (the `raft.apply`
    /// span of a traced write).
    pub timing: ApplyTiming,
}

/// When one batch was applied (wall clock, as spans are). The default (both at the Unix
/// epoch) stands for "not recorded".
#[derive(Debug, Clone, Copy)]
pub struct ApplyTiming {
    /// The first entry of the batch reached the state machine.
    pub started: SystemTime,
    /// The batch's view was about to be published.
    pub finished: SystemTime,
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
    /// When the first entry of the batch being applied arrived.
    batch_started: Option<SystemTime>,
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
    /// `meridian.raft.proposal.duration` (a no-op instrument unless the node has telemetry).
    proposal_duration: Histogram<f64>,
}

// === impl ApplyTiming ===

impl Default for ApplyTiming {
    fn default() -> Self {
        Self {
            started: SystemTime::UNIX_EPOCH,
            finished: SystemTime::UNIX_EPOCH,
        }
    }
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
            batch_started: None,
        };
        (machine, view)
    }
}

impl StateMachine for RegistryMachine {
    type Output = ApplyResult;

    fn apply(&mut self, index: u64, command: &[u8]) -> Result<ApplyResult, FatalError> {
        // A committed command that cannot be decoded means this binary cannot follow the
        // log: stop rather than diverge from the replicas that can.
        if self.batch_started.is_none() {
            self.batch_started = Some(SystemTime::now());
        }
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
        let finished = SystemTime::now();
        let timing = ApplyTiming {
            started: self.batch_started.take().unwrap_or(finished),
            finished,
        };
        self.feed_changes += changes.len();
        self.feed.push_back(Arc::new(FeedBatch {
            previous_index: self.published,
            applied_index,
            changes,
            timing,
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
        // O(1): the registry's maps are shared, not copied. The bytes of `Registry::snapshot`
        // (its JSON), written to the snapshot file as they are produced.
        let registry = self.registry.clone();
        Box::new(move |out| serde_json::to_writer(out, &registry).map_err(std::io::Error::from))
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
            proposal_duration: opentelemetry::global::meter_provider()
                .meter("meridian-disabled")
                .f64_histogram("meridian.raft.proposal.duration")
                .build(),
        }
    }

    /// Records the latency of every successful write into `histogram`.
    #[must_use]
    pub fn with_proposal_histogram(mut self, histogram: Histogram<f64>) -> Self {
        self.proposal_duration = histogram;
        self
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
        let span = tracing::info_span!(
            "raft.propose",
            raft.index = tracing::field::Empty,
            raft.term = tracing::field::Empty,
        );
        let started = Instant::now();
        let (index, applied) = tokio::time::timeout(self.write_timeout, attempt)
            .instrument(span.clone())
            .await
            .map_err(|_| ReplicaError::Timeout(self.write_timeout))??;
        self.proposal_duration
            .record(started.elapsed().as_secs_f64(), &[]);
        // As i64: the OpenTelemetry layer exports u64 fields as strings.
        span.record("raft.index", index as i64);
        span.record("raft.term", self.raft.progress().term as i64);
        self.trace_apply(&span, index);
        Ok((index, applied?))
    }

    /// Adds a `raft.apply` child to a sampled `raft.propose` span: the application of the
    /// batch that held entry `index`, with the times the state machine recorded on the
    /// driver's thread. One span per traced write, built after the fact with the
    /// OpenTelemetry API (a `tracing` span cannot be given past timestamps); nothing at all
    /// when the write is not traced.
    fn trace_apply(&self, propose: &tracing::Span, index: u64) {
        let context = propose.context();
        if !context.span().span_context().is_sampled() {
            return;
        }
        let batch = {
            let view = self.view.borrow();
            let found = view.feed.binary_search_by(|b| {
                if b.applied_index < index {
                    std::cmp::Ordering::Less
                } else if b.previous_index >= index {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            match found.ok().and_then(|at| view.feed.get(at)) {
                Some(b) => Arc::clone(b),
                None => return,
            }
        };
        let tracer = opentelemetry::global::tracer("meridian");
        let mut span = tracer
            .span_builder("raft.apply")
            .with_start_time(batch.timing.started)
            .with_attributes([
                opentelemetry::KeyValue::new("raft.index.first", (batch.previous_index + 1) as i64),
                opentelemetry::KeyValue::new("raft.index.last", batch.applied_index as i64),
                opentelemetry::KeyValue::new("meridian.changes", batch.changes.len() as i64),
            ])
            .start_with_context(&tracer, &context);
        span.end_with_timestamp(batch.timing.finished);
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
