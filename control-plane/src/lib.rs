//! Meridian's control plane.
pub mod api;
pub mod cli;
pub mod raft;
pub mod registry;
