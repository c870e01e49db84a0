//! Real `meridian server` processes with `--tls-ca`, `--tls-cert` and `--tls-key`: peers talk
//! mutual TLS, clients and the CLI talk TLS, a node or a forger with another CA's certificate
//! gets nowhere, and a rotated certificate is served without a restart.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::peer_client::PeerClient;
use meridian_tests::{ProcessCluster, orders_instance as registration, wait_for};
use meridian_tls::init::{InitOptions, init};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use tonic::transport::Endpoint;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const PATIENCE: Duration = Duration::from_secs(30);

/// A CA with certificates for nodes 1..=`nodes` and clients `admin` and `proxy`.
fn authority(nodes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init(
        dir.path(),
        &InitOptions {
            nodes: (1..=nodes).collect(),
            names: Vec::new(),
            clients: vec!["admin".into(), "proxy".into()],
        },
    )
    .unwrap();
    dir
}

async fn tls_cluster(n: u64, tls: &Path) -> ProcessCluster {
    let cluster = ProcessCluster::start_with_tls(Path::new(BIN), n, &[], tls).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let mut registry = cluster.registry(leader);
    meridian_tests::create_ttl_service(&mut registry, "orders.cafe.local", 30_000, None).await;
    cluster
}

/// The `meridian` CLI with `args`; its exit status, stdout and stderr.
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("MERIDIAN_TLS_CA")
        .env_remove("MERIDIAN_TLS_CERT")
        .env_remove("MERIDIAN_TLS_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The leaf certificate a TLS handshake with `addr` shows, checked against `tls`'s CA for
/// the name `127.0.0.1`.
async fn served_certificate(
    tls: &meridian_tls::ClientTls,
    addr: std::net::SocketAddr,
) -> Option<Vec<u8>> {
    let connector = meridian_tls::net::Connector::new(Arc::clone(&tls.config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(addr, name).await.ok()?;
    let (_, session) = stream.get_ref();
    Some(session.peer_certificates()?.first()?.as_ref().to_vec())
}

/// One forged Raft message, as node `from` would send it to node `to`: a vote request at a
/// term far ahead, which would depose the leader if it were stepped.
fn forged_vote(from: u64, to: u64) -> pb::RaftFrame {
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgRequestVote);
    msg.from = from;
    msg.to = to;
    msg.term = 1_000_000;
    msg.log_term = 1_000_000;
    msg.index = 1_000_000;
    pb::RaftFrame {
        data: msg.write_to_bytes().unwrap(),
        more: false,
        total: 0,
    }
}

/// Sends [`forged_vote`] from `from` to node `to` of `cluster`, connecting with `client`
/// (trusting `ca`, presenting the identity given, if any).
async fn send_forged(
    cluster: &ProcessCluster,
    to: u64,
    from: u64,
    client: meridian_tls::ClientTls,
) -> Result<(), tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{}", cluster.listen_addr(to)))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(meridian_tls::net::Connector::new(client.config))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    PeerClient::new(channel)
        .raft(futures::stream::iter(vec![forged_vote(from, to)]))
        .await
        .map(|_| ())
}

/// Peers, forwarded writes, the heartbeat relay, the proxy fan-out and the CLI all work over
/// TLS; the CLI without `--tls-ca` cannot talk to the cluster; a node certificate replaced on
/// disk is served to new connections without a restart, and the cluster keeps committing.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_runs_over_mutual_tls_and_rotates_its_certificates() {
    let ca = authority(3);
    let cluster = tls_cluster(3, ca.path()).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // A write at a follower (forwarded through Raft) and a heartbeat relayed to the leader.
    cluster
        .registry(follower)
        .register_instance(registration("i-1"))
        .await
        .unwrap();
    let beat = cluster
        .registry(follower)
        .heartbeat(pb::HeartbeatRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beat.health, pb::HealthStatus::Healthy as i32);
    // The fan-out reaches both other members.
    let proxies = DiscoveryClient::new(cluster.channel(follower))
        .list_proxies(pb::ListProxiesRequest { local_only: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        proxies.unreachable_nodes.is_empty(),
        "members unreachable over TLS: {proxies:?}"
    );

    // The CLI: with the CA (and the admin certificate) it works; without, it does not.
    let dir = ca.path();
    let url = cluster.url(follower);
    let (ca_pem, admin, admin_key) = (
        dir.join("ca.pem"),
        dir.join("admin.pem"),
        dir.join("admin-key.pem"),
    );
    let (ok, out, err) = cli(&[
        "--addr",
        &url,
        "--tls-ca",
        ca_pem.to_str().unwrap(),
        "--tls-cert",
        admin.to_str().unwrap(),
        "--tls-key",
        admin_key.to_str().unwrap(),
        "discover",
        "orders.cafe.local",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("i-1"), "{out}");
    let (ok, _, err) = cli(&["--addr", &url, "discover", "orders.cafe.local"]);
    assert!(!ok);
    assert!(err.contains("--tls-ca"), "{err}");
    let plain = format!("http://{}", cluster.listen_addr(follower));
    let (ok, _, err) = cli(&["--addr", &plain, "discover", "orders.cafe.local"]);
    assert!(!ok, "a plain-text client was answered by a TLS node");
    assert!(err.contains("if the node runs with TLS"), "{err}");
    let (ok, _, err) = cli(&[
        "--addr",
        &url,
        "--tls-cert",
        admin.to_str().unwrap(),
        "discover",
        "orders.cafe.local",
    ]);
    assert!(!ok);
    assert!(err.contains("--tls-key"), "{err}");

    // Rotation: node 1 gets a new certificate from the same CA, written over the old files.
    let tls = cluster.client_tls().unwrap().clone();
    let node1 = cluster.listen_addr(1);
    let before = served_certificate(&tls, node1).await.unwrap();
    std::fs::remove_file(dir.join("node-1.pem")).unwrap();
    std::fs::remove_file(dir.join("node-1-key.pem")).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.join(file), fresh.path().join(file)).unwrap();
    }
    init(
        fresh.path(),
        &InitOptions {
            nodes: vec![1],
            names: Vec::new(),
            clients: Vec::new(),
        },
    )
    .unwrap();
    // Key first, then certificate: a reload that sees a mismatched pair keeps the old one.
    std::fs::copy(
        fresh.path().join("node-1-key.pem"),
        dir.join("node-1-key.pem"),
    )
    .unwrap();
    std::fs::copy(fresh.path().join("node-1.pem"), dir.join("node-1.pem")).unwrap();
    let expected = std::fs::read(dir.join("node-1.pem")).unwrap();
    let expected = rustls_pki_types::CertificateDer::from_pem_slice(&expected).unwrap();
    wait_for("node 1 to serve its new certificate", PATIENCE, || async {
        let served = served_certificate(&tls, node1).await?;
        (served != before && served == expected.as_ref()).then_some(())
    })
    .await;
    // Still one cluster: a write through node 1 commits everywhere.
    wait_for(
        "a write through node 1 after rotation",
        PATIENCE,
        || async {
            let mut registry = cluster.registry(1);
            registry.register_instance(registration("i-2")).await.ok()
        },
    )
    .await;
    for id in cluster.ids() {
        wait_for(
            "the write after rotation on every node",
            PATIENCE,
            || async {
                let found = cluster
                    .registry(id)
                    .get_instance(pb::GetInstanceRequest {
                        service: "orders.cafe.local".into(),
                        id: "i-2".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                found.into_inner().instance.map(|_| ())
            },
        )
        .await;
    }
}

/// Raft traffic is accepted only from the node a certificate of the cluster's CA names: a
/// certificate from another CA fails the handshake, no certificate is UNAUTHENTICATED, a
/// client's certificate or another node's is PERMISSION_DENIED — and the leader's term does
/// not move. A node running another CA's certificates cannot join; with the cluster's, the
/// same node catches up and becomes a voter.
#[tokio::test(flavor = "multi_thread")]
async fn another_ca_cannot_join_or_send_raft_messages() {
    let ca = authority(4);
    let rogue = authority(4);
    let mut cluster = tls_cluster(3, ca.path()).await;
    let leader = cluster.wait_for_leader(PATIENCE).await;
    let term = cluster.status(leader).await.unwrap().term;
    let (ours, theirs) = (ca.path(), rogue.path());
    let identity = |dir: &Path, name: &str, trust: &Path| {
        meridian_tls::config::client(
            &trust.join("ca.pem"),
            Some((
                &dir.join(format!("{name}.pem")),
                &dir.join(format!("{name}-key.pem")),
            )),
        )
        .unwrap()
    };
    let from = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // Another CA's node certificate (trusting ours, so only the server can refuse it).
    let refused = send_forged(
        &cluster,
        leader,
        from,
        identity(theirs, &format!("node-{from}"), ours),
    )
    .await
    .unwrap_err();
    // The handshake fails: TLS 1.3 clients learn it when they first read, so the call breaks
    // as the connection closes (the code depends on when that is noticed).
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{refused:?}"
    );
    // No certificate at all.
    let anonymous = meridian_tls::config::client(&ours.join("ca.pem"), None).unwrap();
    let refused = send_forged(&cluster, leader, from, anonymous)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // Our CA, but a client's certificate.
    let refused = send_forged(&cluster, leader, from, identity(ours, "proxy", ours))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Our CA, but another node's certificate than the sender the message claims.
    let other = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != from)
        .unwrap();
    let refused = send_forged(
        &cluster,
        leader,
        from,
        identity(ours, &format!("node-{other}"), ours),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let now = cluster.status(leader).await.unwrap();
    assert_eq!(now.term, term, "a forged vote moved the term");
    assert_eq!(now.leader_id, leader);

    // Node 4 with the other CA's certificates: added as a learner, it never catches up.
    let address = cluster.spawn_joining_with_tls(4, Some(theirs));
    let mut admin = ClusterClient::new(cluster.channel(leader));
    for i in 0..5 {
        cluster
            .registry(leader)
            .register_instance(registration(&format!("i-{i}")))
            .await
            .unwrap();
    }
    let add = pb::AddNodeRequest {
        id: 4,
        address: address.to_string(),
        timeout_ms: 5_000,
    };
    let refused = admin.add_node(add.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    let status = cluster.status(leader).await.unwrap();
    let node4 = status.members.iter().find(|m| m.id == 4).unwrap();
    assert!(!node4.voter);
    assert_eq!(node4.match_index, 0, "{status:?}");

    // The same node with our CA's certificate catches up and is promoted.
    cluster.kill(4);
    cluster.set_tls_dir(4, ours);
    cluster.restart(4);
    let added = admin
        .add_node(pb::AddNodeRequest {
            timeout_ms: 30_000,
            ..add
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nnode 4:\n{}", cluster.log(4)));
    assert!(added.into_inner().index > 0);
    let status = cluster.status(leader).await.unwrap();
    assert!(status.members.iter().any(|m| m.id == 4 && m.voter));
}
