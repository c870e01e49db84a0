//! The commands the registry replicates, and what applying one yields.
//!
//! Every entry says what it is in its first bytes (Consul's FSM habit): the instance commands
//! that dominate the write load are a tagged binary record, every other command one JSON
//! object whose first key, `op`, is its type tag; see [`super::codec`]. Entries written as
//! JSON by earlier versions decode as before. A committed command that cannot be decoded is a
//! fatal error for the node (the caller stops rather than let replicas diverge).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::acl::{Token, TokenSpec};
use super::model::{HealthCheck, HealthStatus, Instance, Namespace, Service};
use super::names::{self, ServiceName};
use super::route::{Route, RouteSpec};

/// A write to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Command {
    /// Creates a namespace.
    CreateNamespace {
        /// The domain.
        name: String,
        /// Free text.
        description: String,
    },
    /// Deletes an empty namespace.
    DeleteNamespace {
        /// The domain.
        name: String,
    },
    /// Creates a service in an existing namespace.
    CreateService(ServiceSpec),
    /// Deletes a service; with `force`, together with its instances.
    DeleteService {
        /// The service.
        name: ServiceName,
        /// Delete even if instances are registered.
        force: bool,
    },
    /// Registers an instance, replacing one with the same id.
    RegisterInstance {
        /// The service.
        service: ServiceName,
        /// The instance.
        instance: InstanceSpec,
    },
    /// Removes an instance.
    DeregisterInstance {
        /// The service.
        service: ServiceName,
        /// The instance id.
        id: String,
    },
    /// Sets an instance's health (a custom status, or a check's verdict taken by the leader).
    SetHealth {
        /// The service.
        service: ServiceName,
        /// The instance id.
        id: String,
        /// The new status.
        health: HealthStatus,
    },
    /// Gives an existing service a route, replacing the one it had.
    PutRoute {
        /// The service.
        service: ServiceName,
        /// The route.
        route: RouteSpec,
    },
    /// Removes a service's route: its traffic goes back to all healthy instances.
    DeleteRoute {
        /// The service.
        service: ServiceName,
    },
    /// Installs the first (admin) token; refused once any token exists.
    AclBootstrap(TokenSpec),
    /// Adds a token.
    CreateToken(TokenSpec),
    /// Removes a token.
    RevokeToken {
        /// Its accessor.
        accessor: String,
    },
}

/// What a new service looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Its full name.
    pub name: ServiceName,
    /// Free text.
    pub description: String,
    /// TTL of its DNS answers.
    pub dns_ttl_seconds: u32,
    /// How its instances are checked.
    pub health_check: Option<HealthCheck>,
}

/// What a registration says about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Its id, a DNS label.
    pub id: String,
    /// Its address.
    pub address: std::net::IpAddr,
    /// Its port.
    pub port: u16,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
}

/// What applying a command produced, for the proposer's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The namespace as it now is.
    Namespace(Arc<Namespace>),
    /// The service as it now is.
    Service(Arc<Service>),
    /// The instance as it now is.
    Instance {
        /// The instance.
        instance: Arc<Instance>,
        /// An instance with the same id was replaced.
        replaced: bool,
    },
    /// The route as it now is.
    Route(Arc<Route>),
    /// The token created or revoked.
    Token(Arc<Token>),
    /// Something was removed.
    Removed,
}

// === impl Command ===

impl Command {
    /// Encodes the command for the replicated log ([`super::codec`]).
    pub fn encode(&self) -> Vec<u8> {
        super::codec::encode(self)
    }

    /// Decodes a command from the log, in either encoding ([`super::codec`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, super::codec::DecodeError> {
        super::codec::decode(bytes)
    }

    /// Checks every field. Called at the API edge (for a fast, precise error) and again in
    /// `apply`, so a command that slipped past the edge is still refused identically by
    /// every replica.
    pub fn validate(&self) -> Result<(), RegistryError> {
        match self {
            Self::CreateNamespace { name, description } => {
                names::validate_domain("name", name)?;
                names::validate_description("description", description)
            }
            Self::DeleteNamespace { name } => names::validate_domain("name", name),
            Self::CreateService(spec) => spec.validate(),
            Self::DeleteService { name, .. } => name.validate("name"),
            Self::RegisterInstance { service, instance } => {
                service.validate("service")?;
                instance.validate()
            }
            Self::DeregisterInstance { service, id } | Self::SetHealth { service, id, .. } => {
                service.validate("service")?;
                names::validate_label("id", id)
            }
            Self::PutRoute { service, route } => {
                service.validate("route.service")?;
                route.validate().map_err(|e| e.within("route."))
            }
            Self::DeleteRoute { service } => service.validate("service"),
            Self::AclBootstrap(spec) | Self::CreateToken(spec) => spec.validate(),
            Self::RevokeToken { accessor } => {
                if accessor.is_empty() || accessor.len() > 64 {
                    return Err(RegistryError::invalid(
                        "accessor",
                        "must be 1-64 characters",
                    ));
                }
                Ok(())
            }
        }
    }
}

// === impl ServiceSpec ===

impl ServiceSpec {
    fn validate(&self) -> Result<(), RegistryError> {
        self.name.validate("name")?;
        names::validate_description("description", &self.description)?;
        if !(1..=super::model::MAX_DNS_TTL_SECONDS).contains(&self.dns_ttl_seconds) {
            return Err(RegistryError::invalid(
                "dns_ttl_seconds",
                format!(
                    "{} is outside 1-{}",
                    self.dns_ttl_seconds,
                    super::model::MAX_DNS_TTL_SECONDS
                ),
            ));
        }
        if let Some(check) = &self.health_check {
            check.validate().map_err(|e| e.within("health_check."))?;
        }
        Ok(())
    }
}

// === impl InstanceSpec ===

impl InstanceSpec {
    fn validate(&self) -> Result<(), RegistryError> {
        names::validate_label("id", &self.id)?;
        if self.address.is_unspecified() || self.address.is_multicast() {
            return Err(RegistryError::invalid(
                "address",
                format!("{} is not a unicast address", self.address),
            ));
        }
        names::validate_port("port", u32::from(self.port))?;
        names::validate_attributes("attributes", &self.attributes)
    }
}
