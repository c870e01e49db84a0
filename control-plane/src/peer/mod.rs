//! Peer traffic: raft messages between control-plane nodes over gRPC (`meridian.v1.Peer`).
//!
//! # Layout
//! - [`transport`]: [`GrpcTransport`], the raft room's `Transport`: one task per peer with a
//!   bounded queue, one long-lived client stream per peer, reconnect with backoff, and
//!   feedback to raft (unreachable peers, snapshot delivery);
//! - [`service`]: [`PeerService`], the receiving end: frames reassembled into raft messages
//!   and stepped into the local node; with mutual TLS, each message's sender checked against
//!   the node its connection's certificate names;
//! - [`dial`]: [`Dialer`], how a node reaches another member (plain, or TLS by identity).
//!
//! Raft messages are rust-protobuf 2 types; they cross the wire as opaque bytes so they never
//! meet prost. Large messages (snapshots) are cut into frames of [`FRAME_BYTES`].
//!
//! Depends on the raft room's `Transport`/`RaftHandle` and the generated peer stubs; knows
//! nothing of services. Without the `--tls-*` flags peers are not authenticated: run the
//! listener on a trusted network (docs/security.md).

pub mod dial;
pub mod service;
pub mod transport;

pub use dial::{DialOptions, Dialer};
pub use service::PeerService;
pub use transport::GrpcTransport;

/// Largest frame on a peer stream. Snapshots of a large registry are tens of MiB: cutting them
/// keeps every gRPC message far below the decoder's limit and lets heartbeats interleave on
/// other streams.
pub const FRAME_BYTES: usize = 1024 * 1024;
