//! Meridian's control plane: the Raft-replicated service registry, its gRPC API and the
//! `meridian` command-line client.
//!
//! # Layout
//! - [`registry`]: the data model and the deterministic state machine (no I/O);
//! - [`raft`]: the raft-rs driver and its on-disk storage (knows nothing of services);
//! - [`replica`]: the registry driven by Raft, with the read views the API serves;
//! - [`api`]: the tonic services;
//! - [`cli`]: the `meridian` subcommands (server and client);
//! - [`node`]: the composition root that wires the rooms and owns shutdown.
//!
//! Dependencies point one way: `api` → `replica` → (`raft`, `registry`); `registry` and
//! `raft` know nothing of each other.

pub mod api;
pub mod cli;
pub mod node;
pub mod raft;
pub mod registry;
pub mod replica;
