//! The transports: UDP workers and a TCP listener, each feeding a [`Responder`].
//!
//! UDP: a few workers share one socket, each looping receive → respond → send with its own
//! responder and cache (no shared lock). TCP (RFC 7766): one task per connection, length-
//! prefixed messages, pipelined queries answered in order, closed after [`TCP_IDLE`] of
//! silence; at most [`MAX_TCP_CONNECTIONS`] at once, further ones are closed at accept.
//! Every task lives in a `JoinSet` and ends with the server's cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::respond::{Action, Responder, Transport};
use super::wire::{HEADER_LEN, Rcode, write_empty};
use super::{DnsConfig, DnsError, forward};
use crate::replica::Replica;

/// A TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds, not minutes).
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most concurrent TCP connections.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 256;
/// Most forwarded queries in flight per UDP worker; beyond, SERVFAIL at once.
pub(crate) const MAX_FORWARDS_IN_FLIGHT: usize = 64;
/// Largest UDP datagram we read; bigger ones are truncated by the kernel and then rejected.
const UDP_BUFFER: usize = 4096;

/// Serves DNS on `udp` and `tcp` until `shutdown` is cancelled.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    replica: Replica,
    config: DnsConfig,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let udp = Arc::new(udp);
    let mut config = config;
    // A benchmark knob, read once: how fast is DNS without the answer cache?
    if std::env::var_os("MERIDIAN_DNS_NO_CACHE").is_some() {
        tracing::warn!("MERIDIAN_DNS_NO_CACHE is set: every DNS answer is rebuilt per query");
        config.cache = false;
    }
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    for worker in 0..workers {
        let (udp, replica, config) = (Arc::clone(&udp), replica.clone(), Arc::clone(&config));
        tasks.spawn(
            udp_worker(udp, replica, config).instrument(tracing::debug_span!("dns_udp", worker)),
        );
    }
    tasks.spawn(
        tcp_acceptor(tcp, replica, Arc::clone(&config), shutdown.child_token())
            .instrument(tracing::debug_span!("dns_tcp")),
    );
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        Some(done) = tasks.join_next() => {
            tasks.shutdown().await;
            done??;
            // The TCP acceptor also watches the token: ending because of shutdown is fine.
            // Anything else ending on its own is an error (they loop until cancelled).
            if !shutdown.is_cancelled() {
                return Err(DnsError::Stopped);
            }
        }
    }
    tasks.shutdown().await;
    Ok(())
}

async fn udp_worker(
    socket: Arc<UdpSocket>,
    replica: Replica,
    config: Arc<DnsConfig>,
) -> Result<(), DnsError> {
    let mut responder = Responder::new(&config);
    let mut buf = vec![0u8; UDP_BUFFER];
    let mut out = Vec::with_capacity(usize::from(super::wire::MAX_UDP_PAYLOAD));
    let mut forwards: JoinSet<()> = JoinSet::new();
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems: not fatal.
                tracing::trace!(error = %e, "udp receive");
                continue;
            }
        };
        let packet = &buf[..len];
        let view = replica.current();
        match responder.respond(&view.registry, packet, Transport::Udp, &mut out) {
            Action::Reply => send(&socket, &out, peer).await,
            Action::Drop => {}
            Action::Forward => {
                while forwards.try_join_next().is_some() {}
                let Some(upstream) = config.recursor else {
                    continue;
                };
                if forwards.len() >= MAX_FORWARDS_IN_FLIGHT {
                    write_empty(&mut out, None, packet, Rcode::ServFail, false);
                    send(&socket, &out, peer).await;
                    continue;
                }
                let (socket, query) = (Arc::clone(&socket), packet.to_vec());
                forwards.spawn(
                    async move {
                        let reply = forward::udp(upstream, &query).await.unwrap_or_else(|| {
                            let mut out = Vec::new();
                            write_empty(&mut out, None, &query, Rcode::ServFail, false);
                            out
                        });
                        send(&socket, &reply, peer).await;
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer).await {
        tracing::trace!(error = %e, %peer, "udp send");
    }
}

async fn tcp_acceptor(
    listener: TcpListener,
    replica: Replica,
    config: Arc<DnsConfig>,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(got) => got,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::debug!(error = %e, "tcp accept");
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_TCP_CONNECTIONS {
            tracing::debug!(%peer, "too many tcp connections; closing");
            continue;
        }
        let (replica, config) = (replica.clone(), Arc::clone(&config));
        connections.spawn(
            async move {
                if let Err(e) = tcp_connection(stream, replica, config).await {
                    tracing::trace!(error = %e, "tcp connection ended");
                }
            }
            .instrument(tracing::trace_span!("dns_tcp_conn", %peer)),
        );
    }
    connections.shutdown().await;
    Ok(())
}

async fn tcp_connection(
    mut stream: TcpStream,
    replica: Replica,
    config: Arc<DnsConfig>,
) -> std::io::Result<()> {
    let mut responder = Responder::new(&config);
    let mut packet = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Ok(()), // closed or idle
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len < HEADER_LEN {
            return Ok(());
        }
        packet.resize(len, 0);
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let view = replica.current();
        let action = responder.respond(&view.registry, &packet, Transport::Tcp, &mut out);
        let reply = match action {
            Action::Reply => &out[..],
            Action::Drop => return Ok(()),
            Action::Forward => {
                let upstream = config.recursor.ok_or(std::io::ErrorKind::Unsupported)?;
                out = forward::tcp(upstream, &packet).await.unwrap_or_else(|| {
                    let mut failed = Vec::new();
                    write_empty(&mut failed, None, &packet, Rcode::ServFail, false);
                    failed
                });
                &out[..]
            }
        };
        let prefix = u16::try_from(reply.len())
            .map_err(|_| std::io::ErrorKind::InvalidData)?
            .to_be_bytes();
        stream.write_all(&prefix).await?;
        stream.write_all(reply).await?;
    }
}
