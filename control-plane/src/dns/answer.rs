//! Resolution → records → wire bytes, once per (name, type) and registry change.
//!
//! [`records`] turns a [`Found`] into hickory-proto records (pure, unit-tested). [`encode`]
//! encodes a whole response once with hickory-proto and keeps only what follows the question
//! (the [`Tail`]): a reply is then the query's own header and question, patched, plus a copy
//! of a tail. Compression pointers in the tail point into the question at offset 12, which is
//! the client's question byte for byte up to ASCII case, so they stay valid.
//!
//! Shuffling: a few orders of the instances are precomputed (rotations of one random
//! permutation) and replies rotate through them, so a query costs a copy, not a shuffle.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::resolve::{Found, Kind, Resolution, Soa};
use crate::registry::Instance;

/// Most precomputed orders per answer: enough that consecutive clients see different first
/// records and, when more instances match than fit, different subsets.
pub const MAX_ORDERS: usize = 8;
/// SRV priority when an instance has no valid `priority` attribute (Consul's default).
pub const DEFAULT_SRV_PRIORITY: u16 = 1;
/// SRV weight when an instance has no valid `weight` attribute (Consul's default).
pub const DEFAULT_SRV_WEIGHT: u16 = 1;
/// SOA timers (refresh, retry, expire): nothing transfers Meridian's zones, but the record
/// must carry them; these are the usual RFC 1912 values.
const SOA_TIMERS: (i32, i32, i32) = (3_600, 600, 86_400);

/// The records of one response, by section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections {
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// A response minus its header and question: the part that is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Answer, authority and additional record counts.
    pub counts: [u16; 3],
    /// The encoded records.
    pub bytes: Vec<u8>,
}

/// Everything needed to answer one (name, type) until its scope changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// One tail per precomputed order (at least one).
    pub orders: Vec<Tail>,
}

/// Why an answer could not be encoded (a name hickory-proto refuses, an oversized message).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the answer: {0}")]
pub struct EncodeError(String);

// === functions ===

/// The records answering `qname` from `found`, instances taken in `order` (indexes into
/// `found.instances`), at most `max_answers` of them.
pub fn records(qname: &Name, found: &Found, order: &[usize], max_answers: usize) -> Sections {
    let mut out = Sections::default();
    let mut chosen: Vec<&Arc<Instance>> = order
        .iter()
        .filter_map(|&i| found.instances.get(i))
        .collect();
    match found.kind {
        Kind::Addresses { .. } => {
            for instance in chosen.into_iter().take(max_answers) {
                out.answers
                    .push(address(qname.clone(), found.ttl, instance.address));
            }
        }
        Kind::Srv => {
            // Lowest priority first, so a cap keeps the instances clients would use first;
            // the sort is stable, so the shuffle survives within a priority.
            chosen.sort_by_key(|i| srv_number(i, "priority", DEFAULT_SRV_PRIORITY));
            for instance in chosen.into_iter().take(max_answers) {
                let Ok(target) = fqdn(&format!("{}.{}", instance.id, found.service)) else {
                    continue;
                };
                let srv = SRV::new(
                    srv_number(instance, "priority", DEFAULT_SRV_PRIORITY),
                    srv_number(instance, "weight", DEFAULT_SRV_WEIGHT),
                    instance.port,
                    target.clone(),
                );
                out.answers.push(Record::from_rdata(
                    qname.clone(),
                    found.ttl,
                    RData::SRV(srv),
                ));
                out.additionals
                    .push(address(target, found.ttl, instance.address));
            }
        }
    }
    out
}

/// The SOA record of a negative (or apex) answer.
pub fn soa_record(soa: &Soa) -> Result<Record, EncodeError> {
    let apex = fqdn(&soa.namespace)?;
    let mname = fqdn(&format!("ns.{}", soa.namespace))?;
    let rname = fqdn(&format!("hostmaster.{}", soa.namespace))?;
    let (refresh, retry, expire) = SOA_TIMERS;
    let data = SOA::new(
        mname,
        rname,
        soa.serial,
        refresh,
        retry,
        expire,
        soa.negative_ttl,
    );
    Ok(Record::from_rdata(apex, soa.negative_ttl, RData::SOA(data)))
}

/// Encodes the answer to (`key`, `qtype`); `seed` picks the shuffle. `Outside` is not
/// encoded here (it depends on the server's forwarding, not on the registry).
pub fn encode(
    key: &str,
    qtype: RecordType,
    resolution: &Resolution,
    max_answers: usize,
    seed: u64,
) -> Result<Encoded, EncodeError> {
    let qname = query_name(key)?;
    let max_answers = max_answers.max(1);
    let (rcode, all_sections) = match resolution {
        Resolution::Outside => return Err(EncodeError("outside every namespace".into())),
        Resolution::NxDomain(soa) => (ResponseCode::NXDomain, vec![negative(soa)?]),
        Resolution::NoData(soa) => (ResponseCode::NoError, vec![negative(soa)?]),
        Resolution::Apex(soa) => {
            let sections = Sections {
                answers: vec![soa_record(soa)?],
                ..Sections::default()
            };
            (ResponseCode::NoError, vec![sections])
        }
        Resolution::Found(found) => {
            let orders = orders(found.instances.len(), seed);
            let sections = orders
                .iter()
                .map(|order| records(&qname, found, order, max_answers))
                .collect();
            (ResponseCode::NoError, sections)
        }
    };
    let orders = all_sections
        .into_iter()
        .map(|s| tail(&qname, key, qtype, rcode, s))
        .collect::<Result<_, _>>()?;
    Ok(Encoded { rcode, orders })
}

/// Rotations of one random permutation of `0..n`: at most [`MAX_ORDERS`] of them, spread
/// evenly, so every instance leads some order and a cap still reaches every instance.
pub fn orders(n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut state = seed;
    // Fisher–Yates with splitmix64: randomness without a dependency, quality to spare here.
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    let count = n.clamp(1, MAX_ORDERS);
    (0..count)
        .map(|k| {
            let mut order = perm.clone();
            order.rotate_left(k * n / count);
            order
        })
        .collect()
}

/// One step of splitmix64.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The question name as hickory-proto sees it, from our lower-case key.
pub fn query_name(key: &str) -> Result<Name, EncodeError> {
    Name::from_labels(key.split('.').filter(|l| !l.is_empty()).map(str::as_bytes))
        .map_err(|e| EncodeError(format!("{key:?}: {e}")))
}

fn fqdn(name: &str) -> Result<Name, EncodeError> {
    query_name(name)
}

fn negative(soa: &Soa) -> Result<Sections, EncodeError> {
    Ok(Sections {
        authorities: vec![soa_record(soa)?],
        ..Sections::default()
    })
}

fn address(name: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, data)
}

fn srv_number(instance: &Instance, key: &str, default: u16) -> u16 {
    instance
        .attributes
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Encodes a full response with hickory-proto and cuts off header and question.
fn tail(
    qname: &Name,
    key: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    sections: Sections,
) -> Result<Tail, EncodeError> {
    let mut message = Message::response(0, OpCode::Query);
    message.metadata.authoritative = true;
    message.metadata.response_code = rcode;
    message.add_query(Query::query(qname.clone(), qtype));
    message.insert_answers(sections.answers);
    message.insert_authorities(sections.authorities);
    message.insert_additionals(sections.additionals);
    let bytes = message
        .to_vec()
        .map_err(|e| EncodeError(format!("{key:?}: {e}")))?;
    // Header (12) + the question name, uncompressed (labels + length bytes + root) + type
    // and class (4).
    let question_end = 12 + name_wire_len(key) + 4;
    if bytes.len() < question_end {
        return Err(EncodeError(format!("{key:?}: short encoding")));
    }
    let count = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    Ok(Tail {
        counts: [count(6), count(8), count(10)],
        bytes: bytes[question_end..].to_vec(),
    })
}

/// Wire length of a lower-case dotted name without trailing dot (`""` is the root).
pub fn name_wire_len(key: &str) -> usize {
    if key.is_empty() { 1 } else { key.len() + 2 }
}
