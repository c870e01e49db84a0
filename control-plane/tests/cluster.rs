//! Real 3- and 5-node clusters under failure: kill -9, restart, SIGSTOP, partitions.
//!
//! The invariant checked everywhere: every acknowledged registration is present on every node
//! afterwards, and nothing appears that no client asked for.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_tests::{ProcessCluster, orders_instance as registration, wait_for};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const PATIENCE: Duration = Duration::from_secs(30);

/// What a survivor logs when it campaigns because its leader's port refuses connections.
const CAMPAIGN_ON_REFUSAL: &str = "the leader's address refuses connections: campaigning now";

async fn cluster(n: u64, args: &[&str]) -> ProcessCluster {
    let cluster = ProcessCluster::start(Path::new(BIN), n, args).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let mut r = cluster.registry(leader);
    r.create_namespace(pb::CreateNamespaceRequest {
        name: "cafe.local".into(),
        ..Default::default()
    })
    .await
    .expect("namespace");
    r.create_service(pb::CreateServiceRequest {
        name: "orders.cafe.local".into(),
        ..Default::default()
    })
    .await
    .expect("service");
    cluster
}

/// The instance ids node `id` holds, read from its local replica.
async fn instances_on(cluster: &ProcessCluster, node: u64) -> Option<Vec<pb::Instance>> {
    let listed = cluster
        .registry(node)
        .list_instances(pb::ListInstancesRequest {
            service: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .ok()?;
    Some(listed.into_inner().instances)
}

async fn ids_on(cluster: &ProcessCluster, node: u64) -> Option<BTreeSet<String>> {
    Some(
        instances_on(cluster, node)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect(),
    )
}

/// Waits until every listed node holds exactly the same instances at the same revision.
async fn converged(cluster: &ProcessCluster, nodes: &[u64]) -> (BTreeSet<String>, u64) {
    wait_for("the nodes to converge", PATIENCE, || async {
        let mut seen = BTreeSet::new();
        let mut revisions = BTreeSet::new();
        for &node in nodes {
            seen.insert(ids_on(cluster, node).await?);
            revisions.insert(cluster.status(node).await?.revision);
        }
        (seen.len() == 1 && revisions.len() == 1).then(|| {
            (
                seen.pop_first().expect("one"),
                revisions.pop_first().expect("one"),
            )
        })
    })
    .await
}

/// Writers that register new ids round-robin over `targets` until stopped, recording which
/// registrations were acknowledged and which failed (outcome unknown).
struct Load {
    acked: Arc<Mutex<BTreeSet<String>>>,
    failed: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &ProcessCluster, writers: usize) -> Self {
        let load = Load {
            acked: Arc::default(),
            failed: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        let clients: Vec<_> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.registry(id))
            .collect();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (acked, failed, stop) = (
                Arc::clone(&load.acked),
                Arc::clone(&load.failed),
                load.stop.clone(),
            );
            let mut clients = clients.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.is_cancelled() {
                    let id = format!("w{w}-{n}");
                    let target = (w + n) % clients.len();
                    let client = &mut clients[target];
                    match client.register_instance(registration(&id)).await {
                        Ok(_) => acked.lock().unwrap().insert(id),
                        Err(_) => failed.lock().unwrap().insert(id),
                    };
                    n += 1;
                }
            }));
        }
        Load { tasks, ..load }
    }

    async fn stop(self) -> (BTreeSet<String>, BTreeSet<String>) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (acked, failed)
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Every node's id but `node`'s.
fn all_but(cluster: &ProcessCluster, node: u64) -> Vec<u64> {
    cluster.ids().into_iter().filter(|id| *id != node).collect()
}

/// Asserts that none of `nodes` campaigned because its leader's port refused connections.
fn assert_none_campaigned_on_refusal(cluster: &ProcessCluster, nodes: &[u64]) {
    for id in nodes {
        let log = cluster.log(*id);
        assert!(
            !log.contains(CAMPAIGN_ON_REFUSAL),
            "node {id} campaigned on a refused port:\n{log}"
        );
    }
}

/// Waits until `nodes` agree on a leader other than `old`.
async fn new_leader_among(cluster: &ProcessCluster, nodes: &[u64], old: u64) -> u64 {
    wait_for("a new leader", PATIENCE, || async {
        cluster.agreed_leader(nodes).await.filter(|l| *l != old)
    })
    .await
}

/// Registers through `node`, retrying while the cluster answers UNAVAILABLE (an election is
/// settling: the write was refused or its outcome is unknown; registering again is safe).
async fn register_retrying(cluster: &ProcessCluster, node: u64, id: &str) {
    wait_for("a registration to be acknowledged", PATIENCE, || async {
        match cluster
            .registry(node)
            .register_instance(registration(id))
            .await
        {
            Ok(_) => Some(()),
            Err(s) if s.code() == tonic::Code::Unavailable => None,
            Err(s) => panic!("registration of {id} failed: {s:?}"),
        }
    })
    .await;
}

/// Creates namespace `cafe.local` and `service` in it with a TTL check of `ttl_ms`.
async fn ttl_service(
    r: &mut meridian_proto::v1::registry_client::RegistryClient<tonic::transport::Channel>,
    service: &str,
    ttl_ms: u32,
) {
    meridian_tests::create_ttl_service(r, service, ttl_ms, None).await;
}

#[track_caller]
fn assert_no_loss(on: &BTreeSet<String>, acked: &BTreeSet<String>, failed: &BTreeSet<String>) {
    let lost: Vec<&String> = acked.difference(on).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost: {lost:?}",
        lost.len()
    );
    let phantom: Vec<&String> = on
        .iter()
        .filter(|id| !acked.contains(*id) && !failed.contains(*id))
        .collect();
    assert!(phantom.is_empty(), "registrations nobody made: {phantom:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_forward_writes_and_serve_linearizable_reads() {
    let cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    for follower in cluster.ids().into_iter().filter(|id| *id != leader) {
        let id = format!("via-{follower}");
        let written = cluster
            .registry(follower)
            .register_instance(registration(&id))
            .await
            .unwrap()
            .into_inner();
        // A linearizable read on another follower sees it at once.
        let reader = cluster
            .ids()
            .into_iter()
            .find(|n| *n != leader && *n != follower)
            .unwrap();
        let found = cluster
            .registry(reader)
            .discover_instances(pb::DiscoverInstancesRequest {
                service: "orders.cafe.local".into(),
                consistency: pb::Consistency::Linearizable as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(found.revision >= written.revision);
        assert!(
            found.instances.iter().any(|i| i.id == id),
            "{id} missing on node {reader}"
        );
    }
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert_eq!(ids.len(), 2);
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert!(
        status.members.iter().all(|m| m.voter && m.match_index > 0),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_under_load_loses_no_acknowledged_write() {
    let mut cluster = cluster(3, &["--snapshot-every", "200"]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let load = Load::start(&cluster, 8);
    wait_for("writes before the kill", PATIENCE, || async {
        (load.acked() >= 100).then_some(())
    })
    .await;
    cluster.kill(leader);
    let before = load.acked();
    let survivors = all_but(&cluster, leader);
    new_leader_among(&cluster, &survivors, leader).await;
    wait_for("writes after the kill", PATIENCE, || async {
        (load.acked() >= before + 100).then_some(())
    })
    .await;
    let (acked, failed) = load.stop().await;

    let (on_survivors, _) = converged(&cluster, &survivors).await;
    assert_no_loss(&on_survivors, &acked, &failed);

    cluster.restart(leader);
    let (everywhere, _) = converged(&cluster, &cluster.ids()).await;
    assert_no_loss(&everywhere, &acked, &failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn minority_cannot_commit_and_healing_converges() {
    let cluster = cluster(3, &[]).await;
    let old_leader = cluster.wait_for_leader(PATIENCE).await;
    let majority: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    cluster.partition(&[old_leader], &majority);

    // The majority elects a leader among itself and keeps committing.
    let new_leader = wait_for("a leader in the majority", PATIENCE, || async {
        cluster
            .agreed_leader(&majority)
            .await
            .filter(|l| *l != old_leader)
    })
    .await;
    cluster
        .registry(new_leader)
        .register_instance(registration("majority-1"))
        .await
        .unwrap();
    cluster
        .registry(majority[0])
        .register_instance(registration("majority-2"))
        .await
        .unwrap();

    // The cut-off old leader cannot commit: the write is refused or times out, never acked.
    let minority_write = cluster
        .registry(old_leader)
        .register_instance(registration("minority"))
        .await;
    assert!(
        minority_write.is_err(),
        "a minority acknowledged a write: {minority_write:?}"
    );

    cluster.heal();
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert_eq!(
        ids,
        BTreeSet::from(["majority-1".to_owned(), "majority-2".to_owned()])
    );
}

/// A follower does not send an acknowledgement again that repeats one the leader already has
/// (`raft/acks.rs`). One that was lost must still go out: here the only follower left holds
/// the write's entry, but its link to the leader was cut as it acknowledged it. Once the link
/// is back, the write commits with no other write to carry it along.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_acknowledgement_is_sent_again() {
    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let followers = all_but(&cluster, leader);
    let (follower, dead) = (followers[0], followers[1]);
    cluster.kill(dead);
    let last_index = |id| {
        let cluster = &cluster;
        async move { cluster.status(id).await.map_or(0, |s| s.last_index) }
    };
    let before = last_index(follower).await;
    assert!(before > 0, "the follower's status has no log");

    cluster.cut_one_way(follower, leader);
    let mut registry = cluster.registry(leader);
    let write =
        tokio::spawn(async move { registry.register_instance(registration("lost-ack")).await });
    wait_for("the entry at the follower", PATIENCE, || async {
        (last_index(follower).await > before).then_some(())
    })
    .await;
    // The follower wrote the entry and answered into the cut link; the leader heard nothing.
    let status = cluster.status(leader).await.expect("leader status");
    assert_eq!(
        status.role,
        pb::Role::Leader as i32,
        "the leader stepped down (check-quorum: over an election timeout passed since the cut)"
    );
    assert!(
        status.commit_index <= before,
        "committed without the follower's acknowledgement: commit {} > {before}",
        status.commit_index
    );

    cluster.heal();
    let written = tokio::time::timeout(PATIENCE, write)
        .await
        .expect("the write hangs after the link came back")
        .expect("write task")
        .unwrap_or_else(|e| panic!("the write failed: {e}\n{}", cluster.log(follower)));
    assert!(written.into_inner().revision > 0);
    let ids = wait_for("the write applied at the follower", PATIENCE, || async {
        ids_on(&cluster, follower)
            .await
            .filter(|ids| ids.contains("lost-ack"))
    })
    .await;
    assert_eq!(ids, BTreeSet::from(["lost-ack".to_owned()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_follower_catches_up_by_snapshot() {
    let cluster = cluster(3, &["--snapshot-every", "20"]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let lagging = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != lagging)
        .collect();
    cluster.partition(&[lagging], &others);
    let leader = wait_for("a leader without the lagging node", PATIENCE, || {
        cluster.agreed_leader(&others)
    })
    .await;
    // 30 attributes of 250 bytes each (~8 KB an instance): the leader's snapshots double in
    // size (the byte rule), the one at ~160 instances is ~1.3 MB, larger than one peer frame
    // (1 MiB), so it crosses as several frames and is reassembled.
    let bulky = |id: String| {
        let mut request = registration(&id);
        request.attributes = (0..30)
            .map(|k| {
                (
                    format!("k{k}"),
                    format!("{id}-{k}-").repeat(40)[..250].to_owned(),
                )
            })
            .collect();
        request
    };
    let mut r = cluster.registry(leader);
    for i in 0..240 {
        r.register_instance(bulky(format!("i-{i:03}")))
            .await
            .unwrap();
    }
    let status = cluster.status(leader).await.unwrap();
    assert!(
        status.snapshot_index > 20,
        "the leader compacted its log: {status:?}"
    );
    cluster.heal();
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert_eq!(ids.len(), 240);
    assert!(
        cluster
            .log(lagging)
            .contains("installing a snapshot from the leader"),
        "node {lagging} should have caught up from a snapshot"
    );
    assert!(
        cluster
            .log(lagging)
            .contains("reassembled a large raft message"),
        "node {lagging} should have received its snapshot in several frames"
    );
    for instance in instances_on(&cluster, lagging).await.unwrap() {
        assert_eq!(
            instance.attributes,
            bulky(instance.id.clone()).attributes,
            "instance {} arrived whole",
            instance.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restarted_recovers_the_same_state_and_revision() {
    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let mut r = cluster.registry(leader);
    for i in 0..30 {
        r.register_instance(registration(&format!("i-{i}")))
            .await
            .unwrap();
    }
    let before = converged(&cluster, &cluster.ids()).await;
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(PATIENCE).await;
    assert_eq!(converged(&cluster, &cluster.ids()).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_survive_two_failures() {
    let mut cluster = cluster(5, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(follower);
    let alive: Vec<u64> = cluster.running();
    new_leader_among(&cluster, &alive, leader).await;
    for i in 0..10 {
        register_retrying(&cluster, alive[i % alive.len()], &format!("i-{i}")).await;
    }
    cluster.restart(leader);
    cluster.restart(follower);
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert_eq!(ids.len(), 10);
}

/// A killed leader's port refuses connections: the survivors find out on their next redial,
/// and the one with the lowest id campaigns at once instead of waiting out the election
/// timeout. Nothing acknowledged is lost, and the old leader rejoins as a follower.
#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_is_replaced_without_waiting_out_the_election_timeout() {
    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    register_retrying(&cluster, leader, "before-the-kill").await;
    cluster.kill(leader);
    let survivors = all_but(&cluster, leader);
    let new_leader = new_leader_among(&cluster, &survivors, leader).await;
    let first = survivors[0];
    wait_for(
        "the first survivor to campaign on the refusal",
        PATIENCE,
        || async {
            cluster
                .log(first)
                .contains(CAMPAIGN_ON_REFUSAL)
                .then_some(())
        },
    )
    .await;
    register_retrying(&cluster, new_leader, "after-the-kill").await;
    cluster.restart(leader);
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert!(ids.contains("before-the-kill"), "{ids:?}");
    assert!(ids.contains("after-the-kill"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_leader_is_replaced_and_rejoins() {
    let cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    cluster.pause(leader);
    let others = all_but(&cluster, leader);
    let new_leader = new_leader_among(&cluster, &others, leader).await;
    register_retrying(&cluster, new_leader, "while-paused").await;
    // A paused process keeps its port: nobody took the refused-port shortcut.
    assert_none_campaigned_on_refusal(&cluster, &others);
    cluster.resume(leader);
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert!(ids.contains("while-paused"));
    assert_eq!(
        cluster.agreed_leader(&cluster.ids()).await,
        Some(new_leader)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_add_by_snapshot_transfer_and_remove() {
    use meridian_proto::v1::cluster_client::ClusterClient;

    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    for i in 0..20 {
        cluster
            .registry(leader)
            .register_instance(registration(&format!("i-{i}")))
            .await
            .unwrap();
    }
    // Compact the leader's log so the new node can only catch up from a snapshot.
    let mut admin = ClusterClient::new(cluster.channel(leader));
    let snap = admin
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(snap.snapshot_index > 20);

    let address = cluster.spawn_joining(4);
    let added = admin
        .add_node(pb::AddNodeRequest {
            id: 4,
            address: address.to_string(),
            timeout_ms: 30_000,
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:?}\nnode 4:\n{}\nleader:\n{}",
                cluster.log(4),
                cluster.log(leader)
            )
        })
        .into_inner();
    assert!(added.index > snap.snapshot_index);
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(
        status.members.iter().filter(|m| m.voter).count(),
        4,
        "{status:?}"
    );
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert_eq!(ids.len(), 20);
    assert!(
        cluster
            .log(4)
            .contains("installing a snapshot from the leader")
    );

    // Adding it again is refused; bad input names the field.
    let again = admin
        .add_node(pb::AddNodeRequest {
            id: 4,
            address: address.to_string(),
            timeout_ms: 0,
        })
        .await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::AlreadyExists);
    let bad = admin
        .add_node(pb::AddNodeRequest {
            id: 0,
            address: "x".into(),
            timeout_ms: 0,
        })
        .await;
    assert!(bad.unwrap_err().message().starts_with("id: "));

    // Leadership moves to the new node, which then removes the old leader.
    let moved = admin
        .transfer_leader(pb::TransferLeaderRequest { id: 4 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.leader_id, 4);
    let mut admin4 = ClusterClient::new(cluster.channel(4));
    admin4
        .remove_node(pb::RemoveNodeRequest { id: leader })
        .await
        .unwrap();
    let status = cluster.status(4).await.unwrap();
    assert!(!status.members.iter().any(|m| m.id == leader), "{status:?}");
    cluster.kill(leader);
    let rest: Vec<u64> = cluster.running();
    register_retrying(&cluster, rest[0], "after-removal").await;
    let (ids, _) = converged(&cluster, &rest).await;
    assert_eq!(ids.len(), 21);
}

/// Many seeded rounds of concurrent register / deregister / linearizable reads against every
/// node, with the leader killed in the middle of each round; each recorded history must be
/// linearizable (Wing–Gong search, `meridian_tests::linearizability`).
#[tokio::test(flavor = "multi_thread")]
async fn histories_with_a_leader_kill_are_linearizable() {
    use meridian_tests::linearizability::{Event, Op, Outcome, check};
    use std::time::Instant;

    const CLIENTS: u64 = 4;
    // Enough that a round keeps at least 50 definite outcomes (the guard below) when the
    // calls of a slow election on a loaded machine come back unknown (typically ~70 of 100 at
    // 25 per client, once 49 under a full CI run); 4 × 31 stays within the checker's 127
    // events per history.
    const OPS_PER_CLIENT: u64 = 31;
    const POOL: u8 = 5;

    let mut cluster = cluster(3, &[]).await;
    for round in 0..6u64 {
        let leader = cluster.wait_for_leader(PATIENCE).await;
        let service = format!("lin{round}.cafe.local");
        cluster
            .registry(leader)
            .create_service(pb::CreateServiceRequest {
                name: service.clone(),
                ..Default::default()
            })
            .await
            .unwrap();

        let history = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let nodes: Vec<_> = cluster
                .ids()
                .into_iter()
                .map(|id| cluster.registry(id))
                .collect();
            let (history, service) = (Arc::clone(&history), service.clone());
            clients.push(tokio::spawn(async move {
                // xorshift, seeded per round and client: the same seeds replay the same ops.
                let mut rng = (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (c + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut nodes = nodes;
                for _ in 0..OPS_PER_CLIENT {
                    let roll = next();
                    let key = (roll % u64::from(POOL)) as u8;
                    let node = &mut nodes[(roll >> 8) as usize % 3];
                    let op = match (roll >> 16) % 3 {
                        0 => Op::Register(key),
                        1 => Op::Deregister(key),
                        _ => Op::Read,
                    };
                    let call = Instant::now();
                    let outcome = match op {
                        Op::Register(k) => {
                            let req = pb::RegisterInstanceRequest {
                                service: service.clone(),
                                id: format!("k{k}"),
                                address: "10.0.0.1".into(),
                                port: 80,
                                attributes: Default::default(),
                            };
                            match node.register_instance(req).await {
                                Ok(_) => Outcome::Ok,
                                Err(_) => Outcome::Unknown,
                            }
                        }
                        Op::Deregister(k) => {
                            let req = pb::DeregisterInstanceRequest {
                                service: service.clone(),
                                id: format!("k{k}"),
                            };
                            match node.deregister_instance(req).await {
                                Ok(_) => Outcome::Ok,
                                Err(s) if s.code() == tonic::Code::NotFound => Outcome::NotFound,
                                Err(_) => Outcome::Unknown,
                            }
                        }
                        Op::Read => {
                            let req = pb::ListInstancesRequest {
                                service: service.clone(),
                                consistency: pb::Consistency::Linearizable as i32,
                            };
                            match node.list_instances(req).await {
                                Ok(r) => Outcome::Read(r.into_inner().instances.iter().fold(
                                    0u8,
                                    |set, i| {
                                        set | 1
                                            << i.id.trim_start_matches('k').parse::<u8>().unwrap()
                                    },
                                )),
                                Err(_) => Outcome::Unknown,
                            }
                        }
                    };
                    history.lock().unwrap().push(Event {
                        op,
                        call,
                        ret: Instant::now(),
                        outcome,
                    });
                }
            }));
        }
        // Kill the leader once the round is under way.
        wait_for("the round to start", PATIENCE, || async {
            (history.lock().unwrap().len() >= 20).then_some(())
        })
        .await;
        cluster.kill(leader);
        for client in clients {
            client.await.unwrap();
        }
        cluster.restart(leader);

        let history = history.lock().unwrap().clone();
        let definite = history
            .iter()
            .filter(|e| e.outcome != Outcome::Unknown)
            .count();
        assert!(
            definite >= 50,
            "round {round}: only {definite} definite outcomes"
        );
        if let Err(reason) = check(&history) {
            panic!("round {round}: {reason}\n{history:#?}");
        }
    }
}

/// Leader failover does not flap TTL instances. A service with a 3 s TTL; five instances
/// heartbeat every 500 ms through a follower that stays up (which relays to the leader); a
/// watcher on the third node records every event. The leader is killed: no heartbeating
/// instance ever turns UNHEALTHY (the new leader gives every TTL a fresh grace period, and
/// heartbeats reach it through the same follower), while an instance that stopped
/// heartbeating at the kill does turn UNHEALTHY under the new leader.
#[tokio::test(flavor = "multi_thread")]
async fn leader_failover_does_not_flap_ttl_instances() {
    const SERVICE: &str = "ttl.cafe.local";
    let mut cluster = ProcessCluster::start(Path::new(BIN), 3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (relay, watched) = (others[0], others[1]);

    let mut r = cluster.registry(relay);
    ttl_service(&mut r, SERVICE, 3_000).await;
    let beating: Vec<String> = (0..5).map(|i| format!("b-{i}")).collect();
    for id in beating.iter().map(String::as_str).chain(["quiet"]) {
        r.register_instance(pb::RegisterInstanceRequest {
            service: SERVICE.into(),
            ..registration(id)
        })
        .await
        .unwrap();
    }

    // The watched node serves from its replica: let it apply every registration first.
    wait_for(
        "the watched node to hold every instance",
        PATIENCE,
        || async {
            let listed = cluster
                .registry(watched)
                .list_instances(pb::ListInstancesRequest {
                    service: SERVICE.into(),
                    ..Default::default()
                })
                .await
                .ok()?;
            (listed.into_inner().instances.len() == 6).then_some(())
        },
    )
    .await;

    // Every event the watcher sees: (instance id, health).
    let events: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let mut stream = cluster
        .registry(watched)
        .watch(pb::WatchRequest {
            service: SERVICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::watch_response::Body::Snapshot(snapshot)) = first.body else {
        panic!("a full state first: {first:?}");
    };
    assert_eq!(snapshot.instances.len(), 6);
    assert!(
        snapshot
            .instances
            .iter()
            .all(|i| i.health == pb::HealthStatus::Healthy as i32)
    );
    let recorder = tokio::spawn({
        let events = Arc::clone(&events);
        async move {
            while let Ok(Some(message)) = stream.message().await {
                let mut events = events.lock().unwrap();
                match message.body {
                    Some(pb::watch_response::Body::Events(batch)) => {
                        for e in batch.events {
                            if let Some(i) = e.instance {
                                events.push((i.id, i.health));
                            }
                        }
                    }
                    // A resync hands over whole states: record each instance's health.
                    Some(pb::watch_response::Body::Snapshot(s)) => {
                        events.extend(s.instances.into_iter().map(|i| (i.id, i.health)));
                    }
                    None => {}
                }
            }
        }
    });

    // Heartbeaters through `relay`; each records when its last heartbeat was accepted.
    let stop = CancellationToken::new();
    let quiet = CancellationToken::new();
    let accepted: Arc<Mutex<Vec<(String, tokio::time::Instant)>>> = Arc::default();
    let mut beaters = Vec::new();
    for id in beating.iter().cloned().chain(["quiet".to_owned()]) {
        let mut client = cluster.registry(relay);
        let stop = if id == "quiet" {
            quiet.clone()
        } else {
            stop.clone()
        };
        let accepted = Arc::clone(&accepted);
        beaters.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let beat = client.heartbeat(pb::HeartbeatRequest {
                    service: SERVICE.into(),
                    id: id.clone(),
                });
                if beat.await.is_ok() {
                    accepted
                        .lock()
                        .unwrap()
                        .push((id.clone(), tokio::time::Instant::now()));
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }));
    }
    wait_for("heartbeats relayed to the leader", PATIENCE, || async {
        (accepted.lock().unwrap().len() >= 12).then_some(())
    })
    .await;

    quiet.cancel();
    let killed_at = tokio::time::Instant::now();
    cluster.kill(leader);
    let new_leader = new_leader_among(&cluster, &others, leader).await;

    // The instance that went quiet expires under the new leader, after its grace period.
    let unhealthy = pb::HealthStatus::Unhealthy as i32;
    wait_for("the quiet instance to expire", PATIENCE, || async {
        let events = events.lock().unwrap();
        events
            .iter()
            .any(|(id, h)| id == "quiet" && *h == unhealthy)
            .then_some(())
    })
    .await;
    // Every heartbeating instance got heartbeats through after the kill, and two more TTLs
    // pass under the new leader.
    let since_kill = |id: &str| {
        accepted
            .lock()
            .unwrap()
            .iter()
            .any(|(i, at)| i == id && *at > killed_at)
    };
    wait_for("heartbeats after the failover", PATIENCE, || async {
        beating.iter().all(|id| since_kill(id)).then_some(())
    })
    .await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(6);
    wait_for("two TTLs under the new leader", PATIENCE, || async {
        (tokio::time::Instant::now() >= settle).then_some(())
    })
    .await;
    stop.cancel();
    for beater in beaters {
        beater.await.unwrap();
    }
    recorder.abort();

    let events = events.lock().unwrap().clone();
    let flapped: Vec<&(String, i32)> = events
        .iter()
        .filter(|(id, h)| id != "quiet" && *h != pb::HealthStatus::Healthy as i32)
        .collect();
    assert!(
        flapped.is_empty(),
        "heartbeating instances flapped across the failover to node {new_leader}: {flapped:?}\n\
         every event: {events:?}"
    );
    // And the registry agrees, on the node that watched.
    let listed = cluster
        .registry(watched)
        .list_instances(pb::ListInstancesRequest {
            service: SERVICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .instances;
    for i in listed {
        let want = if i.id == "quiet" {
            unhealthy
        } else {
            pb::HealthStatus::Healthy as i32
        };
        assert_eq!(i.health, want, "{}", i.id);
    }
}

/// A follower cut off from the leader relays heartbeats in vain and answers UNAVAILABLE once
/// its relay's patience runs out (never hangs, never loops); healed, it relays again.
#[tokio::test(flavor = "multi_thread")]
async fn partitioned_follower_refuses_heartbeats_until_healed() {
    const SERVICE: &str = "ttl.cafe.local";
    let cluster = ProcessCluster::start(Path::new(BIN), 3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let lonely = others[0];
    let mut r = cluster.registry(leader);
    ttl_service(&mut r, SERVICE, 60_000).await;
    r.register_instance(pb::RegisterInstanceRequest {
        service: SERVICE.into(),
        ..registration("i-1")
    })
    .await
    .unwrap();
    let beat = || {
        let mut client = cluster.registry(lonely);
        async move {
            client
                .heartbeat(pb::HeartbeatRequest {
                    service: SERVICE.into(),
                    id: "i-1".into(),
                })
                .await
        }
    };
    wait_for("a heartbeat relayed by the follower", PATIENCE, || async {
        beat().await.ok()
    })
    .await;

    cluster.partition(&[lonely], &[leader, others[1]]);
    let refused = wait_for("the cut-off follower to refuse", PATIENCE, || async {
        beat().await.err()
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    cluster.heal();
    wait_for("the healed follower to relay again", PATIENCE, || async {
        beat().await.ok()
    })
    .await;
}

/// A proxy streaming from a follower gets a route written at the leader; the leader's
/// `ListProxies` and `WaitApplied` see that proxy (asking the follower), and list a killed
/// member as unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_on_a_follower_follows_a_route_written_at_the_leader() {
    use meridian_proto::v1::discovery_client::DiscoveryClient;
    use meridian_proto::v1::routing_client::RoutingClient;
    use pb::discovery_request::Body;

    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (follower, other) = (followers[0], followers[1]);
    // The follower answers from its own replica: let it apply the service first, so the
    // first state says `exists` (before that it rightly says it does not).
    wait_for("the follower to see the service", PATIENCE, || async {
        cluster
            .registry(follower)
            .get_service(pb::GetServiceRequest {
                name: "orders.cafe.local".into(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;

    // The proxy: hello and a subscription on the follower.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let send = |body| {
        let tx = tx.clone();
        async move {
            tx.send(pb::DiscoveryRequest { body: Some(body) })
                .await
                .unwrap();
        }
    };
    send(Body::Hello(pb::ProxyHello {
        proxy_id: "edge-1".into(),
        ..Default::default()
    }))
    .await;
    send(Body::Subscribe(pb::Subscribe {
        services: vec!["orders.cafe.local".into()],
    }))
    .await;
    let mut stream = DiscoveryClient::new(cluster.channel(follower))
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a push in time")
            .unwrap()
            .expect("stream open")
    };
    let first = next().await;
    assert_eq!(first.node_id, follower);
    assert!(first.services[0].exists);
    assert!(first.services[0].route.is_none());

    let target = |v: &str, weight| pb::WeightedTarget {
        subset: [("version".to_string(), v.to_string())].into(),
        weight,
    };
    let put = RoutingClient::new(cluster.channel(leader))
        .put_route(pb::PutRouteRequest {
            route: Some(pb::Route {
                service: "orders.cafe.local".into(),
                rules: vec![pb::RouteRule {
                    targets: vec![target("v1", 80), target("v2", 20)],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let pushed = next().await;
    assert!(pushed.version >= put.revision);
    assert_eq!(
        pushed.services[0].route.as_ref().unwrap().rules[0].targets[1].weight,
        20
    );
    send(Body::Ack(pb::Ack {
        version: pushed.version,
    }))
    .await;

    // Asked at the leader: the wait ends applied by the follower's proxy.
    let mut at_leader = DiscoveryClient::new(cluster.channel(leader));
    let w = at_leader
        .wait_applied(pb::WaitAppliedRequest {
            service: "orders.cafe.local".into(),
            revision: put.revision,
            timeout_ms: 20_000,
            local_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.subscribed, w.applied), (1, 1), "{w:?}");
    assert!(w.unreachable_nodes.is_empty());
    let list = at_leader
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.proxies.len(), 1);
    assert_eq!(list.proxies[0].proxy_id, "edge-1");
    assert_eq!(list.proxies[0].node_id, follower);
    assert_eq!(list.proxies[0].acked_version, pushed.version);
    let local = at_leader
        .list_proxies(pb::ListProxiesRequest { local_only: true })
        .await
        .unwrap()
        .into_inner();
    assert!(local.proxies.is_empty());

    // The CLI at the leader: `--wait` returns once the follower's proxy acknowledged...
    let leader_url = cluster.url(leader);
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("MERIDIAN_ADDR", &leader_url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let proxy = tokio::spawn(async move {
        let pushed = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        tx.send(pb::DiscoveryRequest {
            body: Some(Body::Ack(pb::Ack {
                version: pushed.version,
            })),
        })
        .await
        .unwrap();
        (stream, tx)
    });
    let set = cli.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        set(&[
            "route",
            "set",
            "orders.cafe.local",
            "--split",
            "v1=50,v2=50",
            "--wait",
            "--wait-timeout",
            "20s",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{out} {err}");
    assert!(out.contains("applied by 1/1 proxies in "), "{out}");
    let (mut stream, tx) = proxy.await.unwrap();
    // ... and fails, naming the proxy, when it does not.
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "route",
            "set",
            "orders.cafe.local",
            "--split",
            "v1=1",
            "--wait",
            "--wait-timeout",
            "300ms",
        ])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(out.contains("applied by 0/1 proxies in "), "{out}");
    assert!(
        err.contains(&format!(
            "still pending after 300 ms: edge-1 on node {follower}"
        )),
        "{err}"
    );
    let _ = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap();

    // A member that is down is reported, not waited for.
    cluster.kill(other);
    let list = at_leader
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.unreachable_nodes, [other]);
    assert_eq!(list.proxies.len(), 1);
    drop(tx);
}

/// SIGTERM stops a node while its peers keep running: their Raft streams into it end with
/// the node (the drain does not wait for them), so it exits by itself, cleanly — the leader
/// first, then a follower.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_node_whose_peers_keep_running() {
    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    for id in [leader, follower] {
        let status = cluster.terminate(id, PATIENCE).await;
        let log = cluster.log(id);
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} did not exit cleanly on SIGTERM ({status:?}):\n{log}"
        );
        assert!(
            !log.contains("after shutdown began; stopping them"),
            "node {id} needed its drain deadline:\n{log}"
        );
    }
}

/// SIGTERM on the leader: before it stops, it hands leadership to the most caught-up
/// follower, so the cluster leads on without an election (nobody needs the refused-port
/// shortcut either: the heir leads before the old leader's port closes). The old leader
/// exits 0 and rejoins as a follower.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leader_hands_leadership_over_first() {
    let mut cluster = cluster(3, &[]).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    register_retrying(&cluster, leader, "before-the-stop").await;
    let status = cluster.terminate(leader, PATIENCE).await;
    let log = cluster.log(leader);
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{log}");
    let heir: u64 = log
        .lines()
        .find(|line| line.contains("leadership handed over before stopping"))
        .and_then(|line| {
            let rest = line.split("leader=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no hand-over in the log:\n{log}"));
    let survivors = all_but(&cluster, leader);
    assert!(survivors.contains(&heir), "heir {heir}");
    assert_eq!(new_leader_among(&cluster, &survivors, leader).await, heir);
    assert_none_campaigned_on_refusal(&cluster, &survivors);
    register_retrying(&cluster, heir, "after-the-stop").await;
    cluster.restart(leader);
    let (ids, _) = converged(&cluster, &cluster.ids()).await;
    assert!(ids.contains("before-the-stop"), "{ids:?}");
    assert!(ids.contains("after-the-stop"), "{ids:?}");
}

/// Tokens replicate: one created at the leader works on every node, and once revoked it stops
/// working on every node.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_working_on_every_node() {
    use meridian_proto::v1::acl_client::AclClient;
    use meridian_tests::with_token;

    const ROOT: &str = "cluster-root-secret";
    let cluster = ProcessCluster::start(
        Path::new(BIN),
        3,
        &["--acl-enabled", "--acl-bootstrap-token", ROOT],
    )
    .await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let mut acl = AclClient::new(cluster.channel(leader));
    let created = acl
        .create_token(with_token(
            pb::CreateTokenRequest {
                description: "reader".into(),
                policy: Some(pb::AclPolicy {
                    admin: false,
                    rules: vec![pb::AclRule {
                        resource: pb::AclResource::Namespace.into(),
                        name: Some(pb::acl_rule::Name::Prefix(String::new())),
                        access: pb::AclAccess::Read.into(),
                    }],
                }),
            },
            Some(ROOT),
        ))
        .await
        .expect("the bootstrap token is an admin on the leader")
        .into_inner();
    let secret = created.secret;
    let list = |id: u64| {
        let mut registry = cluster.registry(id);
        let secret = secret.clone();
        async move {
            registry
                .list_namespaces(with_token(
                    pb::ListNamespacesRequest::default(),
                    Some(&secret),
                ))
                .await
        }
    };
    for id in cluster.ids() {
        wait_for("the new token to work on every node", PATIENCE, || async {
            list(id).await.ok()
        })
        .await;
    }
    acl.revoke_token(with_token(
        pb::RevokeTokenRequest {
            accessor: created.token.expect("token").accessor,
        },
        Some(ROOT),
    ))
    .await
    .expect("revoke");
    for id in cluster.ids() {
        let refused = wait_for(
            "the revoked token to be refused on every node",
            PATIENCE,
            || async { list(id).await.err() },
        )
        .await;
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "node {id}: {refused:?}"
        );
    }
}

/// A heartbeat sent to a follower is relayed to the leader with the caller's token: the leader
/// checks it as if called directly (without the token it would answer UNAUTHENTICATED), and a
/// token that may only read is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_heartbeat_carries_the_callers_token() {
    use meridian_proto::v1::acl_client::AclClient;
    use meridian_tests::with_token;

    const ROOT: &str = "relay-root-secret";
    let cluster = ProcessCluster::start(
        Path::new(BIN),
        3,
        &["--acl-enabled", "--acl-bootstrap-token", ROOT],
    )
    .await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let mut registry = cluster.registry(leader);
    meridian_tests::create_ttl_service(&mut registry, "orders.cafe.local", 30_000, Some(ROOT))
        .await;
    registry
        .register_instance(with_token(registration("i-1"), Some(ROOT)))
        .await
        .unwrap();
    let acl = AclClient::new(cluster.channel(leader));
    let token = |access: pb::AclAccess| {
        let request = with_token(
            pb::CreateTokenRequest {
                description: format!("{access:?}"),
                policy: Some(pb::AclPolicy {
                    admin: false,
                    rules: vec![pb::AclRule {
                        resource: pb::AclResource::Namespace.into(),
                        name: Some(pb::acl_rule::Name::Exact("cafe.local".into())),
                        access: access.into(),
                    }],
                }),
            },
            Some(ROOT),
        );
        let mut acl = acl.clone();
        async move { acl.create_token(request).await.unwrap().into_inner().secret }
    };
    let writer = token(pb::AclAccess::Write).await;
    let reader = token(pb::AclAccess::Read).await;

    let beat = |secret: String| {
        let mut registry = cluster.registry(follower);
        async move {
            registry
                .heartbeat(with_token(
                    pb::HeartbeatRequest {
                        service: "orders.cafe.local".into(),
                        id: "i-1".into(),
                    },
                    Some(&secret),
                ))
                .await
        }
    };
    // The follower learns the new tokens as it applies them.
    let answered = wait_for(
        "a relayed heartbeat with the writer's token",
        PATIENCE,
        || {
            let beat = beat(writer.clone());
            async move { beat.await.ok() }
        },
    )
    .await
    .into_inner();
    assert_eq!(answered.health, pb::HealthStatus::Healthy as i32);
    let refused = beat(reader.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}
