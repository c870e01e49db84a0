//! Heartbeats that reach a follower are handed to the leader.
//!
//! Heartbeat times live in the leader's memory (a heartbeat is not a Raft write, so Raft's
//! proposal forwarding does not carry it). A follower therefore relays the call itself: it
//! reads the leader's id and address from its Raft status (members' addresses are their gRPC
//! listeners, which serve clients and peers alike) and calls `Registry/Heartbeat` there. The
//! client may heartbeat any node, as it may write to any node.
//!
//! A relayed call carries the [`FORWARDED`] metadata, and a node never relays a call that
//! carries it: while leadership moves, two nodes that each believe the other leads bounce a
//! heartbeat back to its relay, which asks its Raft status again, instead of passing it
//! around in a loop. The relay keeps trying (a fresh status each time) for at most
//! [`PATIENCE`]; only then does the client get `UNAVAILABLE`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::convert;
use super::error::{heartbeat_status, registry_status};
use super::fanout::{AUTHORIZATION, Authorization};
use crate::health::{HealthHandle, HeartbeatError};
use crate::peer::{DialOptions, Dialer};
use crate::replica::Replica;

/// Metadata key marking a call relayed by another node: it is answered here or refused.
pub(crate) const FORWARDED: &str = "meridian-forwarded";

/// How long a relay looks for a leader that accepts the heartbeat. An election takes about a
/// second; five leave room for a slow one while staying below the patience of any client
/// heartbeating a TTL of a few seconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// Bounds one relayed call, so a leader that died mid-call costs one attempt, not the patience.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between attempts while no leader is known or leadership is moving.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Relays heartbeats to the leader over cached channels (one per leader address).
#[derive(Debug, Default)]
pub(crate) struct Forwarder {
    dialer: Dialer,
    /// Lazily connected channels, by leader and address. A `Channel` is a cheap handle on a
    /// shared connection; the lock is held only to look one up or insert it, never across a
    /// call.
    channels: Mutex<HashMap<(u64, String), Channel>>,
}

// === impl Forwarder ===

impl Forwarder {
    /// Relays through channels from `dialer`.
    pub(crate) fn new(dialer: Dialer) -> Self {
        Self {
            dialer,
            channels: Mutex::default(),
        }
    }

    /// Answers `Registry/Heartbeat`: by this node's health task if it leads, else by the
    /// leader through a relay, trying again (with a fresh Raft status) while leadership moves,
    /// for at most [`PATIENCE`].
    pub(crate) async fn heartbeat(
        &self,
        replica: &Replica,
        health: &HealthHandle,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<pb::HeartbeatResponse, Status> {
        let relayed = request.metadata().contains_key(FORWARDED);
        // The caller's token goes with a relayed call: the leader checks it too.
        let authorization = request.metadata().get(AUTHORIZATION).cloned();
        let request = request.into_inner();
        let service =
            convert::service_name("service", &request.service).map_err(registry_status)?;
        let id = convert::instance_id("id", &request.id).map_err(registry_status)?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let refusal = match health.heartbeat(service.clone(), id.clone()).await {
                Ok(accepted) => {
                    return Ok(pb::HeartbeatResponse {
                        ttl_ms: accepted.ttl_ms,
                        health: convert::health_pb(accepted.health) as i32,
                        revision: accepted.revision,
                    });
                }
                // A relayed call is answered here or refused: its relay asks again.
                Err(e @ HeartbeatError::NotLeader { .. }) if relayed => {
                    return Err(heartbeat_status(e));
                }
                Err(HeartbeatError::NotLeader { .. }) => {
                    match self.relay(replica, &request, authorization.as_ref()).await {
                        Ok(Some(answer)) => return Ok(answer),
                        // This node leads, but its health task has not noticed yet (it polls).
                        Ok(None) => Status::unavailable(
                            "this node has just become the leader; its health checker is starting",
                        ),
                        Err(status) if is_transient(&status) => status,
                        Err(status) => return Err(status),
                    }
                }
                Err(e) => return Err(heartbeat_status(e)),
            };
            if !pause_until(deadline).await {
                return Err(refusal);
            }
        }
    }

    /// Sends `request` to the leader that `replica`'s Raft status names, if it is another node.
    /// `Ok(None)` means this node itself leads (its health task has not taken over yet).
    async fn relay(
        &self,
        replica: &Replica,
        request: &pb::HeartbeatRequest,
        authorization: Option<&Authorization>,
    ) -> Result<Option<pb::HeartbeatResponse>, Status> {
        let status = replica
            .raft()
            .status()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let Some(leader) = status.leader_id else {
            return Err(Status::unavailable(
                "this node is not the leader; no leader is known yet (election in progress)",
            ));
        };
        if leader == status.id {
            return Ok(None);
        }
        let Some(address) = status
            .members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.address.clone())
        else {
            return Err(Status::unavailable(format!(
                "the leader is node {leader}, whose address is unknown here"
            )));
        };
        let mut client = RegistryClient::new(self.channel(leader, &address)?);
        let mut call = Request::new(request.clone());
        call.set_timeout(ATTEMPT_TIMEOUT);
        call.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        if let Some(value) = authorization {
            call.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        tracing::trace!(leader, %address, "relaying a heartbeat to the leader");
        // A client span for the relay; the leader's server span continues it.
        let span = tracing::info_span!(
            "forward",
            otel.name = "meridian.v1.Registry/Heartbeat",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "meridian.v1.Registry",
            rpc.method = "Heartbeat",
            server.address = %address,
            meridian.leader = leader as i64,
        );
        {
            let _entered = span.enter();
            crate::telemetry::context::inject(&mut call);
        }
        let relayed = tokio::time::timeout(ATTEMPT_TIMEOUT, client.heartbeat(call));
        match tracing::Instrument::instrument(relayed, span).await {
            Ok(Ok(answer)) => Ok(Some(answer.into_inner())),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable(format!(
                "the leader (node {leader}) did not answer within {ATTEMPT_TIMEOUT:?}"
            ))),
        }
    }

    fn channel(&self, leader: u64, address: &str) -> Result<Channel, Status> {
        let mut channels = self
            .channels
            .lock()
            .expect("invariant: the channel cache lock is never held across a panic");
        let key = (leader, address.to_owned());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let channel = self
            .dialer
            .lazy(
                leader,
                address,
                DialOptions::connect_within(ATTEMPT_TIMEOUT),
            )
            .map_err(|e| Status::internal(format!("leader address {address:?}: {e}")))?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

/// Whether a relay's failure means "leadership is moving, ask again" rather than a verdict on
/// the heartbeat itself. A broken connection to a dying leader surfaces as `UNKNOWN`; a
/// heartbeat is idempotent, so asking again is always safe.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Pauses before the next attempt; `false` if `deadline` has passed.
async fn pause_until(deadline: tokio::time::Instant) -> bool {
    if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
        return false;
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    true
}
