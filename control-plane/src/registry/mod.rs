//! The registry: Meridian's data model and its deterministic state machine.
//!
//! # Layout
//! - [`names`]: validation of every user-supplied field (DNS names, addresses, ports,
//!   attributes), one typed error per field;
//! - [`model`]: namespaces, services, instances and their health;
//! - [`route`]: a service's route (rules, weighted subsets, retries, load balancing) and its
//!   validation;
//! - [`acl`]: tokens (stored as hashes), their policies and the checks against them;
//! - [`change`]: the change feed (what each command changed, for watchers);
//! - [`command`]: the replicated commands (each starts with a type tag) and their outcomes;
//! - [`codec`]: how commands are written into the log (binary for the hot instance commands,
//!   JSON for the rest and for entries of older versions);
//! - [`state`]: [`Registry`], `apply(index, command)`, revisions, snapshot and restore;
//! - [`discover`]: the pure filtering behind `DiscoverInstances`.
//!
//! # Rules of this room
//! No I/O, no clock, no randomness, no tokio, tonic or raft imports: the same command log
//! applied anywhere yields byte-identical state. Decisions that depend on time (TTL expiry)
//! are taken by the leader and written into a command. A command the state machine rejects is
//! rejected identically on every replica, and leaves the state untouched.
//!
//! Readers get the registry as an immutable value (`Arc<Registry>`); cloning it is cheap
//! because namespaces, services and instances are shared behind `Arc`s and copied on write.

pub mod acl;
pub mod change;
pub mod codec;
pub mod command;
pub mod discover;
pub mod error;
pub mod model;
pub mod names;
pub mod route;
pub mod state;

#[cfg(test)]
mod acl_tests;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod tests;

pub use acl::{Access, Acl, NameMatch, Policy, Resource, Rule, Token, TokenSpec};
pub use change::{Change, ChangeKind};
pub use codec::DecodeError;
pub use command::{Command, InstanceSpec, Outcome, ServiceSpec};
pub use discover::{DiscoverQuery, HealthFilter};
pub use error::RegistryError;
pub use model::{Attributes, CheckKind, HealthCheck, HealthStatus, Instance, Namespace, Service};
pub use names::ServiceName;
pub use route::{Route, RouteSpec};
pub use state::Registry;
