//! Forwarding names outside every namespace to an upstream resolver (`--dns-recursor`).
//!
//! Off by default. The query is relayed as is, over the transport the client used, and the
//! upstream's reply is relayed back once its id matches; no caching (the upstream caches).
//! A silent or failing upstream costs the client a SERVFAIL after [`FORWARD_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one forwarded query may take.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays `query` over UDP; `None` if the upstream fails or stays silent.
pub(crate) async fn udp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await.ok()?;
        socket.connect(upstream).await.ok()?;
        socket.send(query).await.ok()?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let len = socket.recv(&mut buf).await.ok()?;
            // Only the reply to this query (same id) counts; anything else is ignored.
            if len >= 2 && query.get(..2) == buf.get(..2) {
                buf.truncate(len);
                return Some(buf);
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Relays `query` over TCP; `None` if the upstream fails or stays silent.
pub(crate) async fn tcp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let mut stream = TcpStream::connect(upstream).await.ok()?;
        let len = u16::try_from(query.len()).ok()?.to_be_bytes();
        stream.write_all(&len).await.ok()?;
        stream.write_all(query).await.ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply)
    })
    .await
    .ok()
    .flatten()
}
