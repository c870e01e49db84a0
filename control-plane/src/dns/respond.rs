//! [`Responder`]: one query in, one reply out, over a registry snapshot. No sockets.
//!
//! Each transport worker owns a `Responder` and its answer cache (no lock is shared between
//! workers). A cached answer is keyed by (name, type) and carries the [`Scope`] it was built
//! in; on every query the name's current scope is computed from the snapshot (two or three
//! map lookups), and a differing scope means the service (or namespace) changed since: the
//! answer is rebuilt. So a busy service never invalidates answers about the others.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::DnsConfig;
use super::answer::{self, Encoded};
use super::resolve::{self, Scope};
use super::wire::{Query, Rcode, Reject, write_answer, write_empty};
use crate::registry::Registry;

/// Most cached answers per worker; past it the cache starts over. Bounds the memory that
/// queries for many distinct names (hostile or not) can take: ~10k × a few hundred bytes.
pub const CACHE_CAPACITY: usize = 10_000;
/// Class IN.
const CLASS_IN: u16 = 1;

/// Which transport a query came over: it decides the size limit of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: at most 512 bytes, or the client's EDNS size capped at 1232; else truncated.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

/// What the transport should do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the bytes written to `out`.
    Reply,
    /// The name is outside every namespace and a recursor is configured: relay the query.
    Forward,
    /// Send nothing.
    Drop,
}

/// Answers queries from registry snapshots, with a cache of encoded answers.
#[derive(Debug)]
pub struct Responder {
    max_answers: usize,
    forward: bool,
    use_cache: bool,
    cache: HashMap<String, Entry>,
    key: String,
    rotation: usize,
    seed: u64,
}

#[derive(Debug)]
struct Entry {
    scope: Scope,
    encoded: Encoded,
}

// === impl Responder ===

impl Responder {
    /// A responder with an empty cache.
    pub fn new(config: &DnsConfig) -> Self {
        Self {
            max_answers: config.max_answers.clamp(1, super::MAX_ANSWERS_LIMIT),
            forward: config.recursor.is_some(),
            use_cache: config.cache,
            cache: HashMap::new(),
            key: String::with_capacity(64),
            rotation: 0,
            // Per-process random seed for the shuffles (std's hasher keys are random).
            seed: RandomState::new().hash_one(0u8),
        }
    }

    /// Answers `packet` from `registry` into `out`. Never panics on any input.
    pub fn respond(
        &mut self,
        registry: &Registry,
        packet: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Action {
        let query = match Query::parse(packet) {
            Ok(query) => query,
            Err(Reject::Drop) => return Action::Drop,
            Err(Reject::Error(rcode)) => {
                write_empty(out, None, packet, rcode, false);
                return Action::Reply;
            }
        };
        let refuse = |out: &mut Vec<u8>, rcode| {
            write_empty(out, Some(&query), packet, rcode, false);
            Action::Reply
        };
        if query.edns.is_some_and(|e| e.version != 0) {
            return refuse(out, Rcode::BadVers);
        }
        let qtype = RecordType::from(query.qtype);
        match qtype {
            RecordType::OPT => return refuse(out, Rcode::FormErr),
            RecordType::AXFR | RecordType::IXFR => return refuse(out, Rcode::Refused),
            _ if query.qclass != CLASS_IN => return refuse(out, Rcode::Refused),
            _ => {}
        }

        query.write_key(&mut self.key);
        let name_len = self.key.len();
        let scope = resolve::scope(registry, &self.key);
        if scope == Scope::Outside {
            return if self.forward {
                Action::Forward
            } else {
                refuse(out, Rcode::Refused)
            };
        }
        let _ = write!(self.key, "/{}", query.qtype);
        let fresh = self.use_cache
            && self
                .cache
                .get(self.key.as_str())
                .is_some_and(|e| e.scope == scope);
        if !fresh {
            let name = &self.key[..name_len];
            let resolution = resolve::resolve(registry, name, qtype);
            self.seed = answer::splitmix64(&mut self.seed);
            match answer::encode(name, qtype, &resolution, self.max_answers, self.seed) {
                Ok(encoded) => {
                    if self.cache.len() >= CACHE_CAPACITY || !self.use_cache {
                        self.cache.clear();
                    }
                    self.cache
                        .insert(self.key.clone(), Entry { scope, encoded });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot answer");
                    return refuse(out, Rcode::ServFail);
                }
            }
        }
        let Some(entry) = self.cache.get(self.key.as_str()) else {
            return refuse(out, Rcode::ServFail);
        };
        let orders = &entry.encoded.orders;
        let Some(tail) = orders.get(self.rotation % orders.len().max(1)) else {
            return refuse(out, Rcode::ServFail);
        };
        self.rotation = self.rotation.wrapping_add(1);
        let rcode = if entry.encoded.rcode == ResponseCode::NXDomain {
            Rcode::NxDomain
        } else {
            Rcode::NoError
        };
        write_answer(out, &query, rcode, tail.counts, &tail.bytes);
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if out.len() > limit {
            // Not all records fit: TC with the question only; the client retries over TCP
            // (RFC 2181 §9, RFC 7766), which carries the whole answer.
            write_empty(out, Some(&query), packet, rcode, true);
        }
        Action::Reply
    }
}
