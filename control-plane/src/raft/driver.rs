//! The driver: the one task that owns the `RawNode`, its storage and the state machine.
//!
//! Everyone else talks to it through [`Msg`]s on a bounded queue. Each loop turn waits for
//! shutdown, a tick or a request; after a request it drains up to `max_batch - 1` more without
//! waiting, so many concurrent proposals become one `Ready`, one write transaction and one
//! fsync (group commit). Storage I/O runs inline on this task: while it fsyncs, new requests
//! queue up and form the next batch. Woken for a lone message while writes come in bursts
//! (concurrent writers, see [`Bursts`]), the driver first yields its core once, so a runtime
//! worker it preempted can finish queueing the rest of its burst: on a core shared with the
//! gRPC workers (small VMs, the benchmark's pinning) this turned 16-client runs from
//! ~4,000-6,000 into ~8,200 writes/s with a third less CPU per write. A lone writer is not
//! made to wait behind that yield.
//!
//! # The Ready order (raft-rs `RawNode` docs, `on_ready` in its README)
//!
//! 1. `messages()`: only a leader has these (appends, heartbeats). They may leave *before* the
//!    leader's own fsync (Raft thesis 10.2.1) because they promise nothing about the leader's
//!    disk: the leader counts itself towards a quorum only once its own write is persisted.
//! 2. snapshot from the leader: persisted and restored into the state machine.
//! 3. read states: record the confirmed read indexes.
//! 4. committed entries: applied. raft-rs only hands out entries already persisted here.
//! 5. entries and hard state: persisted in ONE transaction, fsynced when raft says it must.
//! 6. `persisted_messages()`: sent only now, after the fsync. These are votes and append
//!    acknowledgements: a vote forgotten in a crash lets this node vote twice in one term (two
//!    leaders), and an acknowledgement for entries not yet on disk lets a leader count a quorum
//!    that a crash can shrink, so a "committed" entry could vanish. An acknowledgement that
//!    repeats one the leader already has is not sent at all (see `acks.rs`).
//! 7. `advance`, then the light ready: new commit index (recorded; it needs no fsync), messages,
//!    committed entries (applied), then `advance_apply`.
//!
//! After applying, the state machine's `applied` publishes its snapshot, and only then are the
//! proposers answered, so a proposer that reads the local snapshot sees its own write.
//!
//! # Proposals
//!
//! Each entry carries (origin node, request id) in front of the command; a proposal waits in a
//! map by request id with the term it was proposed in. When this node stops being leader of
//! that term, its waiting proposals fail with [`ProposeError::Dropped`]: the entries may still
//! commit (a new leader may have them) or may be overwritten, and the caller cannot know which.

use std::collections::HashMap;
use std::time::Duration;

use ::raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, MessageType, Snapshot,
};
use ::raft::{RawNode, StateRole};
use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::acks::RepeatedAcks;
use super::burst::Bursts;
use super::compaction::{Compactions, Serialized};
use super::handle::{MemberStatus, MembershipChange, Msg, RaftStatus};
use super::pending::{self, Proposals, Reads};
use super::storage::RedbStorage;
use super::{FatalError, ProposeError, RaftConfig, RaftError, Reply, StateMachine, Transport};

/// The task state; see the module doc.
pub(crate) struct Driver<SM: StateMachine> {
    id: u64,
    node: RawNode<RedbStorage>,
    sm: SM,
    transport: Box<dyn Transport>,
    inbox: mpsc::Receiver<Msg<SM::Output>>,
    addresses: HashMap<u64, String>,
    tick_interval: Duration,
    snapshot_every: u64,
    max_batch: usize,
    proposals: Proposals<SM::Output>,
    /// Membership changes waiting to be applied.
    conf_changes: Proposals<()>,
    reads: Reads,
    /// New entries (proposals, or entries in appends from the leader) per loop turn, lately:
    /// whether a yield may collect a burst.
    bursts: Bursts,
    /// The snapshot being serialized off this thread, and who waits for it.
    compactions: Compactions,
    /// Index of the last entry applied to the state machine.
    applied: u64,
    /// (term, leader id, leading) when last checked: a change fails what can no longer be
    /// answered.
    seen: (u64, u64, bool),
    /// Term, leader, commit and applied index for readers outside the driver (metrics).
    progress: std::sync::Arc<super::RaftProgress>,
    /// The leader whose address was last found refusing connections, until another leader is
    /// known: while the election it set off is under way (no leader), further refusals from it
    /// keep prodding the election (see `peer_down`).
    down_leader: Option<u64>,
    /// A follower's acknowledgements its leader already has: not sent again.
    acks: RepeatedAcks,
}

/// Answers owed once the applied batch is published.
type Answers<O> = Vec<(Reply<(u64, O)>, (u64, O))>;

// === impl Driver ===

impl<SM: StateMachine> Driver<SM> {
    pub(crate) fn new(
        config: &RaftConfig,
        node: RawNode<RedbStorage>,
        sm: SM,
        transport: Box<dyn Transport>,
        inbox: mpsc::Receiver<Msg<SM::Output>>,
        applied: u64,
    ) -> Self {
        // Static peers first; addresses learned from conf changes (stored) override them.
        let mut addresses: HashMap<u64, String> = config.peers.iter().cloned().collect();
        for (id, address) in node.store().addresses() {
            transport.add_peer(id, &address);
            addresses.insert(id, address);
        }
        Self {
            id: config.id,
            node,
            sm,
            transport,
            inbox,
            addresses,
            tick_interval: config.tick_interval,
            snapshot_every: config.snapshot_every,
            max_batch: config.max_batch,
            proposals: Proposals::new(),
            conf_changes: Proposals::new(),
            reads: Reads::default(),
            bursts: Bursts::default(),
            compactions: Compactions::default(),
            applied,
            seen: (0, ::raft::INVALID_ID, false),
            progress: std::sync::Arc::default(),
            down_leader: None,
            acks: RepeatedAcks::new(config.heartbeat_interval()),
        }
    }

    /// Where the driver records its progress after each loop turn.
    pub(crate) fn progress(&self) -> std::sync::Arc<super::RaftProgress> {
        std::sync::Arc::clone(&self.progress)
    }

    /// Runs until `shutdown` is cancelled (→ `Ok`), every handle is dropped (→ `Ok`), or a
    /// storage or apply failure (→ `Err`). Either way, every waiting caller gets
    /// [`ProposeError::Stopped`].
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), RaftError> {
        let mut result = self.run_loop(&shutdown).await;
        let stopped = ProposeError::Stopped;
        self.proposals.fail_all(&stopped);
        self.conf_changes.fail_all(&stopped);
        self.reads.fail_all(&stopped);
        self.compactions.answer(&Err(stopped.clone()));
        self.inbox.close();
        while let Ok(msg) = self.inbox.try_recv() {
            fail(msg, &stopped);
        }
        if result.is_ok() {
            result = self.node.mut_store().flush();
        }
        match &result {
            Ok(()) => info!(applied = self.applied, "raft node stopped"),
            Err(e) => error!(error = %e, applied = self.applied, "raft node failed and stopped"),
        }
        result
    }

    async fn run_loop(&mut self, shutdown: &CancellationToken) -> Result<(), RaftError> {
        let mut ticker = tokio::time::interval(self.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.process()?;
        loop {
            // Biased: shutdown first; the ticker before the queue so a busy queue cannot
            // starve heartbeats and elections (the ticker is ready once per interval only).
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    self.node.tick();
                    self.retry_reads();
                }
                serialized = self.compactions.finished(), if self.compactions.running() => {
                    self.finish_compaction(serialized);
                }
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    // Woken for a single message while writes come in bursts: most likely
                    // its sender, a runtime worker, is in the middle of one (one readable
                    // socket after another). On a shared core the woken driver preempts it;
                    // yielding once lets the worker queue the rest of the burst, so it becomes
                    // one batch and one fsync instead of many. With a core to itself this
                    // returns at once. Without bursts (one writer) there is nothing to wait
                    // for, and the yield would only delay the write (see [`Bursts`]).
                    if self.inbox.is_empty() && self.bursts.bursty() {
                        std::thread::yield_now();
                    }
                    let mut entries = new_entries(&msg);
                    self.handle(msg);
                    for _ in 1..self.max_batch {
                        match self.inbox.try_recv() {
                            Ok(msg) => {
                                entries += new_entries(&msg);
                                self.handle(msg);
                            }
                            Err(_) => break,
                        }
                    }
                    if entries > 0 {
                        self.bursts.record(entries);
                    }
                }
            }
            self.report_feedback();
            self.process()?;
        }
    }

    fn report_feedback(&mut self) {
        for feedback in self.transport.feedback() {
            match feedback {
                super::Feedback::Unreachable(id) => self.unreachable(id),
                super::Feedback::Down(id) => {
                    self.unreachable(id);
                    self.peer_down(id);
                }
                super::Feedback::Snapshot { to, delivered } => {
                    let status = if delivered {
                        ::raft::SnapshotStatus::Finish
                    } else {
                        ::raft::SnapshotStatus::Failure
                    };
                    self.node.report_snapshot(to, status);
                }
            }
        }
    }

    /// A message to peer `id` may have been lost: raft probes it again, and its next
    /// acknowledgement goes out even if it repeats one (`acks.rs`).
    fn unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
        self.acks.forget(id);
    }

    /// Peer `id`'s address refuses connections: no process listens there. If `id` is this
    /// follower's leader, nothing more will come from it until it restarts, and waiting out
    /// the election timeout (1-2 s by default) only prolongs the outage. So the follower
    /// stops honouring the leader's lease (it grants pre-votes from now on, as it would once
    /// the timeout had passed), and the surviving voter with the lowest id campaigns at once;
    /// the others would campaign at their own timeout if it did not win. Both followers of a
    /// crashed leader redial it as soon as their streams break, so they see the refusal at
    /// about the same moment; a pre-vote that still reached a peer holding the lease is
    /// ignored there, so each further refusal (the link redials after 10, 20, 40 ms...)
    /// prods the election again while no leader is known.
    ///
    /// A false alarm costs no safety and little else: the pre-vote still needs a quorum that
    /// has stopped hearing from the leader, so a leader alive and in touch with the other
    /// followers keeps its place; only a refused port counts (a partition, a paused process or
    /// a proxy in between time out or reset instead, and take the normal timeout path).
    fn peer_down(&mut self, id: u64) {
        let raft = &mut self.node.raft;
        if raft.state == StateRole::Leader {
            return;
        }
        let known = raft.leader_id;
        if known == id {
            self.down_leader = Some(id);
        } else if known != ::raft::INVALID_ID {
            self.down_leader = None;
            return;
        } else if self.down_leader != Some(id) {
            return;
        }
        let timeout = raft.election_timeout();
        raft.election_elapsed = raft.election_elapsed.max(timeout);
        let first = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|voter| *voter != id)
            .min();
        if first == Some(self.id) {
            info!(
                leader = id,
                "the leader's address refuses connections: campaigning now instead of \
                 waiting out the election timeout"
            );
            // A learner, or a node with a membership change still to apply, declines.
            let _ = self.node.campaign();
        } else {
            debug!(
                leader = id,
                "the leader's address refuses connections: its lease no longer holds here"
            );
        }
    }

    fn handle(&mut self, msg: Msg<SM::Output>) {
        match msg {
            Msg::Propose { command, reply } => self.propose(command, reply),
            Msg::ReadIndex { reply } => self.read_index(reply),
            Msg::Step(msg) => {
                if let Err(e) = self.node.step(*msg) {
                    debug!(error = %e, "ignored a raft message");
                }
            }
            Msg::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Msg::Snapshot { reply } => {
                if self.applied <= self.node.store().snapshot_index() && !self.compactions.running()
                {
                    let _ = reply.send(Ok(self.node.store().snapshot_index()));
                } else {
                    self.compactions.wait(reply);
                    self.start_compaction();
                }
            }
            Msg::ChangeMembership { change, reply } => self.change_membership(change, reply),
            Msg::TransferLeader { to, reply } => {
                if self.node.raft.state == StateRole::Leader {
                    self.node.transfer_leader(to);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(self.not_leader()));
                }
            }
        }
    }

    /// Proposes one membership change as a ConfChangeV2 whose context carries (origin, request
    /// id, new member's address): every replica learns the address when it applies the entry.
    fn change_membership(&mut self, change: MembershipChange, reply: Reply<(u64, ())>) {
        use ::raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType};
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let (kind, id, address) = match change {
            MembershipChange::AddLearner { id, address } => {
                (ConfChangeType::AddLearnerNode, id, address)
            }
            MembershipChange::Promote { id } => (ConfChangeType::AddNode, id, String::new()),
            MembershipChange::Remove { id } => (ConfChangeType::RemoveNode, id, String::new()),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let request_id = self.conf_changes.next_id();
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(vec![single].into());
        cc.set_context(pending::encode(self.id, request_id, address.as_bytes()).into());
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => self
                .conf_changes
                .insert(request_id, self.node.raft.term, reply),
            Err(e) => {
                debug!(error = %e, "raft refused a membership change");
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Proposes on the leader, or on a follower that knows the leader: raft forwards the entry
    /// (MsgProp) and the follower answers its caller when it applies the entry itself.
    fn propose(&mut self, command: Vec<u8>, reply: Reply<(u64, SM::Output)>) {
        if self.node.raft.leader_id == ::raft::INVALID_ID {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let request_id = self.proposals.next_id();
        let data = pending::encode(self.id, request_id, &command);
        match self.node.propose(Vec::new(), data) {
            Ok(()) => self
                .proposals
                .insert(request_id, self.node.raft.term, reply),
            Err(e) => {
                debug!(error = %e, "raft refused a proposal");
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// ReadIndex on the leader, or forwarded to it by a follower (raft answers the follower
    /// with the leader's confirmed commit index).
    fn read_index(&mut self, reply: Reply<u64>) {
        if self.node.raft.leader_id == ::raft::INVALID_ID {
            let _ = reply.send(Err(self.not_leader()));
        } else if self.node.raft.state != StateRole::Leader {
            let ctx = self.reads.issue(self.id, reply);
            self.node.read_index(ctx);
        } else if !self.node.raft.commit_to_current_term() {
            self.reads.defer(reply);
        } else {
            let ctx = self.reads.issue(self.id, reply);
            self.node.read_index(ctx);
        }
    }

    /// Hands reads that got no answer for a while to raft again (see [`super::pending::READ_RETRY_TICKS`]).
    /// A leader that has not committed in its term yet keeps them deferred instead.
    fn retry_reads(&mut self) {
        let stale = self.reads.tick();
        if stale.is_empty() || self.node.raft.leader_id == ::raft::INVALID_ID {
            return;
        }
        debug!(reads = stale.len(), "ReadIndex unanswered: asking again");
        for ctx in stale {
            self.node.read_index(ctx);
        }
    }

    fn not_leader(&self) -> ProposeError {
        let leader = self.node.raft.leader_id;
        ProposeError::NotLeader {
            leader_id: (leader != ::raft::INVALID_ID).then_some(leader),
        }
    }

    /// Handles Readys until raft has nothing more to say.
    fn process(&mut self) -> Result<(), RaftError> {
        loop {
            if self.reads.has_deferred()
                && self.node.raft.state == StateRole::Leader
                && self.node.raft.commit_to_current_term()
            {
                for reply in self.reads.take_deferred() {
                    let ctx = self.reads.issue(self.id, reply);
                    self.node.read_index(ctx);
                }
            }
            if !self.node.has_ready() {
                let raft = &self.node.raft;
                self.progress.record(
                    raft.term,
                    raft.leader_id,
                    raft.state == StateRole::Leader,
                    raft.raft_log.committed,
                    self.applied,
                );
                return Ok(());
            }
            self.handle_ready()?;
            self.check_leadership();
        }
    }

    /// One Ready, in the order of the module doc.
    fn handle_ready(&mut self) -> Result<(), RaftError> {
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            info!(
                role = ?ss.raft_state,
                leader = ss.leader_id,
                term = self.node.raft.term,
                "raft role changed"
            );
        }
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot())?;
        }
        for state in ready.take_read_states() {
            self.reads.confirm(self.id, &state.request_ctx, state.index);
        }
        let mut answers = Vec::new();
        let mut applied_any = self.apply(ready.take_committed_entries(), &mut answers)?;
        self.node
            .mut_store()
            .persist(ready.entries(), ready.hs(), ready.must_sync())?;
        self.send(ready.take_persisted_messages());

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        applied_any |= self.apply(light.take_committed_entries(), &mut answers)?;
        self.node.advance_apply();

        if applied_any {
            self.sm.applied(self.applied);
        }
        for (reply, output) in answers {
            let _ = reply.send(Ok(output));
        }
        self.reads.serve(self.applied);
        let snapshot_index = self.node.store().snapshot_index();
        // A follower needs a snapshot fresher than ours: take one now, whatever the rules.
        let wanted = !self.compactions.running() && self.node.store().take_snapshot_wanted();
        if wanted
            || self
                .compactions
                .due(self.applied - snapshot_index, self.snapshot_every)
        {
            self.start_compaction();
        }
        Ok(())
    }

    /// Applies committed entries; no-ops and conf changes are the driver's own business.
    fn apply(
        &mut self,
        entries: Vec<Entry>,
        answers: &mut Answers<SM::Output>,
    ) -> Result<bool, RaftError> {
        let applied_any = !entries.is_empty();
        for entry in entries {
            let index = entry.index;
            match entry.get_entry_type() {
                // A new leader's empty entry: commits the entries of earlier terms.
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    self.compactions.applied(entry.data.len());
                    let envelope = pending::decode(&entry.data)
                        .ok_or_else(|| FatalError(format!("entry {index} has no envelope")))?;
                    let output = self.sm.apply(index, envelope.command)?;
                    if envelope.origin == self.id
                        && let Some(reply) = self.proposals.take(envelope.request_id, entry.term)
                    {
                        answers.push((reply, (index, output)));
                    }
                }
                EntryType::EntryConfChange => {
                    let change = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| FatalError(format!("conf change {index}: {e}")))?;
                    let result = self.node.apply_conf_change(&change);
                    self.conf_changed(index, result)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let change = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| FatalError(format!("conf change {index}: {e}")))?;
                    let result = self.node.apply_conf_change(&change);
                    self.conf_changed(index, result)?;
                    if let Some(envelope) = pending::decode(&change.context) {
                        self.learn_address(&change, envelope.command)?;
                        if envelope.origin == self.id
                            && let Some(reply) =
                                self.conf_changes.take(envelope.request_id, entry.term)
                        {
                            let _ = reply.send(Ok((index, ())));
                        }
                    }
                }
            }
            self.applied = index;
        }
        Ok(applied_any)
    }

    /// Remembers the address a conf change carries for the node it adds, durably (a restart
    /// must still reach members added after the static `--peers`).
    fn learn_address(&mut self, change: &ConfChangeV2, address: &[u8]) -> Result<(), RaftError> {
        let Ok(address) = std::str::from_utf8(address) else {
            return Ok(());
        };
        if address.is_empty() {
            return Ok(());
        }
        for single in change.get_changes() {
            let id = single.node_id;
            if self.addresses.get(&id).map(String::as_str) != Some(address) {
                self.addresses.insert(id, address.to_owned());
                self.transport.add_peer(id, address);
                self.node.mut_store().set_addresses(&self.addresses)?;
            }
        }
        Ok(())
    }

    /// Records the membership after applying the conf change at `index`.
    fn conf_changed(
        &mut self,
        index: u64,
        result: ::raft::Result<ConfState>,
    ) -> Result<(), RaftError> {
        // A committed change that every replica applies: failing here would diverge.
        let conf_state = result.map_err(|e| FatalError(format!("conf change {index}: {e}")))?;
        info!(index, voters = ?conf_state.voters, learners = ?conf_state.learners, "membership changed");
        self.node.mut_store().set_conf_state(conf_state)
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        let index = snapshot.get_metadata().index;
        info!(index, "installing a snapshot from the leader");
        self.node.mut_store().apply_snapshot(snapshot)?;
        self.sm.restore(index, &snapshot.data)?;
        self.applied = index;
        self.sm.applied(index);
        Ok(())
    }

    /// Starts serializing the state machine at the applied index (off this thread); the log is
    /// compacted up to it when the bytes come back ([`Driver::finish_compaction`]).
    fn start_compaction(&mut self) {
        let index = self.applied;
        let store = self.node.store();
        if !store.can_compact_to(index) || self.compactions.running() {
            return;
        }
        let term = match store.term_of(index) {
            Ok(term) => term,
            Err(e) => {
                warn!(error = %e, index, "log compaction not started");
                self.compactions
                    .answer(&Err(ProposeError::Storage(e.to_string())));
                return;
            }
        };
        // Conf changes take effect when applied, so this is the membership at `index`.
        let conf_state = self.node.raft.prs().conf().to_conf_state();
        let snapshotter = self.sm.snapshotter();
        let dir = store.dir().to_path_buf();
        if let Err(e) = self
            .compactions
            .start(index, term, conf_state, snapshotter, dir)
        {
            warn!(error = %e, "could not start a snapshot thread");
            self.compactions
                .answer(&Err(ProposeError::Storage(e.to_string())));
        }
    }

    /// Records a snapshot written to its file and drops the log up to it. A failure loses
    /// nothing (the log keeps growing) and is retried after a later batch.
    fn finish_compaction(&mut self, serialized: Option<Result<Serialized, String>>) {
        let Serialized {
            index,
            term,
            conf_state,
            file,
        } = match serialized {
            Some(Ok(serialized)) => serialized,
            failed => {
                let reason = failed.and_then(Result::err);
                let error = ProposeError::Storage(reason.unwrap_or_else(|| "no snapshot".into()));
                warn!(%error, "log compaction failed");
                self.compactions.answer(&Err(error));
                return;
            }
        };
        let bytes = file.size;
        let result = self.node.mut_store().compact(index, term, conf_state, file);
        match result {
            Ok(()) => {
                debug!(index, term, bytes, "log compacted");
                let index = self.node.store().snapshot_index();
                self.compactions.answer(&Ok(index));
            }
            Err(e) => {
                warn!(error = %e, "log compaction failed");
                self.compactions
                    .answer(&Err(ProposeError::Storage(e.to_string())));
            }
        }
    }

    /// Fails what this node can no longer answer reliably: proposals made in an earlier term
    /// (or as a leader that stepped down), and reads no quorum confirmed, once the term or the
    /// leader changes.
    fn check_leadership(&mut self) {
        let raft = &self.node.raft;
        let now = (raft.term, raft.leader_id, raft.state == StateRole::Leader);
        if now == self.seen {
            return;
        }
        let (term, _, leading) = now;
        let was_leading = self.seen.2;
        // A leader that stepped down keeps its term but may never commit what it appended.
        let keep = (!was_leading || leading).then_some(term);
        let before = self.proposals.len();
        self.proposals.fail_outside(keep, &ProposeError::Dropped);
        self.conf_changes.fail_outside(keep, &ProposeError::Dropped);
        self.reads.fail_unconfirmed(&ProposeError::Dropped);
        let dropped = before - self.proposals.len();
        if dropped > 0 {
            warn!(
                dropped,
                term, "term or leader changed: waiting proposals dropped (outcome unknown)"
            );
        }
        self.seen = now;
    }

    fn send(&mut self, mut msgs: Vec<::raft::eraftpb::Message>) {
        let now = std::time::Instant::now();
        msgs.retain(|msg| !self.acks.is_repeat(msg, now));
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn status(&self) -> RaftStatus {
        let raft = &self.node.raft;
        let store = self.node.store();
        let conf = raft.prs().conf().to_conf_state();
        let voters = conf.voters.iter().chain(&conf.voters_outgoing);
        let learners = conf.learners.iter().chain(&conf.learners_next);
        let mut members: Vec<MemberStatus> = voters
            .map(|id| (*id, true))
            .chain(learners.map(|id| (*id, false)))
            .map(|(id, voter)| MemberStatus {
                id,
                address: self.addresses.get(&id).cloned().unwrap_or_default(),
                voter,
                match_index: raft.prs().get(id).map_or(0, |p| p.matched),
            })
            .collect();
        members.sort_by_key(|m| (m.id, !m.voter));
        members.dedup_by_key(|m| m.id);
        RaftStatus {
            id: self.id,
            role: raft.state.into(),
            leader_id: (raft.leader_id != ::raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: store.snapshot_index(),
            first_index: store.snapshot_index() + 1,
            last_index: raft.raft_log.last_index(),
            members,
        }
    }
}

/// How many new log entries `msg` brings: one for a proposal, the entries of an append from
/// the leader; what [`Bursts`] averages.
fn new_entries<O>(msg: &Msg<O>) -> usize {
    match msg {
        Msg::Propose { .. } => 1,
        Msg::Step(msg) if msg.get_msg_type() == MessageType::MsgAppend => msg.entries.len(),
        _ => 0,
    }
}

/// Answers a request the driver will never handle.
fn fail<O>(msg: Msg<O>, error: &ProposeError) {
    match msg {
        Msg::Propose { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Msg::ReadIndex { reply } | Msg::Snapshot { reply } => {
            let _ = reply.send(Err(error.clone()));
        }
        Msg::Status { reply } => {
            let _ = reply.send(Err(error.clone()));
        }
        Msg::ChangeMembership { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Msg::TransferLeader { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Msg::Step(_) => {}
    }
}
