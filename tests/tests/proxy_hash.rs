//! `meridian-proxy`'s consistent hashing on the client's IP, end to end: the real control
//! plane, real backends and the real proxy (`meridian_tests::mesh`), and clients on distinct
//! loopback addresses (Linux routes all of 127.0.0.0/8 to the loopback interface), each on a
//! new connection per request so only the address can keep a client on its endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use meridian_proto::v1 as pb;
use meridian_tests::backend::ID_HEADER;
use meridian_tests::mesh::{Mesh, SERVICE, route, split, with_balancer};
use tokio::net::TcpSocket;

/// Sends one GET from `source` to the proxy on a new connection; the backend that answered.
async fn backend_for(proxy: SocketAddr, source: Ipv4Addr) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind((source, 0).into())
        .expect("any 127.0.0.0/8 address binds on Linux");
    let stream = socket.connect(proxy).await.expect("the proxy accepts");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", SERVICE)
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .expect("the proxy answers");
    assert!(response.status().is_success(), "{}", response.status());
    let id = response.headers()[ID_HEADER]
        .to_str()
        .expect("an ASCII backend id")
        .to_owned();
    response
        .into_body()
        .collect()
        .await
        .expect("the whole body");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_without_a_header_keeps_each_client_ip_on_one_endpoint() {
    let mut mesh = Mesh::start(&[("v1", 3)]).await;
    mesh.apply(with_balancer(
        pb::LoadBalancerPolicy::RingHash,
        route(vec![split(&[("v1", 1)])]),
    ))
    .await;
    let proxy = mesh.proxy().listen_addr();
    let mut by_client: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    // 16 clients: the chance that all of them hash to one of three endpoints is 3^-15.
    // Interleaved clients, a fresh connection each time: nothing but the address is shared.
    for _ in 0..5 {
        for host in 2..18 {
            let client = Ipv4Addr::new(127, 0, 0, host);
            let id = backend_for(proxy, client).await;
            by_client.entry(client).or_default().insert(id);
        }
    }
    for (client, endpoints) in &by_client {
        assert_eq!(
            endpoints.len(),
            1,
            "all requests from {client} land on one endpoint: {by_client:?}"
        );
    }
    let used: BTreeSet<&String> = by_client.values().flatten().collect();
    assert!(
        used.len() > 1,
        "different clients spread over the endpoints: {by_client:?}"
    );
}
