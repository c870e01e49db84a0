//! The composition root: the one place that names every room and wires them together.
//!
//! [`Node::start`] opens storage, starts the Raft driver over the registry state machine,
//! binds the gRPC, DNS and admin listeners and serves them; [`Node::start_with`] does the
//! same with the process's [`Telemetry`] (its meter feeds OTLP and `/metrics`). Every task is tracked in one `JoinSet` and
//! stopped through one `CancellationToken`; [`Node::wait`] returns when the token is
//! cancelled (graceful shutdown: the API drains, the driver stops after its last fsync) or
//! when any task fails (the others are then stopped too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meridian_telemetry::{Telemetry, TelemetryConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::peer::{Dialer, GrpcTransport, PeerService};
use crate::raft::RaftConfig;
use crate::replica::Replica;

/// How long a stopping node lets its tasks finish what they are doing (in-flight calls, streams
/// told to end, the last Raft writes) before it stops them: a peer or a client that keeps a
/// stream open must not keep a node from exiting.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on handing leadership over before a graceful stop: two election timeouts. A
/// transfer normally takes a round trip; one that cannot finish (the other voters
/// unreachable) must not keep the node from stopping.
pub const HAND_OFF_PATIENCE: Duration = Duration::from_secs(2);

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id (≥ 1).
    pub id: u64,
    /// Where the Raft log, hard state and snapshots live.
    pub data_dir: PathBuf,
    /// gRPC listener (clients and, later, peers). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// DNS listener, UDP and TCP on the same port. Port 0 picks a free port.
    pub dns_listen: SocketAddr,
    /// Forward DNS names outside every namespace to this resolver; `None` refuses them.
    pub dns_recursor: Option<SocketAddr>,
    /// At most this many records per DNS answer (see [`crate::dns::DEFAULT_MAX_ANSWERS`]).
    pub dns_max_answers: usize,
    /// Answer DNS queries only from these networks (`--dns-allow`), REFUSED to others;
    /// `None`: everyone.
    pub dns_allow: Option<crate::dns::AllowList>,
    /// Admin HTTP listener (`/metrics`, `/ready`, `/health`). Port 0 picks a free port.
    pub admin_listen: SocketAddr,
    /// The initial cluster: `(id, address)` of every voter, this node included. With `join`,
    /// the current members (and this node), to reach them.
    pub peers: Vec<(u64, String)>,
    /// Join an existing cluster (after `meridian cluster add-node`) instead of bootstrapping.
    pub join: bool,
    /// Compact the Raft log after this many applied entries.
    pub snapshot_every: u64,
    /// ACLs and rate limits.
    pub access: crate::auth::AccessConfig,
    /// TLS on the gRPC listener and to the other members; `None`: plain text.
    pub tls: Option<NodeTls>,
}

/// A node's TLS (`--tls-cert`, `--tls-key`, `--tls-ca`, `--require-client-cert`).
///
/// The gRPC listener serves `files.cert`; Raft messages are accepted only from connections
/// presenting a certificate from `files.ca` that names their sender (`node-N.peers.meridian`);
/// the node dials its peers with the same certificate. Clients and proxies need a
/// certificate from the CA only with `require_client_cert`. The certificate and key are read
/// again when their files change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTls {
    /// The node's certificate, key and the cluster's CA.
    pub files: meridian_tls::TlsFiles,
    /// Refuse clients (and proxies) without a certificate from the CA.
    pub require_client_cert: bool,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Raft storage or the driver failed.
    #[error(transparent)]
    Raft(#[from] crate::raft::RaftError),
    /// The API server failed.
    #[error(transparent)]
    Serve(#[from] crate::api::ServeError),
    /// The DNS server failed.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// A task panicked.
    #[error("task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Telemetry could not be set up.
    #[error(transparent)]
    Telemetry(#[from] meridian_telemetry::TelemetryError),
    /// A TLS file could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] meridian_tls::TlsError),
}

/// A running node.
pub struct Node {
    api_addr: SocketAddr,
    dns_addr: SocketAddr,
    admin_addr: SocketAddr,
    replica: Replica,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), NodeError>>,
    /// Each task's name, for the log when one outlives the drain.
    task_names: HashMap<tokio::task::Id, &'static str>,
    /// Read by the metrics' callbacks while the node runs.
    _observers: crate::telemetry::Observers,
    /// The telemetry [`Node::start`] made for itself (metrics on `/metrics` only).
    own_telemetry: Option<Telemetry>,
}

// === impl NodeConfig ===

impl NodeConfig {
    /// Default snapshot interval: enough log to catch up a briefly absent follower without a
    /// snapshot, small enough to keep restart replay well under a second.
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

    /// The `service.instance.id` of this node's telemetry: `node-<id>@<listen address>`.
    pub fn instance_id(&self) -> String {
        format!("node-{}@{}", self.id, self.listen)
    }

    fn validate(&self) -> Result<(), NodeError> {
        if self.id == 0 {
            return Err(NodeError::Config("--id must be at least 1".into()));
        }
        if !(1..=crate::dns::MAX_ANSWERS_LIMIT).contains(&self.dns_max_answers) {
            return Err(NodeError::Config(format!(
                "--dns-max-answers must be 1-{}",
                crate::dns::MAX_ANSWERS_LIMIT
            )));
        }
        if !self.peers.iter().any(|(id, _)| *id == self.id) {
            return Err(NodeError::Config(format!(
                "--peers must include this node's own id {}",
                self.id
            )));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err(NodeError::Config(
                "--peers must name each node once, with ids of at least 1".into(),
            ));
        }
        Ok(())
    }
}

// === impl Node ===

impl Node {
    /// Starts every room; returns once the API listener is bound (the first election may
    /// still be under way: writes wait for it). Its metrics are served on the admin port
    /// only (nothing is exported).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let telemetry = Telemetry::new(TelemetryConfig::from_vars(
            |_| None,
            crate::cli::SERVICE_NAME,
            env!("CARGO_PKG_VERSION"),
            &config.instance_id(),
        ))?;
        let mut node = Self::start_with(config, &telemetry).await?;
        node.own_telemetry = Some(telemetry);
        Ok(node)
    }

    /// [`Node::start`], recording metrics with `telemetry`'s meter (exported if it exports,
    /// and rendered on the admin port's `/metrics`). The caller keeps `telemetry` alive
    /// while the node runs, and shuts it down after.
    pub async fn start_with(config: NodeConfig, telemetry: &Telemetry) -> Result<Self, NodeError> {
        config.validate()?;
        let meter = telemetry.meter();
        let metrics = crate::telemetry::NodeMetrics::new(&meter);
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Config(format!(
                "cannot create --data-dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut task_names = HashMap::new();

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let api_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;

        let (dns_udp, dns_tcp) = crate::dns::bind(config.dns_listen).await?;
        let dns_addr = dns_udp.local_addr().map_err(|source| NodeError::Bind {
            addr: config.dns_listen,
            source,
        })?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| NodeError::Bind {
                addr: config.admin_listen,
                source,
            })?;

        let mut raft_config =
            RaftConfig::new(config.id, config.peers.clone(), config.data_dir.clone());
        raft_config.snapshot_every = config.snapshot_every;
        raft_config.join = config.join;
        let security = match &config.tls {
            None => crate::api::Security::default(),
            Some(tls) => {
                let client_auth = if tls.require_client_cert {
                    meridian_tls::ClientAuth::Required
                } else {
                    meridian_tls::ClientAuth::Optional
                };
                let server = meridian_tls::config::server(&tls.files, client_auth)?;
                // The node dials its peers with the certificate it serves: one watcher
                // rotates both.
                let client = meridian_tls::config::client_presenting(
                    &tls.files.ca,
                    Some(std::sync::Arc::clone(&server.key)),
                )?;
                let watch = std::sync::Arc::clone(&server.key).watch(
                    meridian_tls::reload::DEFAULT_RELOAD_EVERY,
                    shutdown.child_token(),
                );
                let task = tasks.spawn(async move {
                    watch.await;
                    Ok(())
                });
                task_names.insert(task.id(), "tls-reload");
                crate::api::Security {
                    listener_tls: Some(server.config),
                    dialer: Dialer::tls(client.config),
                }
            }
        };
        let transport = GrpcTransport::new(
            config.id,
            &config.peers,
            security.dialer.clone(),
            shutdown.child_token(),
        );
        let peer_tasks = transport.tasks();
        let (replica, driver) = Replica::start(raft_config, transport, shutdown.child_token())?;
        let replica = replica.with_proposal_histogram(metrics.proposal_duration.clone());
        let task = tasks.spawn(async move {
            let result = driver.await;
            // The driver owned the transport; its peer tasks end with the same token.
            peer_tasks.close();
            peer_tasks.wait().await;
            Ok(result??)
        });
        task_names.insert(task.id(), "raft");

        // Watch hub (every node, from its local replica) and health checker (acts while leader).
        let (hub, watch) = crate::watch::Hub::new(replica.subscribe(), Default::default());
        let hub = hub.run(shutdown.child_token());
        let task = tasks.spawn(
            async move {
                hub.await;
                Ok(())
            }
            .instrument(tracing::info_span!("watch", node = config.id)),
        );
        task_names.insert(task.id(), "watch");
        let (checker, health) =
            crate::health::HealthChecker::new(replica.clone(), Default::default());
        let checker = checker.run(shutdown.child_token());
        let task = tasks.spawn(
            async move {
                checker.await;
                Ok(())
            }
            .instrument(tracing::info_span!("health", node = config.id)),
        );
        task_names.insert(task.id(), "health");
        // Discovery hub (every node: proxies stream from any node's local replica).
        let (discovery_hub, discovery) =
            crate::discovery::DiscoveryHub::new(replica.subscribe(), config.id);
        let discovery_hub = discovery_hub.run(shutdown.child_token());
        let task = tasks.spawn(
            async move {
                discovery_hub.await;
                Ok(())
            }
            .instrument(tracing::info_span!("discovery", node = config.id)),
        );
        task_names.insert(task.id(), "discovery");
        let dns_metrics = crate::dns::DnsMetrics::default();
        let observers = crate::telemetry::Observers::register(
            &meter,
            &replica,
            &watch,
            &discovery,
            &dns_metrics,
        );
        let admin = crate::telemetry::Admin::new(&replica, telemetry.prometheus());
        let admin = admin.serve(admin_listener, shutdown.child_token());
        let task = tasks.spawn(
            async move {
                admin.await;
                Ok(())
            }
            .instrument(tracing::info_span!("admin", node = config.id)),
        );
        task_names.insert(task.id(), "admin");
        let rooms = crate::api::Rooms {
            watch,
            health,
            discovery,
        };

        let mut peer =
            PeerService::new(config.id, replica.raft().clone()).ending_on(shutdown.child_token());
        if security.listener_tls.is_some() {
            peer = peer.verifying_senders();
        }
        if let Some(secret) = config.access.bootstrap_token.clone() {
            let replica = replica.clone();
            let shutdown = shutdown.child_token();
            let task = tasks.spawn(async move {
                crate::auth::bootstrap::run(replica, secret, shutdown.clone()).await;
                // Done once the token is in: a task ending would stop the node.
                shutdown.cancelled().await;
                Ok(())
            });
            task_names.insert(task.id(), "acl-bootstrap");
        }
        let access = crate::api::Access::new(&config.access);
        let api = crate::api::serve(
            listener,
            security,
            replica.clone(),
            rooms,
            peer,
            metrics,
            access,
            shutdown.child_token(),
        );
        let task = tasks.spawn(
            async move { Ok(api.await?) }.instrument(tracing::info_span!("api", node = config.id)),
        );
        task_names.insert(task.id(), "api");

        let dns_config = crate::dns::DnsConfig {
            max_answers: config.dns_max_answers,
            recursor: config.dns_recursor,
            cache: true,
            metrics: dns_metrics,
            allow: config.dns_allow.clone(),
        };
        let dns = crate::dns::serve(
            dns_udp,
            dns_tcp,
            replica.clone(),
            dns_config,
            shutdown.child_token(),
        );
        let task = tasks.spawn(
            async move { Ok(dns.await?) }.instrument(tracing::info_span!("dns", node = config.id)),
        );
        task_names.insert(task.id(), "dns");

        tracing::info!(
            node = config.id,
            api = %api_addr,
            dns = %dns_addr,
            admin = %admin_addr,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(Self {
            api_addr,
            dns_addr,
            admin_addr,
            replica,
            shutdown,
            tasks,
            task_names,
            _observers: observers,
            own_telemetry: None,
        })
    }

    /// The bound gRPC address (useful when started on port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The bound DNS address, UDP and TCP (useful when started on port 0).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The bound admin HTTP address (useful when started on port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The local replica, for in-process callers.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Cancelling this token shuts the node down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// What a stop signal should run: hand leadership over if this node leads a cluster
    /// (bounded by [`HAND_OFF_PATIENCE`]; see [`RaftHandle::hand_off_leadership`]), then shut
    /// down gracefully (as [`Node::shutdown_token`]).
    ///
    /// [`RaftHandle::hand_off_leadership`]: crate::raft::RaftHandle::hand_off_leadership
    pub fn graceful_stop(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let raft = self.replica.raft().clone();
        let shutdown = self.shutdown.clone();
        async move {
            match raft.hand_off_leadership(HAND_OFF_PATIENCE).await {
                Ok(Some(leader)) => {
                    tracing::info!(leader, "leadership handed over before stopping");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not hand leadership over"),
            }
            shutdown.cancel();
        }
    }

    /// Runs until shutdown is requested or a task fails; then stops every task and returns
    /// the first error, if any.
    pub async fn wait(mut self) -> Result<(), NodeError> {
        let mut first_error = None;
        // Set once shutting down: tasks get this long to drain, then are stopped.
        let mut deadline = None;
        loop {
            let next = match deadline {
                None => tokio::select! {
                    next = self.tasks.join_next_with_id() => next,
                    () = self.shutdown.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                        continue;
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, self.tasks.join_next_with_id()).await
                {
                    Ok(next) => next,
                    Err(_) => {
                        let mut stuck: Vec<&str> = self.task_names.values().copied().collect();
                        stuck.sort_unstable();
                        tracing::warn!(
                            tasks = ?stuck,
                            "still running {DRAIN_TIMEOUT:?} after shutdown began; stopping them"
                        );
                        self.tasks.abort_all();
                        while self.tasks.join_next().await.is_some() {}
                        break;
                    }
                },
            };
            let Some(done) = next else { break };
            let result = match done {
                Ok((id, result)) => {
                    self.task_names.remove(&id);
                    result
                }
                Err(e) => {
                    self.task_names.remove(&e.id());
                    Err(NodeError::from(e))
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "node task failed; shutting down");
                first_error.get_or_insert(e);
            }
            // Whatever ended, the node cannot work without it: stop the rest.
            self.shutdown.cancel();
        }
        tracing::info!("node stopped");
        if let Some(telemetry) = self.own_telemetry.take() {
            telemetry.shutdown().await;
        }
        first_error.map_or(Ok(()), Err)
    }
}
