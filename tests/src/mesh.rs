//! The proxy harness: a control-plane node, real backends registered as instances of
//! [`SERVICE`] (`orders.cafe.local`) with `version` attributes, and a real `meridian-proxy`
//! running in-process in front of them, subscribed to [`SERVICE`].
//!
//! Backends are named `<version>-<n>` (`v1-0`, `v1-1`, `v2-0`): the instance id, the id the
//! backend answers with, and a prefix that tells the version. Routes are written with the real
//! `Routing` gRPC client; requests go through the proxy with [`MeshClient`]. Everything is
//! stopped when the [`Mesh`] is dropped (also on panic).

mod client;
pub mod prometheus;
mod routes;

pub use client::{Call, Load, MeshClient, Outcome, Reply, Tally};
pub use routes::{
    header_rule, prefix_rule, retrying_in_turn, route, split, with_balancer, with_retry,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_proto::v1::routing_client::RoutingClient;
use meridian_proxy::ProxyConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::backend::Backend;
use crate::{TestNode, wait_for};

/// The service every backend of a [`Mesh`] is an instance of.
pub const SERVICE: &str = "orders.cafe.local";

/// How long the harness waits for the proxy to follow a change (a bound on a hang, not a
/// timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `meridian-proxy` running inside the test process. Stopped when dropped.
pub struct TestProxy {
    listen: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), String>>>,
}

/// A control-plane node, backends registered with it, and a proxy in front of them.
pub struct Mesh {
    node: Option<TestNode>,
    registry: RegistryClient<Channel>,
    routing: RoutingClient<Channel>,
    discovery: DiscoveryClient<Channel>,
    backends: Vec<Backend>,
    proxy: TestProxy,
    client: MeshClient,
    admin: MeshClient,
}

// === impl TestProxy ===

impl TestProxy {
    /// Starts a proxy with `config` (whose listen and admin addresses may use port 0).
    pub async fn start(config: ProxyConfig) -> Self {
        let shutdown = CancellationToken::new();
        let running = meridian_proxy::start(config, shutdown.clone())
            .await
            .expect("the proxy starts");
        let (listen, admin) = (running.listen_addr(), running.admin_addr());
        let task = tokio::spawn(async move { running.wait().await.map_err(|e| e.to_string()) });
        Self {
            listen,
            admin,
            shutdown,
            task: Some(task),
        }
    }

    /// The traffic listener.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener (`/ready`, `/config`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Shuts down (draining) and reports how the proxy ended.
    pub async fn stop(mut self) -> Result<(), String> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// === impl Mesh ===

impl Mesh {
    /// Starts a node with namespace `cafe.local` and service [`SERVICE`]; for each
    /// `(version, n)` starts `n` backends `<version>-0..n` registered with attribute
    /// `version=<version>`; then a proxy subscribed to [`SERVICE`]. Returns once the proxy
    /// is ready and (when there are backends) routes a request to one of them.
    pub async fn start(versions: &[(&str, usize)]) -> Self {
        Self::start_with(versions, |_| {}).await
    }

    /// [`Mesh::start`], with a chance to change the proxy's configuration first.
    pub async fn start_with(
        versions: &[(&str, usize)],
        configure: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        let node = TestNode::start().await;
        let registry = node.cafe(&["orders"]).await;
        let channel = node.channel().await;
        let mut config = ProxyConfig::new(vec![node.url()]);
        config.listen = ([127, 0, 0, 1], 0).into();
        config.admin = ([127, 0, 0, 1], 0).into();
        config.proxy_id = Some("test-proxy".to_owned());
        config.subscribe = vec![SERVICE.to_owned()];
        config.drain_timeout = Duration::from_secs(1);
        configure(&mut config);
        let proxy = TestProxy::start(config).await;
        let mut mesh = Self {
            node: Some(node),
            registry,
            routing: RoutingClient::new(channel.clone()),
            discovery: DiscoveryClient::new(channel),
            backends: Vec::new(),
            client: MeshClient::new(proxy.listen_addr()),
            admin: MeshClient::new(proxy.admin_addr()),
            proxy,
        };
        for (version, n) in versions {
            for i in 0..*n {
                mesh.add_backend(&format!("{version}-{i}"), version, &[])
                    .await;
            }
        }
        let admin = mesh.admin.clone();
        wait_for("the proxy's /ready to answer 200", PATIENCE, || {
            let admin = admin.clone();
            async move {
                let r = admin.send(&Call::get("/ready").host("admin")).await.ok()?;
                r.status.is_success().then_some(())
            }
        })
        .await;
        if !mesh.backends.is_empty() {
            mesh.wait_until("the proxy to route to a backend", |r| r.is_ok())
                .await;
        }
        mesh
    }

    /// Starts a backend `id` and registers it as an instance of [`SERVICE`] with attributes
    /// `version=<version>` and `extra`.
    pub async fn add_backend(&mut self, id: &str, version: &str, extra: &[(&str, &str)]) {
        let backend = Backend::start(id).await;
        let mut attributes: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        attributes.insert("version".to_owned(), version.to_owned());
        self.registry
            .register_instance(pb::RegisterInstanceRequest {
                service: SERVICE.to_owned(),
                id: id.to_owned(),
                address: backend.addr().ip().to_string(),
                port: u32::from(backend.addr().port()),
                attributes,
            })
            .await
            .expect("register a backend");
        self.backends.push(backend);
    }

    /// The backend named `id`.
    pub fn backend(&self, id: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.id() == id)
            .unwrap_or_else(|| panic!("no backend {id} in this mesh"))
    }

    /// Kills backend `id` as abruptly as a crash (it stays registered and healthy).
    pub async fn kill_backend(&mut self, id: &str) {
        let backend = self
            .backends
            .iter_mut()
            .find(|b| b.id() == id)
            .unwrap_or_else(|| panic!("no backend {id} in this mesh"));
        backend.kill().await;
    }

    /// Deregisters instance `id` (the backend keeps running).
    pub async fn deregister(&mut self, id: &str) -> u64 {
        self.registry
            .deregister_instance(pb::DeregisterInstanceRequest {
                service: SERVICE.to_owned(),
                id: id.to_owned(),
            })
            .await
            .expect("deregister an instance")
            .into_inner()
            .revision
    }

    /// Sets instance `id`'s health (`UpdateInstanceHealth`).
    pub async fn set_health(&mut self, id: &str, health: pb::HealthStatus) -> u64 {
        self.registry
            .update_instance_health(pb::UpdateInstanceHealthRequest {
                service: SERVICE.to_owned(),
                id: id.to_owned(),
                health: health as i32,
            })
            .await
            .expect("update an instance's health")
            .into_inner()
            .revision
    }

    /// Creates service `<label>.cafe.local` (with no instances).
    pub async fn create_service(&mut self, label: &str) {
        self.registry
            .create_service(pb::CreateServiceRequest {
                name: format!("{label}.cafe.local"),
                ..Default::default()
            })
            .await
            .expect("create a service");
    }

    /// Puts `route` (its service set to [`SERVICE`] if empty); returns the write's revision.
    pub async fn put_route(&mut self, mut route: pb::Route) -> u64 {
        if route.service.is_empty() {
            route.service = SERVICE.to_owned();
        }
        self.routing
            .put_route(pb::PutRouteRequest { route: Some(route) })
            .await
            .expect("put a route")
            .into_inner()
            .revision
    }

    /// Puts a one-rule route splitting [`SERVICE`] by `version` with these weights.
    pub async fn put_split(&mut self, weights: &[(&str, u32)]) -> u64 {
        self.put_route(route(vec![split(weights)])).await
    }

    /// Puts `route` and waits until `WaitApplied` says the proxy acknowledged it (1 of 1);
    /// returns the write's revision.
    pub async fn apply(&mut self, route: pb::Route) -> u64 {
        let revision = self.put_route(route).await;
        let applied = self.wait_applied(revision).await;
        assert_eq!(
            (applied.subscribed, applied.applied),
            (1, 1),
            "the proxy applies revision {revision}: {applied:?}"
        );
        revision
    }

    /// `WaitApplied` for [`SERVICE`] at `revision`, with a generous timeout.
    pub async fn wait_applied(&mut self, revision: u64) -> pb::WaitAppliedResponse {
        self.discovery
            .wait_applied(pb::WaitAppliedRequest {
                service: SERVICE.to_owned(),
                revision,
                timeout_ms: u32::try_from(PATIENCE.as_millis()).expect("patience fits in u32"),
                local_only: false,
            })
            .await
            .expect("WaitApplied")
            .into_inner()
    }

    /// Sends GET `/` for [`SERVICE`] until one request's outcome satisfies `done`
    /// (`Ok(backend id)` for a 2xx, `Err(status or error)` otherwise).
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Result<String, String>) -> bool) {
        let call = Call::get("/");
        wait_for(what, PATIENCE, || {
            let (client, call) = (self.client.clone(), call.clone());
            let done = &done;
            async move {
                let outcome = match client.send(&call).await {
                    Ok(r) if r.status.is_success() => Ok(r.backend.unwrap_or_default()),
                    Ok(r) => Err(r.status.to_string()),
                    Err(e) => Err(e),
                };
                done(&outcome).then_some(())
            }
        })
        .await;
    }

    /// Waits until `n` requests in a row are all answered by backends accepted by `ok`, e.g.
    /// "no longer `v1-0`": the functional condition after a change, without timing.
    pub async fn wait_all_served_by(&self, what: &str, n: u64, ok: impl Fn(&str) -> bool) {
        let call = Call::get("/");
        wait_for(what, PATIENCE, || {
            let (client, call) = (self.client.clone(), call.clone());
            let ok = &ok;
            async move {
                let tally = client.tally(&call, n, 4).await;
                (tally.failures == 0 && tally.by_backend.keys().all(|id| ok(id))).then_some(())
            }
        })
        .await;
    }

    /// The client that talks to the proxy's listener.
    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    /// Sends one request through the proxy.
    pub async fn send(&self, call: &Call) -> Result<Reply, String> {
        self.client.send(call).await
    }

    /// GETs `path` on the proxy's admin port; returns the status and the body.
    pub async fn admin(&self, path: &str) -> Reply {
        self.admin
            .send(&Call::get(path).host("admin"))
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin port: {e}"))
    }

    /// The proxy.
    pub fn proxy(&self) -> &TestProxy {
        &self.proxy
    }

    /// The control-plane node (until [`Mesh::stop_control_plane`]).
    pub fn node(&self) -> &TestNode {
        self.node.as_ref().expect("the control plane was stopped")
    }

    /// A `Registry` client.
    pub fn registry(&self) -> RegistryClient<Channel> {
        self.registry.clone()
    }

    /// A `Routing` client.
    pub fn routing(&self) -> RoutingClient<Channel> {
        self.routing.clone()
    }

    /// A `Discovery` client.
    pub fn discovery(&self) -> DiscoveryClient<Channel> {
        self.discovery.clone()
    }

    /// Stops the control-plane node; the proxy and the backends keep running.
    pub async fn stop_control_plane(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("the control plane stops cleanly");
        }
    }
}
