//! The consensus room: replicates opaque commands with Raft (raft-rs) and applies them, in log
//! order, to a [`StateMachine`].
//!
//! # What it owns
//! - the raft log, hard state and snapshots on disk (`DATA_DIR/wal-*.log`, `*.snap` and
//!   `raft.redb`, `storage.rs`);
//! - the one driver task that owns raft-rs' `RawNode` and runs its Ready loop (`driver.rs`):
//!   durability before acknowledgement, group commit, proposal matching, ReadIndex, log
//!   compaction, membership (conf change) application;
//! - the [`RaftHandle`] through which everyone else talks to that task, by message.
//!
//! # What it may depend on
//! raft-rs (with rust-protobuf 2 types), redb, tokio, `slog` (only to hand raft-rs a logger
//! that forwards to `tracing`, `logger.rs`). Nothing about services, DNS or gRPC: commands are
//! bytes, and peer messages leave through the [`Transport`] seam, which the gRPC peer service
//! will implement (for now a cluster of one needs none: [`NoPeers`]).
//!
//! # Lifecycle
//! [`start`] opens storage, restores the state machine from the last snapshot and spawns the
//! driver; raft-rs then re-delivers the committed entries after that snapshot, so the state
//! machine catches up through the normal apply path. The driver stops when its cancellation
//! token fires (pending calls fail with [`ProposeError::Stopped`], the store is flushed, the
//! task returns `Ok`), when every handle is dropped, or when a committed command cannot be
//! applied ([`FatalError`]: the task returns `Err` rather than let this replica diverge).
//!
//! # Layout
//! `config.rs` [`RaftConfig`] · `error.rs` errors · `handle.rs` [`RaftHandle`] and status
//! types · `driver.rs` the Ready loop · `burst.rs` when its yield pays · `acks.rs` a
//! follower's repeated acknowledgements, not sent · `pending.rs` waiting proposals/reads and
//! the entry envelope · `storage.rs` raft-rs `Storage` on the WAL and redb
//! (`storage/snapshot.rs` its snapshot records) · `wal.rs` the write-ahead log · `snapfile.rs`
//! snapshot files · `compaction.rs` snapshots taken off the driver thread · `logger.rs` slog →
//! tracing · `progress.rs` [`RaftProgress`], term/leader/indexes readable without a driver
//! round trip.

mod acks;
mod burst;
mod compaction;
mod config;
mod driver;
mod error;
mod handle;
mod logger;
mod pending;
mod progress;
mod snapfile;
mod storage;
mod wal;

#[cfg(test)]
mod snapfile_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
mod tests;

use ::raft::RawNode;
use ::raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use config::RaftConfig;

/// Serializes a state machine's state as of the moment it was taken into the writer it is
/// given (a buffered snapshot file: no whole-state buffer); see [`StateMachine::snapshotter`].
/// The bytes written are what [`StateMachine::restore`] receives.
pub type Snapshotter = Box<dyn FnOnce(&mut SnapshotWriter) -> std::io::Result<()> + Send + 'static>;
pub use error::{FatalError, ProposeError, RaftError};
pub use handle::{MemberStatus, MembershipChange, RaftHandle, RaftStatus, Role};
pub use progress::{ProgressSnapshot, RaftProgress};
pub use snapfile::SnapshotWriter;

use driver::Driver;
use handle::Reply;
use storage::RedbStorage;

/// The deterministic state that the log is applied to. Every replica applies the same commands
/// in the same order and must reach the same state: no clock, randomness or I/O in `apply`.
pub trait StateMachine: Send + 'static {
    /// Handed back to the proposer of the command.
    type Output: Send + 'static;

    /// Applies one committed command. Err means the command cannot be decoded: the node must
    /// stop (the driver logs it at error and shuts down) rather than diverge. A command that
    /// is valid but refused (e.g. "already exists") is an `Ok` output, identical everywhere.
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Self::Output, FatalError>;

    /// Called once after each batch of committed entries was applied, before any proposer of
    /// that batch is answered (the state machine publishes its read snapshot here).
    /// `applied_index` includes no-op and conf-change entries, so it may exceed the index of the
    /// last command `apply` saw. Also called after a snapshot was restored.
    fn applied(&mut self, applied_index: u64);

    /// A function that serializes the full state as it is now (for Raft snapshots and log
    /// compaction). It runs on another thread while this state machine keeps applying, so
    /// taking it must be cheap (share the state, do not copy it).
    fn snapshotter(&self) -> Snapshotter;

    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), FatalError>;
}

/// Carries raft messages to peers. Implemented by the peer transport; the driver calls it from
/// its loop, so `send` must not block: queue and return. Delivery is best effort: raft retries.
pub trait Transport: Send + Sync + 'static {
    /// Sends each message to the peer in its `to` field.
    fn send(&self, msgs: Vec<Message>);

    /// What the transport learned since the last call (unreachable peers, snapshot
    /// deliveries); the driver reports it to raft once per loop turn.
    fn feedback(&self) -> Vec<Feedback> {
        Vec::new()
    }

    /// A member's address became known (a node added at run time carries its address in the
    /// conf change).
    fn add_peer(&self, _id: u64, _address: &str) {}
}

/// What a transport tells raft about its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// A message to this peer could not be delivered: raft slows down probing it.
    Unreachable(u64),
    /// This peer's address refuses connections: its host is up but no process listens there
    /// (it crashed, was killed or stopped). Stronger than [`Feedback::Unreachable`], which
    /// a slow or partitioned peer also earns: a follower whose *leader* is down stops waiting
    /// out the election timeout (see the driver's `peer_down`).
    Down(u64),
    /// A snapshot to this peer was handed to the network (`delivered`) or lost.
    Snapshot {
        /// The peer.
        to: u64,
        /// Whether the snapshot left in full.
        delivered: bool,
    },
}

/// The transport of a cluster of one: there is nobody to send to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

/// Starts a raft node without a peer transport: the cluster must be this node alone.
///
/// Opens (or creates) storage in `config.data_dir`, restores `sm` from the last snapshot,
/// replays nothing itself (raft-rs re-delivers the committed entries after the snapshot), and
/// spawns the driver task on the current tokio runtime. The returned task ends `Ok` after
/// `shutdown` is cancelled, `Err` if the node had to stop (storage failure, [`FatalError`]).
#[allow(clippy::type_complexity)] // the signature callers see; an alias would hide it
pub fn start<SM: StateMachine>(
    config: RaftConfig,
    sm: SM,
    shutdown: CancellationToken,
) -> Result<(RaftHandle<SM::Output>, JoinHandle<Result<(), RaftError>>), RaftError> {
    if let Some((peer, _)) = config.peers.iter().find(|(id, _)| *id != config.id) {
        return Err(RaftError::Config(format!(
            "peer {peer} needs a peer transport: use start_with_transport"
        )));
    }
    start_with_transport(config, sm, NoPeers, shutdown)
}

/// Like [`start`], with `transport` carrying messages to the other members.
#[allow(clippy::type_complexity)] // as for `start`
pub fn start_with_transport<SM: StateMachine>(
    config: RaftConfig,
    mut sm: SM,
    transport: impl Transport,
    shutdown: CancellationToken,
) -> Result<(RaftHandle<SM::Output>, JoinHandle<Result<(), RaftError>>), RaftError> {
    config.validate()?;
    let span = tracing::info_span!("raft", id = config.id);
    let entered = span.enter();
    let storage = RedbStorage::open(&config.data_dir, &config.voter_ids())?;
    let snapshot_index = storage.snapshot_index();
    if snapshot_index > 0 {
        sm.restore(snapshot_index, &storage.snapshot_data()?)?;
        sm.applied(snapshot_index);
    }
    let mut node = RawNode::new(
        &config.raft_config(snapshot_index)?,
        storage,
        &logger::raft_logger(),
    )?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        snapshot_index,
        last_index = node.raft.raft_log.last_index(),
        "raft node starting"
    );
    // The only voter need not wait out an election timeout: it campaigns (and, being a quorum
    // of one, wins) right away, through the normal pre-vote and vote path.
    if node.raft.prs().conf().to_conf_state().voters == [config.id] {
        node.campaign()?;
    }
    let (tx, rx) = mpsc::channel(config.max_batch);
    let driver = Driver::new(&config, node, sm, Box::new(transport), rx, snapshot_index);
    let progress = driver.progress();
    drop(entered);
    let task = spawn_driver(driver.run(shutdown).instrument(span), config.id)?;
    Ok((RaftHandle::new(tx, progress), task))
}

/// Runs the driver on its own OS thread (a current-thread runtime), so its blocking fsyncs
/// never stall the runtime that serves clients: while the driver waits for the disk, requests
/// keep arriving, are decoded and queue up — and become the next batch. On one core (or one
/// tokio worker) the alternative degenerates to one proposal per fsync.
fn spawn_driver(
    driver: impl std::future::Future<Output = Result<(), RaftError>> + Send + 'static,
    id: u64,
) -> Result<JoinHandle<Result<(), RaftError>>, RaftError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RaftError::Config(format!("cannot build the driver runtime: {e}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let _ = done_tx.send(runtime.block_on(driver));
        })
        .map_err(|e| RaftError::Config(format!("cannot start the driver thread: {e}")))?;
    Ok(tokio::spawn(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(RaftError::Config("the driver thread panicked".into())))
    }))
}

// === impl NoPeers ===

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        // Only reachable if the log's membership grew beyond this node (start() refuses
        // configured peers): say so rather than fail silently.
        tracing::warn!(
            count = msgs.len(),
            to = msgs.first().map(|m| m.to),
            "no peer transport: raft messages dropped"
        );
    }
}
