//! The composition root: the one place that names every room and wires them together.
//!
//! [`Node::start`] opens storage, starts the Raft driver over the registry state machine,
//! binds the gRPC listener and serves the API. Every task is tracked in one `JoinSet` and
//! stopped through one `CancellationToken`; [`Node::wait`] returns when the token is
//! cancelled (graceful shutdown: the API drains, the driver stops after its last fsync) or
//! when any task fails (the others are then stopped too).

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::peer::{GrpcTransport, PeerService};
use crate::raft::RaftConfig;
use crate::replica::Replica;

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
    /// Admin HTTP listener. Reserved: the admin endpoints are not served yet.
    pub admin_listen: SocketAddr,
    /// The initial cluster: `(id, address)` of every voter, this node included. With `join`,
    /// the current members (and this node), to reach them.
    pub peers: Vec<(u64, String)>,
    /// Join an existing cluster (after `meridian cluster add-node`) instead of bootstrapping.
    pub join: bool,
    /// Compact the Raft log after this many applied entries.
    pub snapshot_every: u64,
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
}

/// A running node.
pub struct Node {
    api_addr: SocketAddr,
    dns_addr: SocketAddr,
    replica: Replica,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), NodeError>>,
}

// === impl NodeConfig ===

impl NodeConfig {
    /// Default snapshot interval: enough log to catch up a briefly absent follower without a
    /// snapshot, small enough to keep restart replay well under a second.
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

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
    /// still be under way: writes wait for it).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Config(format!(
                "cannot create --data-dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();

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

        let mut raft_config =
            RaftConfig::new(config.id, config.peers.clone(), config.data_dir.clone());
        raft_config.snapshot_every = config.snapshot_every;
        raft_config.join = config.join;
        let transport = GrpcTransport::new(config.id, &config.peers, shutdown.child_token());
        let peer_tasks = transport.tasks();
        let (replica, driver) = Replica::start(raft_config, transport, shutdown.child_token())?;
        tasks.spawn(async move {
            let result = driver.await;
            // The driver owned the transport; its peer tasks end with the same token.
            peer_tasks.close();
            peer_tasks.wait().await;
            Ok(result??)
        });

        // Watch hub (every node, from its local replica) and health checker (acts while leader).
        let (hub, watch) = crate::watch::Hub::new(replica.subscribe(), Default::default());
        let hub = hub.run(shutdown.child_token());
        tasks.spawn(
            async move {
                hub.await;
                Ok(())
            }
            .instrument(tracing::info_span!("watch", node = config.id)),
        );
        let (checker, health) =
            crate::health::HealthChecker::new(replica.clone(), Default::default());
        let checker = checker.run(shutdown.child_token());
        tasks.spawn(
            async move {
                checker.await;
                Ok(())
            }
            .instrument(tracing::info_span!("health", node = config.id)),
        );
        // Discovery hub (every node: proxies stream from any node's local replica).
        let (discovery_hub, discovery) =
            crate::discovery::DiscoveryHub::new(replica.subscribe(), config.id);
        let discovery_hub = discovery_hub.run(shutdown.child_token());
        tasks.spawn(
            async move {
                discovery_hub.await;
                Ok(())
            }
            .instrument(tracing::info_span!("discovery", node = config.id)),
        );
        let rooms = crate::api::Rooms {
            watch,
            health,
            discovery,
        };

        let peer = PeerService::new(config.id, replica.raft().clone());
        let api = crate::api::serve(
            listener,
            replica.clone(),
            rooms,
            peer,
            shutdown.child_token(),
        );
        tasks.spawn(
            async move { Ok(api.await?) }.instrument(tracing::info_span!("api", node = config.id)),
        );

        let dns_config = crate::dns::DnsConfig {
            max_answers: config.dns_max_answers,
            recursor: config.dns_recursor,
            cache: true,
        };
        let dns = crate::dns::serve(
            dns_udp,
            dns_tcp,
            replica.clone(),
            dns_config,
            shutdown.child_token(),
        );
        tasks.spawn(
            async move { Ok(dns.await?) }.instrument(tracing::info_span!("dns", node = config.id)),
        );

        tracing::info!(
            node = config.id,
            api = %api_addr,
            dns = %dns_addr,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(Self {
            api_addr,
            dns_addr,
            replica,
            shutdown,
            tasks,
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

    /// The local replica, for in-process callers.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Cancelling this token shuts the node down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until shutdown is requested or a task fails; then stops every task and returns
    /// the first error, if any.
    pub async fn wait(mut self) -> Result<(), NodeError> {
        let mut first_error = None;
        while let Some(done) = self.tasks.join_next().await {
            let result = done.map_err(NodeError::from).and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = %e, "node task failed; shutting down");
                first_error.get_or_insert(e);
            }
            // Whatever ended, the node cannot work without it: stop the rest.
            self.shutdown.cancel();
        }
        tracing::info!("node stopped");
        first_error.map_or(Ok(()), Err)
    }
}
