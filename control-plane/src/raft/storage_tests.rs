//! Tests of the redb log store alone, for the paths a single node does not take: a follower
//! replacing a conflicting tail and installing a leader's snapshot.

use ::raft::eraftpb::{Entry, HardState, Snapshot};
use ::raft::{GetEntriesContext, Storage as _};

use super::pending;
use super::storage::RedbStorage;

/// An entry at `index` of `term` whose command is the index itself (shared with the
/// snapshot-file tests).
pub(super) fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: pending::encode(1, index, &index.to_be_bytes()).into(),
        ..Default::default()
    }
}

#[test]
fn storage_replaces_a_conflicting_tail_and_installs_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = RedbStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(
        storage.initial_state().unwrap().conf_state.voters,
        vec![1, 2, 3]
    );
    assert_eq!(
        (storage.first_index().unwrap(), storage.last_index()),
        (1, 0)
    );

    let hs = HardState {
        term: 1,
        vote: 2,
        commit: 2,
        ..Default::default()
    };
    let first: Vec<_> = (1..=5).map(|i| entry(i, 1)).collect();
    storage.persist(&first, Some(&hs), true).unwrap();
    // A new leader overwrites the uncommitted tail from index 4.
    storage.persist(&[entry(4, 2)], None, true).unwrap();
    assert_eq!(storage.last_index(), 4);
    assert_eq!(storage.term(4).unwrap(), 2);
    assert!(
        storage.persist(&[entry(9, 2)], None, true).is_err(),
        "gap refused"
    );
    let got = storage.entries(2, 5, None, GetEntriesContext::empty(false));
    assert_eq!(
        got.unwrap().iter().map(|e| e.index).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let one = storage.entries(2, 5, 0, GetEntriesContext::empty(false));
    assert_eq!(
        one.unwrap().len(),
        1,
        "at least one entry even over the size limit"
    );
    drop(storage);

    let mut storage = RedbStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(storage.last_index(), 4);
    assert_eq!(
        storage.term(4).unwrap(),
        2,
        "the replacement survives the restart"
    );
    assert_eq!(
        storage.log_len_on_disk().unwrap(),
        6,
        "appended, not rewritten: 1..=5, then 4 again"
    );
    assert_eq!(storage.hard_state(), &hs);

    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 3;
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2];
    snapshot.data = b"state".to_vec().into();
    storage.apply_snapshot(&snapshot).unwrap();
    assert_eq!(storage.first_index().unwrap(), 11);
    assert_eq!(storage.last_index(), 10);
    assert_eq!(storage.term(10).unwrap(), 3);
    assert!(storage.term(4).is_err(), "compacted");
    drop(storage);

    let storage = RedbStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    let state = storage.initial_state().unwrap();
    assert_eq!(state.conf_state.voters, vec![1, 2]);
    assert_eq!((state.hard_state.term, state.hard_state.commit), (3, 10));
    assert_eq!(storage.log_len_on_disk().unwrap(), 0);
    assert_eq!(storage.snapshot_data().unwrap(), b"state");
    let served = storage.snapshot(0, 2).unwrap();
    assert_eq!(served.get_metadata().index, 10);
    assert_eq!(&served.data[..], b"state");
}

#[test]
fn a_data_dir_from_before_the_wal_moves_its_log_into_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 3,
        ..Default::default()
    };
    let entries: Vec<_> = (1..=3).map(|i| entry(i, 2)).collect();
    {
        let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
        storage.write_legacy_log(&entries, &hs).unwrap();
    }
    // Simulate the old layout: no WAL files yet.
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("wal-")
        {
            std::fs::remove_file(path).unwrap();
        }
    }

    let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(storage.last_index(), 3);
    assert_eq!(storage.hard_state(), &hs);
    assert_eq!(storage.log_len_on_disk().unwrap(), 3, "now in the WAL");
    drop(storage);
    // Reopened: read from the WAL alone (the redb log was emptied), the same state.
    let mut storage = RedbStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(
        storage.entries_in_memory().cloned().collect::<Vec<_>>(),
        entries
    );
    assert_eq!(storage.hard_state(), &hs);
    storage.persist(&[entry(4, 2)], None, true).unwrap();
    assert_eq!(storage.last_index(), 4);
}
