//! Meridian's shared test harness.
//!
//! # Layout
//! - [`TestNode`]: a real control-plane node started in-process on a free loopback port
//!   (port 0), with its own temporary data dir, stopped when dropped;
//! - [`ProcessCluster`]: N real `meridian server` processes with kill -9, restart, pause
//!   and partitions (every peer link runs through a cuttable TCP proxy);
//! - [`linearizability`]: a Wing–Gong checker for recorded register/deregister/read
//!   histories;
//! - [`dns`]: raw DNS queries over UDP and TCP, and `dig`;
//! - [`otlp::Collector`]: an OTLP/gRPC collector (official protos) that records what it gets;
//! - [`wait_for`]: poll a condition until it holds or the patience runs out (never a fixed
//!   sleep).
//!
//! Tests that need a real process (kill -9, restart on the same data dir, signals) live in
//! `control-plane/tests/`, where Cargo provides the `meridian` binary's path. See
//! `docs/testing.md`.

pub mod backend;
pub mod cluster;
pub mod dns;
pub mod linearizability;
pub mod mesh;
pub mod otlp;

pub use cluster::ProcessCluster;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_control_plane::auth::AccessConfig;
use meridian_control_plane::node::{Node, NodeConfig, NodeTls};
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A control-plane node running inside the test process.
pub struct TestNode {
    addr: SocketAddr,
    dns_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), String>>>,
    /// With TLS: the identity the harness calls with.
    client_tls: Option<meridian_tls::ClientTls>,
    _data_dir: tempfile::TempDir,
}

/// How [`TestNode::start_inner`] starts a node: what differs from the defaults.
#[derive(Default)]
struct Setup<'a> {
    telemetry: Option<&'a meridian_telemetry::Telemetry>,
    access: AccessConfig,
    dns_allow: Option<meridian_control_plane::dns::AllowList>,
    /// The node's TLS and the identity the harness calls it with.
    tls: Option<(NodeTls, meridian_tls::ClientTls)>,
}

// === impl TestNode ===

impl TestNode {
    /// Starts a single-node cluster on `127.0.0.1:0` and waits until it has a leader.
    pub async fn start() -> Self {
        Self::start_inner(Setup::default()).await
    }

    /// [`TestNode::start`] with TLS from `dir` (made by [`meridian_tls::init::init`] with
    /// node 1 and client `admin`): the node serves `node-1.pem`, trusts `ca.pem`, refuses
    /// clients without a certificate when `require_client_cert`; the harness's own calls go
    /// over TLS as `admin`.
    pub async fn start_with_tls(dir: &std::path::Path, require_client_cert: bool) -> Self {
        let node = NodeTls {
            files: meridian_tls::TlsFiles {
                cert: dir.join("node-1.pem"),
                key: dir.join("node-1-key.pem"),
                ca: dir.join("ca.pem"),
            },
            require_client_cert,
        };
        let client = meridian_tls::config::client(
            &dir.join("ca.pem"),
            Some((&dir.join("admin.pem"), &dir.join("admin-key.pem"))),
        )
        .expect("the admin certificate of the TLS dir");
        Self::start_inner(Setup {
            tls: Some((node, client)),
            ..Setup::default()
        })
        .await
    }

    /// [`TestNode::start`] with ACLs and rate limits as `access` says. With ACLs on, it waits
    /// for its leader — and for the bootstrap token to be installed — using that token.
    pub async fn start_with_access(access: AccessConfig) -> Self {
        Self::start_inner(Setup {
            access,
            ..Setup::default()
        })
        .await
    }

    /// [`TestNode::start`] answering DNS only from the networks of `allow` (`--dns-allow`).
    pub async fn start_with_dns_allow(allow: meridian_control_plane::dns::AllowList) -> Self {
        Self::start_inner(Setup {
            dns_allow: Some(allow),
            ..Setup::default()
        })
        .await
    }

    /// [`TestNode::start`], recording metrics with `telemetry`'s meter (kept alive by the
    /// caller while the node runs).
    pub async fn start_with(telemetry: &meridian_telemetry::Telemetry) -> Self {
        Self::start_inner(Setup {
            telemetry: Some(telemetry),
            ..Setup::default()
        })
        .await
    }

    async fn start_inner(setup: Setup<'_>) -> Self {
        let Setup {
            telemetry,
            access,
            dns_allow,
            tls,
        } = setup;
        let (node_tls, client_tls) = tls.unzip();
        let token = access.bootstrap_token.clone();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let config = NodeConfig {
            id: 1,
            data_dir: data_dir.path().to_owned(),
            listen,
            dns_listen: listen,
            dns_recursor: None,
            dns_max_answers: meridian_control_plane::dns::DEFAULT_MAX_ANSWERS,
            dns_allow,
            admin_listen: listen,
            peers: vec![(1, listen.to_string())],
            snapshot_every: NodeConfig::DEFAULT_SNAPSHOT_EVERY,
            join: false,
            access,
            tls: node_tls,
        };
        let node = match telemetry {
            Some(telemetry) => Node::start_with(config, telemetry).await,
            None => Node::start(config).await,
        }
        .expect("node starts");
        let addr = node.api_addr();
        let dns_addr = node.dns_addr();
        let admin_addr = node.admin_addr();
        let shutdown = node.shutdown_token();
        let task = tokio::spawn(async move { node.wait().await.map_err(|e| e.to_string()) });
        let this = Self {
            addr,
            dns_addr,
            admin_addr,
            shutdown,
            task: Some(task),
            client_tls,
            _data_dir: data_dir,
        };
        let cluster = ClusterClient::new(this.channel().await);
        wait_for("a leader", Duration::from_secs(10), || {
            let mut cluster = cluster.clone();
            let token = token.clone();
            async move {
                let s = cluster
                    .status(with_token(
                        meridian_proto::v1::StatusRequest {},
                        token.as_deref(),
                    ))
                    .await
                    .ok()?;
                (s.get_ref().leader_id != 0).then_some(())
            }
        })
        .await;
        this
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The admin HTTP address (`/metrics`, `/ready`, `/health`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The gRPC endpoint URL, as `--addr` takes it (`https` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A connected channel (over TLS as `admin` when the node runs TLS).
    pub async fn channel(&self) -> Channel {
        // tonic wants `http` in the URI whoever does the TLS.
        let endpoint = Channel::from_shared(format!("http://{}", self.addr)).expect("url");
        let tls = self.client_tls.as_ref().map(|tls| &tls.config);
        meridian_tls::net::connect(endpoint, tls)
            .await
            .expect("connect to test node")
    }

    /// A `Registry` client.
    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    /// Creates namespace `cafe.local` and in it each service of `services` (labels, default
    /// settings: no health check, DNS TTL 5 s); returns a `Registry` client.
    pub async fn cafe(&self, services: &[&str]) -> RegistryClient<Channel> {
        use meridian_proto::v1 as pb;
        let mut registry = self.registry().await;
        registry
            .create_namespace(pb::CreateNamespaceRequest {
                name: "cafe.local".into(),
                description: String::new(),
            })
            .await
            .expect("create namespace cafe.local");
        for service in services {
            registry
                .create_service(pb::CreateServiceRequest {
                    name: format!("{service}.cafe.local"),
                    ..Default::default()
                })
                .await
                .expect("create service");
        }
        registry
    }

    /// A `Cluster` client.
    pub async fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel().await)
    }

    /// Shuts down gracefully and reports how the node ended.
    pub async fn stop(mut self) -> Result<(), String> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A registration of instance `id` of `orders.cafe.local` at 10.0.0.1:8080, no attributes.
pub fn orders_instance(id: &str) -> meridian_proto::v1::RegisterInstanceRequest {
    meridian_proto::v1::RegisterInstanceRequest {
        service: "orders.cafe.local".into(),
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 8080,
        attributes: Default::default(),
    }
}

/// Creates namespace `cafe.local` and in it `service` (`orders.cafe.local`) with a TTL health
/// check of `ttl_ms`, calling with `token` when given (ACLs on).
pub async fn create_ttl_service(
    registry: &mut RegistryClient<Channel>,
    service: &str,
    ttl_ms: u32,
    token: Option<&str>,
) {
    use meridian_proto::v1 as pb;
    let namespace = pb::CreateNamespaceRequest {
        name: "cafe.local".into(),
        description: String::new(),
    };
    registry
        .create_namespace(with_token(namespace, token))
        .await
        .expect("create namespace cafe.local");
    let service = pb::CreateServiceRequest {
        name: service.into(),
        health_check: Some(pb::HealthCheck {
            kind: Some(pb::health_check::Kind::Ttl(pb::TtlCheck { ttl_ms })),
            ..Default::default()
        }),
        ..Default::default()
    };
    registry
        .create_service(with_token(service, token))
        .await
        .expect("create a service with a TTL check");
}

/// Sends `signal` (as `kill` names it: `-TERM`, `-STOP`, `-CONT`...) to process `pid`.
/// Err if `kill` could not run or refused (no such process, say).
pub fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill {signal} {pid}: {status}"
        )))
    }
}

/// A loopback address whose port was free a moment ago, for a process that binds it itself.
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`, 32768+ by
/// default). A port from `bind(0)` is an ephemeral one: between the check and the process's own
/// `bind`, any outgoing connection on the machine (Raft peers, clients) may take it as its
/// local port, and the process then fails with "address in use" — a cluster test that never
/// sees a leader. Ports below the range are never handed to outgoing connections; a counter
/// (started at a random offset per test process) keeps one process from picking a port twice.
pub fn free_loopback_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const HIGH: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        LOW + (std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()))
            % (HIGH - LOW),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..(HIGH - LOW) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (n - LOW) % (HIGH - LOW);
        let port = u16::try_from(port).expect("invariant: below 32,000");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port between {LOW} and {HIGH}");
}

/// Asserts a gRPC call failed with `code` and a message starting with `prefix` (the field the
/// error names, e.g. `route.rules[0].targets`).
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    prefix: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(prefix),
        "message {:?} should start with {prefix:?}",
        status.message()
    );
}

/// Polls `check` until it returns `Some`, for at most `patience`; panics naming `what` if it
/// never does. Polls every 10 ms: quick on an idle machine, harmless on a busy one.
pub async fn wait_for<T, F, Fut>(what: &str, patience: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(patience, check).await {
        Some(v) => v,
        None => panic!("gave up waiting for {what} after {patience:?}"),
    }
}

/// [`wait_for`] that returns `None` when the patience runs out, for a caller that has more to
/// say than "gave up" (e.g. the nodes' logs).
pub async fn try_wait_for<T, F, Fut>(patience: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `message` as a request carrying `authorization: Bearer TOKEN` (none without a token).
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("an ASCII token"),
        );
    }
    request
}
