//! Tests of snapshot files through the store: written and recorded, read back and served,
//! replaced, what a crash leaves behind, damage, and data dirs that hold the snapshot in redb.

use std::io::Write as _;
use std::path::Path;

use ::raft::eraftpb::{ConfState, HardState, Snapshot, SnapshotMetadata};
use ::raft::{Storage as _, StorageError};

use super::snapfile::{self, SnapFile};
use super::storage::{FILE_NAME, RedbStorage};
use super::storage_tests::entry;

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..Default::default()
    }
}

/// A store for node 1 of a one-node cluster holding entries `1..=last` of term 1, committed.
fn store_with_log(dir: &Path, last: u64) -> RedbStorage {
    let mut storage = RedbStorage::open(dir, &[1]).unwrap();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: last,
        ..Default::default()
    };
    let entries: Vec<_> = (1..=last).map(|i| entry(i, 1)).collect();
    storage.persist(&entries, Some(&hs), true).unwrap();
    storage
}

/// Writes a snapshot file for `index` (term 1) holding `data`.
fn write(dir: &Path, index: u64, data: &[u8]) -> SnapFile {
    let data = data.to_vec();
    snapfile::write(dir, 1, index, move |out| out.write_all(&data)).unwrap()
}

/// The snapshot files and temporary files in `dir`, sorted.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".snap"))
        .collect();
    names.sort();
    names
}

/// Flips one byte of the file `name` in `dir` (same size).
fn damage(dir: &Path, name: &str) {
    let path = dir.join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn snapshots_are_files_recorded_in_redb_and_replace_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = store_with_log(dir.path(), 20);

    let file = write(dir.path(), 10, b"state at 10");
    assert_eq!(file.name, "0000000000000001-000000000000000a.snap");
    assert_eq!(file.size, 11);
    storage.compact(10, 1, voters(&[1]), file).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        ["0000000000000001-000000000000000a.snap"]
    );
    assert_eq!(storage.snapshot_data().unwrap(), b"state at 10");
    let served = storage.snapshot(0, 1).unwrap();
    assert_eq!(served.get_metadata().index, 10);
    assert_eq!(&served.data[..], b"state at 10");

    // The next snapshot replaces the file; the older one is deleted once the new record is in.
    let file = write(dir.path(), 15, b"state at 15");
    storage.compact(15, 1, voters(&[1]), file).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        ["0000000000000001-000000000000000f.snap"]
    );

    // A snapshot older than the recorded one (e.g. one a leader's snapshot overtook) is not
    // recorded, and its file is deleted.
    let stale = write(dir.path(), 12, b"state at 12");
    storage.compact(12, 1, voters(&[1]), stale).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        ["0000000000000001-000000000000000f.snap"]
    );
    assert_eq!(storage.snapshot_index(), 15);
    drop(storage);

    let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!((storage.snapshot_index(), storage.last_index()), (15, 20));
    assert_eq!(storage.snapshot_data().unwrap(), b"state at 15");
    assert_eq!(
        storage.initial_state().unwrap().hard_state.commit,
        20,
        "the log after the snapshot survives"
    );
}

#[test]
fn a_snapshot_from_the_leader_is_written_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = store_with_log(dir.path(), 5);
    let old = write(dir.path(), 3, b"mine");
    storage.compact(3, 1, voters(&[1]), old).unwrap();

    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 40;
    snapshot.mut_metadata().term = 2;
    snapshot.mut_metadata().set_conf_state(voters(&[1, 2]));
    snapshot.data = b"the leader's state".to_vec().into();
    storage.apply_snapshot(&snapshot).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        ["0000000000000002-0000000000000028.snap"]
    );
    assert_eq!(storage.snapshot_file().unwrap().size, 18);
    drop(storage);

    let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(storage.snapshot_data().unwrap(), b"the leader's state");
    assert_eq!(storage.initial_state().unwrap().conf_state.voters, [1, 2]);
}

#[test]
fn open_deletes_what_a_crash_leaves_and_keeps_the_recorded_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = store_with_log(dir.path(), 20);
    let file = write(dir.path(), 10, b"recorded");
    storage.compact(10, 1, voters(&[1]), file).unwrap();
    drop(storage);

    // A crash while writing the next snapshot, and one after writing it but before recording
    // it; and a file that is none of the store's business.
    let temp = "0000000000000001-0000000000000014.snap.x7Yq2a.tmp";
    std::fs::write(dir.path().join(temp), b"half a sna").unwrap();
    write(dir.path(), 20, b"never recorded");
    std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
    assert_eq!(snapshot_files(dir.path()).len(), 3);

    let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        ["0000000000000001-000000000000000a.snap"]
    );
    assert!(dir.path().join("notes.txt").exists());
    assert_eq!(storage.snapshot_index(), 10);
    assert_eq!(storage.snapshot_data().unwrap(), b"recorded");
    assert_eq!(
        storage.last_index(),
        20,
        "the log after the snapshot is intact"
    );
}

#[test]
fn a_missing_or_damaged_snapshot_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = store_with_log(dir.path(), 20);
    let file = write(dir.path(), 10, b"state at 10");
    let name = file.name.clone();
    storage.compact(10, 1, voters(&[1]), file).unwrap();
    drop(storage);

    // Same size, different bytes: found when read (restart restore, sending to a follower).
    damage(dir.path(), &name);
    let mut storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    let error = storage.snapshot_data().unwrap_err().to_string();
    assert!(
        error.contains(&name) && error.contains("damaged"),
        "{error}"
    );
    assert_eq!(
        storage.snapshot(0, 1).unwrap_err(),
        ::raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable),
        "raft is told to wait (any other error panics raft-rs)"
    );
    assert!(
        storage.take_snapshot_wanted(),
        "a fresh snapshot is asked for"
    );
    // The next snapshot, even at the same index, replaces the damaged one.
    assert!(storage.can_compact_to(10));
    let file = write(dir.path(), 10, b"state at 10");
    storage.compact(10, 1, voters(&[1]), file).unwrap();
    assert_eq!(storage.snapshot_data().unwrap(), b"state at 10");
    assert!(!storage.can_compact_to(10));
    assert_eq!(&storage.snapshot(0, 1).unwrap().data[..], b"state at 10");
    drop(storage);

    // Truncated: refused at open, naming the file.
    std::fs::write(dir.path().join(&name), b"state").unwrap();
    let error = RedbStorage::open(dir.path(), &[1])
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&name) && error.contains("damaged"),
        "{error}"
    );

    // Gone.
    std::fs::remove_file(dir.path().join(&name)).unwrap();
    let error = RedbStorage::open(dir.path(), &[1])
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&name) && error.contains("missing"),
        "{error}"
    );
}

#[test]
fn a_data_dir_with_the_snapshot_in_redb_restores_until_the_next_snapshot_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = store_with_log(dir.path(), 20);
    let meta = SnapshotMetadata {
        index: 10,
        term: 1,
        conf_state: Some(voters(&[1])).into(),
        ..Default::default()
    };
    // Large enough that its leaving makes the redb file worth compacting.
    let legacy = vec![b'x'; 9 << 20];
    storage.write_legacy_snapshot(&meta, &legacy).unwrap();
    drop(storage);
    let redb_bytes = || std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
    assert!(redb_bytes() > 9 << 20);

    let mut storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!((storage.snapshot_index(), storage.last_index()), (10, 20));
    assert!(storage.snapshot_file().is_none());
    assert_eq!(storage.snapshot_data().unwrap(), legacy);
    assert_eq!(storage.snapshot(0, 1).unwrap().data, legacy);
    assert!(snapshot_files(dir.path()).is_empty());

    let file = write(dir.path(), 15, b"in a file");
    storage.compact(15, 1, voters(&[1]), file).unwrap();
    drop(storage);

    // The snapshot's bytes left redb in the transaction that recorded the file.
    {
        let db = redb::Database::open(dir.path().join(FILE_NAME)).unwrap();
        let read = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table: redb::TableDefinition<'_, &str, &[u8]> =
            redb::TableDefinition::new("raft_snapshot");
        let snap = read.open_table(table).unwrap();
        assert!(snap.get("data").unwrap().is_none());
        assert!(snap.get("file").unwrap().is_some());
    }
    let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(storage.snapshot_index(), 15);
    assert_eq!(storage.snapshot_data().unwrap(), b"in a file");
    assert!(
        redb_bytes() < 1 << 20,
        "the redb file was compacted on open: {} bytes",
        redb_bytes()
    );
}
