//! [`GrpcTransport`]: raft messages out to peers, one task and one stream per peer.
//!
//! The driver calls [`Transport::send`] from its loop, so sending never waits: each peer has a
//! bounded queue ([`QUEUE_DEPTH`]) and a full queue drops the message and reports the peer
//! unreachable (raft then probes it gently and resends what matters). Each peer's task keeps
//! one client stream open, reconnecting with exponential backoff (10 ms to 1 s; at once, the
//! first time, when a stream that had lasted a while breaks); HTTP/2
//! keep-alives notice a peer that stopped answering (crashed or paused) within ~3 s, and a
//! stream that takes no frame for [`STALL`] is dropped and dialled again, so one stuck stream
//! cannot silence a link for good. A dial the peer's address refuses (nothing listens there:
//! the process is gone) is reported as [`Feedback::Down`], so a follower whose leader crashed
//! need not wait out the election timeout.

use std::collections::HashMap;
use std::sync::{Mutex, mpsc as std_mpsc};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::peer_client::PeerClient;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tracing::Instrument as _;

use super::{DialOptions, Dialer, FRAME_BYTES};
use crate::raft::{Feedback, Transport};

/// Messages queued per peer before new ones are dropped. Raft sends at most a few messages
/// per peer per Ready; a thousand absorbs bursts while a stalled peer costs bounded memory.
pub const QUEUE_DEPTH: usize = 1024;

/// A stream that takes no frame for this long is treated as broken and dialled again: a peer
/// that stopped reading (its connection half-open, its stream stuck) must not hold the link,
/// whose queue would then fill and drop every message to that peer from then on.
pub const STALL: Duration = Duration::from_secs(5);

/// Bound on dialling a peer, TCP and HTTP/2 (and TLS) handshakes together.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The raft room's transport over `meridian.v1.Peer` streams.
pub struct GrpcTransport {
    id: u64,
    links: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    feedback_tx: std_mpsc::Sender<Feedback>,
    feedback_rx: Mutex<std_mpsc::Receiver<Feedback>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The node's runtime: peer tasks run there even when a peer is added from the Raft
    /// driver's own thread.
    runtime: tokio::runtime::Handle,
    dialer: Dialer,
}

/// One peer's sending task.
struct Link {
    from: u64,
    to: u64,
    address: String,
    dialer: Dialer,
    queue: mpsc::Receiver<Message>,
    feedback: std_mpsc::Sender<Feedback>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

// === impl GrpcTransport ===

impl GrpcTransport {
    /// A transport for node `id` that knows `peers` (`(id, host:port)`; its own entry is
    /// ignored) and reaches them through `dialer`. Peer tasks run on the calling runtime until
    /// `shutdown` is cancelled; wait for them with [`GrpcTransport::tasks`]. Must be called
    /// within a tokio runtime.
    pub fn new(
        id: u64,
        peers: &[(u64, String)],
        dialer: Dialer,
        shutdown: CancellationToken,
    ) -> Self {
        let (feedback_tx, feedback_rx) = std_mpsc::channel();
        let transport = Self {
            id,
            links: Mutex::new(HashMap::new()),
            feedback_tx,
            feedback_rx: Mutex::new(feedback_rx),
            shutdown,
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            dialer,
        };
        for (peer, address) in peers {
            transport.add_peer(*peer, address);
        }
        transport
    }

    /// The peer tasks, to wait for after shutdown.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    fn report(&self, feedback: Feedback) {
        let _ = self.feedback_tx.send(feedback);
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let links = self
            .links
            .lock()
            .expect("invariant: no panics while holding the lock");
        for msg in msgs {
            let to = msg.to;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let queued = links
                .get(&to)
                .is_some_and(|link| link.try_send(msg).is_ok());
            if !queued {
                tracing::trace!(to, "peer queue full or peer unknown; message dropped");
                self.report(Feedback::Unreachable(to));
                if snapshot {
                    self.report(Feedback::Snapshot {
                        to,
                        delivered: false,
                    });
                }
            }
        }
    }

    fn feedback(&self) -> Vec<Feedback> {
        let rx = self
            .feedback_rx
            .lock()
            .expect("invariant: no panics while holding the lock");
        rx.try_iter().collect()
    }

    fn add_peer(&self, id: u64, address: &str) {
        if id == self.id || address.is_empty() {
            return;
        }
        let mut links = self
            .links
            .lock()
            .expect("invariant: no panics while holding the lock");
        if links.contains_key(&id) {
            return;
        }
        let (tx, queue) = mpsc::channel(QUEUE_DEPTH);
        links.insert(id, tx);
        let link = Link {
            from: self.id,
            to: id,
            address: address.to_owned(),
            dialer: self.dialer.clone(),
            queue,
            feedback: self.feedback_tx.clone(),
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
        };
        let span = tracing::info_span!("peer", from = self.id, to = id, address);
        self.tasks
            .spawn_on(link.run().instrument(span), &self.runtime);
    }
}

// === impl Link ===

impl Link {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => return,
                c = tokio::time::timeout(CONNECT_PATIENCE, self.connect()) => c,
            };
            match connected {
                Err(_) => tracing::debug!("connecting timed out"),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot connect");
                    if refused(&e) {
                        let _ = self.feedback.send(Feedback::Down(self.to));
                    }
                }
                Ok(Ok(channel)) => {
                    tracing::debug!("connected");
                    backoff = BACKOFF_MIN;
                    let opened = tokio::time::Instant::now();
                    if self.stream(channel).await.is_break() {
                        return;
                    }
                    if opened.elapsed() >= BACKOFF_MAX {
                        // A link that worked for a while broke: dial again at once (as a gRPC
                        // channel reconnects when a ready connection drops), so a peer that
                        // died is known as such (refused) without a backoff's delay. A stream
                        // that keeps breaking as soon as it opens is paced by the backoff.
                        self.drain_unreachable();
                        continue;
                    }
                }
            }
            // Whatever waits now would go nowhere: drop it, tell raft, try again later.
            self.drain_unreachable();
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let options = DialOptions {
            connect_timeout: Duration::from_secs(1),
            keep_alive: Some((Duration::from_secs(1), Duration::from_secs(2))),
        };
        self.dialer.connect(self.to, &self.address, options).await
    }

    /// Pumps queued messages into one stream until it breaks (→ `Continue`: reconnect) or the
    /// node shuts down (→ `Break`).
    async fn stream(&mut self, channel: Channel) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        let (frames, rx) = mpsc::channel::<pb::RaftFrame>(64);
        let mut client = PeerClient::new(channel);
        // The call runs on its own task: hyper drives the request stream there, while this
        // loop only feeds it and notices when it ends.
        let mut call = self
            .tasks
            .spawn(async move { client.raft(ReceiverStream::new(rx)).await });
        loop {
            let msg = tokio::select! {
                () = self.shutdown.cancelled() => return Break(()),
                ended = &mut call => {
                    tracing::debug!(?ended, "peer stream ended");
                    let _ = self.feedback.send(Feedback::Unreachable(self.to));
                    return Continue(());
                }
                msg = self.queue.recv() => match msg {
                    Some(msg) => msg,
                    None => return Break(()),
                },
            };
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let sent = match msg.write_to_bytes() {
                Ok(bytes) => tokio::select! {
                    () = self.shutdown.cancelled() => return Break(()),
                    sent = send_frames(&frames, bytes) => sent,
                },
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a raft message");
                    false
                }
            };
            if snapshot {
                let _ = self.feedback.send(Feedback::Snapshot {
                    to: self.to,
                    delivered: sent,
                });
            }
            if !sent {
                let _ = self.feedback.send(Feedback::Unreachable(self.to));
                call.abort();
                return Continue(());
            }
        }
    }

    fn drain_unreachable(&mut self) {
        let mut dropped = 0usize;
        while let Ok(msg) = self.queue.try_recv() {
            dropped += 1;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let _ = self.feedback.send(Feedback::Snapshot {
                    to: self.to,
                    delivered: false,
                });
            }
        }
        if dropped > 0 {
            tracing::trace!(
                from = self.from,
                dropped,
                "peer unreachable; messages dropped"
            );
            let _ = self.feedback.send(Feedback::Unreachable(self.to));
        }
    }
}

/// Whether dialling failed because the peer's address refused the connection: its host
/// answered that nothing listens on that port, so the peer's process is not running. A
/// timeout, a reset or a failed handshake (a partition, a paused or overloaded peer, a proxy
/// in between) is not that.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Sends one encoded message as frames of at most [`FRAME_BYTES`]; false if the stream broke
/// or stalled (a frame not taken within [`STALL`]).
async fn send_frames(frames: &mpsc::Sender<pb::RaftFrame>, bytes: Vec<u8>) -> bool {
    let send = |frame: pb::RaftFrame| async move {
        match tokio::time::timeout(STALL, frames.send(frame)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::warn!("peer stream took no frame for {STALL:?}; dialling again");
                false
            }
        }
    };
    if bytes.len() <= FRAME_BYTES {
        return send(pb::RaftFrame {
            data: bytes,
            more: false,
            total: 0,
        })
        .await;
    }
    let count = bytes.len().div_ceil(FRAME_BYTES);
    for (i, chunk) in bytes.chunks(FRAME_BYTES).enumerate() {
        let frame = pb::RaftFrame {
            data: chunk.to_vec(),
            more: i + 1 < count,
            total: if i == 0 { bytes.len() as u64 } else { 0 },
        };
        if !send(frame).await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Hang guard only: each wait below normally ends within one redial (10 ms).
    const PATIENCE: Duration = Duration::from_secs(20);

    /// An address nothing listens on: bound, then closed.
    fn closed_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        address
    }

    #[tokio::test]
    async fn only_a_refused_dial_counts_as_refused() {
        let dialer = Dialer::plain();
        let options = DialOptions::connect_within(Duration::from_millis(300));
        let error = dialer
            .connect(2, &closed_address(), options)
            .await
            .expect_err("nothing listens there");
        assert!(refused(&error), "{error:?}");

        // A listener whose accept queue is full: the kernel drops further SYNs, so a dial
        // times out as it would into a partition, but it is not a refusal.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let mut queued = Vec::new();
        let full = loop {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                Ok(stream) => queued.push(stream.expect("connect while the queue has room")),
                Err(_) => break true,
            }
            if queued.len() > 16 {
                break false;
            }
        };
        assert!(full, "the accept queue never filled");
        let error = dialer
            .connect(2, &address.to_string(), options)
            .await
            .expect_err("the accept queue is full");
        assert!(!refused(&error), "{error:?}");
        drop((queued, listener));
    }

    #[tokio::test]
    async fn a_refused_dial_over_tls_counts_as_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = meridian_tls::init::InitOptions {
            nodes: vec![1, 2],
            names: Vec::new(),
            clients: Vec::new(),
        };
        meridian_tls::init::init(dir.path(), &options).expect("a CA and node certificates");
        let client = meridian_tls::config::client(
            &dir.path().join("ca.pem"),
            Some((
                &dir.path().join("node-1.pem"),
                &dir.path().join("node-1-key.pem"),
            )),
        )
        .expect("client config");
        let error = Dialer::tls(client.config)
            .connect(
                2,
                &closed_address(),
                DialOptions::connect_within(Duration::from_millis(300)),
            )
            .await
            .expect_err("nothing listens there");
        assert!(refused(&error), "{error:?}");
    }

    #[tokio::test]
    async fn a_peer_whose_address_refuses_is_reported_down() {
        let shutdown = CancellationToken::new();
        let peers = [(2, closed_address())];
        let transport = GrpcTransport::new(1, &peers, Dialer::plain(), shutdown.clone());
        let started = Instant::now();
        let mut seen = Vec::new();
        while !seen.contains(&Feedback::Down(2)) {
            assert!(
                started.elapsed() < PATIENCE,
                "no Down(2) after {PATIENCE:?}; feedback: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen.extend(transport.feedback());
        }
        shutdown.cancel();
        transport.tasks().close();
        transport.tasks().wait().await;
    }
}
