//! The DNS server: `dig orders.cafe.local` answers from the local replica.
//!
//! # Layout
//! - [`resolve`]: the pure mapping name → [`resolve::Resolution`] over one registry
//!   snapshot (which names exist, health filtering with fail-open, subsets), and the
//!   [`resolve::Scope`] an answer depends on;
//! - [`answer`]: resolution → records (SRV priority/weight from attributes) → encoded bytes,
//!   with a few precomputed shuffles;
//! - [`wire`]: the hot-path wire format: parse a query, write a reply around cached bytes;
//! - [`respond`]: [`respond::Responder`], one query in, one reply out, with the cache;
//! - `server`: starts the transports and reports how they end; TCP connections;
//! - `udp`: dedicated UDP threads, batched (`recvfrom` drain + one `sendmmsg`);
//! - `forward`: the optional recursor;
//! - [`allow`]: `--dns-allow`, the networks whose queries are answered (others get REFUSED);
//! - [`metrics`]: queries by type and response code, per-responder atomics (no allocation
//!   or shared write per query).
//!
//! # Rules of this room
//! Read-only over the published [`crate::replica::View`]: stale reads, never Raft, never a
//! write. May depend on `registry` (types, read access) and `replica` (the view); nothing
//! depends on it but `node.rs`.
//!
//! # Why hand-rolled transports over hickory-proto types, not hickory-server
//! hickory-server's `RequestHandler` decodes every request into a `Message` and encodes
//! every response record by record. Meridian's answers change only when a service's
//! revision moves, so they are encoded once (with hickory-proto, which we trust for record
//! encoding and name compression) and a query costs a parse of the header and question, two
//! or three map lookups to validate the cached answer, and a copy. hickory-server has no
//! hook for sending pre-encoded bytes, hence our own UDP threads (`udp.rs`), TCP loop
//! (`server.rs`) and bounds-checked query parser (`wire.rs`). The resolver side of the tests uses
//! hickory-resolver and BIND's `dig`, so both ends are checked against independent code.
//!
//! # Caching and freshness
//! Each worker caches encoded answers per (name, type) with the [`resolve::Scope`] they
//! were built in: the service's `(create_revision, mod_revision)`, or the namespace's for
//! names of no service, and the registry revision at which that scope was last checked.
//! While the registry's revision stays put, a hit costs one hash lookup and a copy; once it
//! moves, each cached name's scope is recomputed from the current view on its next query,
//! and only a changed scope rebuilds the answer. So an answer is never staler than the view
//! it is served from, and a busy service never invalidates the others' answers. A UDP
//! thread takes a new view (one atomic load to notice it) once per batch of datagrams.
//!
//! # Threads
//! UDP is served by dedicated OS threads, one per core the process may use (the affinity
//! mask counts: pinned to one core, one thread), outside the runtime that runs Raft and
//! gRPC: at 100k+ queries/s the cost is syscalls and wake-ups, which batching cuts (numbers
//! in BENCHMARKS.md). They stop within `udp::POLL` of cancellation; a thread that fails or
//! panics makes [`serve`] return an error, which the node reports.

pub mod allow;
pub mod answer;
mod forward;
pub mod metrics;
pub mod resolve;
pub mod respond;
mod server;
mod udp;
pub mod wire;

#[cfg(test)]
mod tests;

use std::net::{SocketAddr, UdpSocket};

use tokio::net::TcpListener;

pub use allow::AllowList;
pub use metrics::DnsMetrics;
pub use server::serve;

/// Default cap on the records of one answer: Route 53's multivalue answers return up to 8.
pub const DEFAULT_MAX_ANSWERS: usize = 8;
/// Highest accepted `--dns-max-answers`: keeps every answer well inside a TCP message.
pub const MAX_ANSWERS_LIMIT: usize = 256;

/// How the DNS server behaves.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// At most this many records per answer (1–[`MAX_ANSWERS_LIMIT`]); the instances are
    /// shuffled first, so different queries see different subsets.
    pub max_answers: usize,
    /// Forward names outside every namespace here; `None` answers them REFUSED.
    pub recursor: Option<SocketAddr>,
    /// Cache encoded answers (the default). Off rebuilds every answer per query: only for
    /// measuring what the cache buys (`MERIDIAN_DNS_NO_CACHE=1` turns it off in a server).
    pub cache: bool,
    /// Where answered queries are counted (by type and response code).
    pub metrics: DnsMetrics,
    /// Answer only queries from these networks (`--dns-allow`), REFUSED to the others;
    /// `None`: everyone.
    pub allow: Option<AllowList>,
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound.
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A transport task or thread ended without being asked to (or panicked).
    #[error("a DNS transport task stopped unexpectedly")]
    Stopped,
    /// A UDP thread could not be started.
    #[error("cannot start a DNS UDP thread: {0}")]
    Thread(std::io::Error),
    /// A UDP thread failed (its socket could not be set up).
    #[error("DNS UDP thread failed: {0}")]
    Udp(std::io::Error),
    /// A transport task panicked.
    #[error("DNS task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

// === impl DnsConfig ===

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            max_answers: DEFAULT_MAX_ANSWERS,
            recursor: None,
            cache: true,
            metrics: DnsMetrics::default(),
            allow: None,
        }
    }
}

// === functions ===

/// Binds UDP and TCP on the same address. With port 0, UDP picks a free port and TCP takes
/// the same one (retrying a few times if that port is taken for TCP). The UDP socket is a
/// blocking std socket: it is served by dedicated threads, not by the runtime.
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    // Eight tries: a port free for UDP is almost always free for TCP too.
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr).map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}
