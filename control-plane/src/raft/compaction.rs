//! Log compaction with the state machine serialized off the driver thread.
//!
//! Serializing the whole registry takes time proportional to its size; on the driver thread
//! it stalled every commit, heartbeat and vote for that long, every `snapshot_every` entries. Instead the driver takes a
//! [`Snapshotter`](super::Snapshotter) (an O(1) clone of the state, thanks to its persistent
//! maps), runs it on a short-lived thread, and stores the bytes and compacts the log when they
//! come back. One compaction at a time; the log keeps growing meanwhile, which is harmless.

use ::raft::eraftpb::ConfState;
use tokio::sync::oneshot;

use super::{ProposeError, Reply, Snapshotter};

/// The compaction in flight, if any, and who waits for it.
#[derive(Default)]
pub(crate) struct Compactions {
    running: Option<Running>,
    /// `Cluster.Snapshot` callers: answered with the index the running compaction reached.
    waiters: Vec<Reply<u64>>,
}

/// A snapshot being serialized.
struct Running {
    index: u64,
    term: u64,
    conf_state: ConfState,
    data: oneshot::Receiver<Vec<u8>>,
}

/// A serialized snapshot, ready to be stored.
pub(crate) struct Serialized {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) conf_state: ConfState,
    pub(crate) data: Vec<u8>,
}

// === impl Compactions ===

impl Compactions {
    /// Whether a snapshot is being serialized.
    pub(crate) fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts serializing the state at `index` on its own thread (unless one is running).
    pub(crate) fn start(
        &mut self,
        index: u64,
        term: u64,
        conf_state: ConfState,
        snapshotter: Snapshotter,
    ) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                // The driver may have stopped meanwhile; then nobody wants the bytes.
                let _ = tx.send(snapshotter());
            })?;
        self.running = Some(Running {
            index,
            term,
            conf_state,
            data: rx,
        });
        Ok(())
    }

    /// Waits for the running serialization (forever if none runs: use in a guarded select).
    pub(crate) async fn finished(&mut self) -> Option<Serialized> {
        let running = self.running.as_mut()?;
        let data = (&mut running.data).await;
        let running = self.running.take().expect("invariant: checked above");
        data.ok().map(|data| Serialized {
            index: running.index,
            term: running.term,
            conf_state: running.conf_state,
            data,
        })
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
