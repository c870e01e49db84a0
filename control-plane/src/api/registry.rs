//! `meridian.v1.Registry`: namespaces, services, instances and discovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_server::Registry as RegistryApi;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{registry_status, status};
use super::forward::Forwarder;
use super::{Rooms, watch};
use crate::auth;
use crate::registry::{Access, Command, Outcome, Service, ServiceName};
use crate::replica::{Replica, View};

/// The `Registry` gRPC service over the local replica.
pub struct RegistryService {
    replica: Replica,
    rooms: Rooms,
    /// Relays heartbeats from a follower to the leader.
    forwarder: Forwarder,
    /// State of the xorshift generator that shuffles discovery answers. Not cryptographic:
    /// it only spreads load across instances, as Cloud Map's random order does.
    shuffle: AtomicU64,
    /// `--max-instances-per-service`.
    max_instances: Option<usize>,
}

type Reply<T> = Result<Response<T>, Status>;

// === impl RegistryService ===

impl RegistryService {
    /// Serves the registry held by `replica`, its watch streams and heartbeats.
    pub fn new(replica: Replica, rooms: Rooms) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        Self {
            replica,
            rooms,
            forwarder: Forwarder::default(),
            shuffle: AtomicU64::new(seed),
            max_instances: None,
        }
    }

    /// Refuses a registration that would give a service more than `max` instances
    /// (`RESOURCE_EXHAUSTED`). Checked against this node's view before proposing, like etcd's
    /// quota: concurrent registrations through several nodes can overshoot by the few in
    /// flight; re-registering an existing instance is always allowed.
    #[must_use]
    pub fn with_max_instances(mut self, max: Option<usize>) -> Self {
        self.max_instances = max;
        self
    }

    /// Relays heartbeats to the leader through channels from `dialer` (TLS when the node
    /// runs with it).
    #[must_use]
    pub fn dialing_with(mut self, dialer: crate::peer::Dialer) -> Self {
        self.forwarder = Forwarder::new(dialer);
        self
    }

    async fn write(&self, command: Command) -> Result<(u64, Outcome), Status> {
        self.replica.write(command).await.map_err(status)
    }

    async fn read(&self, consistency: i32) -> Result<View, Status> {
        let consistency = convert::consistency(consistency).map_err(registry_status)?;
        self.replica.read(consistency).await.map_err(status)
    }

    fn next_random(&self) -> u64 {
        // xorshift64: the lost update of a racing fetch_update only repeats a shuffle.
        let mut x = self.shuffle.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.shuffle.store(x, Ordering::Relaxed);
        x
    }

    /// Fisher–Yates over the first `keep` places: a uniform random sample in random order.
    fn sample<T>(&self, items: &mut Vec<T>, keep: usize) {
        let keep = keep.min(items.len());
        for i in 0..keep {
            let span = (items.len() - i) as u64;
            let j = i + (self.next_random() % span) as usize;
            items.swap(i, j);
        }
        items.truncate(keep);
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    type WatchStream = watch::WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let caller = auth::caller(&req)?;
        let stream = watch::watch(&self.rooms.watch, &caller, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Reply<pb::HeartbeatResponse> {
        // Any node takes heartbeats: a follower relays them to the leader (`forward.rs`).
        let service =
            convert::service_name("service", &req.get_ref().service).map_err(registry_status)?;
        auth::caller(&req)?.require_service(&service, Access::Write)?;
        let answer = self
            .forwarder
            .heartbeat(&self.replica, &self.rooms.health, req)
            .await?;
        Ok(Response::new(answer))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Reply<pb::CreateNamespaceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::namespace_name("name", &req.name).map_err(registry_status)?;
        caller.require_namespace(&name, Access::Write)?;
        let command = Command::CreateNamespace {
            name,
            description: req.description,
        };
        let (revision, outcome) = self.write(command).await?;
        let Outcome::Namespace(ns) = outcome else {
            return Err(unexpected(&outcome));
        };
        Ok(Response::new(pb::CreateNamespaceResponse {
            namespace: Some(convert::namespace(&ns)),
            revision,
        }))
    }

    async fn get_namespace(
        &self,
        req: Request<pb::GetNamespaceRequest>,
    ) -> Reply<pb::GetNamespaceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::namespace_name("name", &req.name).map_err(registry_status)?;
        if !caller.sees_namespace(&name, Access::Read) {
            return Err(auth::denied());
        }
        let view = self.read(req.consistency).await?;
        let ns = view.registry.namespace(&name).map_err(registry_status)?;
        Ok(Response::new(pb::GetNamespaceResponse {
            namespace: Some(convert::namespace(ns)),
            revision: view.registry.revision(),
        }))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Reply<pb::ListNamespacesResponse> {
        let caller = auth::caller(&req)?;
        let view = self.read(req.into_inner().consistency).await?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: view
                .registry
                .namespaces()
                .values()
                .filter(|ns| caller.sees_namespace(&ns.name, Access::Read))
                .map(|ns| convert::namespace(ns))
                .collect(),
            revision: view.registry.revision(),
        }))
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Reply<pb::DeleteNamespaceResponse> {
        let caller = auth::caller(&req)?;
        let name =
            convert::namespace_name("name", &req.into_inner().name).map_err(registry_status)?;
        caller.require_namespace(&name, Access::Write)?;
        let (revision, _) = self.write(Command::DeleteNamespace { name }).await?;
        Ok(Response::new(pb::DeleteNamespaceResponse { revision }))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Reply<pb::CreateServiceResponse> {
        let caller = auth::caller(&req)?;
        let command = convert::create_service(req.into_inner()).map_err(registry_status)?;
        if let Command::CreateService(spec) = &command {
            caller.require_service(&spec.name, Access::Write)?;
        }
        let (revision, outcome) = self.write(command).await?;
        let Outcome::Service(service) = outcome else {
            return Err(unexpected(&outcome));
        };
        Ok(Response::new(pb::CreateServiceResponse {
            service: Some(convert::service(&service)),
            revision,
        }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Reply<pb::GetServiceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::service_name("name", &req.name).map_err(registry_status)?;
        caller.require_service(&name, Access::Read)?;
        let view = self.read(req.consistency).await?;
        let service = view.registry.service(&name).map_err(registry_status)?;
        Ok(Response::new(pb::GetServiceResponse {
            service: Some(convert::service(service)),
            revision: view.registry.revision(),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Reply<pb::ListServicesResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let view = self.read(req.consistency).await?;
        let readable = |s: &&Arc<Service>| {
            let name = ServiceName {
                namespace: s.namespace.clone(),
                service: s.name.clone(),
            };
            caller.allows_service(&name, Access::Read)
        };
        let services = if req.namespace.is_empty() {
            view.registry
                .namespaces()
                .values()
                .flat_map(|ns| ns.services.values())
                .filter(readable)
                .map(|s| convert::service(s))
                .collect()
        } else {
            let name =
                convert::namespace_name("namespace", &req.namespace).map_err(registry_status)?;
            if !caller.sees_namespace(&name, Access::Read) {
                return Err(auth::denied());
            }
            let ns = view.registry.namespace(&name).map_err(registry_status)?;
            ns.services
                .values()
                .filter(readable)
                .map(|s| convert::service(s))
                .collect()
        };
        Ok(Response::new(pb::ListServicesResponse {
            services,
            revision: view.registry.revision(),
        }))
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Reply<pb::DeleteServiceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::service_name("name", &req.name).map_err(registry_status)?;
        caller.require_service(&name, Access::Write)?;
        let (revision, _) = self
            .write(Command::DeleteService {
                name,
                force: req.force,
            })
            .await?;
        Ok(Response::new(pb::DeleteServiceResponse { revision }))
    }

    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> Reply<pb::RegisterInstanceResponse> {
        let caller = auth::caller(&req)?;
        let command = convert::register(req.into_inner()).map_err(registry_status)?;
        let Command::RegisterInstance { service, .. } = &command else {
            return Err(Status::internal("conversion produced another command"));
        };
        caller.require_service(service, Access::Write)?;
        if let (Some(max), Command::RegisterInstance { instance, .. }) =
            (self.max_instances, &command)
        {
            let view = self.replica.current();
            if let Ok(existing) = view.registry.service(service)
                && existing.instances.len() >= max
                && !existing.instances.contains_key(&instance.id)
            {
                return Err(Status::resource_exhausted(format!(
                    "service {service} has {} instances, the most this cluster allows \
                     (--max-instances-per-service {max})",
                    existing.instances.len()
                )));
            }
        }
        let service = service.clone();
        let (revision, outcome) = self.write(command).await?;
        let Outcome::Instance { instance, replaced } = outcome else {
            return Err(unexpected(&outcome));
        };
        Ok(Response::new(pb::RegisterInstanceResponse {
            instance: Some(convert::instance(&service, &instance)),
            revision,
            replaced,
        }))
    }

    async fn deregister_instance(
        &self,
        req: Request<pb::DeregisterInstanceRequest>,
    ) -> Reply<pb::DeregisterInstanceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let service = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&service, Access::Write)?;
        let id = convert::instance_id("id", &req.id).map_err(registry_status)?;
        let (revision, _) = self
            .write(Command::DeregisterInstance { service, id })
            .await?;
        Ok(Response::new(pb::DeregisterInstanceResponse { revision }))
    }

    async fn update_instance_health(
        &self,
        req: Request<pb::UpdateInstanceHealthRequest>,
    ) -> Reply<pb::UpdateInstanceHealthResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let service = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&service, Access::Write)?;
        let id = convert::instance_id("id", &req.id).map_err(registry_status)?;
        let health = convert::health_status(req.health).map_err(registry_status)?;
        let (revision, outcome) = self
            .write(Command::SetHealth {
                service: service.clone(),
                id,
                health,
            })
            .await?;
        let Outcome::Instance { instance, .. } = outcome else {
            return Err(unexpected(&outcome));
        };
        Ok(Response::new(pb::UpdateInstanceHealthResponse {
            instance: Some(convert::instance(&service, &instance)),
            revision,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let service = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&service, Access::Read)?;
        let id = convert::instance_id("id", &req.id).map_err(registry_status)?;
        let view = self.read(req.consistency).await?;
        let instance = view
            .registry
            .instance(&service, &id)
            .map_err(registry_status)?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(convert::instance(&service, instance)),
            revision: view.registry.revision(),
        }))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Reply<pb::ListInstancesResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&name, Access::Read)?;
        let view = self.read(req.consistency).await?;
        let service = view.registry.service(&name).map_err(registry_status)?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: service
                .instances
                .values()
                .map(|i| convert::instance(&name, i))
                .collect(),
            revision: view.registry.revision(),
        }))
    }

    async fn discover_instances(
        &self,
        req: Request<pb::DiscoverInstancesRequest>,
    ) -> Reply<pb::DiscoverInstancesResponse> {
        let caller = auth::caller(&req)?;
        let mut req = req.into_inner();
        let name = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&name, Access::Read)?;
        let query = convert::discover_query(&mut req).map_err(registry_status)?;
        let view = self.read(req.consistency).await?;
        let service = view.registry.service(&name).map_err(registry_status)?;
        let mut found = query.filter(service);
        self.sample(&mut found, query.max_results as usize);
        Ok(Response::new(pb::DiscoverInstancesResponse {
            instances: found.iter().map(|i| convert::instance(&name, i)).collect(),
            revision: view.registry.revision(),
            service_revision: service.mod_revision,
        }))
    }
}

fn unexpected(outcome: &Outcome) -> Status {
    tracing::error!(?outcome, "a command produced an outcome of the wrong kind");
    Status::internal("unexpected outcome")
}
