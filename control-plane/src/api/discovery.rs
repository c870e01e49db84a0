//! `meridian.v1.Discovery`: proxy streams, and the cluster-wide `ListProxies` and
//! `WaitApplied`.
//!
//! A stream is a state machine polled by tonic (no task of its own): it waits for the hello,
//! then for either the proxy's next message or the session's next push, whichever comes
//! first. A malformed message ends the stream with `INVALID_ARGUMENT` naming the field; a
//! closed connection drops the session, which takes the proxy out of the table. When the node
//! shuts down the discovery hub closes every session, so streams end and the server drains.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_request::Body;
use meridian_proto::v1::discovery_server::Discovery as DiscoveryApi;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, StateCache};
use super::error::{discovery_status, registry_status};
use super::fanout::{AUTHORIZATION, Fanout};
use crate::auth::{self, Caller};
use crate::discovery::{DiscoveryHandle, Session};
use crate::registry::{Access, RegistryError, ServiceName};
use crate::replica::Replica;

/// What `WaitApplied` waits for when the request says 0.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The `Discovery` gRPC service.
pub struct DiscoveryService {
    handle: DiscoveryHandle,
    cache: Arc<StateCache>,
    fanout: Fanout,
}

/// The server stream of one proxy.
pub(crate) type DiscoveryStream =
    Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

/// One proxy stream's state.
struct Conn {
    inbound: Streaming<pb::DiscoveryRequest>,
    session: Option<Session>,
    handle: DiscoveryHandle,
    cache: Arc<StateCache>,
    remote: String,
    /// Whose token opened the stream: states of services it may not subscribe to are hidden.
    caller: Caller,
    done: bool,
}

type Reply<T> = Result<Response<T>, Status>;

// === impl DiscoveryService ===

impl DiscoveryService {
    /// Serves the proxies of this node (`handle`), and asks the other members of `replica`'s
    /// cluster for theirs.
    pub fn new(replica: Replica, handle: DiscoveryHandle) -> Self {
        Self {
            handle,
            cache: Arc::new(StateCache::default()),
            fanout: Fanout::new(replica, crate::peer::Dialer::plain()),
        }
    }

    /// Asks the other members through channels from `dialer` (TLS when the node runs with
    /// it).
    #[must_use]
    pub fn dialing_with(mut self, dialer: crate::peer::Dialer) -> Self {
        self.fanout = self.fanout.dialing_with(dialer);
        self
    }
}

#[tonic::async_trait]
impl DiscoveryApi for DiscoveryService {
    type StreamStream = DiscoveryStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Reply<Self::StreamStream> {
        let caller = auth::caller(&req)?;
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let conn = Conn {
            caller,
            inbound: req.into_inner(),
            session: None,
            handle: self.handle.clone(),
            cache: Arc::clone(&self.cache),
            remote,
            done: false,
        };
        let stream = futures::stream::unfold(conn, |mut conn| async move {
            let item = conn.next().await?;
            Some((item, conn))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_proxies(
        &self,
        req: Request<pb::ListProxiesRequest>,
    ) -> Reply<pb::ListProxiesResponse> {
        auth::caller(&req)?.require_admin()?;
        let authorization = req.metadata().get(AUTHORIZATION).cloned();
        let mut answer = pb::ListProxiesResponse {
            proxies: self
                .handle
                .proxies()
                .list()
                .iter()
                .map(convert::proxy_pb)
                .collect(),
            unreachable_nodes: Vec::new(),
        };
        if !req.into_inner().local_only {
            let (remote, unreachable) = self.fanout.list_proxies(authorization).await?;
            answer.proxies.extend(remote);
            answer.unreachable_nodes = unreachable;
            answer
                .proxies
                .sort_by(|a, b| (a.node_id, &a.proxy_id).cmp(&(b.node_id, &b.proxy_id)));
        }
        Ok(Response::new(answer))
    }

    async fn wait_applied(
        &self,
        req: Request<pb::WaitAppliedRequest>,
    ) -> Reply<pb::WaitAppliedResponse> {
        let caller = auth::caller(&req)?;
        let authorization = req.metadata().get(AUTHORIZATION).cloned();
        let req = req.into_inner();
        let service = convert::service_name("service", &req.service).map_err(registry_status)?;
        caller.require_service(&service, Access::Read)?;
        if req.revision == 0 {
            return Err(registry_status(RegistryError::invalid(
                "revision",
                "must be at least 1 (e.g. PutRouteResponse.revision)",
            )));
        }
        let timeout = match req.timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        if timeout > MAX_WAIT {
            return Err(registry_status(RegistryError::invalid(
                "timeout_ms",
                format!("{} is more than {}", req.timeout_ms, MAX_WAIT.as_millis()),
            )));
        }
        let local = self.handle.wait_applied(&service, req.revision, timeout);
        if req.local_only {
            return Ok(Response::new(convert::wait_pb(&local.await)));
        }
        let remote = self.fanout.wait_applied(&req, timeout, authorization);
        let (local, remote) = futures::join!(local, remote);
        let (others, unreachable) = remote?;
        let mut answer = convert::wait_pb(&local);
        for other in others {
            answer.subscribed += other.subscribed;
            answer.applied += other.applied;
            answer.rejected.extend(other.rejected);
            answer.pending.extend(other.pending);
        }
        answer.unreachable_nodes = unreachable;
        Ok(Response::new(answer))
    }
}

// === impl Conn ===

impl Conn {
    /// The next message for the proxy; `None` ends the stream.
    async fn next(&mut self) -> Option<Result<pb::DiscoveryResponse, Status>> {
        loop {
            if self.done {
                return None;
            }
            let Some(session) = self.session.as_mut() else {
                // The first message must be the hello.
                let body = match self.inbound.next().await {
                    Some(Ok(msg)) => msg.body,
                    _ => return None,
                };
                let Some(Body::Hello(hello)) = body else {
                    return self.fail(Status::invalid_argument(
                        "hello: the first message of a stream must be a hello",
                    ));
                };
                match Session::open(&self.handle, convert::hello(hello), self.remote.clone()).await
                {
                    Ok(session) => self.session = Some(session),
                    Err(e) => return self.fail(discovery_status(e)),
                }
                continue;
            };
            tokio::select! {
                msg = self.inbound.next() => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        Some(Err(status)) => {
                            tracing::debug!(%status, "proxy stream broke");
                            return None;
                        }
                        None => return None,
                    };
                    if let Err(status) = handle(session, msg).await {
                        return self.fail(status);
                    }
                }
                push = session.next_push() => {
                    // None: the hub stopped (shutdown): end the stream.
                    let push = push?;
                    let mut response = self.cache.response(&push, self.handle.node_id());
                    hide_denied(&self.caller, &mut response);
                    session.sent(push.version);
                    return Some(Ok(response));
                }
            }
        }
    }

    /// Ends the stream with `status`, and the session with it.
    fn fail(&mut self, status: Status) -> Option<Result<pb::DiscoveryResponse, Status>> {
        tracing::debug!(%status, remote = %self.remote, "refusing a proxy stream");
        self.done = true;
        self.session = None;
        Some(Err(status))
    }
}

/// States of services the stream's token may not subscribe to go out as "no such service":
/// the proxy learns nothing of them and answers their requests as for a missing service,
/// while the stream — and every other service on it — lives on. (Failing the stream instead
/// would let any client of the proxy cut it off by asking for a forbidden host.)
fn hide_denied(caller: &Caller, response: &mut pb::DiscoveryResponse) {
    if matches!(caller, Caller::Anyone) {
        return;
    }
    for state in &mut response.services {
        let allowed = ServiceName::parse("service", &state.service)
            .is_ok_and(|name| caller.allows_service(&name, Access::Subscribe));
        if !allowed {
            *state = pb::ServiceState {
                service: std::mem::take(&mut state.service),
                exists: false,
                ..Default::default()
            };
        }
    }
}

/// Applies one message of a proxy to its session.
async fn handle(session: &mut Session, msg: pb::DiscoveryRequest) -> Result<(), Status> {
    match msg.body {
        None => Err(Status::invalid_argument("body: the message is empty")),
        Some(Body::Hello(_)) => Err(Status::invalid_argument(
            "hello: only the first message of a stream may be a hello",
        )),
        Some(Body::Subscribe(s)) => {
            let names = names("subscribe.services", &s.services)?;
            session.subscribe(names).await.map_err(discovery_status)
        }
        Some(Body::Unsubscribe(u)) => {
            let names = names("unsubscribe.services", &u.services)?;
            session.unsubscribe(names).await.map_err(discovery_status)
        }
        Some(Body::Ack(a)) => {
            session.ack(a.version);
            Ok(())
        }
        Some(Body::Nack(n)) => {
            session.nack(n.version, n.error);
            Ok(())
        }
    }
}

fn names(field: &str, list: &[String]) -> Result<Vec<ServiceName>, Status> {
    list.iter()
        .enumerate()
        .map(|(i, name)| convert::service_name(&format!("{field}[{i}]"), name))
        .collect::<Result<_, _>>()
        .map_err(registry_status)
}
