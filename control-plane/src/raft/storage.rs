//! The raft state on disk: [`RedbStorage`] implements raft-rs' [`Storage`] over the
//! write-ahead log (`DATA_DIR/wal-*.log`, see [`super::wal`]) for entries and hard states,
//! snapshot files (`DATA_DIR/<term>-<index>.snap`, see [`super::snapfile`]) for the state
//! machine's bytes, and one redb file (`DATA_DIR/raft.redb`) for what is small and rare:
//! snapshot records, membership, addresses.
//!
//! redb tables:
//! - `raft_state`: `conf_state` → the `ConfState` as last applied, `addresses`, and
//!   `hard_state` → the `HardState` as of the last snapshot (the WAL's own records are newer);
//! - `raft_snapshot`: `metadata` → `SnapshotMetadata` (index, term, `ConfState`), `file` → the
//!   snapshot file's record (name, size, CRC-32). Data dirs written before snapshot files hold
//!   the state machine's bytes under `data` instead; they are read from there until the next
//!   snapshot, whose transaction removes them;
//! - `raft_log`: empty; data dirs written before the WAL kept entries here, and opening one
//!   moves them into the WAL once.
//!
//! Writes that raft needs durable (new entries, term or vote changes) are appended to the WAL
//! and fsynced before `persist` returns; the driver sends no message that depends on them and
//! acknowledges no proposal before that. A hard state whose only change is the commit index is
//! appended without a sync (raft-rs: "must_sync" is false): losing it in a crash only makes
//! raft re-learn the commit index. A snapshot's file is complete and durable before its record
//! is written to redb (durably), then the WAL restarts from it, then the previous file is
//! deleted; a crash after the record leaves a WAL whose entries up to the snapshot are skipped
//! on replay, and one before it a file that the next open deletes.
//!
//! The un-compacted log tail is also kept in memory (bounded by compaction), so `entries()` and
//! `term()` never touch the disk.
//!
//! Restart rule: raft is initialised with the *snapshot's* `ConfState`, not the last applied
//! one, because every entry after the snapshot (conf changes included) is re-applied on restart;
//! re-applying a conf change on top of its own result would fail for joint changes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};
use protobuf::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::RaftError;
use super::snapfile::{self, SnapFile};
use super::wal::{Record, Wal};

mod snapshot;

/// The file inside the data dir.
pub(crate) const FILE_NAME: &str = "raft.redb";

/// redb's page cache. Its default (1 GiB) keeps every page ever written, so a node's memory
/// grew with its log and snapshots; the log tail raft reads is cached in memory here anyway,
/// and snapshots are read only to send them. 32 MiB keeps the B-tree's upper levels hot.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_state");
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_snapshot");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// JSON map of member id → peer address, as learned from conf changes.
const ADDRESSES: &str = "addresses";
const SNAPSHOT_META: &str = "metadata";
/// The snapshot file's [`SnapFile`] record.
const SNAPSHOT_FILE: &str = "file";
/// The state machine's bytes, in data dirs from before snapshot files.
const SNAPSHOT_DATA: &str = "data";
/// A redb file larger than this once the bytes of a pre-file snapshot left it is compacted on
/// open: what stays in redb is a few kilobytes.
const REDB_COMPACT_BYTES: u64 = 8 * 1024 * 1024;

/// raft-rs' `Storage` over the WAL and redb, with the log tail cached in memory.
pub(crate) struct RedbStorage {
    db: Database,
    /// The data dir, where the snapshot files are.
    dir: PathBuf,
    wal: Wal,
    hard_state: HardState,
    /// The hard state changed (commit index only) since it was last written.
    hard_state_dirty: bool,
    /// Membership as of the last applied entry (informational; see the module doc).
    conf_state: ConfState,
    /// The last snapshot: the log is compacted up to and including `snapshot.index`. On a fresh
    /// data dir it is the bootstrap membership at index 0, with no data.
    snapshot: SnapshotMetadata,
    /// The last snapshot's file; `None` at index 0 and in a data dir from before snapshot files
    /// (whose bytes are in redb).
    snap_file: Option<SnapFile>,
    /// The last snapshot's file failed its check when read: the next compaction may rewrite
    /// it at the same index.
    snapshot_damaged: std::cell::Cell<bool>,
    /// Entries `snapshot.index + 1 ..= last_index()`, contiguous.
    entries: VecDeque<Entry>,
    /// raft asked for a snapshot newer than the stored one (see `Storage::snapshot`).
    snapshot_wanted: std::cell::Cell<bool>,
}

// === impl RedbStorage ===

impl RedbStorage {
    /// Opens (or creates) the store in `dir`. An empty store is bootstrapped with `voters`.
    pub(crate) fn open(dir: &Path, voters: &[u64]) -> Result<Self, RaftError> {
        std::fs::create_dir_all(dir).map_err(|source| RaftError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))
            .map_err(RaftError::storage("open"))?;
        // Create the tables once, so that read transactions never meet a missing table.
        let txn = db.begin_write().map_err(RaftError::storage("begin"))?;
        {
            txn.open_table(LOG)
                .map_err(RaftError::storage("open tables"))?;
            txn.open_table(STATE)
                .map_err(RaftError::storage("open tables"))?;
            txn.open_table(SNAPSHOT)
                .map_err(RaftError::storage("open tables"))?;
        }
        txn.commit().map_err(RaftError::storage("commit"))?;

        let read = db.begin_read().map_err(RaftError::storage("begin read"))?;
        let state = read
            .open_table(STATE)
            .map_err(RaftError::storage("open state"))?;
        let snap = read
            .open_table(SNAPSHOT)
            .map_err(RaftError::storage("open snapshot"))?;
        let log = read
            .open_table(LOG)
            .map_err(RaftError::storage("open log"))?;

        let mut hard_state: HardState = get_message(&state, HARD_STATE)?.unwrap_or_default();
        let applied_conf: Option<ConfState> = get_message(&state, CONF_STATE)?;
        let stored_snapshot: Option<SnapshotMetadata> = get_message(&snap, SNAPSHOT_META)?;
        let snap_file = match snap
            .get(SNAPSHOT_FILE)
            .map_err(RaftError::storage("read snapshot"))?
        {
            Some(value) => Some(SnapFile::decode(value.value())?),
            None => None,
        };
        let legacy_data = snap
            .get(SNAPSHOT_DATA)
            .map_err(RaftError::storage("read snapshot"))?
            .is_some();
        let (snapshot, bootstrap) = match stored_snapshot {
            Some(meta) => (meta, false),
            None => {
                if !log.is_empty().map_err(RaftError::storage("read log"))? {
                    return Err(RaftError::Corrupt(
                        "log entries without snapshot metadata".into(),
                    ));
                }
                let mut meta = SnapshotMetadata::default();
                meta.mut_conf_state().voters = voters.to_vec();
                (meta, true)
            }
        };

        let mut entries: VecDeque<Entry> = VecDeque::new();
        let range = log
            .range(snapshot.index + 1..)
            .map_err(RaftError::storage("read log"))?;
        for (expected, item) in (snapshot.index + 1..).zip(range) {
            let (key, value) = item.map_err(RaftError::storage("read log"))?;
            let entry = Entry::parse_from_bytes(value.value())?;
            if key.value() != expected || entry.index != expected {
                return Err(RaftError::Corrupt(format!(
                    "log entry at key {} has index {}, expected {expected}",
                    key.value(),
                    entry.index
                )));
            }
            entries.push_back(entry);
        }
        drop((state, snap, log, read));

        if let Some(file) = &snap_file {
            snapfile::check(dir, file)?;
        }
        snapfile::clean(dir, snap_file.as_ref().map(|f| f.name.as_str()))?;
        if !legacy_data && redb_bytes(dir) > REDB_COMPACT_BYTES {
            db.compact().map_err(RaftError::storage("compact"))?;
        }

        let (mut wal, records) = Wal::open(dir)?;
        let legacy_log = !entries.is_empty();
        if let Some(records) = records {
            // The redb log is only ever a leftover of a move into the WAL that a crash
            // interrupted after the WAL was complete: the WAL is the truth.
            entries.clear();
            for record in records {
                match record {
                    Record::Entries(batch) => append_replayed(&mut entries, &snapshot, batch)?,
                    // Hard states only move forward in term; within a term the latest wins.
                    Record::HardState(hs) if hs.term >= hard_state.term => hard_state = hs,
                    Record::HardState(_) => {}
                }
            }
        } else if legacy_log {
            wal.restart(entries.make_contiguous(), &hard_state)?;
        }
        if legacy_log {
            let txn = db.begin_write().map_err(RaftError::storage("begin"))?;
            txn.open_table(LOG)
                .map_err(RaftError::storage("open log"))?
                .retain(|_, _| false)
                .map_err(RaftError::storage("clear the redb log"))?;
            txn.commit().map_err(RaftError::storage("commit"))?;
        }

        let mut storage = Self {
            db,
            dir: dir.to_path_buf(),
            wal,
            hard_state: HardState::default(),
            hard_state_dirty: false,
            conf_state: applied_conf.unwrap_or_else(|| snapshot.get_conf_state().clone()),
            snapshot,
            snap_file,
            snapshot_damaged: std::cell::Cell::new(false),
            entries,
            snapshot_wanted: std::cell::Cell::new(false),
        };
        hard_state.commit = hard_state.commit.max(storage.snapshot.index);
        if hard_state.commit > storage.last_index() {
            return Err(RaftError::Corrupt(format!(
                "commit index {} is beyond the last log entry {}",
                hard_state.commit,
                storage.last_index()
            )));
        }
        storage.hard_state = hard_state;
        if bootstrap {
            storage.write_bootstrap()?;
        }
        Ok(storage)
    }

    fn write_bootstrap(&mut self) -> Result<(), RaftError> {
        let txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        snapshot::insert_meta(&txn, &self.snapshot, &self.conf_state)?;
        txn.commit().map_err(RaftError::storage("commit bootstrap"))
    }

    /// Appends `entries` (replacing any conflicting tail) and records `hard_state`, in one WAL
    /// write; with `sync` it is on disk when this returns.
    pub(crate) fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), RaftError> {
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
            self.hard_state_dirty = true;
        }
        // Nothing to append and nothing raft needs durable (raft asks for a sync whenever the
        // term or vote moves): only the commit index changed, which may be lost in a crash
        // (raft learns it again). Keep it for the next transaction instead of paying for one
        // now — on a follower that is every Ready.
        if entries.is_empty() && (!self.hard_state_dirty || !sync) {
            return Ok(());
        }
        if let Some(first) = entries.first()
            && (first.index <= self.snapshot.index || first.index > self.last_index() + 1)
        {
            return Err(RaftError::Corrupt(format!(
                "cannot append at {}: log holds {}..={}",
                first.index,
                self.first_index_(),
                self.last_index()
            )));
        }
        let hard_state = self.hard_state_dirty.then_some(&self.hard_state);
        self.wal.append(entries, hard_state, sync)?;
        if let Some(first) = entries.first() {
            let keep = usize::try_from(first.index - self.first_index_())
                .expect("invariant: the in-memory log tail fits in memory");
            self.entries.truncate(keep);
            self.entries.extend(entries.iter().cloned());
        }
        self.hard_state_dirty = false;
        Ok(())
    }

    /// Records a new commit index; written with the next transaction (it need not be durable).
    pub(crate) fn set_commit(&mut self, commit: u64) {
        if self.hard_state.commit != commit {
            self.hard_state.commit = commit;
            self.hard_state_dirty = true;
        }
    }

    /// Whether raft asked for a fresher snapshot since the last call.
    pub(crate) fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Stores the address book (fsynced: rare, and a restart must reach every member).
    pub(crate) fn set_addresses(
        &mut self,
        addresses: &std::collections::HashMap<u64, String>,
    ) -> Result<(), RaftError> {
        let sorted: std::collections::BTreeMap<&u64, &String> = addresses.iter().collect();
        let bytes = serde_json::to_vec(&sorted)
            .map_err(|e| RaftError::Corrupt(format!("address book: {e}")))?;
        let txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        {
            let mut state = txn
                .open_table(STATE)
                .map_err(RaftError::storage("open state"))?;
            state
                .insert(ADDRESSES, bytes.as_slice())
                .map_err(RaftError::storage("write addresses"))?;
        }
        txn.commit()
            .map_err(RaftError::storage("commit addresses"))?;
        Ok(())
    }

    /// The stored address book (empty if none or unreadable: static peers still apply).
    pub(crate) fn addresses(&self) -> Vec<(u64, String)> {
        let read = || -> Option<Vec<(u64, String)>> {
            let txn = self.db.begin_read().ok()?;
            let state = txn.open_table(STATE).ok()?;
            let value = state.get(ADDRESSES).ok()??;
            let map: std::collections::BTreeMap<u64, String> =
                serde_json::from_slice(value.value()).ok()?;
            Some(map.into_iter().collect())
        };
        read().unwrap_or_default()
    }

    /// Records the membership after an applied conf change (see the module doc for why the
    /// restart path does not read it back).
    pub(crate) fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), RaftError> {
        let bytes = conf_state.write_to_bytes()?;
        let mut txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        txn.set_durability(Durability::None)
            .map_err(RaftError::storage("durability"))?;
        {
            let mut state = txn
                .open_table(STATE)
                .map_err(RaftError::storage("open state"))?;
            state
                .insert(CONF_STATE, bytes.as_slice())
                .map_err(RaftError::storage("write conf state"))?;
        }
        txn.commit()
            .map_err(RaftError::storage("commit conf state"))?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Makes everything written so far durable (graceful shutdown).
    pub(crate) fn flush(&mut self) -> Result<(), RaftError> {
        if self.hard_state_dirty {
            self.wal.append(&[], Some(&self.hard_state), false)?;
            self.hard_state_dirty = false;
        }
        self.wal.sync()
    }

    fn write_hard_state(&self, txn: &redb::WriteTransaction) -> Result<(), RaftError> {
        let bytes = self.hard_state.write_to_bytes()?;
        let mut state = txn
            .open_table(STATE)
            .map_err(RaftError::storage("open state"))?;
        state
            .insert(HARD_STATE, bytes.as_slice())
            .map_err(RaftError::storage("write hard state"))?;
        Ok(())
    }

    /// The hard state as last recorded.
    #[cfg(test)]
    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Membership as of the last applied entry.
    #[cfg(test)]
    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Index of the last snapshot (0 before the first).
    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// The data dir, where snapshot files are written.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries in the in-memory log tail.
    #[cfg(test)]
    pub(crate) fn entries_in_memory(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Entries in the WAL's files (superseded ones included).
    #[cfg(test)]
    pub(crate) fn log_len_on_disk(&self) -> Result<u64, RaftError> {
        Ok(self.wal.entries_on_disk()? as u64)
    }

    /// Writes `entries` and `hard_state` the way data dirs from before the WAL held them (in
    /// redb), to test the move into the WAL.
    #[cfg(test)]
    pub(crate) fn write_legacy_log(
        &self,
        entries: &[Entry],
        hard_state: &HardState,
    ) -> Result<(), RaftError> {
        let txn = self.db.begin_write().map_err(RaftError::storage("begin"))?;
        {
            let mut log = txn
                .open_table(LOG)
                .map_err(RaftError::storage("open log"))?;
            for entry in entries {
                log.insert(entry.index, entry.write_to_bytes()?.as_slice())
                    .map_err(RaftError::storage("append log"))?;
            }
            let mut state = txn
                .open_table(STATE)
                .map_err(RaftError::storage("open state"))?;
            state
                .insert(HARD_STATE, hard_state.write_to_bytes()?.as_slice())
                .map_err(RaftError::storage("write hard state"))?;
        }
        txn.commit().map_err(RaftError::storage("commit"))
    }

    fn first_index_(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.entries.back().map_or(self.snapshot.index, |e| e.index)
    }

    /// The term of entry `index`, if it is the snapshot's or in the log.
    pub(crate) fn term_of(&self, index: u64) -> ::raft::Result<u64> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return Err(StorageError::Compacted.into());
        }
        let offset = usize::try_from(index - self.first_index_())
            .map_err(|_| ::raft::Error::Store(StorageError::Unavailable))?;
        self.entries
            .get(offset)
            .map(|e| e.term)
            .ok_or(::raft::Error::Store(StorageError::Unavailable))
    }
}

impl Storage for RedbStorage {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.snapshot.get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low <= self.snapshot.index {
            return Err(StorageError::Compacted.into());
        }
        // raft-rs documents a panic here; a library should not panic on a caller's range.
        if high > self.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable.into());
        }
        let max_size = max_size.into().unwrap_or(::raft::NO_LIMIT);
        let to_usize = |i: u64| usize::try_from(i - self.first_index_()).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for entry in self.entries.range(to_usize(low)..to_usize(high)) {
            size += u64::from(entry.compute_size());
            // Like raft-rs' limit_size: always at least one entry.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.first_index_())
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(RedbStorage::last_index(self))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> ::raft::Result<Snapshot> {
        let conf = self.snapshot.get_conf_state();
        let knows_to = conf.voters.contains(&to) || conf.learners.contains(&to);
        if self.snapshot.index < request_index || self.snapshot.index == 0 || !knows_to {
            // Too old, or from before `to` joined (it would refuse a membership without
            // itself): ask the driver for a fresh one; raft asks again on its next probe.
            self.snapshot_wanted.set(true);
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        let was_damaged = self.snapshot_damaged.get();
        let data = match self.snapshot_data() {
            Ok(data) => data,
            Err(e) => {
                // raft-rs panics on any other error here. A damaged file is replaced by the
                // next snapshot, which is asked for now (see `can_compact_to`).
                if was_damaged {
                    tracing::debug!(error = %e, to, "cannot send the snapshot");
                } else {
                    tracing::error!(error = %e, to, "cannot send the snapshot");
                }
                self.snapshot_wanted.set(true);
                return Err(StorageError::SnapshotTemporarilyUnavailable.into());
            }
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(self.snapshot.clone());
        snapshot.data = data.into();
        Ok(snapshot)
    }
}

/// The size of the redb file in `dir` (0 if unknown).
fn redb_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(FILE_NAME)).map_or(0, |m| m.len())
}

/// Reads one protobuf message stored under `key`.
fn get_message<M, T>(table: &T, key: &str) -> Result<Option<M>, RaftError>
where
    M: protobuf::Message,
    T: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).map_err(RaftError::storage("read"))? {
        Some(value) => Ok(Some(M::parse_from_bytes(value.value())?)),
        None => Ok(None),
    }
}

/// Adds a batch replayed from the WAL to the log tail: entries up to the snapshot are skipped
/// (a crash between storing a snapshot and restarting the WAL leaves them), a batch replaces
/// the tail from its first index on, and a gap is corruption.
fn append_replayed(
    entries: &mut VecDeque<Entry>,
    snapshot: &SnapshotMetadata,
    batch: Vec<Entry>,
) -> Result<(), RaftError> {
    for entry in batch {
        if entry.index <= snapshot.index {
            continue;
        }
        let first = snapshot.index + 1;
        let last = entries.back().map_or(snapshot.index, |e| e.index);
        if entry.index > last + 1 {
            return Err(RaftError::Corrupt(format!(
                "WAL entry {} after a log that ends at {last}",
                entry.index
            )));
        }
        let keep = usize::try_from(entry.index - first)
            .expect("invariant: the in-memory log tail fits in memory");
        entries.truncate(keep);
        entries.push_back(entry);
    }
    Ok(())
}
