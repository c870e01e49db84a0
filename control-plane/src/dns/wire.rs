//! The DNS wire format on the hot path: parsing a query, writing a reply around a cached
//! tail. Hand-written (about 200 lines) because a query is needed only up to its question
//! and OPT record, and a full `Message` decode would allocate on every packet; every read is
//! bounds-checked, so a hostile packet can only be dropped or answered FORMERR.

/// Header length.
pub const HEADER_LEN: usize = 12;
/// Largest UDP reply we send, whatever the client offers: the DNS flag day 2020 value, which
/// avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Classic DNS limit for UDP without EDNS (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// Longest name on the wire (RFC 1035 §3.1).
const MAX_NAME_WIRE: usize = 255;
/// The OPT pseudo-record's type (RFC 6891).
const TYPE_OPT: u16 = 41;

/// Response codes we send (RFC 1035, RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// NOERROR.
    NoError = 0,
    /// FORMERR: the query could not be understood.
    FormErr = 1,
    /// SERVFAIL.
    ServFail = 2,
    /// NXDOMAIN.
    NxDomain = 3,
    /// NOTIMP: an opcode we do not implement.
    NotImp = 4,
    /// REFUSED: not ours to answer.
    Refused = 5,
    /// BADVERS (extended, 16): an EDNS version we do not speak.
    BadVers = 16,
}

/// The EDNS(0) part of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size.
    pub udp_size: u16,
    /// EDNS version.
    pub version: u8,
    /// The DNSSEC OK bit (copied into the reply, RFC 3225).
    pub dnssec_ok: bool,
}

/// A parsed query: borrowed from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The whole packet.
    pub packet: &'a [u8],
    /// Question name, type and class exactly as sent.
    pub question: &'a [u8],
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The OPT record, if any.
    pub edns: Option<Edns>,
}

/// Why a packet is not a query we can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: shorter than a header, or itself a response.
    Drop,
    /// Answer with this code, echoing only the header.
    Error(Rcode),
}

// === impl Query ===

impl<'a> Query<'a> {
    /// Parses `packet`; anything malformed is a [`Reject`], never a panic.
    pub fn parse(packet: &'a [u8]) -> Result<Self, Reject> {
        if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
            return Err(Reject::Drop);
        }
        if (packet[2] >> 3) & 0x0F != 0 {
            return Err(Reject::Error(Rcode::NotImp));
        }
        let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
        let formerr = Reject::Error(Rcode::FormErr);
        // A standard query asks one question and carries no answer or authority records.
        if count(4) != 1 || count(6) != 0 || count(8) != 0 {
            return Err(formerr);
        }
        let name_end = skip_name(packet, HEADER_LEN, false).ok_or(formerr)?;
        let question_end = name_end + 4;
        let fixed = packet.get(name_end..question_end).ok_or(formerr)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        let mut edns = None;
        let mut at = question_end;
        for _ in 0..count(10) {
            let owner_end = skip_name(packet, at, true).ok_or(formerr)?;
            let fixed = packet.get(owner_end..owner_end + 10).ok_or(formerr)?;
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
            let end = owner_end + 10 + rdlen;
            if end > packet.len() {
                return Err(formerr);
            }
            if rtype == TYPE_OPT {
                // One OPT, owned by the root (RFC 6891 §6.1.1).
                if edns.is_some() || owner_end != at + 1 {
                    return Err(formerr);
                }
                edns = Some(Edns {
                    udp_size: u16::from_be_bytes([fixed[2], fixed[3]]),
                    version: fixed[5],
                    dnssec_ok: fixed[6] & 0x80 != 0,
                });
            }
            at = end;
        }
        Ok(Self {
            packet,
            question: &packet[HEADER_LEN..question_end],
            qtype,
            qclass,
            edns,
        })
    }

    /// The question name's wire bytes.
    pub fn qname(&self) -> &'a [u8] {
        &self.question[..self.question.len() - 4]
    }

    /// The largest UDP reply this client takes.
    pub fn udp_limit(&self) -> usize {
        let size = self.edns.map_or(CLASSIC_UDP_PAYLOAD, |e| {
            e.udp_size.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        });
        usize::from(size)
    }

    /// Writes the question name lower-cased, in wire form, then the question type: the
    /// answer cache's key. No allocation once `key` has grown, no conversion to text (length
    /// bytes are below 64, so lower-casing leaves them alone).
    pub fn write_cache_key(&self, key: &mut Vec<u8>) {
        key.clear();
        key.extend(self.qname().iter().map(u8::to_ascii_lowercase));
        key.extend_from_slice(&self.qtype.to_be_bytes());
    }

    /// Writes the question name as a lower-case dotted key (no trailing dot) into `key`.
    /// Bytes that cannot appear in a registry name become `?`, which matches nothing, so
    /// such names fall through to NXDOMAIN (or REFUSED) without aliasing a real one.
    pub fn write_key(&self, key: &mut String) {
        key.clear();
        let name = self.qname();
        let mut at = 0;
        while let Some(&len) = name.get(at) {
            let len = usize::from(len);
            if len == 0 {
                break;
            }
            if !key.is_empty() {
                key.push('.');
            }
            for &b in name.get(at + 1..at + 1 + len).unwrap_or_default() {
                let c = b.to_ascii_lowercase();
                key.push(if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
                    char::from(c)
                } else {
                    '?'
                });
            }
            at += 1 + len;
        }
    }
}

/// The end of the name starting at `at`, or `None` if it is malformed. Queries carry their
/// question uncompressed; owners of additional records may end in a pointer, which is
/// skipped, not followed (so no loop is possible).
fn skip_name(packet: &[u8], mut at: usize, allow_pointer: bool) -> Option<usize> {
    let start = at;
    loop {
        let len = *packet.get(at)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => {
                at += 1 + usize::from(len);
                if at - start > MAX_NAME_WIRE - 1 || at > packet.len() {
                    return None;
                }
            }
            0xC0 if allow_pointer => return packet.get(at + 1).map(|_| at + 2),
            _ => return None,
        }
    }
}

// === replies ===

/// Writes a reply header for `query_packet` (id, opcode and RD/CD copied).
pub fn write_header(
    out: &mut Vec<u8>,
    query_packet: &[u8],
    authoritative: bool,
    truncated: bool,
    rcode: Rcode,
    counts: [u16; 4],
) {
    let (id, flags2, flags3) = match query_packet {
        [a, b, f2, f3, ..] => ([*a, *b], *f2, *f3),
        [a, b, ..] => ([*a, *b], 0, 0),
        _ => ([0, 0], 0, 0),
    };
    let mut f2 = 0x80 | (flags2 & 0x78) | (flags2 & 0x01);
    if authoritative {
        f2 |= 0x04;
    }
    if truncated {
        f2 |= 0x02;
    }
    let f3 = (flags3 & 0x10) | ((rcode as u8) & 0x0F);
    out.extend_from_slice(&id);
    out.push(f2);
    out.push(f3);
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// Appends our OPT record (RFC 6891): our payload size, the extended rcode bits, the DO bit
/// copied from the query.
pub fn write_opt(out: &mut Vec<u8>, edns: Edns, rcode: Rcode) {
    out.push(0); // root owner
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.push(((rcode as u16) >> 4) as u8);
    out.push(0); // version 0
    out.push(if edns.dnssec_ok { 0x80 } else { 0 });
    out.push(0);
    out.extend_from_slice(&0u16.to_be_bytes()); // no options
}

/// A reply with no records: `rcode`, the question echoed when there is one.
pub fn write_empty(
    out: &mut Vec<u8>,
    query: Option<&Query<'_>>,
    packet: &[u8],
    rcode: Rcode,
    truncated: bool,
) {
    out.clear();
    let question = query.map_or(&[][..], |q| q.question);
    let edns = query.and_then(|q| q.edns);
    let counts = [u16::from(query.is_some()), 0, 0, u16::from(edns.is_some())];
    let authoritative = matches!(rcode, Rcode::NoError | Rcode::NxDomain);
    write_header(out, packet, authoritative, truncated, rcode, counts);
    out.extend_from_slice(question);
    if let Some(edns) = edns {
        write_opt(out, edns, rcode);
    }
}

/// A full reply: the query's header and question around a cached tail.
pub fn write_answer(
    out: &mut Vec<u8>,
    query: &Query<'_>,
    rcode: Rcode,
    counts: [u16; 3],
    tail: &[u8],
) {
    out.clear();
    let opt = u16::from(query.edns.is_some());
    let counts = [1, counts[0], counts[1], counts[2].saturating_add(opt)];
    write_header(out, query.packet, true, false, rcode, counts);
    out.extend_from_slice(query.question);
    out.extend_from_slice(tail);
    if let Some(edns) = query.edns {
        write_opt(out, edns, rcode);
    }
}
