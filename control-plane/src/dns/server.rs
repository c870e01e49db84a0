//! The transports: UDP threads and a TCP listener, each feeding a [`Responder`].
//!
//! UDP: dedicated OS threads (`udp.rs`), one per core this process may run on (at most
//! [`MAX_UDP_THREADS`]), sharing one socket, each with its own responder and cache (no shared
//! lock). TCP (RFC 7766): one task per connection, length-prefixed messages, pipelined queries
//! answered in order, closed after [`TCP_IDLE`] of silence; at most [`MAX_TCP_CONNECTIONS`] at
//! once, further ones are closed at accept. Every thread and task is tracked, ends with the
//! server's cancellation token, and reports how it ended to [`serve`], hence to the node.
//! With `--dns-allow`, a connection from outside the listed networks has each of its queries
//! answered REFUSED (as BIND's `allow-query` does), and is closed like any other.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::respond::{Action, Responder, Transport};
use super::udp::UdpThread;
use super::wire::{HEADER_LEN, Rcode, write_empty};
use super::{DnsConfig, DnsError, forward};
use crate::replica::Replica;

/// A TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds, not minutes).
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most concurrent TCP connections.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 256;
/// Most forwarded queries in flight per UDP thread; beyond, SERVFAIL at once.
pub(crate) const MAX_FORWARDS_IN_FLIGHT: usize = 64;
/// Most UDP threads: past a few, one socket's queue is the bottleneck, not the threads.
pub(crate) const MAX_UDP_THREADS: usize = 4;

/// Serves DNS on `udp` and `tcp` until `shutdown` is cancelled. Returns an error if a
/// transport stops on its own (a failed thread start, a panic): the node treats that as the
/// DNS room failing.
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
    // Our own token, so that a failing transport can stop the others without touching the
    // node's.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    // `available_parallelism` honours the CPU affinity mask: pinned to one core, one thread.
    let threads =
        std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, MAX_UDP_THREADS));
    let mut started = Ok(());
    for worker in 0..threads {
        let thread = UdpThread {
            socket: Arc::clone(&udp),
            views: replica.subscribe(),
            config: Arc::clone(&config),
            stop: stop.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        match spawn_udp_thread(worker, thread) {
            Ok(done) => {
                tasks.spawn(done);
            }
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    if started.is_ok() {
        tasks.spawn(
            tcp_acceptor(tcp, replica, Arc::clone(&config), stop.clone())
                .instrument(tracing::debug_span!("dns_tcp")),
        );
    }
    let result = match started {
        Err(e) => Err(e),
        Ok(()) => tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ok(()),
            Some(done) = tasks.join_next() => match done {
                Err(e) => Err(DnsError::Join(e)),
                Ok(Err(e)) => Err(e),
                // The TCP acceptor also watches the token: ending because of shutdown is
                // fine. Anything else ending on its own is an error (they loop until
                // cancelled).
                Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                Ok(Ok(())) => Err(DnsError::Stopped),
            },
        },
    };
    // Stop everything and wait for it: threads notice within `udp::POLL`.
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

/// Starts one UDP thread; the returned future resolves when it has ended.
fn spawn_udp_thread(
    worker: usize,
    thread: UdpThread,
) -> Result<impl Future<Output = Result<(), DnsError>> + Send + 'static, DnsError> {
    let (done, ended) = oneshot::channel();
    let span = tracing::debug_span!("dns_udp", worker);
    std::thread::Builder::new()
        .name(format!("dns-udp-{worker}"))
        .spawn(move || {
            let result = span.in_scope(|| thread.run());
            let _ = done.send(result);
        })
        .map_err(DnsError::Thread)?;
    Ok(async move {
        match ended.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DnsError::Udp(e)),
            // The thread went away without a word: it panicked.
            Err(_) => Err(DnsError::Stopped),
        }
    })
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
        let allowed = config
            .allow
            .as_ref()
            .is_none_or(|allow| allow.allows(peer.ip()));
        connections.spawn(
            async move {
                if let Err(e) = tcp_connection(stream, replica, config, allowed).await {
                    tracing::trace!(error = %e, "tcp connection ended");
                }
            }
            .instrument(tracing::trace_span!("dns_tcp_conn", %peer)),
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Serves one connection; `allowed`: its source is inside `--dns-allow` (else every query
/// is answered REFUSED).
async fn tcp_connection(
    mut stream: TcpStream,
    replica: Replica,
    config: Arc<DnsConfig>,
    allowed: bool,
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
        let action = if allowed {
            let view = replica.current();
            responder.respond(&view.registry, &packet, Transport::Tcp, &mut out)
        } else {
            responder.refuse(&packet, &mut out)
        };
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
