//! How [`RedbStorage`] stores snapshots: the state machine's bytes in a snapshot file
//! ([`snapfile`]), their record (metadata and file) in redb, switched in one durable
//! transaction; and the bytes of data dirs from before snapshot files, read from redb until the
//! next snapshot replaces them.

use ::raft::StorageError;
use std::io::Write as _;

use ::raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};
use protobuf::Message as _;
use redb::ReadableDatabase as _;

use super::{
    CONF_STATE, RedbStorage, SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_FILE, SNAPSHOT_META, STATE,
};
use crate::raft::RaftError;
use crate::raft::snapfile::{self, SnapFile};

// === impl RedbStorage ===

impl RedbStorage {
    /// Whether a snapshot taken at `index` would replace the stored one: it is newer, or the
    /// stored one's file turned out damaged (see [`RedbStorage::snapshot_data`]).
    pub(crate) fn can_compact_to(&self, index: u64) -> bool {
        index > self.snapshot.index
            || (index == self.snapshot.index && index > 0 && self.snapshot_damaged.get())
    }

    /// Records the snapshot of the state machine taken at `index` (which must be applied,
    /// hence in the log) and written to `file` by [`snapfile::write`], and drops the log up to
    /// it. A file that is not recorded (an older snapshot, an error) is deleted.
    pub(crate) fn compact(
        &mut self,
        index: u64,
        term: u64,
        conf_state: ConfState,
        file: SnapFile,
    ) -> Result<(), RaftError> {
        if !self.can_compact_to(index) || index > self.last_index() {
            if self.snap_file.as_ref().map(|f| &f.name) != Some(&file.name) {
                snapfile::remove(&self.dir, &file.name)?;
            }
            if index > self.last_index() {
                return Err(RaftError::Corrupt(format!(
                    "cannot compact to {index}: the log ends at {}",
                    self.last_index()
                )));
            }
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.write_snapshot(&meta, file)?;
        let drop_count = usize::try_from(index - self.snapshot.index)
            .expect("invariant: the in-memory log tail fits in memory");
        self.entries.drain(..drop_count);
        self.snapshot = meta;
        self.wal
            .restart(self.entries.make_contiguous(), &self.hard_state)
    }

    /// Installs a snapshot received from the leader: its bytes go to a snapshot file, and it
    /// replaces the whole log.
    pub(crate) fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot.index {
            return Err(::raft::Error::Store(StorageError::SnapshotOutOfDate).into());
        }
        let file = snapfile::write(&self.dir, meta.term, meta.index, |out| {
            out.write_all(&snapshot.data)
        })?;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.write_snapshot(meta, file)?;
        self.entries.clear();
        self.snapshot = meta.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.wal.restart(&[], &self.hard_state)
    }

    /// One durable redb transaction: snapshot metadata and file record, hard state, applied
    /// conf state; then the previous snapshot's file is deleted. The caller then restarts the
    /// WAL from it. `file` is deleted if the transaction fails.
    fn write_snapshot(&mut self, meta: &SnapshotMetadata, file: SnapFile) -> Result<(), RaftError> {
        let same_name = self.snap_file.as_ref().is_some_and(|f| f.name == file.name);
        if let Err(e) = self.record_snapshot(meta, &file) {
            // (A damaged file rewritten at the same index keeps its name: still the record's.)
            if !same_name {
                snapfile::remove(&self.dir, &file.name)?;
            }
            return Err(e);
        }
        self.hard_state_dirty = false;
        self.snapshot_damaged.set(false);
        let previous = self.snap_file.replace(file);
        if let Some(previous) = previous
            && !same_name
            && let Err(e) = snapfile::remove(&self.dir, &previous.name)
        {
            // The new snapshot is in place; the next open deletes what no record names.
            tracing::warn!(error = %e, "could not delete the previous snapshot file");
        }
        Ok(())
    }

    fn record_snapshot(&self, meta: &SnapshotMetadata, file: &SnapFile) -> Result<(), RaftError> {
        let file_bytes = file.encode()?;
        let txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        insert_meta(&txn, meta, meta.get_conf_state())?;
        {
            let mut snap = txn
                .open_table(SNAPSHOT)
                .map_err(RaftError::storage("open snapshot"))?;
            snap.insert(SNAPSHOT_FILE, file_bytes.as_slice())
                .map_err(RaftError::storage("write snapshot"))?;
            snap.remove(SNAPSHOT_DATA)
                .map_err(RaftError::storage("write snapshot"))?;
        }
        self.write_hard_state(&txn)?;
        txn.commit().map_err(RaftError::storage("commit snapshot"))
    }

    /// The state machine bytes of the last snapshot (empty before the first one), checked
    /// against the file's record: a damaged file is an error that names it.
    pub(crate) fn snapshot_data(&self) -> Result<Vec<u8>, RaftError> {
        if let Some(file) = &self.snap_file {
            let data = snapfile::read(&self.dir, file);
            self.snapshot_damaged.set(data.is_err());
            return data;
        }
        let read = self
            .db
            .begin_read()
            .map_err(RaftError::storage("begin read"))?;
        let snap = read
            .open_table(SNAPSHOT)
            .map_err(RaftError::storage("open snapshot"))?;
        let data = snap
            .get(SNAPSHOT_DATA)
            .map_err(RaftError::storage("read snapshot"))?
            .map(|value| value.value().to_vec())
            .unwrap_or_default();
        Ok(data)
    }

    /// The last snapshot's file record (`None` before the first and in a pre-file data dir).
    #[cfg(test)]
    pub(crate) fn snapshot_file(&self) -> Option<&SnapFile> {
        self.snap_file.as_ref()
    }

    /// Stores a snapshot the way data dirs from before snapshot files held it (its bytes in
    /// redb, in the transaction of its metadata), to test reading and replacing one.
    #[cfg(test)]
    pub(crate) fn write_legacy_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<(), RaftError> {
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        let txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        insert_meta(&txn, meta, meta.get_conf_state())?;
        txn.open_table(SNAPSHOT)
            .map_err(RaftError::storage("open snapshot"))?
            .insert(SNAPSHOT_DATA, data)
            .map_err(RaftError::storage("write snapshot"))?;
        self.write_hard_state(&txn)?;
        txn.commit().map_err(RaftError::storage("commit"))?;
        let drop_count = usize::try_from(meta.index - self.snapshot.index)
            .expect("invariant: the in-memory log tail fits in memory");
        self.entries.drain(..drop_count.min(self.entries.len()));
        self.snapshot = meta.clone();
        self.wal
            .restart(self.entries.make_contiguous(), &self.hard_state)
    }
}

/// Writes what every snapshot record holds, in `txn`: the snapshot's metadata, and `conf` as
/// the applied conf state (the bootstrap record, a compaction, a snapshot from the leader).
pub(super) fn insert_meta(
    txn: &redb::WriteTransaction,
    meta: &SnapshotMetadata,
    conf: &ConfState,
) -> Result<(), RaftError> {
    let meta_bytes = meta.write_to_bytes()?;
    let conf_bytes = conf.write_to_bytes()?;
    txn.open_table(SNAPSHOT)
        .map_err(RaftError::storage("open snapshot"))?
        .insert(SNAPSHOT_META, meta_bytes.as_slice())
        .map_err(RaftError::storage("write snapshot"))?;
    txn.open_table(STATE)
        .map_err(RaftError::storage("open state"))?
        .insert(CONF_STATE, conf_bytes.as_slice())
        .map_err(RaftError::storage("write conf state"))?;
    Ok(())
}
