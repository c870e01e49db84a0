//! `meridian.v1.Routing`: put, get, list and delete the route of a service.
//!
//! Writes go through Raft like every registry write (a follower forwards them); reads say their
//! consistency and carry the registry revision they saw, as in `Registry`.

use std::sync::Arc;

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_server::Routing as RoutingApi;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{registry_status, status};
use crate::auth::{self, Caller};
use crate::registry::error::Kind;
use crate::registry::{Access, Command, Outcome, RegistryError, Service, ServiceName};
use crate::replica::{Replica, View};

/// The `Routing` gRPC service over the local replica.
pub struct RoutingService {
    replica: Replica,
}

type Reply<T> = Result<Response<T>, Status>;

// === impl RoutingService ===

impl RoutingService {
    /// Serves the routes held by `replica`.
    pub fn new(replica: Replica) -> Self {
        Self { replica }
    }

    async fn read(&self, consistency: i32) -> Result<View, Status> {
        let consistency = convert::consistency(consistency).map_err(registry_status)?;
        self.replica.read(consistency).await.map_err(status)
    }
}

#[tonic::async_trait]
impl RoutingApi for RoutingService {
    async fn put_route(&self, req: Request<pb::PutRouteRequest>) -> Reply<pb::PutRouteResponse> {
        let caller = auth::caller(&req)?;
        let command = convert::put_route(req.into_inner()).map_err(registry_status)?;
        let Command::PutRoute { service, .. } = &command else {
            return Err(Status::internal("conversion produced another command"));
        };
        caller.require_service(service, Access::Write)?;
        let service = service.clone();
        let (revision, outcome) = self.replica.write(command).await.map_err(status)?;
        let Outcome::Route(route) = outcome else {
            tracing::error!(?outcome, "PutRoute produced an outcome of the wrong kind");
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(pb::PutRouteResponse {
            route: Some(convert::route_pb(&service, &route)),
            revision,
        }))
    }

    async fn get_route(&self, req: Request<pb::GetRouteRequest>) -> Reply<pb::GetRouteResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let name = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&name, Access::Read)?;
        let view = self.read(req.consistency).await?;
        let service = view.registry.service(&name).map_err(registry_status)?;
        let Some(route) = &service.route else {
            return Err(registry_status(RegistryError::NotFound {
                kind: Kind::Route,
                name: name.to_string(),
            }));
        };
        Ok(Response::new(pb::GetRouteResponse {
            route: Some(convert::route_pb(&name, route)),
            revision: view.registry.revision(),
        }))
    }

    async fn list_routes(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Reply<pb::ListRoutesResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let namespace = if req.namespace.is_empty() {
            None
        } else {
            Some(convert::namespace_name("namespace", &req.namespace).map_err(registry_status)?)
        };
        if let Some(name) = &namespace
            && !caller.sees_namespace(name, Access::Read)
        {
            return Err(auth::denied());
        }
        let routed = |s: &Arc<Service>| routed(&caller, s);
        let view = self.read(req.consistency).await?;
        let routes = match &namespace {
            None => view
                .registry
                .namespaces()
                .values()
                .flat_map(|ns| ns.services.values())
                .filter_map(routed)
                .collect(),
            Some(name) => view
                .registry
                .namespace(name)
                .map_err(registry_status)?
                .services
                .values()
                .filter_map(routed)
                .collect(),
        };
        Ok(Response::new(pb::ListRoutesResponse {
            routes,
            revision: view.registry.revision(),
        }))
    }

    async fn delete_route(
        &self,
        req: Request<pb::DeleteRouteRequest>,
    ) -> Reply<pb::DeleteRouteResponse> {
        let caller = auth::caller(&req)?;
        let service =
            convert::service_name("service", &req.into_inner().service).map_err(registry_status)?;
        caller.require_service(&service, Access::Write)?;
        let (revision, _) = self
            .replica
            .write(Command::DeleteRoute { service })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteRouteResponse { revision }))
    }
}

/// The route of `service` as the API shows it, if it has one and `caller` may read it.
fn routed(caller: &Caller, service: &Arc<Service>) -> Option<pb::Route> {
    let route = service.route.as_ref()?;
    let name = ServiceName {
        namespace: service.namespace.clone(),
        service: service.name.clone(),
    };
    caller
        .allows_service(&name, Access::Read)
        .then(|| convert::route_pb(&name, route))
}
