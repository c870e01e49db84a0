//! The responder over in-memory packets (no sockets), malformed input, forwarding, and
//! property tests over random and mutated bytes.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use super::{Fixture, svc};
use crate::dns::respond::{Action, Responder, Transport};
use crate::dns::wire::{Query, Rcode, Reject};
use crate::dns::{DnsConfig, DnsError};
use crate::registry::{Command, Registry};

// === respond: packets in, packets out ===

pub(super) fn query_packet(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(r: &mut Responder, reg: &Registry, packet: &[u8], transport: Transport) -> Message {
    let mut out = Vec::new();
    assert_eq!(r.respond(reg, packet, transport, &mut out), Action::Reply);
    Message::from_vec(&out).unwrap()
}

fn responder(max_answers: usize) -> Responder {
    Responder::new(&DnsConfig {
        max_answers,
        recursor: None,
        cache: true,
        ..DnsConfig::default()
    })
}

#[test]
fn responses_echo_id_question_case_and_flags() {
    let f = Fixture::new();
    let mut r = responder(8);
    let q = query_packet(0xBEEF, "OrDeRs.CaFe.LoCaL.", RecordType::A, None);
    let m = ask(&mut r, &f.registry, &q, Transport::Udp);
    assert_eq!(m.metadata.id, 0xBEEF);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired, "RD copied");
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.queries[0].name.to_ascii(), "OrDeRs.CaFe.LoCaL.");
    assert_eq!(m.answers.len(), 2);
    assert!(m.answers.iter().all(|a| a.ttl == 7));
    assert!(m.edns.is_none(), "no OPT unless asked");
    // Served again from the cache: same records, still the asker's id.
    let q2 = query_packet(7, "orders.cafe.local.", RecordType::A, Some(4096));
    let m2 = ask(&mut r, &f.registry, &q2, Transport::Udp);
    assert_eq!(m2.metadata.id, 7);
    assert_eq!(m2.answers.len(), 2);
    assert_eq!(m2.edns.as_ref().map(Edns::max_payload), Some(1232));
}

#[test]
fn negative_answers_carry_the_soa() {
    let f = Fixture::new();
    let mut r = responder(8);
    let nx = ask(
        &mut r,
        &f.registry,
        &query_packet(1, "nope.cafe.local.", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].name.to_ascii(), "cafe.local.");
    let nodata = ask(
        &mut r,
        &f.registry,
        &query_packet(2, "empty.cafe.local.", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let RData::SOA(soa) = &nodata.authorities[0].data else {
        panic!("SOA");
    };
    assert_eq!(soa.minimum, 30);
    let refused = ask(
        &mut r,
        &f.registry,
        &query_packet(3, "example.com.", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert_eq!(refused.queries.len(), 1);
}

#[test]
fn edns_versions_and_odd_questions() {
    let f = Fixture::new();
    let mut r = responder(8);
    let mut q = query_packet(9, "orders.cafe.local.", RecordType::A, Some(1232));
    // OPT is the last record: its version byte sits 5 bytes into its 10 fixed bytes + root.
    let version_at = q.len() - 11 + 6;
    q[version_at] = 1;
    let m = ask(&mut r, &f.registry, &q, Transport::Udp);
    // 16 is BADVERS for OPT (RFC 6891), which hickory names by its TSIG twin, BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().map(Edns::rcode_high), Some(1));
    let axfr = ask(
        &mut r,
        &f.registry,
        &query_packet(1, "cafe.local.", RecordType::AXFR, None),
        Transport::Tcp,
    );
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn large_answers_truncate_over_udp_only() {
    let mut f = Fixture::new();
    for i in 0..60 {
        f.register(
            "orders.cafe.local",
            &format!("big-{i}"),
            &format!("10.9.0.{i}"),
            80,
            &[],
        );
    }
    let mut r = responder(60);
    let q = query_packet(5, "_orders._tcp.cafe.local.", RecordType::SRV, None);
    let udp = ask(&mut r, &f.registry, &q, Transport::Udp);
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let tcp = ask(&mut r, &f.registry, &q, Transport::Tcp);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    assert_eq!(tcp.additionals.len(), 60);
    // A capped answer fits in 512 bytes.
    let mut small = responder(3);
    let fits = ask(&mut small, &f.registry, &q, Transport::Udp);
    assert!(!fits.metadata.truncation);
    assert_eq!(fits.answers.len(), 3);
}

#[test]
fn cached_answers_follow_registry_changes() {
    let mut f = Fixture::new();
    let mut r = responder(8);
    let q = query_packet(1, "orders.cafe.local.", RecordType::A, None);
    assert_eq!(
        ask(&mut r, &f.registry, &q, Transport::Udp).answers.len(),
        2
    );
    f.register("orders.cafe.local", "i-4", "10.0.0.4", 8084, &[]);
    assert_eq!(
        ask(&mut r, &f.registry, &q, Transport::Udp).answers.len(),
        3
    );
    f.apply(Command::DeregisterInstance {
        service: svc("orders.cafe.local"),
        id: "i-1".into(),
    });
    let m = ask(&mut r, &f.registry, &q, Transport::Udp);
    let ips: Vec<IpAddr> = m.answers.iter().filter_map(|a| a.data.ip_addr()).collect();
    assert_eq!(ips.len(), 2);
    assert!(!ips.contains(&"10.0.0.1".parse().unwrap()));
}

#[test]
fn shuffled_answers_rotate() {
    let mut f = Fixture::new();
    for i in 4..=8 {
        f.register(
            "orders.cafe.local",
            &format!("i-{i}"),
            &format!("10.0.0.{i}"),
            80,
            &[],
        );
    }
    let mut r = responder(8);
    let q = query_packet(1, "orders.cafe.local.", RecordType::A, None);
    let firsts: std::collections::BTreeSet<_> = (0..16)
        .map(|_| {
            ask(&mut r, &f.registry, &q, Transport::Udp).answers[0]
                .data
                .ip_addr()
        })
        .collect();
    assert!(firsts.len() > 1, "the first record varies between queries");
}

#[test]
fn malformed_packets_are_dropped_or_formerr() {
    let valid = query_packet(0x1234, "orders.cafe.local.", RecordType::A, None);
    assert_eq!(Query::parse(&valid[..11]), Err(Reject::Drop));
    let mut response = valid.clone();
    response[2] |= 0x80;
    assert_eq!(Query::parse(&response), Err(Reject::Drop));
    let mut update = valid.clone();
    update[2] |= 5 << 3;
    assert_eq!(Query::parse(&update), Err(Reject::Error(Rcode::NotImp)));
    let mut two = valid.clone();
    two[5] = 2;
    assert_eq!(Query::parse(&two), Err(Reject::Error(Rcode::FormErr)));
    // A compression pointer in the question (here pointing at itself: a loop).
    let mut looped = valid[..12].to_vec();
    looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    assert_eq!(Query::parse(&looped), Err(Reject::Error(Rcode::FormErr)));
    // Huge additional count, no records.
    let mut huge = valid.clone();
    huge[10] = 0xFF;
    huge[11] = 0xFF;
    assert_eq!(Query::parse(&huge), Err(Reject::Error(Rcode::FormErr)));
    // Truncated question.
    assert_eq!(
        Query::parse(&valid[..valid.len() - 2]),
        Err(Reject::Error(Rcode::FormErr))
    );

    let f = Fixture::new();
    let mut r = responder(8);
    let mut out = Vec::new();
    assert_eq!(
        r.respond(&f.registry, &huge, Transport::Udp, &mut out),
        Action::Reply
    );
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn bind_shares_one_port_for_udp_and_tcp() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (udp, tcp) = crate::dns::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let taken = udp.local_addr().unwrap();
        assert!(matches!(
            crate::dns::bind(taken).await,
            Err(DnsError::Bind { .. })
        ));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes: no panic; a reply, if any, is a response to the same id.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let f = Fixture::new();
        let mut r = responder(8);
        let mut out = Vec::new();
        for transport in [Transport::Udp, Transport::Tcp] {
            if r.respond(&f.registry, &bytes, transport, &mut out) == Action::Reply {
                prop_assert!(out.len() >= 12);
                prop_assert_eq!(&out[..2], &bytes[..2]);
                prop_assert!(out[2] & 0x80 != 0);
            }
        }
    }

    /// Valid queries with a few bytes overwritten: the nastiest inputs are near-valid ones.
    #[test]
    fn mutated_queries_never_panic(
        name in "[a-z_][a-z0-9]{0,7}(\\.[a-z0-9]{1,8}){0,4}",
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let f = Fixture::new();
        let mut r = responder(8);
        let mut packet = query_packet(1, &format!("{name}.orders.cafe.local."), RecordType::SRV, Some(1232));
        for (at, byte) in edits {
            let at = at % packet.len();
            packet[at] = byte;
        }
        packet.truncate(12 + cut % packet.len());
        let mut out = Vec::new();
        let _ = r.respond(&f.registry, &packet, Transport::Udp, &mut out);
        if out.len() > 1232 {
            prop_assert!(false, "UDP reply over the limit: {}", out.len());
        }
    }
}

#[test]
fn forwarding_relays_the_upstream_reply_by_id() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A fake upstream: answers every UDP query with its header, QR set.
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (len, peer) = upstream.recv_from(&mut buf).await.unwrap();
            buf[2] |= 0x80;
            upstream.send_to(&buf[..len], peer).await.unwrap();
        });
        let q = query_packet(0x4242, "example.com.", RecordType::A, None);
        let reply = crate::dns::forward::udp(addr, &q).await.expect("relayed");
        assert_eq!(&reply[..2], &[0x42, 0x42]);
        assert!(reply[2] & 0x80 != 0);
        echo.await.unwrap();
        // Nobody listening over TCP there: no reply, no hang.
        assert!(crate::dns::forward::tcp(addr, &q).await.is_none());
    });
    let f = Fixture::new();
    let mut r = Responder::new(&DnsConfig {
        max_answers: 8,
        recursor: Some("127.0.0.1:53".parse().unwrap()),
        cache: true,
        ..DnsConfig::default()
    });
    let mut out = Vec::new();
    let q = query_packet(1, "example.com.", RecordType::A, None);
    assert_eq!(
        r.respond(&f.registry, &q, Transport::Udp, &mut out),
        Action::Forward
    );
    let q = query_packet(1, "orders.cafe.local.", RecordType::A, None);
    assert_eq!(
        r.respond(&f.registry, &q, Transport::Udp, &mut out),
        Action::Reply
    );
}

#[test]
fn sources_outside_the_allow_list_get_refused_and_are_counted() {
    let metrics = crate::dns::DnsMetrics::default();
    let mut r = Responder::new(&DnsConfig {
        metrics: metrics.clone(),
        ..DnsConfig::default()
    });
    let mut out = Vec::new();
    // The question and OPT are echoed; no record, whatever the name.
    let q = query_packet(0x0102, "orders.cafe.local.", RecordType::SRV, Some(4096));
    assert_eq!(r.refuse(&q, &mut out), Action::Reply);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0x0102);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    assert_eq!(m.queries.len(), 1);
    assert!(m.answers.is_empty() && m.additionals.is_empty());
    assert!(m.edns.is_some(), "OPT echoed");
    assert!(
        out.len() <= q.len(),
        "never larger than the query: no amplification"
    );
    // A malformed query: REFUSED, header only. A response: no reply at all.
    let mut bad = query_packet(7, "orders.cafe.local.", RecordType::A, None);
    bad[5] = 2; // two questions
    assert_eq!(r.refuse(&bad, &mut out), Action::Reply);
    assert_eq!(out.len(), 12);
    assert_eq!(out[3] & 0x0F, Rcode::Refused as u8);
    let mut response = q.clone();
    response[2] |= 0x80;
    assert_eq!(r.refuse(&response, &mut out), Action::Drop);

    assert_eq!(metrics.refused_by_acl(), 2);
    let mut counted = Vec::new();
    metrics.for_each(|t, c, n| counted.push((t, c, n)));
    assert_eq!(
        counted,
        vec![("SRV", "REFUSED", 1), ("OTHER", "REFUSED", 1)]
    );
}

/// What counting a query costs next to answering it from the cache (release build:
/// `cargo test --release -p meridian-control-plane --lib -- --ignored --nocapture
/// counting_cost`). Prints both per-query times; docs/observability.md has the figures.
#[test]
#[ignore = "measurement, not a check"]
fn counting_cost_next_to_a_cached_answer() {
    const N: u32 = 2_000_000;
    let f = Fixture::new();
    let mut r = responder(8);
    let q = query_packet(1, "orders.cafe.local.", RecordType::A, None);
    let mut out = Vec::with_capacity(512);
    assert_eq!(
        r.respond(&f.registry, &q, Transport::Udp, &mut out),
        Action::Reply
    );
    let started = std::time::Instant::now();
    for _ in 0..N {
        out.clear();
        std::hint::black_box(r.respond(
            &f.registry,
            std::hint::black_box(&q),
            Transport::Udp,
            &mut out,
        ));
    }
    let answer = started.elapsed() / N;
    let metrics = crate::dns::DnsMetrics::default();
    let shard = metrics.shard();
    let started = std::time::Instant::now();
    for i in 0..N {
        shard.record(
            std::hint::black_box(1 + (i & 1) as u16 * 27),
            std::hint::black_box(0),
        );
    }
    let count = started.elapsed() / N;
    println!("cached answer incl. counting: {answer:?} per query; counting alone: {count:?}");
}
