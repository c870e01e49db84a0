//! Tests of the raft room: a real single-node cluster on a temp dir, driving a tiny append-only
//! state machine through the full Raft path (campaign, append, fsync, commit, apply).

use std::collections::HashSet;
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::raft::Storage as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pending;
use super::storage::RedbStorage;
use super::*;

/// Hang guard only: every wait below normally ends in milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// An append-only list of u64s: command = one u64 (big-endian); output = the list's new length.
/// Any other command length cannot be decoded: a [`FatalError`].
struct AppendLog {
    values: Vec<u64>,
    published: Arc<Mutex<Published>>,
}

/// What `applied` publishes: what readers outside the driver see.
#[derive(Debug, Default, Clone)]
struct Published {
    values: Vec<u64>,
    applied_index: u64,
    batches: u64,
}

struct Node {
    handle: RaftHandle<usize>,
    task: JoinHandle<Result<(), RaftError>>,
    shutdown: CancellationToken,
    published: Arc<Mutex<Published>>,
}

impl StateMachine for AppendLog {
    type Output = usize;

    fn apply(&mut self, index: u64, command: &[u8]) -> Result<usize, FatalError> {
        let bytes: [u8; 8] = command
            .try_into()
            .map_err(|_| FatalError(format!("entry {index}: {} bytes, want 8", command.len())))?;
        self.values.push(u64::from_be_bytes(bytes));
        Ok(self.values.len())
    }

    fn applied(&mut self, applied_index: u64) {
        let mut published = self.published.lock().unwrap();
        published.values = self.values.clone();
        published.applied_index = applied_index;
        published.batches += 1;
    }

    fn snapshotter(&self) -> super::Snapshotter {
        let values = self.values.clone();
        Box::new(move |out| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            out.write_all(&bytes)
        })
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), FatalError> {
        if !data.len().is_multiple_of(8) {
            return Err(FatalError(format!(
                "snapshot {index}: {} bytes",
                data.len()
            )));
        }
        self.values = data
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        Ok(())
    }
}

fn config(dir: &Path) -> RaftConfig {
    let mut config = RaftConfig::new(1, vec![(1, "127.0.0.1:7410".to_owned())], dir);
    config.tick_interval = Duration::from_millis(10);
    config
}

fn start_node(config: RaftConfig) -> Node {
    let published = Arc::new(Mutex::new(Published::default()));
    let sm = AppendLog {
        values: Vec::new(),
        published: published.clone(),
    };
    let shutdown = CancellationToken::new();
    let (handle, task) = start(config, sm, shutdown.clone()).unwrap();
    Node {
        handle,
        task,
        shutdown,
        published,
    }
}

fn cmd(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

impl Node {
    async fn wait_leader(&self) -> RaftStatus {
        wait_for("leadership", || async {
            self.handle.status().await.unwrap().role == Role::Leader
        })
        .await;
        self.handle.status().await.unwrap()
    }

    fn published(&self) -> Published {
        self.published.lock().unwrap().clone()
    }

    async fn stop(self) -> Result<(), RaftError> {
        self.shutdown.cancel();
        guard("driver shutdown", self.task).await.unwrap()
    }
}

#[tokio::test]
async fn single_node_elects_itself_and_commits_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;

    let mut last_index = 0;
    for i in 0..20u64 {
        let (index, len) = guard("propose", node.handle.propose(cmd(i))).await.unwrap();
        assert!(index > last_index, "index {index} after {last_index}");
        assert_eq!(len, usize::try_from(i).unwrap() + 1, "applied in order");
        // Published before the proposer is answered: read-your-writes on the local snapshot.
        let published = node.published();
        assert!(published.applied_index >= index);
        assert_eq!(published.values.last(), Some(&i));
        last_index = index;
    }
    assert_eq!(node.published().values, (0..20).collect::<Vec<_>>());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_get_distinct_indexes_and_apply_once() {
    const TASKS: u64 = 64;
    const EACH: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;

    let proposers: Vec<_> = (0..TASKS)
        .map(|task| {
            let handle = node.handle.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for seq in 0..EACH {
                    out.push(handle.propose(cmd(task * 1000 + seq)).await.unwrap());
                }
                out
            })
        })
        .collect();
    let mut indexes = HashSet::new();
    let mut lengths = HashSet::new();
    for proposer in proposers {
        let results = guard("proposer", proposer).await.unwrap();
        // One task's proposals are applied in the order it made them.
        assert!(results.windows(2).all(|w| w[0].0 < w[1].0));
        for (index, len) in results {
            assert!(indexes.insert(index), "index {index} returned twice");
            assert!(lengths.insert(len), "output {len} returned twice");
        }
    }
    let total = usize::try_from(TASKS * EACH).unwrap();
    assert_eq!(indexes.len(), total);
    assert_eq!(lengths, (1..=total).collect::<HashSet<_>>());

    let mut applied = node.published().values;
    assert_eq!(applied.len(), total, "every command applied exactly once");
    applied.sort_unstable();
    let mut expected: Vec<u64> = (0..TASKS)
        .flat_map(|t| (0..EACH).map(move |s| t * 1000 + s))
        .collect();
    expected.sort_unstable();
    assert_eq!(applied, expected);
    // Group commit: far fewer applied batches than proposals.
    assert!(node.published().batches < TASKS * EACH);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_state_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    for i in 0..30 {
        node.handle.propose(cmd(i)).await.unwrap();
    }
    let before = node.handle.status().await.unwrap();
    let values = node.published().values;
    node.stop().await.unwrap();

    // On disk: the hard state and log the node reported.
    {
        let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
        let hs = storage.hard_state();
        assert_eq!(
            (hs.term, hs.vote, hs.commit),
            (before.term, 1, before.commit_index)
        );
        assert_eq!(storage.last_index(), before.last_index);
        assert_eq!(storage.first_index().unwrap(), before.first_index);
        assert_eq!(storage.log_len_on_disk().unwrap(), before.last_index);
        let commands: Vec<u64> = storage
            .entries_in_memory()
            .filter_map(|e| pending::decode(&e.data))
            .map(|env| u64::from_be_bytes(env.command.try_into().unwrap()))
            .collect();
        assert_eq!(commands, values);
    }

    let node = start_node(config(dir.path()));
    let after = node.wait_leader().await;
    assert!(after.term > before.term, "a new term after re-election");
    wait_for("replay", || async {
        node.published().applied_index >= before.applied_index
    })
    .await;
    assert_eq!(node.published().values, values, "same state after restart");

    let (index, len) = node.handle.propose(cmd(99)).await.unwrap();
    assert!(index > before.last_index);
    assert_eq!(len, values.len() + 1);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn compaction_bounds_the_log_and_restart_restores_from_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.snapshot_every = 10;
    let node = start_node(cfg.clone());
    node.wait_leader().await;
    for i in 0..300 {
        node.handle.propose(cmd(i)).await.unwrap();
    }
    let before = node.handle.status().await.unwrap();
    // Compactions kept going as the state grew (every 10 entries at first, then once the
    // commands since the last snapshot add up to its size: 24-byte entries, 8 bytes of state
    // per value, so about every S/3 entries at index S).
    assert!(before.snapshot_index > 100, "{before:?}");
    assert!(
        before.applied_index - before.snapshot_index <= before.snapshot_index,
        "the log since the snapshot outgrew the snapshot: {before:?}"
    );
    assert_eq!(before.first_index, before.snapshot_index + 1);
    let values = node.published().values;
    node.stop().await.unwrap();

    {
        let storage = RedbStorage::open(dir.path(), &[1]).unwrap();
        let on_disk = storage.log_len_on_disk().unwrap();
        assert_eq!(
            on_disk,
            storage.last_index() - storage.snapshot_index(),
            "the WAL holds the tail after the snapshot, nothing older"
        );
        assert_eq!(storage.snapshot_index(), before.snapshot_index);
        assert_eq!(storage.conf_state().voters, vec![1]);
    }

    let node = start_node(cfg);
    node.wait_leader().await;
    wait_for("replay", || async {
        node.published().applied_index >= before.applied_index
    })
    .await;
    assert_eq!(
        node.published().values,
        values,
        "snapshot + tail = same state"
    );

    // An explicit snapshot compacts everything applied.
    let index = node.handle.snapshot().await.unwrap();
    let status = node.handle.status().await.unwrap();
    assert_eq!(index, status.applied_index);
    assert_eq!(status.snapshot_index, index);
    assert_eq!(status.first_index, index + 1);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn read_index_covers_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    assert!(node.handle.read_index().await.is_ok());
    for i in 0..10 {
        let (index, _) = node.handle.propose(cmd(i)).await.unwrap();
        let read = guard("read_index", node.handle.read_index()).await.unwrap();
        assert!(read >= index, "read index {read} < acknowledged {index}");
        assert!(node.published().applied_index >= read);
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn status_reports_a_leader_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    let (index, _) = node.handle.propose(cmd(7)).await.unwrap();
    let status = node.handle.status().await.unwrap();
    assert_eq!(status.id, 1);
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.leader_id, Some(1));
    assert!(status.term >= 1);
    assert_eq!(status.commit_index, status.applied_index);
    assert_eq!(status.last_index, index);
    assert_eq!(
        status.members,
        vec![MemberStatus {
            id: 1,
            address: "127.0.0.1:7410".to_owned(),
            voter: true,
            match_index: index,
        }]
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_apply_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    node.handle.propose(cmd(1)).await.unwrap();

    let racers: Vec<_> = (0..8)
        .map(|i| {
            let handle = node.handle.clone();
            tokio::spawn(async move { handle.propose(cmd(100 + i)).await })
        })
        .collect();
    let bad = guard("bad proposal", node.handle.propose(vec![1, 2, 3])).await;
    assert_eq!(bad.unwrap_err(), ProposeError::Stopped);
    for racer in racers {
        match guard("racing proposal", racer).await.unwrap() {
            Ok(_) | Err(ProposeError::Stopped) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let ended = guard("driver", node.task).await.unwrap();
    assert!(matches!(ended, Err(RaftError::Fatal(_))), "{ended:?}");
    assert_eq!(
        node.handle.propose(cmd(2)).await.unwrap_err(),
        ProposeError::Stopped
    );
    assert_eq!(
        node.handle.status().await.unwrap_err(),
        ProposeError::Stopped
    );

    // The bad entry is in the log: the node refuses to run past it again.
    let node = start_node(config(dir.path()));
    let ended = guard("driver after restart", node.task).await.unwrap();
    assert!(matches!(ended, Err(RaftError::Fatal(_))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_outstanding_calls_and_ends_ok() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    let proposers: Vec<_> = (0..16u64)
        .map(|t| {
            let handle = node.handle.clone();
            tokio::spawn(async move {
                for seq in 0.. {
                    if let Err(e) = handle.propose(cmd(t * 1_000_000 + seq)).await {
                        return e;
                    }
                }
                unreachable!()
            })
        })
        .collect();
    wait_for("some progress", || async {
        node.published().values.len() >= 200
    })
    .await;

    node.shutdown.cancel();
    for proposer in proposers {
        assert_eq!(
            guard("proposer", proposer).await.unwrap(),
            ProposeError::Stopped
        );
    }
    assert!(guard("driver", node.task).await.unwrap().is_ok());
    assert_eq!(
        node.handle.read_index().await.unwrap_err(),
        ProposeError::Stopped
    );
    assert_eq!(
        node.handle.snapshot().await.unwrap_err(),
        ProposeError::Stopped
    );
}

#[tokio::test]
async fn config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.peers.push((2, "127.0.0.1:7420".to_owned()));
    let sm = AppendLog {
        values: Vec::new(),
        published: Arc::default(),
    };
    let err = start(cfg, sm, CancellationToken::new()).unwrap_err();
    assert!(matches!(err, RaftError::Config(_)), "{err}");

    for bad in [
        RaftConfig::new(0, vec![(0, String::new())], dir.path()),
        RaftConfig::new(1, vec![(2, String::new())], dir.path()),
        RaftConfig::new(1, vec![(1, String::new()), (1, String::new())], dir.path()),
        RaftConfig {
            election_ticks: 2,
            ..config(dir.path())
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    assert!(config(dir.path()).validate().is_ok());
}

#[test]
fn envelope_round_trips() {
    let data = pending::encode(3, 42, b"cmd");
    let env = pending::decode(&data).unwrap();
    assert_eq!(
        (env.origin, env.request_id, env.command),
        (3, 42, &b"cmd"[..])
    );
    assert!(pending::decode(&data[..15]).is_none());
    assert_eq!(pending::decode(&data[..16]).unwrap().command, b"");
}

/// Single-node write throughput with 64 concurrent proposers for 2 s:
/// `cargo test -p meridian-control-plane --lib raft::tests::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(config(dir.path()));
    node.wait_leader().await;
    let stop_at = Instant::now() + Duration::from_secs(2);
    let proposers: Vec<_> = (0..64u64)
        .map(|t| {
            let handle = node.handle.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop_at {
                    handle.propose(cmd(t)).await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for proposer in proposers {
        total += proposer.await.unwrap();
    }
    let batches = node.published().batches;
    println!(
        "{total} proposals in 2 s: {} /s, {batches} batches (~{} per fsync)",
        total / 2,
        total / batches.max(1)
    );
    node.stop().await.unwrap();
}
