//! Log compaction with the state machine serialized off the driver thread.
//!
//! Serializing the whole registry takes time proportional to its size; on the driver thread
//! it stalled every commit, heartbeat and vote for that long. Instead the driver takes a
//! [`Snapshotter`] (an O(1) clone of the state, thanks to its persistent
//! maps) and runs it on a short-lived thread, which serializes straight into a new snapshot
//! file and fsyncs it ([`snapfile::write`]: no whole-state buffer, no large write on the driver
//! thread). When the file is complete, the driver records it and compacts the log
//! ([`RedbStorage::compact`](super::storage::RedbStorage::compact)). One compaction at a time;
//! the log keeps growing meanwhile, which is harmless.
//!
//! # When
//! After at least `snapshot_every` applied entries, *and* once the commands applied since the
//! last snapshot add up to at least that snapshot's size. A fixed entry count made snapshot
//! work grow with the registry: at 200,000 instances every node serialized and wrote ~40 MB
//! every 10,000 writes, a quarter of the Raft threads' CPU under a steady write load (perf,
//! 3 nodes on one core). With the byte rule each write pays for at most its own size in
//! snapshot work, whatever the registry's size, and the disk still holds at most about twice
//! the state (the snapshot plus a log no larger than it, or `snapshot_every` entries).

use std::path::PathBuf;

use ::raft::eraftpb::ConfState;
use tokio::sync::oneshot;

use super::snapfile::{self, SnapFile};
use super::{ProposeError, Reply, Snapshotter};

/// The compaction in flight, if any, who waits for it, and what decides the next one.
#[derive(Default)]
pub(crate) struct Compactions {
    running: Option<Running>,
    /// Bytes of commands applied since the last snapshot was taken.
    applied_bytes: u64,
    /// Size of the last snapshot this node took (0 until it took one in this run).
    last_snapshot_bytes: u64,
    /// `Cluster.Snapshot` callers: answered with the index the running compaction reached.
    waiters: Vec<Reply<u64>>,
}

/// A snapshot being serialized.
struct Running {
    index: u64,
    term: u64,
    conf_state: ConfState,
    /// The written file, or why it could not be written.
    file: oneshot::Receiver<Result<SnapFile, String>>,
}

/// A snapshot written to its file, ready to be recorded.
pub(crate) struct Serialized {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) conf_state: ConfState,
    pub(crate) file: SnapFile,
}

// === impl Compactions ===

impl Compactions {
    /// Counts a command of `bytes` applied.
    pub(crate) fn applied(&mut self, bytes: usize) {
        self.applied_bytes = self.applied_bytes.saturating_add(bytes as u64);
    }

    /// Whether the log is due for compaction, `entries` applied since the last snapshot (see
    /// the module doc).
    pub(crate) fn due(&self, entries: u64, snapshot_every: u64) -> bool {
        self.running.is_none()
            && entries >= snapshot_every
            && self.applied_bytes >= self.last_snapshot_bytes
    }

    /// Whether a snapshot is being serialized.
    pub(crate) fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts serializing the state at `index` into a snapshot file in `dir`, on its own
    /// thread (unless one is running).
    pub(crate) fn start(
        &mut self,
        index: u64,
        term: u64,
        conf_state: ConfState,
        snapshotter: Snapshotter,
        dir: PathBuf,
    ) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        // What is applied from now on is not in this snapshot.
        self.applied_bytes = 0;
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let file = snapfile::write(&dir, term, index, snapshotter);
                // The driver may have stopped meanwhile; then nobody records the file, and
                // the next open deletes it.
                let _ = tx.send(file.map_err(|e| e.to_string()));
            })?;
        self.running = Some(Running {
            index,
            term,
            conf_state,
            file: rx,
        });
        Ok(())
    }

    /// Waits for the running serialization; `None` if none runs (use in a guarded select).
    pub(crate) async fn finished(&mut self) -> Option<Result<Serialized, String>> {
        let running = self.running.as_mut()?;
        let file = (&mut running.file).await;
        let running = self.running.take().expect("invariant: checked above");
        let file = match file {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return Some(Err("the snapshot thread died".into())),
        };
        self.last_snapshot_bytes = file.size;
        Some(Ok(Serialized {
            index: running.index,
            term: running.term,
            conf_state: running.conf_state,
            file,
        }))
    }

    /// Someone asked for a snapshot; answered by [`Compactions::answer`].
    pub(crate) fn wait(&mut self, reply: Reply<u64>) {
        self.waiters.push(reply);
    }

    /// Answers the waiting callers.
    pub(crate) fn answer(&mut self, result: &Result<u64, ProposeError>) {
        for reply in self.waiters.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn zeros(bytes: usize) -> Snapshotter {
        Box::new(move |out| out.write_all(&vec![0; bytes]))
    }

    fn take(compactions: &mut Compactions, bytes: usize) -> Serialized {
        let dir = tempfile::tempdir().unwrap();
        compactions
            .start(1, 1, ConfState::default(), zeros(bytes), dir.path().into())
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let serialized = runtime.block_on(compactions.finished()).unwrap().unwrap();
        let on_disk = std::fs::read(dir.path().join(&serialized.file.name)).unwrap();
        assert_eq!(
            on_disk,
            vec![0; bytes],
            "the file holds what the snapshotter wrote"
        );
        serialized
    }

    #[test]
    fn due_after_enough_entries_and_as_many_bytes_as_the_last_snapshot() {
        let mut c = Compactions::default();
        assert!(!c.due(9, 10), "fewer entries than snapshot_every");
        assert!(c.due(10, 10), "no snapshot yet: the entry count decides");

        assert_eq!(take(&mut c, 1_000).file.size, 1_000);
        for _ in 0..10 {
            c.applied(50);
        }
        assert!(!c.due(10, 10), "500 bytes applied, the snapshot took 1,000");
        for _ in 0..10 {
            c.applied(50);
        }
        assert!(c.due(20, 10), "1,000 bytes applied: due");
        assert!(!c.due(5, 10), "but never before snapshot_every entries");

        take(&mut c, 10);
        for _ in 0..10 {
            c.applied(24);
        }
        assert!(!c.due(9, 10));
        assert!(
            c.due(10, 10),
            "a small state: the entry count decides again"
        );
    }

    #[test]
    fn a_failed_serialization_is_reported_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Compactions::default();
        let failing: Snapshotter = Box::new(|out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("the state machine gave up"))
        });
        c.start(1, 1, ConfState::default(), failing, dir.path().into())
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = runtime.block_on(c.finished()).unwrap().err().unwrap();
        assert!(error.contains("the state machine gave up"), "{error}");
        assert!(!c.running());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bytes_applied_while_serializing_count_towards_the_next_snapshot() {
        let mut c = Compactions::default();
        c.applied(5_000);
        let dir = tempfile::tempdir().unwrap();
        c.start(1, 1, ConfState::default(), zeros(100), dir.path().into())
            .unwrap();
        assert!(!c.due(1_000, 10), "one compaction at a time");
        c.applied(100);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(c.finished()).unwrap().unwrap();
        assert!(
            c.due(10, 10),
            "100 bytes since the start, the snapshot took 100"
        );
    }
}
