//! The discovery stream's life: connect to one control-plane URL, say hello, subscribe to every
//! service wanted so far, then apply each response and answer it (Ack or Nack) while forwarding
//! new on-demand subscriptions; when the stream ends or fails, move to the next URL after a
//! backoff and start over (the new stream re-subscribes to everything).
//!
//! Backoff: a failed attempt moves to the next URL at once, so a dead node costs one connect
//! attempt, not a backoff cycle; after a whole round of URLs failed, a pause of 50 ms doubling to
//! a 1 s cap, with full jitter, reset once a stream delivered a response. The cap bounds how
//! stale a proxy stays after the cluster comes back (at most ~1 s more than the outage), while
//! jitter spreads a fleet's reconnects so a restarted node is not hit by every proxy in the same
//! millisecond.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::Status;
use super::apply::{Applied, Applier};
use crate::metrics::Metrics;

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// A control plane that does not accept a TCP connection within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings notice a control plane that vanished without closing the connection (a
/// partition, a frozen VM) within interval + timeout, so fail-over does not wait for TCP.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// While the control plane stays away, one warning per this many failed attempts (~1 a minute).
const LOG_EVERY: u32 = 60;
/// On-demand subscriptions follow the `Host` headers clients send; this bounds what a client
/// sending random names can make the proxy (and its control-plane node) track.
const MAX_SUBSCRIPTIONS: usize = 10_000;
/// The proto's limit of services per Subscribe message.
const MAX_PER_SUBSCRIBE: usize = 1000;

/// The discovery task's state, kept across streams.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) urls: Vec<String>,
    pub(crate) hello: pb::ProxyHello,
    /// Every service subscribed so far (configured ones, then on-demand ones).
    pub(crate) subscriptions: BTreeSet<String>,
    /// The services `/ready` waits for (empty: the first applied response).
    pub(crate) ready_for: BTreeSet<String>,
    pub(crate) on_demand: mpsc::UnboundedReceiver<String>,
    pub(crate) applier: Applier,
    pub(crate) status: Arc<Status>,
    pub(crate) metrics: Arc<Metrics>,
    /// `Bearer TOKEN` for the stream's `authorization` metadata, with ACLs.
    pub(crate) authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS to the control plane; `None`: plain text.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// How one stream ended.
enum Ended {
    Shutdown,
    /// `answered`: it delivered at least one response (so the next backoff starts over).
    Closed {
        answered: bool,
        reason: String,
    },
}

// === impl Client ===

impl Client {
    /// The stream's request, with the token when there is one.
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Runs until `shutdown` is cancelled.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_BASE;
        let mut next = 0usize;
        // Failed attempts in a row: the first is a warning, the rest only debug noise (one a
        // second while the control plane is away), with a warning again every `LOG_EVERY`.
        let mut failures = 0u32;
        loop {
            let url = self.urls[next % self.urls.len()].clone();
            next = next.wrapping_add(1);
            let ended = self.stream(&url, &shutdown).await;
            self.status.set_connected(None);
            self.metrics
                .discovery_connected
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let answered = match ended {
                Ended::Shutdown => {
                    tracing::info!("discovery stopped");
                    return;
                }
                Ended::Closed { answered, reason } => {
                    failures = if answered {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                    if failures % LOG_EVERY == 1 {
                        tracing::warn!(%url, %reason, failures, "discovery stream down; serving the last config");
                    } else {
                        tracing::debug!(%url, %reason, failures, "discovery stream attempt failed");
                    }
                    self.status.set_error(format!("{url}: {reason}"));
                    answered
                }
            };
            // A failed attempt moves to the next URL at once; the pause comes after a whole
            // round of URLs failed (or a working stream ended: then a short one, with jitter).
            let round_failed = !answered && (failures as usize).is_multiple_of(self.urls.len());
            backoff = if answered {
                BACKOFF_BASE
            } else if round_failed {
                (backoff * 2).min(BACKOFF_CAP)
            } else {
                continue;
            };
            let pause = backoff.mul_f64(fastrand::f64());
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            // Keep collecting on-demand subscriptions while waiting: the next stream sends them.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut sleep => break,
                    Some(name) = self.on_demand.recv() => { self.add(name); }
                }
            }
        }
    }

    async fn stream(&mut self, url: &str, shutdown: &CancellationToken) -> Ended {
        let closed = |reason: String| Ended::Closed {
            answered: false,
            reason,
        };
        let Some(uri) = meridian_tls::net::tonic_uri(url, self.tls.is_some()) else {
            return closed("an https URL needs --tls-ca".to_owned());
        };
        let endpoint = match Endpoint::from_shared(uri) {
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
            Err(e) => return closed(format!("invalid URL: {e}")),
        };
        let channel = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            c = meridian_tls::net::connect(endpoint, self.tls.as_ref()) => match c {
                Ok(c) => c,
                Err(e) => return closed(format!("connect: {}", error_chain(&e))),
            },
        };
        let mut first = vec![request(pb::discovery_request::Body::Hello(
            self.hello.clone(),
        ))];
        first.extend(subscribe_messages(
            self.subscriptions.iter().cloned().collect(),
        ));
        // Room for the opening messages plus the acks and on-demand subscriptions that follow.
        let (tx, rx) = mpsc::channel(first.len() + 64);
        for message in first {
            if tx.try_send(message).is_err() {
                return closed("stream channel full at start".to_owned());
            }
        }
        let mut client = DiscoveryClient::new(channel);
        let inbound = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            r = client.stream(self.request(ReceiverStream::new(rx))) => r,
        };
        let mut inbound = match inbound {
            Ok(response) => response.into_inner(),
            Err(status) => {
                return closed(format!("stream: {:?}: {}", status.code(), status.message()));
            }
        };
        tracing::info!(%url, subscriptions = self.subscriptions.len(), "discovery stream up");
        self.status.set_connected(Some(url));
        self.metrics
            .discovery_connected
            .store(1, std::sync::atomic::Ordering::Relaxed);
        // Nothing to wait for: a stream that is up is all readiness can ask.
        self.update_ready();
        let mut answered = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                Some(name) = self.on_demand.recv() => {
                    if self.add(name.clone()) {
                        tracing::debug!(service = %name, "subscribing on demand");
                        let msg = request(pb::discovery_request::Body::Subscribe(pb::Subscribe { services: vec![name] }));
                        if tx.send(msg).await.is_err() {
                            return Ended::Closed { answered, reason: "stream closed".to_owned() };
                        }
                    }
                }
                message = inbound.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ended::Closed { answered, reason: "closed by the server".to_owned() },
                        Err(status) => return Ended::Closed { answered, reason: format!("{:?}: {}", status.code(), status.message()) },
                    };
                    answered = true;
                    let applied = self.applier.apply(response);
                    match &applied {
                        Applied::Ack(version) => {
                            tracing::debug!(version, "applied discovery update");
                            self.update_ready();
                        }
                        Applied::Nack { error, .. } => self.status.set_error(error.clone()),
                    }
                    if tx.send(applied.into_request()).await.is_err() {
                        return Ended::Closed { answered, reason: "stream closed".to_owned() };
                    }
                }
            }
        }
    }

    /// Records a subscription; false if it was there already or the cap is reached.
    fn add(&mut self, name: String) -> bool {
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS && !self.subscriptions.contains(&name) {
            tracing::debug!(service = %name, "subscription cap reached; not subscribing");
            return false;
        }
        self.subscriptions.insert(name)
    }

    fn update_ready(&self) {
        if self.status.is_ready() {
            return;
        }
        let table = self.applier.table();
        if self
            .ready_for
            .iter()
            .all(|s| table.services.contains_key(s))
        {
            tracing::info!(version = table.version, "proxy ready");
            self.status.set_ready();
        }
    }
}

fn request(body: pb::discovery_request::Body) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest { body: Some(body) }
}

fn subscribe_messages(services: Vec<String>) -> Vec<pb::DiscoveryRequest> {
    services
        .chunks(MAX_PER_SUBSCRIBE)
        .map(|chunk| {
            request(pb::discovery_request::Body::Subscribe(pb::Subscribe {
                services: chunk.to_vec(),
            }))
        })
        .collect()
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
