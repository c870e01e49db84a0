//! The gRPC API: tonic services that translate requests into registry commands and reads.
//!
//! # Layout
//! - `registry`: `meridian.v1.Registry`;
//! - `watch`: its `Watch` stream (subscriptions of the [`crate::watch`] hub → protobuf);
//! - `routing`: `meridian.v1.Routing` (routes of services);
//! - `discovery`: `meridian.v1.Discovery` (proxy streams, `ListProxies`, `WaitApplied`), with
//!   `fanout` asking the other members about their proxies;
//! - `cluster`: `meridian.v1.Cluster`;
//! - `forward`: heartbeats sent to a follower, relayed to the leader;
//! - `convert`: generated types ↔ registry types (the only place that sees request types);
//! - `error`: the one mapping from our errors to `tonic::Status`.
//!
//! Beside ours, the server carries the standard `grpc.health.v1.Health` service and server
//! reflection (v1 and v1alpha), so grpcurl, grpc-health-probe and Kubernetes probes work.
//!
//! Depends on the registry (types) and the replica (writes and reads); never on Raft
//! internals beyond the status the replica exposes.

pub mod acl;
pub mod cluster;
mod convert;
pub mod discovery;
mod error;
mod fanout;
mod forward;
pub mod registry;
pub mod routing;
mod watch;

use std::net::SocketAddr;

use meridian_proto::v1::acl_server::AclServer;
use meridian_proto::v1::cluster_server::ClusterServer;
use meridian_proto::v1::discovery_server::DiscoveryServer;
use meridian_proto::v1::registry_server::RegistryServer;
use meridian_proto::v1::routing_server::RoutingServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::peer::PeerService;
use crate::replica::{ApplyResult, Replica};
use meridian_proto::v1::peer_server::PeerServer;

/// Largest request a client may send, in bytes. Generous for any registration (30
/// attributes of 256 bytes fit in 10 KiB) while refusing abuse early.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The handles of the rooms the API serves besides the replica.
#[derive(Debug, Clone)]
pub struct Rooms {
    /// The watch hub (`Registry.Watch`).
    pub watch: crate::watch::WatchHandle,
    /// The health checker (`Registry.Heartbeat`).
    pub health: crate::health::HealthHandle,
    /// The discovery hub and proxy table (`Discovery`).
    pub discovery: crate::discovery::DiscoveryHandle,
}

/// Why the API server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read our descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Who may call: the authorizer and the per-caller rate limiter every call passes.
#[derive(Debug, Clone)]
pub struct Access {
    authorizer: crate::auth::Authorizer,
    rate: Option<std::sync::Arc<crate::auth::RateLimiter>>,
    max_instances_per_service: Option<usize>,
    max_watchers_per_client: Option<usize>,
    max_concurrent_streams: u32,
}

impl Access {
    /// From a node's access configuration (burst: two seconds' worth of calls).
    pub fn new(config: &crate::auth::AccessConfig) -> Self {
        Self {
            authorizer: crate::auth::Authorizer::new(config.acl_enabled),
            rate: config.rate_limit.map(|per_second| {
                std::sync::Arc::new(crate::auth::RateLimiter::new(per_second, 2.0 * per_second))
            }),
            max_instances_per_service: config.max_instances_per_service,
            max_watchers_per_client: config.max_watchers_per_client,
            max_concurrent_streams: config
                .max_concurrent_streams
                .unwrap_or(crate::auth::DEFAULT_MAX_CONCURRENT_STREAMS),
        }
    }
}

/// How the API listener and this node's calls to other members are secured.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS on the listener (`--tls-cert`, `--tls-key`, `--tls-ca`); `None`: plain text.
    pub listener_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// How this node reaches other members (the proxy fan-out and the heartbeat relay).
    pub dialer: crate::peer::Dialer,
}

/// Serves the API on `listener` until `shutdown` is cancelled, then drains in-flight calls.
/// Every call is traced and counted into `metrics` (see [`crate::telemetry::grpc`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    security: Security,
    replica: Replica,
    rooms: Rooms,
    peer: PeerService<ApplyResult>,
    metrics: crate::telemetry::NodeMetrics,
    access: Access,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RegistryServer<registry::RegistryService>>()
        .await;
    health_reporter
        .set_serving::<ClusterServer<cluster::ClusterService>>()
        .await;
    health_reporter
        .set_serving::<RoutingServer<routing::RoutingService>>()
        .await;
    health_reporter
        .set_serving::<DiscoveryServer<discovery::DiscoveryService>>()
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let routing = RoutingServer::new(routing::RoutingService::new(replica.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let discovery = DiscoveryServer::new(
        discovery::DiscoveryService::new(replica.clone(), rooms.discovery.clone())
            .dialing_with(security.dialer.clone()),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let registry = RegistryServer::new(
        registry::RegistryService::new(replica.clone(), rooms)
            .with_max_instances(access.max_instances_per_service)
            .dialing_with(security.dialer),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let views = replica.subscribe();
    let acl = AclServer::new(acl::AclService::new(replica.clone(), access.authorizer))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let cluster = ClusterServer::new(cluster::ClusterService::new(replica));
    // Snapshots arrive in frames of at most 1 MiB; leave room for framing.
    let peer = PeerServer::new(peer).max_decoding_message_size(2 * crate::peer::FRAME_BYTES);

    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(access.max_concurrent_streams)
        // One place for every service: a span per call (continuing the caller's trace) and
        // the API metrics.
        .layer(crate::telemetry::GrpcLayer::new(metrics))
        // Then who is calling: every handler checks the caller this puts on the request.
        .layer(crate::auth::AuthLayer::new(access.authorizer, views).with_rate_limit(access.rate))
        // Then how many watch and discovery streams that caller holds open (only with a
        // limit: no layer, no cost per call, without one).
        .layer(tower::util::option_layer(
            access
                .max_watchers_per_client
                .map(crate::auth::StreamLimitLayer::new),
        ))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(registry)
        .add_service(routing)
        .add_service(discovery)
        .add_service(cluster)
        .add_service(acl)
        .add_service(peer);
    match security.listener_tls {
        None => {
            // No Nagle: watch events and unary answers are small writes that must leave at
            // once, not wait for the client's delayed ACK (up to 40 ms on Linux; it was the
            // p99 of watch propagation before). tonic sets this only on listeners it binds
            // itself; the TLS listener sets it on every connection it accepts.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tracing::info!(addr = ?local, "gRPC API listening");
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await?;
        }
        Some(config) => {
            let incoming = meridian_tls::net::incoming(listener, config, shutdown.clone());
            tracing::info!(addr = ?local, "gRPC API listening with TLS");
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await?;
        }
    }
    Ok(())
}
