//! [`Registry`]: the replicated state and the deterministic `apply`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::acl::Acl;
use super::change::{Change, ChangeKind};
use super::command::{Command, InstanceSpec, Outcome, ServiceSpec};
use super::error::Kind;
use super::model::{HealthStatus, Instance, Namespace, Service};
use super::names::ServiceName;
use super::route::{Route, RouteSpec};

/// The whole registry at one revision.
///
/// Cloning is cheap (children are shared behind `Arc`s); readers hold a clone published
/// after each applied batch while the state machine moves on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Index of the last command that changed the registry (the Raft log index).
    revision: u64,
    namespaces: BTreeMap<String, Arc<Namespace>>,
    /// ACL tokens (absent from snapshots taken before ACLs existed).
    #[serde(default)]
    acl: Acl,
}

// === impl Registry ===

impl Registry {
    /// An empty registry at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ACL tokens.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> &BTreeMap<String, Arc<Namespace>> {
        &self.namespaces
    }

    /// One namespace.
    pub fn namespace(&self, name: &str) -> Result<&Arc<Namespace>, RegistryError> {
        self.namespaces
            .get(name)
            .ok_or_else(|| RegistryError::NotFound {
                kind: Kind::Namespace,
                name: name.to_owned(),
            })
    }

    /// One service.
    pub fn service(&self, name: &ServiceName) -> Result<&Arc<Service>, RegistryError> {
        self.namespace(&name.namespace)?
            .services
            .get(&name.service)
            .ok_or_else(|| RegistryError::NotFound {
                kind: Kind::Service,
                name: name.to_string(),
            })
    }

    /// One instance.
    pub fn instance(
        &self,
        service: &ServiceName,
        id: &str,
    ) -> Result<&Arc<Instance>, RegistryError> {
        self.service(service)?
            .instances
            .get(id)
            .ok_or_else(|| RegistryError::NotFound {
                kind: Kind::Instance,
                name: format!("{id}.{service}"),
            })
    }

    /// Applies the command committed at log `index`. On success the registry's revision
    /// becomes `index`; on error nothing changes. Deterministic: no clock, no randomness.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Outcome, RegistryError> {
        debug_assert!(index > self.revision, "log indexes only grow");
        command.validate()?;
        let outcome = match command {
            Command::CreateNamespace { name, description } => {
                self.create_namespace(index, name, description)?
            }
            Command::DeleteNamespace { name } => self.delete_namespace(name)?,
            Command::CreateService(spec) => self.create_service(index, spec)?,
            Command::DeleteService { name, force } => self.delete_service(index, name, *force)?,
            Command::RegisterInstance { service, instance } => {
                self.register(index, service, instance)?
            }
            Command::DeregisterInstance { service, id } => self.deregister(index, service, id)?,
            Command::SetHealth {
                service,
                id,
                health,
            } => self.set_health(index, service, id, *health)?,
            Command::PutRoute { service, route } => self.put_route(index, service, route)?,
            Command::DeleteRoute { service } => self.delete_route(index, service)?,
            Command::AclBootstrap(spec) => Outcome::Token(self.acl.bootstrap(index, spec)?),
            Command::CreateToken(spec) => Outcome::Token(self.acl.create(index, spec)?),
            Command::RevokeToken { accessor } => Outcome::Token(self.acl.revoke(accessor)?),
        };
        self.revision = index;
        Ok(outcome)
    }

    /// [`Registry::apply`], appending to `log` what the command changed (nothing if refused).
    pub fn apply_logged(
        &mut self,
        index: u64,
        command: &Command,
        log: &mut Vec<Change>,
    ) -> Result<Outcome, RegistryError> {
        // What a removal takes away must be read before it is gone.
        let removed_service = match command {
            Command::DeleteService { name, .. } => self.service(name).ok().cloned(),
            _ => None,
        };
        let removed_instance = match command {
            Command::DeregisterInstance { service, id } => self.instance(service, id).ok().cloned(),
            _ => None,
        };
        let outcome = self.apply(index, command)?;
        let mut push = |service: &ServiceName, kind| {
            log.push(Change {
                revision: index,
                service: service.clone(),
                kind,
            });
        };
        match (command, &outcome) {
            (Command::CreateService(spec), Outcome::Service(created)) => {
                push(&spec.name, ChangeKind::ServiceCreated(Arc::clone(created)));
            }
            (Command::DeleteService { name, .. }, _) => {
                if let Some(service) = removed_service {
                    for instance in service.instances.values() {
                        push(name, ChangeKind::InstanceRemoved(Arc::clone(instance)));
                    }
                    push(name, ChangeKind::ServiceDeleted(service));
                }
            }
            (
                Command::RegisterInstance { service, .. },
                Outcome::Instance { instance, replaced },
            ) => {
                let instance = Arc::clone(instance);
                let kind = if *replaced {
                    ChangeKind::InstanceUpdated(instance)
                } else {
                    ChangeKind::InstanceAdded(instance)
                };
                push(service, kind);
            }
            (Command::DeregisterInstance { service, .. }, _) => {
                if let Some(instance) = removed_instance {
                    push(service, ChangeKind::InstanceRemoved(instance));
                }
            }
            (Command::SetHealth { service, .. }, Outcome::Instance { instance, .. })
                if instance.mod_revision == index =>
            {
                push(service, ChangeKind::InstanceUpdated(Arc::clone(instance)));
            }
            (Command::PutRoute { service, .. }, Outcome::Route(route)) => {
                push(service, ChangeKind::RouteChanged(Some(Arc::clone(route))));
            }
            (Command::DeleteRoute { service }, _) => {
                push(service, ChangeKind::RouteChanged(None));
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// The whole state, encoded. Byte-identical on every replica that applied the same log
    /// (maps are ordered, nothing depends on the clock or on hashing).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invariant: the registry always serializes to JSON")
    }

    /// A registry from [`Registry::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn create_namespace(
        &mut self,
        index: u64,
        name: &str,
        description: &str,
    ) -> Result<Outcome, RegistryError> {
        match self.namespaces.entry(name.to_owned()) {
            Entry::Occupied(_) => Err(RegistryError::AlreadyExists {
                kind: Kind::Namespace,
                name: name.to_owned(),
            }),
            Entry::Vacant(slot) => {
                let ns = slot.insert(Arc::new(Namespace {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    create_revision: index,
                    mod_revision: index,
                    services: OrdMap::new(),
                }));
                Ok(Outcome::Namespace(Arc::clone(ns)))
            }
        }
    }

    fn delete_namespace(&mut self, name: &str) -> Result<Outcome, RegistryError> {
        let ns = self.namespace(name)?;
        if !ns.services.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "namespace {name:?} still has {} service(s); delete them first",
                ns.services.len()
            )));
        }
        self.namespaces.remove(name);
        Ok(Outcome::Removed)
    }

    fn create_service(&mut self, index: u64, spec: &ServiceSpec) -> Result<Outcome, RegistryError> {
        if self
            .namespace(&spec.name.namespace)?
            .services
            .contains_key(&spec.name.service)
        {
            return Err(RegistryError::AlreadyExists {
                kind: Kind::Service,
                name: spec.name.to_string(),
            });
        }
        let ns = self.namespace_mut(index, &spec.name.namespace)?;
        let service = Arc::new(Service {
            name: spec.name.service.clone(),
            namespace: spec.name.namespace.clone(),
            description: spec.description.clone(),
            dns_ttl_seconds: spec.dns_ttl_seconds,
            health_check: spec.health_check.clone(),
            create_revision: index,
            mod_revision: index,
            instances: OrdMap::new(),
            route: None,
        });
        ns.services
            .insert(spec.name.service.clone(), Arc::clone(&service));
        Ok(Outcome::Service(service))
    }

    fn delete_service(
        &mut self,
        index: u64,
        name: &ServiceName,
        force: bool,
    ) -> Result<Outcome, RegistryError> {
        let service = self.service(name)?;
        if !force && !service.instances.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "service {name} still has {} instance(s); deregister them or delete with force",
                service.instances.len()
            )));
        }
        self.namespace_mut(index, &name.namespace)?
            .services
            .remove(&name.service);
        Ok(Outcome::Removed)
    }

    fn register(
        &mut self,
        index: u64,
        name: &ServiceName,
        spec: &InstanceSpec,
    ) -> Result<Outcome, RegistryError> {
        let service = self.service_mut(index, name)?;
        let initial_health = service.initial_health();
        let previous = service.instances.get(&spec.id);
        let replaced = previous.is_some();
        let instance = Arc::new(Instance {
            id: spec.id.clone(),
            address: spec.address,
            port: spec.port,
            attributes: (&spec.attributes).into(),
            // Re-registering the same endpoint keeps its verdict; a moved endpoint starts over.
            health: match previous {
                Some(p) if p.address == spec.address && p.port == spec.port => p.health,
                _ => initial_health,
            },
            create_revision: previous.map_or(index, |p| p.create_revision),
            mod_revision: index,
        });
        service
            .instances
            .insert(spec.id.clone(), Arc::clone(&instance));
        Ok(Outcome::Instance { instance, replaced })
    }

    fn set_health(
        &mut self,
        index: u64,
        name: &ServiceName,
        id: &str,
        health: HealthStatus,
    ) -> Result<Outcome, RegistryError> {
        let current = self.instance(name, id)?;
        if current.health == health {
            // Not a change: watchers of the service are not woken.
            return Ok(Outcome::Instance {
                instance: Arc::clone(current),
                replaced: false,
            });
        }
        let service = self.service_mut(index, name)?;
        let slot = service
            .instances
            .get_mut(id)
            .expect("invariant: looked up above");
        let instance = Arc::make_mut(slot);
        instance.health = health;
        instance.mod_revision = index;
        Ok(Outcome::Instance {
            instance: Arc::clone(slot),
            replaced: false,
        })
    }

    fn deregister(
        &mut self,
        index: u64,
        name: &ServiceName,
        id: &str,
    ) -> Result<Outcome, RegistryError> {
        self.instance(name, id)?;
        let service = self.service_mut(index, name)?;
        service.instances.remove(id);
        Ok(Outcome::Removed)
    }

    fn put_route(
        &mut self,
        index: u64,
        name: &ServiceName,
        spec: &RouteSpec,
    ) -> Result<Outcome, RegistryError> {
        let service = self.service_mut(index, name)?;
        let route = Arc::new(Route {
            spec: spec.clone(),
            create_revision: service.route.as_ref().map_or(index, |r| r.create_revision),
            mod_revision: index,
        });
        service.route = Some(Arc::clone(&route));
        Ok(Outcome::Route(route))
    }

    fn delete_route(&mut self, index: u64, name: &ServiceName) -> Result<Outcome, RegistryError> {
        if self.service(name)?.route.is_none() {
            return Err(RegistryError::NotFound {
                kind: Kind::Route,
                name: name.to_string(),
            });
        }
        self.service_mut(index, name)?.route = None;
        Ok(Outcome::Removed)
    }

    /// The namespace, copied on write, its `mod_revision` set to `index`. Call only once the
    /// command is known to change it.
    fn namespace_mut(&mut self, index: u64, name: &str) -> Result<&mut Namespace, RegistryError> {
        let ns = self
            .namespaces
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound {
                kind: Kind::Namespace,
                name: name.to_owned(),
            })?;
        let ns = Arc::make_mut(ns);
        ns.mod_revision = index;
        Ok(ns)
    }

    /// The service (and its namespace), copied on write, both stamped with `index`. Looks the
    /// service up first so a missing service leaves the namespace untouched.
    fn service_mut(
        &mut self,
        index: u64,
        name: &ServiceName,
    ) -> Result<&mut Service, RegistryError> {
        self.service(name)?;
        let ns = self.namespace_mut(index, &name.namespace)?;
        let service = Arc::make_mut(
            ns.services
                .get_mut(&name.service)
                .expect("invariant: looked up above"),
        );
        service.mod_revision = index;
        Ok(service)
    }
}
