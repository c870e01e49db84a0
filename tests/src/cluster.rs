//! [`ProcessCluster`]: N real `meridian server` processes on loopback, with faults.
//!
//! Every peer link goes through a TCP proxy owned by the harness: node `i` reaches node `j` at
//! the address of proxy `i→j`, which forwards to `j`'s real listener. Cutting a proxy drops its
//! connections and closes new ones as soon as they are accepted, which is what a network
//! partition looks like to a node — with no test hook inside the product. A proxy to a killed
//! node refuses connections (its port is closed) until the node listens again, as the node's
//! own port would. Processes can be killed with SIGKILL, restarted on the same data dir and
//! port, and paused with SIGSTOP/SIGCONT. Everything is stopped on drop, also when a test
//! panics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// A cluster of real `meridian` processes.
pub struct ProcessCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProcess>,
    links: HashMap<(u64, u64), Link>,
    extra_args: Vec<String>,
    /// With TLS: the client identity the harness calls with (`admin` from the cluster's CA).
    tls: Option<meridian_tls::ClientTls>,
    shutdown: CancellationToken,
}

struct NodeProcess {
    listen: SocketAddr,
    peers: String,
    data_dir: PathBuf,
    child: Option<Child>,
    join: bool,
    /// With TLS: the directory of `meridian tls init` whose `ca.pem`, `node-ID.pem` and
    /// `node-ID-key.pem` the node runs with.
    tls_dir: Option<PathBuf>,
}

/// The proxy of one directed peer link.
struct Link {
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
}

// === impl ProcessCluster ===

impl ProcessCluster {
    /// Starts `n` nodes (ids 1..=n) from the `meridian` binary at `bin`, extra server flags
    /// in `extra_args` (e.g. `--snapshot-every 50`), and waits for a leader.
    pub async fn start(bin: &Path, n: u64, extra_args: &[&str]) -> Self {
        Self::start_inner(bin, n, extra_args, None).await
    }

    /// [`ProcessCluster::start`] with TLS: every node runs with `--tls-ca`, `--tls-cert` and
    /// `--tls-key` from `tls_dir` (made by `meridian tls init`, or
    /// [`meridian_tls::init::init`], with certificates for nodes 1..=n and client `admin`),
    /// and the harness calls them as `admin`.
    pub async fn start_with_tls(bin: &Path, n: u64, extra_args: &[&str], tls_dir: &Path) -> Self {
        Self::start_inner(bin, n, extra_args, Some(tls_dir)).await
    }

    async fn start_inner(bin: &Path, n: u64, extra_args: &[&str], tls_dir: Option<&Path>) -> Self {
        let tls = tls_dir.map(|dir| {
            meridian_tls::config::client(
                &dir.join("ca.pem"),
                Some((&dir.join("admin.pem"), &dir.join("admin-key.pem"))),
            )
            .expect("the admin client certificate of the TLS dir")
        });
        let mut cluster = Self {
            bin: bin.to_owned(),
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            links: HashMap::new(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            tls,
            shutdown: CancellationToken::new(),
        };
        let ids: Vec<u64> = (1..=n).collect();
        let listens: BTreeMap<u64, SocketAddr> = ids.iter().map(|id| (*id, free_addr())).collect();
        for &id in &ids {
            let peers = cluster.peer_list(id, &listens).await;
            cluster.nodes.insert(
                id,
                NodeProcess {
                    listen: listens[&id],
                    peers,
                    data_dir: cluster.dir.path().join(format!("node-{id}")),
                    child: None,
                    join: false,
                    tls_dir: tls_dir.map(Path::to_owned),
                },
            );
        }
        for &id in &ids {
            cluster.spawn(id);
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    /// `--peers` for node `id`: itself directly, every other node through a proxy.
    async fn peer_list(&mut self, id: u64, listens: &BTreeMap<u64, SocketAddr>) -> String {
        let mut peers = Vec::new();
        for (&other, &addr) in listens {
            if other == id {
                peers.push(format!("{id}={addr}"));
                continue;
            }
            let proxy = self.proxy(id, other, addr).await;
            peers.push(format!("{other}={proxy}"));
        }
        peers.join(",")
    }

    async fn proxy(&mut self, from: u64, to: u64, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let link = Link {
            cut: Arc::new(AtomicBool::new(false)),
            cut_now: Arc::new(Notify::new()),
        };
        tokio::spawn(forward(
            listener,
            target,
            Arc::clone(&link.cut),
            Arc::clone(&link.cut_now),
            self.shutdown.clone(),
        ));
        self.links.insert((from, to), link);
        addr
    }

    fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .expect("log file");
        let mut command = Command::new(&self.bin);
        command
            .args(["server", "--id", &id.to_string(), "--data-dir"])
            .arg(&node.data_dir)
            .args(["--listen", &node.listen.to_string(), "--peers", &node.peers])
            .args(["--dns-listen", &free_addr().to_string()])
            .args(["--admin-listen", &free_addr().to_string()])
            .args(&self.extra_args)
            // `MERIDIAN_TEST_NODE_LOG` overrides the nodes' log filter when a test needs more
            // (e.g. `info,meridian_control_plane::peer=debug` for the peer links).
            .env(
                "RUST_LOG",
                std::env::var("MERIDIAN_TEST_NODE_LOG").unwrap_or_else(|_| {
                    "info,meridian_control_plane::raft::logger=info".to_owned()
                }),
            )
            .stdout(Stdio::null())
            .stderr(log);
        if node.join {
            command.arg("--join");
        }
        if let Some(dir) = &node.tls_dir {
            command
                .arg("--tls-ca")
                .arg(dir.join("ca.pem"))
                .arg("--tls-cert")
                .arg(dir.join(format!("node-{id}.pem")))
                .arg("--tls-key")
                .arg(dir.join(format!("node-{id}-key.pem")));
        }
        node.child = Some(command.spawn().expect("spawn meridian server"));
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The gRPC URL of node `id` (`https` with TLS).
    pub fn url(&self, id: u64) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.nodes[&id].listen)
    }

    /// The gRPC listener of node `id`.
    pub fn listen_addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].listen
    }

    /// The client TLS the harness calls with (`admin`), when the cluster runs TLS.
    pub fn client_tls(&self) -> Option<&meridian_tls::ClientTls> {
        self.tls.as_ref()
    }

    /// A lazily connecting channel to node `id` (works while it is down; calls then fail);
    /// over TLS as `admin` when the cluster runs TLS.
    pub fn channel(&self, id: u64) -> Channel {
        // tonic wants `http` in the URI whoever does the TLS.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.nodes[&id].listen))
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(15));
        match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(meridian_tls::net::Connector::new(
                Arc::clone(&tls.config),
            )),
            None => endpoint.connect_lazy(),
        }
    }

    /// The value of `--acl-bootstrap-token` among the extra flags.
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.extra_args
            .iter()
            .position(|a| a == "--acl-bootstrap-token")
            .and_then(|i| self.extra_args.get(i + 1))
            .map(String::as_str)
    }

    /// A `Registry` client for node `id`.
    pub fn registry(&self, id: u64) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel(id))
    }

    /// Node `id`'s own status, if it answers (asked with the `--acl-bootstrap-token` of the
    /// extra flags, when there is one).
    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let mut client = ClusterClient::new(self.channel(id));
        client
            .status(crate::with_token(
                pb::StatusRequest {},
                self.bootstrap_token(),
            ))
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// The leader that every running, reachable node agrees on, if any.
    pub async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let mut leaders = BTreeSet::new();
        for &id in among {
            leaders.insert(self.status(id).await?.leader_id);
        }
        match leaders.into_iter().collect::<Vec<_>>()[..] {
            [leader] if leader != 0 => Some(leader),
            _ => None,
        }
    }

    /// Waits until the running nodes agree on a leader; returns it.
    pub async fn wait_for_leader(&self, patience: Duration) -> u64 {
        let running = self.running();
        if let Some(leader) = crate::try_wait_for(patience, || self.agreed_leader(&running)).await {
            return leader;
        }
        // What each node said is the only clue left once the test's dir is gone.
        let logs: String = running
            .iter()
            .map(|id| {
                let log = self.log(*id);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- node {id} (last lines)\n{}\n", tail.join("\n"))
            })
            .collect();
        panic!("gave up waiting for an agreed leader after {patience:?}\n{logs}");
    }

    /// Ids of nodes whose process runs (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `patience` for the process to exit on its own: its exit status,
    /// or `None` if it was still running (it is then SIGKILLed).
    pub async fn terminate(
        &mut self,
        id: u64,
        patience: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.signal(id, "-TERM");
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs node `id` with the certificates of `tls_dir` from its next (re)start on.
    pub fn set_tls_dir(&mut self, id: u64, tls_dir: &Path) {
        self.nodes.get_mut(&id).expect("known node").tls_dir = Some(tls_dir.to_owned());
    }

    /// Starts a killed node again on its data dir and port.
    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes[&id].child.is_none(), "node {id} still runs");
        self.spawn(id);
    }

    /// SIGSTOP: the process stops answering but keeps its sockets.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let child = self.nodes[&id].child.as_ref().expect("node runs");
        crate::send_signal(child.id(), signal).expect("signal the node");
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.cut_one_way(x, y);
                self.cut_one_way(y, x);
            }
        }
    }

    /// Cuts the link `from` dials `to` on, and with it every message `from` sends `to`; what
    /// `to` sends `from` still arrives (each node sends on the connection it dialled).
    pub fn cut_one_way(&self, from: u64, to: u64) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.cut.store(true, Ordering::SeqCst);
            link.cut_now.notify_waiters();
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.cut.store(false, Ordering::SeqCst);
        }
    }

    /// The server log of node `id` (for failure messages).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Adds node `id` as a process that joins the running cluster with `--join`; the caller
    /// adds it to the membership first (`meridian cluster add-node`). Links to and from it
    /// are direct (not proxied).
    pub fn spawn_joining(&mut self, id: u64) -> SocketAddr {
        let tls_dir = self.nodes.values().find_map(|n| n.tls_dir.clone());
        self.spawn_joining_with_tls(id, tls_dir.as_deref())
    }

    /// [`ProcessCluster::spawn_joining`], the node running with the certificates of
    /// `tls_dir` (with TLS: another CA's, say).
    pub fn spawn_joining_with_tls(&mut self, id: u64, tls_dir: Option<&Path>) -> SocketAddr {
        let listen = free_addr();
        let mut peers: Vec<String> = self
            .nodes
            .iter()
            .map(|(other, n)| format!("{other}={}", n.listen))
            .collect();
        peers.push(format!("{id}={listen}"));
        self.nodes.insert(
            id,
            NodeProcess {
                listen,
                peers: peers.join(","),
                data_dir: self.dir.path().join(format!("node-{id}")),
                child: None,
                join: true,
                tls_dir: tls_dir.map(Path::to_owned),
            },
        );
        self.spawn(id);
        listen
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Accepts on `listener` and pipes each connection to `target`, unless the link is cut.
///
/// While `target` refuses connections (its node was killed), so does the proxy: it closes its
/// listener and opens it again on the same address once `target` accepts, so a node dialling
/// a dead peer through it sees what it would see dialling the dead peer itself.
async fn forward(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let address = listener.local_addr().expect("proxy addr");
    let mut listener = Some(listener);
    loop {
        let Some(open) = &listener else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if TcpStream::connect(target).await.is_ok() {
                // On failure (the port taken meanwhile), try again next round.
                listener = TcpListener::bind(address).await.ok();
            }
            continue;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = open.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut outbound = match TcpStream::connect(target).await {
            Ok(outbound) => outbound,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    listener = None;
                }
                continue;
            }
        };
        let (cut_now, shutdown) = (Arc::clone(&cut_now), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = cut_now.notified() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

fn free_addr() -> SocketAddr {
    crate::free_loopback_addr()
}
