//! The change feed: what each applied command changed, service by service.
//!
//! `Registry::apply_logged` appends one [`Change`] per instance or service it touched, stamped
//! with the command's revision. The replica publishes them with each view, so watchers and the
//! health checker learn what changed without comparing snapshots (which costs time
//! proportional to a service's size). A refused command logs nothing.

use std::sync::Arc;

use super::model::{Instance, Service};
use super::names::ServiceName;
use super::route::Route;

/// One change to one service, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The revision (log index) of the command that made it.
    pub revision: u64,
    /// The service it concerns.
    pub service: ServiceName,
    /// What happened.
    pub kind: ChangeKind,
}

/// The kinds of change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new instance.
    InstanceAdded(Arc<Instance>),
    /// An instance's health, address, port or attributes changed; its new state.
    InstanceUpdated(Arc<Instance>),
    /// An instance left; its last state.
    InstanceRemoved(Arc<Instance>),
    /// A new service (its instances follow as `InstanceAdded`).
    ServiceCreated(Arc<Service>),
    /// A service was deleted (after `InstanceRemoved` for each of its instances); its last state.
    ServiceDeleted(Arc<Service>),
    /// A service's route was put (`Some`, the new route) or deleted (`None`). Deleting a
    /// service drops its route without this change: `ServiceDeleted` says it all.
    RouteChanged(Option<Arc<Route>>),
}

// === impl ChangeKind ===

impl ChangeKind {
    /// The instance this change is about, if any.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        match self {
            Self::InstanceAdded(i) | Self::InstanceUpdated(i) | Self::InstanceRemoved(i) => Some(i),
            Self::ServiceCreated(_) | Self::ServiceDeleted(_) | Self::RouteChanged(_) => None,
        }
    }
}
