//! The receiving end of peer streams.

use meridian_proto::v1 as pb;
use meridian_proto::v1::peer_server::Peer;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::raft::RaftHandle;

/// Largest raft message accepted, reassembled: a snapshot of a very large registry.
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// `meridian.v1.Peer`: steps every message from a peer stream into the local raft node.
pub struct PeerService<O> {
    id: u64,
    raft: RaftHandle<O>,
    /// With mutual TLS: each message's sender must be the node the connection's certificate
    /// names.
    verify_senders: bool,
    /// Ends every inbound stream when the node stops: a peer keeps its stream open for as long
    /// as it runs, and the API server's drain waits for open streams.
    shutdown: CancellationToken,
}

// === impl PeerService ===

impl<O> PeerService<O> {
    /// Delivers to the raft node `id` behind `raft`.
    pub fn new(id: u64, raft: RaftHandle<O>) -> Self {
        Self {
            id,
            raft,
            verify_senders: false,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends inbound streams when `shutdown` fires.
    #[must_use]
    pub fn ending_on(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Accepts a message only from the node its connection's client certificate names
    /// (`node-N.peers.meridian`): a stream without a certificate is refused outright. For
    /// listeners with mutual TLS.
    #[must_use]
    pub fn verifying_senders(mut self) -> Self {
        self.verify_senders = true;
        self
    }
}

#[tonic::async_trait]
impl<O: Send + 'static> Peer for PeerService<O> {
    async fn raft(
        &self,
        request: Request<Streaming<pb::RaftFrame>>,
    ) -> Result<Response<pb::RaftStreamSummary>, Status> {
        // With mutual TLS, the node the connection's certificate names: the only sender its
        // messages may claim. Settled before any frame is decoded.
        let sender = if self.verify_senders {
            let leaf = request
                .peer_certs()
                .and_then(|chain| chain.first().cloned());
            let Some(leaf) = leaf else {
                return Err(Status::unauthenticated(
                    "raft traffic needs a node certificate from the cluster's CA",
                ));
            };
            let Some(id) = meridian_tls::identity::node_id(&leaf) else {
                return Err(Status::permission_denied(
                    "the certificate presented is not a node's",
                ));
            };
            Some(id)
        } else {
            None
        };
        let mut frames = request.into_inner();
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_frames = 0usize;
        let mut messages = 0u64;
        loop {
            let frame = tokio::select! {
                frame = frames.message() => match frame? {
                    Some(frame) => frame,
                    None => break,
                },
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("node shutting down"));
                }
            };
            if pending.len() + frame.data.len() > MAX_MESSAGE_BYTES {
                return Err(Status::resource_exhausted("raft message too large"));
            }
            if frame.more {
                if pending.is_empty() {
                    // A snapshot of tens of MiB: hold it once at its size rather than
                    // doubling a buffer (and copying it) frame by frame.
                    let total = usize::try_from(frame.total).unwrap_or(usize::MAX);
                    if total > MAX_MESSAGE_BYTES {
                        return Err(Status::resource_exhausted("raft message too large"));
                    }
                    pending.reserve_exact(total.max(frame.data.len()));
                }
                pending.extend_from_slice(&frame.data);
                pending_frames += 1;
                continue;
            }
            let bytes = if pending.is_empty() {
                frame.data
            } else {
                pending.extend_from_slice(&frame.data);
                tracing::info!(
                    bytes = pending.len(),
                    frames = pending_frames + 1,
                    "reassembled a large raft message"
                );
                pending_frames = 0;
                std::mem::take(&mut pending)
            };
            let msg = Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))?;
            // The message holds its own copy: do not keep a second one while it is stepped
            // (for a snapshot, while the registry is rebuilt from it).
            drop(bytes);
            if msg.to != self.id {
                // A peer with a wrong address book: refuse loudly rather than mis-deliver.
                return Err(Status::failed_precondition(format!(
                    "message for node {} reached node {}",
                    msg.to, self.id
                )));
            }
            if let Some(id) = sender
                && id != msg.from
            {
                return Err(Status::permission_denied(format!(
                    "the certificate presented is node {id}'s, not node {}'s",
                    msg.from
                )));
            }
            messages += 1;
            if self.raft.step(msg).await.is_err() {
                return Err(Status::unavailable("the raft node is stopped"));
            }
        }
        Ok(Response::new(pb::RaftStreamSummary { messages }))
    }
}
