//! DNS by hand for the DNS tests: raw queries over UDP and TCP (so every byte of the answer can
//! be checked) and `dig`, an independent client.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// A query for `name` (`orders.cafe.local.`) of type `qtype`, with message id `id`.
pub fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid test name"),
        qtype,
    ));
    m.to_vec().expect("a query encodes")
}

/// Sends `packet` to `dns` over UDP from 127.0.0.1; the reply, or `None` after `patience`.
pub async fn udp_exchange(dns: SocketAddr, packet: &[u8], patience: Duration) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a UDP socket");
    socket.send_to(packet, dns).await.expect("send a datagram");
    let mut buf = vec![0u8; 65_535];
    let len = tokio::time::timeout(patience, socket.recv(&mut buf))
        .await
        .ok()?
        .expect("receive a datagram");
    Some(Message::from_vec(&buf[..len]).expect("the reply parses"))
}

/// One query on an open TCP connection (length-prefixed, RFC 7766); the reply.
pub async fn tcp_exchange(stream: &mut TcpStream, packet: &[u8]) -> Message {
    let len = u16::try_from(packet.len())
        .expect("a query fits a TCP frame")
        .to_be_bytes();
    stream.write_all(&len).await.expect("send the length");
    stream.write_all(packet).await.expect("send the query");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.expect("read the length");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("read the reply");
    Message::from_vec(&reply).expect("the reply parses")
}

/// Runs `dig @server -p port ARGS` (three tries of 3 s); panics (loudly) if dig is not
/// installed — `scripts/test` installs it.
pub async fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+time=3", "+tries=3"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run `dig` ({e}): install bind9-dnsutils (scripts/test does)")
        });
    assert!(out.status.success(), "dig {args:?} failed: {out:?}");
    String::from_utf8(out.stdout).expect("dig prints text")
}
