//! Asking the other members of the cluster about their proxies.
//!
//! Proxies stream from any node, so `ListProxies` and `WaitApplied` ask every other member
//! (addresses from this node's Raft status: members' addresses are their gRPC listeners) with
//! `local_only` set, in parallel, each within a bound; a member that does not answer in time
//! is listed as unreachable rather than holding up the answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::error::status;
use crate::peer::{DialOptions, Dialer};
use crate::replica::Replica;

/// How long a member has to list its proxies: a live member answers in milliseconds.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer than the wait itself a member has to answer a `WaitApplied`.
const WAIT_GRACE: Duration = Duration::from_secs(2);
/// Bound on connecting to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Calls the other members, over cached channels.
pub(crate) struct Fanout {
    replica: Replica,
    dialer: Dialer,
    /// Lazily connected channels by member and address; the lock is never held across a call.
    channels: Mutex<HashMap<(u64, String), Channel>>,
}

// === impl Fanout ===

impl Fanout {
    pub(crate) fn new(replica: Replica, dialer: Dialer) -> Self {
        Self {
            replica,
            dialer,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The same, reaching members through `dialer`.
    pub(crate) fn dialing_with(self, dialer: Dialer) -> Self {
        Self { dialer, ..self }
    }

    /// Every other member's proxies, and the members that did not answer. `authorization`
    /// is the caller's, passed on: each member checks it as if called directly.
    pub(crate) async fn list_proxies(
        &self,
        authorization: Option<Authorization>,
    ) -> Result<(Vec<pb::ProxyStatus>, Vec<u64>), Status> {
        let calls = self
            .others()
            .await?
            .into_iter()
            .map(|(id, channel)| {
                let mut request = tonic::Request::new(pb::ListProxiesRequest { local_only: true });
                request.set_timeout(LIST_TIMEOUT);
                pass_on(&mut request, authorization.as_ref());
                // The member's span for the call joins the caller's trace.
                crate::telemetry::context::inject(&mut request);
                (id, channel, request)
            })
            .map(|(id, channel, request)| async move {
                let mut client = DiscoveryClient::new(channel);
                let answer = tokio::time::timeout(LIST_TIMEOUT, client.list_proxies(request)).await;
                (id, answer.ok().and_then(Result::ok).map(|r| r.into_inner()))
            });
        let mut proxies = Vec::new();
        let mut unreachable = Vec::new();
        for (id, answer) in futures::future::join_all(calls).await {
            match answer {
                Some(a) => proxies.extend(a.proxies),
                None => unreachable.push(id),
            }
        }
        unreachable.sort_unstable();
        Ok((proxies, unreachable))
    }

    /// Every other member's answer to the same wait (local to each), and the members that
    /// did not answer.
    pub(crate) async fn wait_applied(
        &self,
        req: &pb::WaitAppliedRequest,
        timeout: Duration,
        authorization: Option<Authorization>,
    ) -> Result<(Vec<pb::WaitAppliedResponse>, Vec<u64>), Status> {
        let bound = timeout + WAIT_GRACE;
        let calls = self.others().await?.into_iter().map(|(id, channel)| {
            let mut request = tonic::Request::new(pb::WaitAppliedRequest {
                local_only: true,
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                ..req.clone()
            });
            request.set_timeout(bound);
            pass_on(&mut request, authorization.as_ref());
            // The member's span for the call joins the caller's trace.
            crate::telemetry::context::inject(&mut request);
            async move {
                let mut client = DiscoveryClient::new(channel);
                let answer = tokio::time::timeout(bound, client.wait_applied(request)).await;
                (id, answer.ok().and_then(Result::ok).map(|r| r.into_inner()))
            }
        });
        let mut answers = Vec::new();
        let mut unreachable = Vec::new();
        for (id, answer) in futures::future::join_all(calls).await {
            match answer {
                Some(a) => answers.push(a),
                None => unreachable.push(id),
            }
        }
        unreachable.sort_unstable();
        Ok((answers, unreachable))
    }

    /// The other members, each with a channel to its gRPC listener.
    async fn others(&self) -> Result<Vec<(u64, Channel)>, Status> {
        let raft = self.replica.raft().status().await.map_err(status)?;
        let mut channels = self
            .channels
            .lock()
            .expect("invariant: the channel cache lock is never held across a panic");
        let mut others = Vec::new();
        for member in raft.members.iter().filter(|m| m.id != raft.id) {
            let key = (member.id, member.address.clone());
            let channel = match channels.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let options = DialOptions::connect_within(CONNECT_TIMEOUT);
                    let Ok(channel) = self.dialer.lazy(member.id, &member.address, options) else {
                        // Listed as unreachable: a channel that never connects.
                        tracing::warn!(node = member.id, address = %member.address, "member address is not HOST:PORT");
                        others.push((member.id, unreachable_channel()));
                        continue;
                    };
                    channels.insert(key, channel.clone());
                    channel
                }
            };
            others.push((member.id, channel));
        }
        Ok(others)
    }
}

/// A channel whose every call fails at once (to a reserved address that refuses connections),
/// so a member with an unusable address is reported unreachable like any other.
fn unreachable_channel() -> Channel {
    Endpoint::from_static("http://127.0.0.1:1")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy()
}

/// The gRPC metadata key of a call's token.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// A call's `authorization` metadata value.
pub(crate) type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// Puts the caller's token on a call made on its behalf.
fn pass_on<T>(request: &mut tonic::Request<T>, authorization: Option<&Authorization>) {
    if let Some(value) = authorization {
        request.metadata_mut().insert(AUTHORIZATION, value.clone());
    }
}
