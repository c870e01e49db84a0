//! UDP on dedicated OS threads, in batches, outside the tokio runtime.
//!
//! Why not a tokio task: at ~100k+ queries/s a UDP server is a loop of syscalls, and the
//! measured cost (see BENCHMARKS.md, "DNS") was the per-packet path through the runtime
//! (readiness, wakers, one `sendto` per reply on a runtime shared with Raft and gRPC) and
//! the kernel waking the client once per reply. Each thread here blocks in `recvfrom` for the
//! first datagram, drains what else has already arrived without blocking (up to [`BATCH`]),
//! answers them all from one registry view, and sends every reply with one `sendmmsg`, as
//! Knot and other fast authoritative servers do.
//!
//! Threads share one socket (the kernel hands each datagram to one of them). They look at the
//! cancellation token after every batch and at least every [`POLL`] (the socket's read
//! timeout), so shutdown stops them promptly. Forwarded queries (`--dns-recursor`) are
//! relayed by tasks on the node's runtime, which send their replies on the same socket.
//! With `--dns-allow`, a datagram from outside the listed networks is answered REFUSED by
//! the same responder (one address conversion and a few comparisons per datagram; none
//! without the flag).

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    MMsgHdr, RecvFlags, SendAncillaryBuffer, SendFlags, SocketAddrAny, recvfrom, sendmmsg, sendto,
};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::respond::{Action, Responder, Transport};
use super::server::MAX_FORWARDS_IN_FLIGHT;
use super::wire::{MAX_UDP_PAYLOAD, Rcode, write_empty};
use super::{AllowList, DnsConfig, forward};
use crate::replica::View;

/// Most datagrams answered per batch (and sent per `sendmmsg`). Enough to amortise the
/// syscall and the client's wake-up; small enough that the first reply of a batch waits
/// only a few microseconds for the last one to be built.
pub(crate) const BATCH: usize = 32;
/// How often a thread waiting for a datagram looks at the cancellation token.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// Largest UDP datagram we read; bigger ones are truncated by the kernel and then rejected.
const UDP_BUFFER: usize = 4096;

/// Everything one UDP thread needs.
pub(crate) struct UdpThread {
    /// The socket, shared with the other UDP threads and with forwarding tasks.
    pub(crate) socket: Arc<UdpSocket>,
    /// Views of the registry as they are published.
    pub(crate) views: watch::Receiver<View>,
    /// The server's configuration.
    pub(crate) config: Arc<DnsConfig>,
    /// Cancelled when the server stops.
    pub(crate) stop: CancellationToken,
    /// The node's runtime, for forwarding tasks.
    pub(crate) runtime: Handle,
}

/// One batch of datagrams and their replies; allocated once per thread.
struct Batch {
    packets: Vec<[u8; UDP_BUFFER]>,
    lens: [usize; BATCH],
    peers: Vec<Option<SocketAddrAny>>,
    replies: Vec<Vec<u8>>,
    /// Index into `packets` of the datagram each reply answers (replies are compacted).
    answers: [usize; BATCH],
}

// === impl UdpThread ===

impl UdpThread {
    /// Serves until `stop` is cancelled. Socket errors on receive or send are per-datagram
    /// (ICMP errors of earlier sends surface on receive on some systems) and never stop it.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.socket.set_read_timeout(Some(POLL))?;
        // A send blocks only while the socket's send buffer is full; bound it anyway.
        self.socket.set_write_timeout(Some(POLL))?;
        let mut responder = Responder::new(&self.config);
        let mut batch = Batch::new();
        let mut view = self.views.borrow_and_update().clone();
        let mut forwards: JoinSet<()> = JoinSet::new();
        while !self.stop.is_cancelled() {
            let received = batch.receive(&self.socket);
            if received == 0 {
                continue;
            }
            // One atomic load per batch; a new view only when the registry moved.
            if self.views.has_changed().unwrap_or(false) {
                view = self.views.borrow_and_update().clone();
            }
            let mut replies = 0;
            for i in 0..received {
                let packet = &batch.packets[i][..batch.lens[i]];
                let out = &mut batch.replies[replies];
                let action = match &self.config.allow {
                    Some(allow) if !allowed(allow, batch.peers[i].as_ref()) => {
                        responder.refuse(packet, out)
                    }
                    _ => responder.respond(&view.registry, packet, Transport::Udp, out),
                };
                match action {
                    Action::Reply => {
                        batch.answers[replies] = i;
                        replies += 1;
                    }
                    Action::Drop => {}
                    Action::Forward => {
                        if let Some(peer) = batch.peers[i].clone() {
                            self.forward(&mut forwards, packet, peer);
                        }
                    }
                }
            }
            batch.send(&self.socket, replies);
        }
        forwards.abort_all();
        Ok(())
    }

    /// Relays `packet` to the recursor on the runtime; the task sends the reply to `peer`.
    fn forward(&self, forwards: &mut JoinSet<()>, packet: &[u8], peer: SocketAddrAny) {
        while forwards.try_join_next().is_some() {}
        let Some(upstream) = self.config.recursor else {
            return;
        };
        if forwards.len() >= MAX_FORWARDS_IN_FLIGHT {
            let mut out = Vec::new();
            write_empty(&mut out, None, packet, Rcode::ServFail, false);
            send_one(&self.socket, &out, &peer);
            return;
        }
        let (socket, query) = (Arc::clone(&self.socket), packet.to_vec());
        let relay = async move {
            let reply = forward::udp(upstream, &query).await.unwrap_or_else(|| {
                let mut out = Vec::new();
                write_empty(&mut out, None, &query, Rcode::ServFail, false);
                out
            });
            send_one(&socket, &reply, &peer);
        };
        forwards.spawn_on(relay.in_current_span(), &self.runtime);
    }
}

// === impl Batch ===

impl Batch {
    fn new() -> Self {
        Self {
            packets: vec![[0u8; UDP_BUFFER]; BATCH],
            lens: [0; BATCH],
            peers: vec![None; BATCH],
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(usize::from(MAX_UDP_PAYLOAD)))
                .collect(),
            answers: [0; BATCH],
        }
    }

    /// Waits (at most [`POLL`]) for one datagram, then takes those already queued, up to
    /// [`BATCH`]. Returns how many were received.
    fn receive(&mut self, socket: &UdpSocket) -> usize {
        let mut received = 0;
        for ((packet, len), peer) in self
            .packets
            .iter_mut()
            .zip(self.lens.iter_mut())
            .zip(self.peers.iter_mut())
        {
            let flags = if received == 0 {
                RecvFlags::empty()
            } else {
                RecvFlags::DONTWAIT
            };
            match recvfrom(socket, &mut packet[..], flags) {
                Ok((got, _, from)) => {
                    *len = got;
                    *peer = from;
                    received += 1;
                }
                Err(e) => {
                    // Nothing more queued, the read timeout, or an ICMP error of an earlier
                    // send: none is fatal.
                    if e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR {
                        tracing::trace!(error = %e, "udp receive");
                    }
                    break;
                }
            }
        }
        received
    }

    /// Sends the first `replies` replies, as many per `sendmmsg` as the kernel takes; a reply
    /// that cannot be sent is skipped (UDP: the client asks again).
    fn send(&self, socket: &UdpSocket, replies: usize) {
        let iovs: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|j| [IoSlice::new(self.replies[j].as_slice())]);
        let mut controls: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut messages: Vec<MMsgHdr<'_>> = Vec::with_capacity(replies);
        for ((iov, control), &at) in iovs
            .iter()
            .zip(controls.iter_mut())
            .zip(&self.answers[..replies])
        {
            if let Some(peer) = &self.peers[at] {
                messages.push(MMsgHdr::new_with_addr(peer, iov, control));
            }
        }
        let mut sent = 0;
        while sent < messages.len() {
            match sendmmsg(socket, &mut messages[sent..], SendFlags::empty()) {
                Ok(n) => sent += n.max(1),
                Err(e) => {
                    tracing::trace!(error = %e, "udp send");
                    sent += 1;
                }
            }
        }
    }
}

// === functions ===

/// Whether `allow` lets `peer` query; a source that is not an IP address is refused.
fn allowed(allow: &AllowList, peer: Option<&SocketAddrAny>) -> bool {
    peer.and_then(|peer| SocketAddr::try_from(peer.clone()).ok())
        .is_some_and(|peer| allow.allows(peer.ip()))
}

/// Sends one datagram without blocking (a full send buffer drops it, as the network might).
fn send_one(socket: &UdpSocket, bytes: &[u8], peer: &SocketAddrAny) {
    if let Err(e) = sendto(socket, bytes, SendFlags::DONTWAIT, peer) {
        let peer = SocketAddr::try_from(peer.clone()).ok();
        tracing::trace!(error = %e, ?peer, "udp send");
    }
}
