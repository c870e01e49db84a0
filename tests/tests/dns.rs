//! The DNS server against a real node on loopback, through two independent clients:
//! hickory-resolver (a resolver library) and BIND's `dig` (bind9-dnsutils, installed by
//! `scripts/test`; these tests fail, not skip, without it). Plus raw packets for what neither
//! client would send.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::dns::{dig, query, tcp_exchange};
use meridian_tests::{TestNode, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(10);

// === setup ===

async fn cafe(node: &TestNode) -> RegistryClient<Channel> {
    let mut r = node.registry().await;
    r.create_namespace(pb::CreateNamespaceRequest {
        name: "cafe.local".into(),
        description: String::new(),
    })
    .await
    .expect("test helper");
    r.create_service(pb::CreateServiceRequest {
        name: "orders.cafe.local".into(),
        dns_ttl_seconds: 7,
        ..Default::default()
    })
    .await
    .expect("test helper");
    register(&mut r, "i-1", "127.0.0.1", 8081, &[("version", "v1")]).await;
    register(
        &mut r,
        "i-2",
        "127.0.0.2",
        8082,
        &[("version", "v2"), ("weight", "5"), ("priority", "2")],
    )
    .await;
    register(&mut r, "i-3", "::1", 8083, &[("version", "v2")]).await;
    r
}

async fn register(
    r: &mut RegistryClient<Channel>,
    id: &str,
    address: &str,
    port: u32,
    attrs: &[(&str, &str)],
) {
    r.register_instance(pb::RegisterInstanceRequest {
        service: "orders.cafe.local".into(),
        id: id.into(),
        address: address.into(),
        port,
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    })
    .await
    .expect("test helper");
}

async fn set_health(r: &mut RegistryClient<Channel>, id: &str, health: pb::HealthStatus) {
    r.update_instance_health(pb::UpdateInstanceHealthRequest {
        service: "orders.cafe.local".into(),
        id: id.into(),
        health: health as i32,
    })
    .await
    .expect("test helper");
}

/// A resolver that asks only `dns` (UDP, then TCP on truncation), without caching.
fn resolver(dns: SocketAddr, edns: bool) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.port();
    let server = NameServerConfig::new(dns.ip(), true, vec![udp, tcp]);
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    );
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.edns0 = edns;
    opts.attempts = 2;
    opts.timeout = Duration::from_secs(2);
    builder.build().expect("test helper")
}

async fn ips(resolver: &TokioResolver, name: &str, qtype: RecordType) -> BTreeSet<IpAddr> {
    match resolver.lookup(name, qtype).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect(),
        Err(e) if e.is_no_records_found() => BTreeSet::new(),
        Err(e) => panic!("{name} {qtype}: {e}"),
    }
}

fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs
        .iter()
        .map(|a| a.parse().expect("test helper"))
        .collect()
}

/// One UDP exchange, waiting at most a second (a dropped packet is `None`).
async fn udp_exchange1(dns: SocketAddr, packet: &[u8]) -> Option<Message> {
    meridian_tests::dns::udp_exchange(dns, packet, Duration::from_secs(1)).await
}

// === through hickory-resolver ===

#[tokio::test(flavor = "multi_thread")]
async fn every_record_kind_through_a_resolver() {
    let node = TestNode::start().await;
    let _r = cafe(&node).await;
    let dns = resolver(node.dns_addr(), true);

    let a = dns
        .lookup("orders.cafe.local.", RecordType::A)
        .await
        .unwrap();
    assert!(a.answers().iter().all(|r| r.ttl == 7), "the service's TTL");
    assert_eq!(
        ips(&dns, "orders.cafe.local.", RecordType::A).await,
        set(&["127.0.0.1", "127.0.0.2"])
    );
    assert_eq!(
        ips(&dns, "orders.cafe.local.", RecordType::AAAA).await,
        set(&["::1"])
    );
    assert_eq!(
        ips(&dns, "i-1.orders.cafe.local.", RecordType::A).await,
        set(&["127.0.0.1"])
    );
    assert_eq!(
        ips(&dns, "v2.version.orders.cafe.local.", RecordType::A).await,
        set(&["127.0.0.2"])
    );

    let srv = dns
        .lookup("_orders._tcp.cafe.local.", RecordType::SRV)
        .await
        .unwrap();
    let mut got: Vec<(u16, u16, u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, 1, 8081, "i-1.orders.cafe.local.".to_owned()),
            (1, 1, 8083, "i-3.orders.cafe.local.".to_owned()),
            (2, 5, 8082, "i-2.orders.cafe.local.".to_owned()),
        ]
    );
    let glue: BTreeSet<IpAddr> = srv
        .message()
        .additionals
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    assert_eq!(
        glue,
        set(&["127.0.0.1", "127.0.0.2", "::1"]),
        "A/AAAA additionals"
    );

    let nx = dns
        .lookup("nope.cafe.local.", RecordType::A)
        .await
        .unwrap_err();
    assert!(nx.is_nx_domain(), "{nx}");
    assert!(nx.into_soa().is_some(), "SOA with NXDOMAIN");
    let nodata = dns
        .lookup("orders.cafe.local.", RecordType::TXT)
        .await
        .unwrap_err();
    assert!(
        nodata.is_no_records_found() && !nodata.is_nx_domain(),
        "{nodata}"
    );
    let soa = nodata.into_soa().expect("SOA with NODATA");
    assert_eq!(soa.name.to_ascii(), "cafe.local.");
}

#[tokio::test(flavor = "multi_thread")]
async fn deregistered_and_unhealthy_instances_leave_the_answers() {
    let node = TestNode::start().await;
    let mut r = cafe(&node).await;
    let dns = resolver(node.dns_addr(), true);
    let a = |want: &'static [&'static str]| {
        let dns = dns.clone();
        async move { (ips(&dns, "orders.cafe.local.", RecordType::A).await == set(want)).then_some(()) }
    };
    wait_for("both instances", PATIENCE, || {
        a(&["127.0.0.1", "127.0.0.2"])
    })
    .await;

    r.deregister_instance(pb::DeregisterInstanceRequest {
        service: "orders.cafe.local".into(),
        id: "i-1".into(),
    })
    .await
    .unwrap();
    wait_for("i-1 gone", PATIENCE, || a(&["127.0.0.2"])).await;
    let gone = dns
        .lookup("i-1.orders.cafe.local.", RecordType::A)
        .await
        .unwrap_err();
    assert!(gone.is_nx_domain(), "{gone}");

    register(&mut r, "i-4", "127.0.0.4", 8084, &[]).await;
    wait_for("i-4 in", PATIENCE, || a(&["127.0.0.2", "127.0.0.4"])).await;
    set_health(&mut r, "i-2", pb::HealthStatus::Unhealthy).await;
    wait_for("unhealthy i-2 out", PATIENCE, || a(&["127.0.0.4"])).await;
    set_health(&mut r, "i-3", pb::HealthStatus::Unhealthy).await;
    set_health(&mut r, "i-4", pb::HealthStatus::Unhealthy).await;
    wait_for("fail open: all back", PATIENCE, || {
        a(&["127.0.0.2", "127.0.0.4"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_udp_answers_fall_back_to_tcp() {
    let node = TestNode::start().await;
    let mut r = cafe(&node).await;
    // Eight instances with 63-byte ids and IPv6 addresses: about 900 bytes of SRV answer,
    // more than 512 (no EDNS) and less than 1232 (EDNS).
    for i in 0..8 {
        let id = format!("{i}{}", "x".repeat(62));
        register(&mut r, &id, &format!("fd00::{i}"), 9000, &[]).await;
    }
    let name = "_orders._tcp.cafe.local.";
    let raw = udp_exchange1(node.dns_addr(), &query(77, name, RecordType::SRV))
        .await
        .expect("a UDP reply");
    assert!(raw.metadata.truncation, "TC without EDNS");
    assert!(raw.answers.is_empty());

    let plain = resolver(node.dns_addr(), false);
    let srv = plain.lookup(name, RecordType::SRV).await.unwrap();
    assert_eq!(srv.answers().len(), 8, "the full answer, over TCP");

    let out = dig(node.dns_addr(), &["+noedns", name, "SRV"]).await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 8"), "{out}");
    let out = dig(node.dns_addr(), &[name, "SRV"]).await;
    assert!(
        !out.contains("Truncated"),
        "fits in EDNS's 1232 bytes: {out}"
    );
    assert!(
        out.contains("ANSWER: 8") && out.contains("udp: 1232"),
        "{out}"
    );
}

// === through dig ===

#[tokio::test(flavor = "multi_thread")]
async fn dig_sees_what_a_resolver_would() {
    let node = TestNode::start().await;
    let _r = cafe(&node).await;
    let d = node.dns_addr();

    let short = dig(d, &["+short", "orders.cafe.local", "A"]).await;
    let got: BTreeSet<&str> = short.lines().collect();
    assert_eq!(got, BTreeSet::from(["127.0.0.1", "127.0.0.2"]));

    let out = dig(d, &["OrDeRs.CaFe.LoCaL", "A"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("flags: qr aa rd"),
        "{out}"
    );
    assert!(
        out.contains("OrDeRs.CaFe.LoCaL.\t7\tIN\tA\t127.0.0.1"),
        "case kept: {out}"
    );
    assert!(!out.contains("mismatch"), "{out}");

    let out = dig(d, &["+short", "_orders._tcp.cafe.local", "SRV"]).await;
    assert!(out.contains("2 5 8082 i-2.orders.cafe.local."), "{out}");
    let out = dig(d, &["+short", "i-3.orders.cafe.local", "AAAA"]).await;
    assert_eq!(out.trim(), "::1");
    let out = dig(d, &["+short", "v2.version.orders.cafe.local", "SRV"]).await;
    assert_eq!(out.lines().count(), 2, "{out}");

    let out = dig(d, &["nope.cafe.local", "A"]).await;
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("AUTHORITY: 1"),
        "{out}"
    );
    assert!(
        out.contains("IN\tSOA\tns.cafe.local. hostmaster.cafe.local."),
        "{out}"
    );
    let out = dig(d, &["orders.cafe.local", "MX"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0, AUTHORITY: 1"),
        "{out}"
    );
    let out = dig(d, &["example.com", "A"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(d, &["+tcp", "orders.cafe.local", "A"]).await;
    assert!(out.contains("ANSWER: 2") && out.contains("(TCP)"), "{out}");
    let out = dig(d, &["+edns=1", "+noednsnegotiation", "orders.cafe.local"]).await;
    assert!(out.contains("status: BADVERS"), "{out}");
}

// === raw packets ===

#[tokio::test(flavor = "multi_thread")]
async fn hostile_packets_get_formerr_or_nothing_and_the_server_carries_on() {
    let node = TestNode::start().await;
    let _r = cafe(&node).await;
    let d = node.dns_addr();

    let good = query(0xABCD, "orders.cafe.local.", RecordType::A);
    let reply = udp_exchange1(d, &good).await.expect("a reply");
    assert_eq!(reply.metadata.id, 0xABCD, "id echoed");
    assert_eq!(reply.answers.len(), 2);

    // Huge counts with nothing behind them: FORMERR, same id.
    let mut huge = good.clone();
    huge[6..12].copy_from_slice(&[0xFF; 6]);
    let reply = udp_exchange1(d, &huge).await.expect("FORMERR");
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (0xABCD, ResponseCode::FormErr)
    );
    // A compression loop in the question.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let reply = udp_exchange1(d, &looped).await.expect("FORMERR");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Too short for a header, and a response: dropped.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[1, 2, 3], d).await.unwrap();
    let mut response = good.clone();
    response[2] |= 0x80;
    socket.send_to(&response, d).await.unwrap();

    // Over TCP: garbage closes the connection, a fresh one is served, pipelining works.
    let mut garbage = TcpStream::connect(d).await.unwrap();
    garbage.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut buf = [0u8; 1];
    // Closed with our 3 bytes unread: an orderly close or a reset, never a reply.
    assert!(
        matches!(garbage.read(&mut buf).await, Ok(0) | Err(_)),
        "closed"
    );
    let mut stream = TcpStream::connect(d).await.unwrap();
    for id in [1u16, 2, 3] {
        let reply =
            tcp_exchange(&mut stream, &query(id, "orders.cafe.local.", RecordType::A)).await;
        assert_eq!((reply.metadata.id, reply.answers.len()), (id, 2));
    }

    // Still serving UDP after all of it.
    let reply = udp_exchange1(d, &good).await.expect("still serving");
    assert_eq!(reply.answers.len(), 2);
}
