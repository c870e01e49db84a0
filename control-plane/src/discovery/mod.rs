//! Discovery: the proxies' side of the registry. Each proxy holds one stream, subscribes to
//! the services it needs, gets their state at once and again the moment a change to one of
//! them is applied on this node, and acknowledges (or rejects) each version.
//!
//! # What it owns
//! - `hub.rs`: one task per node that follows the replica's published views and knows which
//!   stream follows which service. For each new view it finds the services that changed (the
//!   change feed; when the feed does not reach back, a `mod_revision` comparison of the
//!   subscribed services only) and marks them in the outbox of each subscribed stream: the
//!   work of a write is proportional to the services it changed and their subscribers, never
//!   to the size of the mesh or the number of proxies.
//! - `session.rs`: one [`Session`] per stream (after its hello): subscriptions, acks, and
//!   the next [`Push`] to send. Its outbox coalesces: a proxy that reads slowly gets, on its
//!   next read, one push with the latest state of every service that changed meanwhile, never
//!   a backlog (so a stalled proxy costs a bounded set of names, and delays nobody).
//! - `proxies.rs`: the [`ProxyTable`] of connected proxies (who they are, what they follow,
//!   which version was sent, acknowledged, rejected), for `ListProxies` and `WaitApplied`.
//! - `wait.rs`: [`DiscoveryHandle::wait_applied`], woken by acks and new views (no polling).
//!
//! # Versions
//! A push's version is the registry revision (the Raft index of the last registry write) of
//! the view it was built from: every subscribed service of the stream is current as of it.
//! It never decreases along a stream (the hub handles views and subscriptions in order).
//!
//! # Depends on
//! `registry` (types) and `replica` (published [`View`]s); tokio. No tonic: the API converts.

mod hub;
mod proxies;
mod session;
mod wait;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, watch};

use crate::registry::{Service, ServiceName};
use crate::replica::View;

pub use hub::DiscoveryHub;
pub use proxies::{ProxyStatus, ProxyTable};
pub use session::{Hello, Session};
pub use wait::WaitOutcome;

/// Most services one stream may follow: a bound on what one client can make the node track.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;
/// Most services in one `Subscribe` or `Unsubscribe` message.
pub const MAX_SERVICES_PER_MESSAGE: usize = 1_000;
/// Most bytes of a rejection reason kept.
pub const MAX_NACK_ERROR: usize = 1_024;

/// What one push carries: the services of a stream that changed (or were just subscribed),
/// each as of `version`.
#[derive(Debug, Clone)]
pub struct Push {
    /// The registry revision the stream is now current with.
    pub version: u64,
    /// The states, in name order.
    pub states: Vec<ServiceState>,
}

/// One service as a proxy learns it.
#[derive(Debug, Clone)]
pub struct ServiceState {
    /// Its full name.
    pub name: ServiceName,
    /// The service (instances, route); `None` if it does not exist.
    pub service: Option<Arc<Service>>,
}

/// The discovery room's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A field of a proxy's message is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as the proto spells it.
        field: String,
        /// Why.
        reason: String,
    },
    /// The hub stopped (the node is shutting down).
    #[error("the discovery hub is stopped")]
    Stopped,
}

/// Requests to the hub.
#[derive(Debug)]
enum Cmd {
    Open {
        id: u64,
        outbox: Arc<session::Outbox>,
    },
    Subscribe {
        id: u64,
        services: Vec<ServiceName>,
    },
    Unsubscribe {
        id: u64,
        services: Vec<ServiceName>,
    },
}

/// A cheap, cloneable handle on the discovery room.
#[derive(Debug, Clone)]
pub struct DiscoveryHandle {
    node_id: u64,
    cmds: mpsc::Sender<Cmd>,
    // Unbounded, but each stream sends one id when it ends: bounded by the number of streams.
    closes: mpsc::UnboundedSender<u64>,
    next_id: Arc<AtomicU64>,
    proxies: Arc<ProxyTable>,
    views: watch::Receiver<View>,
}

// === impl DiscoveryError ===

impl DiscoveryError {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// === impl DiscoveryHandle ===

impl DiscoveryHandle {
    /// This node's id (reported with every push and proxy).
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The proxies connected to this node.
    pub fn proxies(&self) -> &ProxyTable {
        &self.proxies
    }
}
