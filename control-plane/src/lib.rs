//! Meridian's control plane: the Raft-replicated service registry, its gRPC API and the
//! `meridian` command-line client.
//!
//! # Layout
//! - [`registry`]: the data model and the deterministic state machine (no I/O);
//! - [`raft`]: the raft-rs driver and its on-disk storage (knows nothing of services);
//! - [`replica`]: the registry driven by Raft, with the read views the API serves;
//! - [`api`]: the tonic services;
//! - [`auth`]: ACL token secrets from call metadata, checked against the replicated tokens;
//! - [`watch`]: watch streams, fed from the published views (any node);
//! - [`discovery`]: proxy streams (subscriptions, pushes, acks) and `WaitApplied` (any node);
//! - [`health`]: TTL heartbeats and active checks (run by the leader);
//! - [`peer`]: raft messages between nodes over gRPC;
//! - [`dns`]: the DNS server, answering from the local replica;
//! - [`telemetry`]: metrics, spans around gRPC calls, the admin HTTP port;
//! - [`cli`]: the `meridian` subcommands (server and client);
//! - [`node`]: the composition root that wires the rooms and owns shutdown.
//!
//! Dependencies point one way: `api` → `replica` → (`raft`, `registry`); `registry` and
//! `raft` know nothing of each other.

pub mod api;
pub mod auth;
pub mod cli;
pub mod discovery;
pub mod dns;
pub mod health;
pub mod node;
pub mod peer;
pub mod raft;
pub mod registry;
pub mod replica;
pub mod telemetry;
pub mod watch;
