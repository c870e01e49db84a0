//! [`Responder`]: one query in, one reply out, over a registry snapshot. No sockets.
//!
//! Each transport worker owns a `Responder` and its answer cache (no lock is shared between
//! workers). A cached answer is keyed by the question name, lower-cased in wire form, and
//! type, and carries the [`Scope`] it was built in and the registry revision at which that
//! scope was last checked. While the registry's revision is unchanged, a hit is served as
//! is: no name conversion, no map lookup in the registry. Once the revision moves, the
//! name's current scope is computed from the snapshot (two or three map lookups) the next
//! time it is asked, and a differing scope means the service (or namespace) changed since:
//! the answer is rebuilt. So a busy service never invalidates answers about the others,
//! and an answer is never staler than the snapshot it is served from.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::DnsConfig;
use super::answer::{self, Encoded};
use super::metrics::Shard;
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
///
/// Freshness relies on one property of the registries handed to one responder: they come
/// from one history (one node's replica), in which a revision names one state.
#[derive(Debug)]
pub struct Responder {
    max_answers: usize,
    forward: bool,
    use_cache: bool,
    /// Keyed by [`Query::write_cache_key`]: the lower-cased wire name and the type.
    cache: HashMap<Box<[u8]>, Entry>,
    /// Scratch for the cache key of the current query.
    wire_key: Vec<u8>,
    /// Scratch for the dotted name (`orders.cafe.local`), built only when the registry
    /// must be consulted.
    key: String,
    rotation: usize,
    seed: u64,
    /// This responder's query counters.
    counts: Shard,
    /// The type of the query being answered (0 until its question parsed).
    qtype: u16,
}

#[derive(Debug)]
struct Entry {
    scope: Scope,
    /// The registry revision at which `scope` was last found current.
    checked: u64,
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
            wire_key: Vec::with_capacity(260),
            key: String::with_capacity(256),
            rotation: 0,
            // Per-process random seed for the shuffles (std's hasher keys are random).
            seed: RandomState::new().hash_one(0u8),
            counts: config.metrics.shard(),
            qtype: 0,
        }
    }

    /// Answers `packet` from `registry` into `out`. Never panics on any input. A reply is
    /// counted by its question type and response code (forwarded and dropped queries are
    /// not: the reply is not ours).
    pub fn respond(
        &mut self,
        registry: &Registry,
        packet: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Action {
        self.qtype = 0;
        let action = self.answer(registry, packet, transport, out);
        if action == Action::Reply
            && let Some(flags) = out.get(3)
        {
            self.counts.record(self.qtype, flags & 0x0F);
        }
        action
    }

    /// Answers `packet` REFUSED without looking at any registry: its source is outside
    /// `--dns-allow`. The question (and OPT) is echoed when the packet parses, the header
    /// alone otherwise; responses and packets too short for a header are dropped. Counted
    /// under the question's type and REFUSED, and as refused by the allow list.
    pub fn refuse(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Action {
        let qtype = match Query::parse(packet) {
            Err(Reject::Drop) => return Action::Drop,
            Err(Reject::Error(_)) => {
                write_empty(out, None, packet, Rcode::Refused, false);
                0
            }
            Ok(query) => {
                write_empty(out, Some(&query), packet, Rcode::Refused, false);
                query.qtype
            }
        };
        self.counts.record(qtype, Rcode::Refused as u8);
        self.counts.record_refused_by_acl();
        Action::Reply
    }

    fn answer(
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
        self.qtype = query.qtype;
        let qtype = RecordType::from(query.qtype);
        match qtype {
            RecordType::OPT => return refuse(out, Rcode::FormErr),
            RecordType::AXFR | RecordType::IXFR => return refuse(out, Rcode::Refused),
            _ if query.qclass != CLASS_IN => return refuse(out, Rcode::Refused),
            _ => {}
        }

        query.write_cache_key(&mut self.wire_key);
        let revision = registry.revision();
        // The hot path: one hash lookup, one comparison, one copy.
        if self.use_cache
            && let Some(entry) = self.cache.get(self.wire_key.as_slice())
            && entry.checked == revision
        {
            let rotation = self.rotation;
            self.rotation = rotation.wrapping_add(1);
            return reply(entry, rotation, &query, transport, out);
        }
        {
            query.write_key(&mut self.key);
            let scope = resolve::scope(registry, &self.key);
            if scope == Scope::Outside {
                return if self.forward {
                    Action::Forward
                } else {
                    refuse(out, Rcode::Refused)
                };
            }
            let current = self.use_cache
                && match self.cache.get_mut(self.wire_key.as_slice()) {
                    Some(e) if e.scope == scope => {
                        e.checked = revision;
                        true
                    }
                    _ => false,
                };
            if !current {
                let resolution = resolve::resolve(registry, &self.key, qtype);
                self.seed = answer::splitmix64(&mut self.seed);
                match answer::encode(&self.key, qtype, &resolution, self.max_answers, self.seed) {
                    Ok(encoded) => {
                        if self.cache.len() >= CACHE_CAPACITY || !self.use_cache {
                            self.cache.clear();
                        }
                        let entry = Entry {
                            scope,
                            checked: revision,
                            encoded,
                        };
                        self.cache.insert(self.wire_key.as_slice().into(), entry);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot answer");
                        return refuse(out, Rcode::ServFail);
                    }
                }
            }
        }
        let Some(entry) = self.cache.get(self.wire_key.as_slice()) else {
            return refuse(out, Rcode::ServFail);
        };
        let rotation = self.rotation;
        self.rotation = rotation.wrapping_add(1);
        reply(entry, rotation, &query, transport, out)
    }
}

// === functions ===

/// Writes the reply for `query` from a cached `entry` into `out`, the `rotation`-th of its
/// precomputed orders; truncated (TC, question only) if it exceeds the transport's limit.
fn reply(
    entry: &Entry,
    rotation: usize,
    query: &Query<'_>,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Action {
    let orders = &entry.encoded.orders;
    let rcode = if entry.encoded.rcode == ResponseCode::NXDomain {
        Rcode::NxDomain
    } else {
        Rcode::NoError
    };
    let Some(tail) = orders.get(rotation % orders.len().max(1)) else {
        write_empty(out, Some(query), query.packet, Rcode::ServFail, false);
        return Action::Reply;
    };
    write_answer(out, query, rcode, tail.counts, &tail.bytes);
    let limit = match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if out.len() > limit {
        // Not all records fit: TC with the question only; the client retries over TCP
        // (RFC 2181 §9, RFC 7766), which carries the whole answer.
        write_empty(out, Some(query), query.packet, rcode, true);
    }
    Action::Reply
}
