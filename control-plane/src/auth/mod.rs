//! Who is calling and what they may do: ACL token secrets from call metadata, checked against
//! the tokens in the local replica's registry.
//!
//! # Layout
//! - [`secret`]: drawing secrets and accessors (the OS's CSPRNG) and hashing secrets (SHA-256);
//! - [`bootstrap`]: `--acl-bootstrap-token`, the first admin token, installed once;
//! - [`check`]: [`Authorizer`], from the `authorization` metadata of a call to the caller's
//!   policy, and the gRPC statuses for "who are you" and "not allowed".
//!
//! - [`layer`]: [`AuthLayer`], which authenticates every call once and hands the [`Caller`]
//!   to the handlers, which check it against what the call touches;
//! - [`rate`]: [`RateLimiter`], a token bucket per caller (`RESOURCE_EXHAUSTED` past it);
//! - [`streams`]: [`StreamLimitLayer`], open watch and discovery streams per caller, and the
//!   default HTTP/2 streams per connection;
//!
//! # Rules of this room
//! Answers never say more than UNAUTHENTICATED or PERMISSION_DENIED: not whether a token or a
//! service exists, not which rule was missing. Checks read the registry a node has applied, so
//! a revocation takes effect on each node as it applies the command.

pub mod bootstrap;
pub mod check;
pub mod layer;
pub mod rate;
pub mod secret;
pub mod streams;

pub use check::{Authorizer, Caller, denied};
pub use layer::{AuthLayer, caller};
pub use rate::RateLimiter;
pub use secret::{NewToken, hash_secret};
pub use streams::{DEFAULT_MAX_CONCURRENT_STREAMS, StreamLimitLayer};

/// A node's access control: ACLs on or off, the bootstrap token, the per-caller rate limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessConfig {
    /// Every call needs a token (`--acl-enabled`).
    pub acl_enabled: bool,
    /// The first admin token's secret (`--acl-bootstrap-token`), installed once per cluster.
    pub bootstrap_token: Option<String>,
    /// Calls per second per caller (`--rate-limit`); `None`: unlimited.
    pub rate_limit: Option<f64>,
    /// Instances one service may hold (`--max-instances-per-service`); `None`: unlimited.
    pub max_instances_per_service: Option<usize>,
    /// Open `Registry.Watch` plus `Discovery.Stream` streams per caller
    /// (`--max-watchers-per-client`); `None`: unlimited.
    pub max_watchers_per_client: Option<usize>,
    /// HTTP/2 streams one connection may have open at once (`--max-concurrent-streams`);
    /// `None`: [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: Option<u32>,
}
