//! `--dns-allow`: a node answers DNS only from the listed networks and answers REFUSED to
//! everyone else, over UDP and TCP, as BIND's `allow-query` does. Checked with raw packets
//! (hickory-proto) and BIND's `dig` (installed by `scripts/test`) from 127.0.0.1, against a
//! node that allows only 10.0.0.0/8 and one that allows 127.0.0.0/8.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;
use meridian_control_plane::cli::Cli;
use meridian_control_plane::dns::AllowList;
use meridian_proto::v1 as pb;
use meridian_tests::TestNode;
use meridian_tests::dns::{dig, query, tcp_exchange, udp_exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === helpers ===

/// A node allowing `networks`, with `orders.cafe.local` → 127.0.0.1.
async fn node(networks: &str) -> TestNode {
    let node = TestNode::start_with_dns_allow(AllowList::parse(networks).unwrap()).await;
    let mut registry = node.cafe(&["orders"]).await;
    registry
        .register_instance(pb::RegisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
            address: "127.0.0.1".into(),
            port: 8081,
            attributes: HashMap::new(),
        })
        .await
        .unwrap();
    node
}

/// One query over UDP from 127.0.0.1; the reply (patient: a refusal is an answer, never a
/// silence, so waiting long costs nothing when things work).
async fn udp(dns: SocketAddr, packet: &[u8]) -> Message {
    // UDP may lose a datagram on a busy machine: ask up to three times.
    for _ in 0..3 {
        if let Some(reply) = udp_exchange(dns, packet, Duration::from_secs(3)).await {
            return reply;
        }
    }
    panic!("no UDP reply from {dns}");
}

/// `GET path` on the admin port; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[track_caller]
fn assert_refused(reply: &Message, id: u16, name: &str) {
    assert_eq!(reply.metadata.id, id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(!reply.metadata.authoritative);
    assert!(reply.answers.is_empty(), "{reply:?}");
    assert_eq!(reply.queries.len(), 1, "the question is echoed");
    assert_eq!(reply.queries[0].name.to_ascii(), name);
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_from_outside_the_allowed_networks_are_refused_over_udp_and_tcp() {
    let node = node("10.0.0.0/8,fd00::/8").await;
    let dns = node.dns_addr();

    // UDP: the service's name, a name that does not exist and one outside every namespace
    // all get the same REFUSED: nothing about the registry leaks.
    for (id, name) in [
        (1, "orders.cafe.local."),
        (2, "nope.cafe.local."),
        (3, "example.com."),
    ] {
        let reply = udp(dns, &query(id, name, RecordType::A)).await;
        assert_refused(&reply, id, name);
    }

    // TCP: the connection is served, every query on it answered REFUSED.
    let mut stream = TcpStream::connect(dns).await.unwrap();
    for (id, qtype) in [(10, RecordType::A), (11, RecordType::SRV)] {
        let reply = tcp_exchange(&mut stream, &query(id, "orders.cafe.local.", qtype)).await;
        assert_refused(&reply, id, "orders.cafe.local.");
    }
    drop(stream);

    // An independent client sees the same, over both transports.
    for transport in ["+notcp", "+tcp"] {
        let out = dig(dns, &[transport, "orders.cafe.local", "A"]).await;
        assert!(out.contains("status: REFUSED"), "dig {transport}: {out}");
        assert!(!out.contains("ANSWER SECTION"), "dig {transport}: {out}");
    }

    // Counted among the DNS queries, by type and response code.
    let metrics = http_get(node.admin_addr(), "/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_dns_queries_total")
                && l.contains(r#"dns_question_type="A""#)
                && l.contains(r#"dns_response_code="REFUSED""#)
        })
        .unwrap_or_else(|| panic!("no refused A queries in /metrics:\n{metrics}"));
    let count: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 6.0, "{refused}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("meridian_dns_queries_total")
                && l.contains(r#"dns_response_code="NOERROR""#)),
        "nothing was answered:\n{metrics}"
    );
    // And on their own: every query of this test was refused for its source.
    let by_acl = metrics
        .lines()
        .find(|l| l.starts_with("meridian_dns_refused_by_acl_total"))
        .unwrap_or_else(|| panic!("no meridian_dns_refused_by_acl_total in /metrics:\n{metrics}"));
    let by_acl: f64 = by_acl.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        by_acl >= count,
        "{by_acl} refused by the allow list, {count} refused A queries"
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_from_an_allowed_network_are_answered_over_udp_and_tcp() {
    let node = node("10.0.0.0/8,127.0.0.0/8,::1/128").await;
    let dns = node.dns_addr();

    let reply = udp(dns, &query(7, "orders.cafe.local.", RecordType::A)).await;
    assert_eq!(reply.metadata.id, 7);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
    let reply = udp(dns, &query(8, "nope.cafe.local.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    let mut stream = TcpStream::connect(dns).await.unwrap();
    let reply = tcp_exchange(&mut stream, &query(9, "orders.cafe.local.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
    drop(stream);

    for transport in ["+notcp", "+tcp"] {
        let out = dig(dns, &[transport, "+short", "orders.cafe.local", "A"]).await;
        assert_eq!(out.trim(), "127.0.0.1", "dig {transport}");
    }
    node.stop().await.unwrap();
}

#[test]
fn the_flag_takes_networks_and_names_a_bad_entry() {
    for command in ["dev", "server"] {
        let mut args = vec!["meridian", command];
        if command == "server" {
            args.extend(["--id", "1", "--data-dir", "/nonexistent"]);
        }
        let ok = [
            args.clone(),
            vec!["--dns-allow", "127.0.0.0/8,10.0.0.0/8,::1/128"],
        ]
        .concat();
        Cli::try_parse_from(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));

        for (bad, reason) in [
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\": the prefix length must be a number from 0 to 32",
            ),
            (
                "127.0.0.0/8,localhost",
                "\"localhost\": \"localhost\" is not an IPv4",
            ),
            ("10.1.0.0/8", "did you mean 10.0.0.0/8?"),
        ] {
            let args = [args.clone(), vec!["--dns-allow", bad]].concat();
            let err = Cli::try_parse_from(&args).unwrap_err().to_string();
            assert!(err.contains("--dns-allow"), "{err}");
            assert!(err.contains(reason), "{err}");
        }
    }
}
