//! The UDP threads over a real loopback socket: bursts larger than a batch answered in full,
//! new views followed, prompt shutdown.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Fixture;
use super::packets::query_packet;
use crate::dns::DnsConfig;
use crate::dns::udp::{BATCH, POLL, UdpThread};
use crate::replica::View;

fn ask(client: &UdpSocket, server: std::net::SocketAddr, id: u16) {
    let q = query_packet(id, "orders.cafe.local.", RecordType::A, None);
    client.send_to(&q, server).unwrap();
}

fn reply(client: &UdpSocket) -> Message {
    let mut buf = [0u8; 2048];
    let len = client.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

#[test]
fn udp_thread_answers_bursts_follows_views_and_stops_promptly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut f = Fixture::new();
    let view = |f: &Fixture| View {
        applied_index: f.index,
        registry: Arc::new(f.registry.clone()),
        ..View::default()
    };
    let (publish, views) = watch::channel(view(&f));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    let thread = UdpThread {
        socket: Arc::new(socket),
        views,
        config: Arc::new(DnsConfig::default()),
        stop: stop.clone(),
        runtime: rt.handle().clone(),
    };
    let running = std::thread::spawn(move || thread.run());

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Several batches' worth in flight at once: every query gets its own reply.
    let n = BATCH * 3 + 1;
    for id in 0..n {
        ask(&client, server, u16::try_from(id).unwrap());
    }
    let mut seen = vec![false; n];
    for _ in 0..n {
        let m = reply(&client);
        assert_eq!(m.answers.len(), 2);
        seen[usize::from(m.metadata.id)] = true;
    }
    assert!(seen.iter().all(|s| *s), "one reply per query");

    // A newly published view answers the next query.
    f.register("orders.cafe.local", "i-9", "10.0.0.9", 8089, &[]);
    publish.send_replace(view(&f));
    ask(&client, server, 7);
    let m = reply(&client);
    assert_eq!(m.metadata.id, 7);
    assert_eq!(m.answers.len(), 3);

    // Shutdown with no traffic: noticed within the poll interval.
    let asked = Instant::now();
    stop.cancel();
    running.join().unwrap().unwrap();
    assert!(asked.elapsed() < POLL * 10, "{:?}", asked.elapsed());
}

#[test]
fn udp_thread_relays_outside_names_to_the_recursor() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A fake upstream: answers one query with its own bytes, QR set.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let recursor = upstream.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (len, peer) = upstream.recv_from(&mut buf).unwrap();
        buf[2] |= 0x80;
        upstream.send_to(&buf[..len], peer).unwrap();
    });
    let f = Fixture::new();
    let (_publish, views) = watch::channel(View {
        applied_index: f.index,
        registry: Arc::new(f.registry.clone()),
        ..View::default()
    });
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    let thread = UdpThread {
        socket: Arc::new(socket),
        views,
        config: Arc::new(DnsConfig {
            recursor: Some(recursor),
            ..DnsConfig::default()
        }),
        stop: stop.clone(),
        runtime: rt.handle().clone(),
    };
    let running = std::thread::spawn(move || thread.run());
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let q = query_packet(0x4242, "example.com.", RecordType::A, None);
    client.send_to(&q, server).unwrap();
    let mut buf = [0u8; 512];
    let len = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0x42, 0x42]);
    assert_eq!(&buf[3..len], &q[3..], "relayed as the upstream sent it");
    echo.join().unwrap();
    stop.cancel();
    running.join().unwrap().unwrap();
}
