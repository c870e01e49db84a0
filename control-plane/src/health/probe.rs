//! Active checks: one task per checked instance, probing it over HTTP, TCP or gRPC at the
//! service's interval and reporting each verdict to the leader's health task.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Key;
use crate::registry::{CheckKind, HealthCheck};

/// One probe's verdict.
#[derive(Debug)]
pub(super) struct Verdict {
    pub(super) key: Key,
    /// Which checker sent it: a restarted checker (moved endpoint) has a new generation.
    pub(super) generation: u64,
    pub(super) pass: bool,
}

/// What is probed, ready to run.
enum Probe {
    Tcp(SocketAddr),
    Http {
        target: SocketAddr,
        path: String,
    },
    Grpc {
        client: HealthClient<Channel>,
        service: String,
    },
}

/// Probes `target` every `check.interval_ms` after a first delay of `jitter`, forever (the
/// leader aborts the task when the instance goes away or leadership is lost).
pub(super) async fn run(
    key: Key,
    generation: u64,
    target: SocketAddr,
    check: HealthCheck,
    jitter: Duration,
    verdicts: mpsc::Sender<Verdict>,
) {
    let interval = Duration::from_millis(u64::from(check.interval_ms));
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    let Some(probe) = Probe::new(&check.kind, target, timeout) else {
        return;
    };
    tokio::time::sleep(jitter).await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let pass = tokio::time::timeout(timeout, probe.run())
            .await
            .unwrap_or(false);
        tracing::trace!(instance = %key.1, pass, "probe");
        let verdict = Verdict {
            key: key.clone(),
            generation,
            pass,
        };
        if verdicts.send(verdict).await.is_err() {
            return;
        }
    }
}

/// A delay in `[0, interval)` that differs per instance (and per process), so that the checks
/// of a fleet registered at once do not all fire together.
pub(super) fn jitter(key: &Key, interval_ms: u32) -> Duration {
    let hash = RandomState::new().hash_one(key);
    Duration::from_millis(hash % u64::from(interval_ms.max(1)))
}

// === impl Probe ===

impl Probe {
    fn new(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> Option<Self> {
        Some(match kind {
            CheckKind::Ttl { .. } => return None,
            CheckKind::Tcp => Self::Tcp(target),
            CheckKind::Http { path } => Self::Http {
                target,
                path: path.clone(),
            },
            CheckKind::Grpc { service } => {
                // Lazy: connects on first use and reconnects after a failure by itself.
                let channel = Endpoint::from_shared(format!("http://{target}"))
                    .ok()?
                    .connect_timeout(timeout)
                    .connect_lazy();
                Self::Grpc {
                    client: HealthClient::new(channel),
                    service: service.clone(),
                }
            }
        })
    }

    /// One attempt: true if the instance passes. The caller bounds it with the timeout.
    async fn run(&self) -> bool {
        match self {
            Self::Tcp(target) => TcpStream::connect(target).await.is_ok(),
            Self::Http { target, path } => http_get(*target, path).await.unwrap_or(false),
            Self::Grpc { client, service } => {
                let mut client = client.clone();
                let request = HealthCheckRequest {
                    service: service.clone(),
                };
                client
                    .check(request)
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
            }
        }
    }
}

/// `GET path` over a fresh HTTP/1.1 connection; `Some(true)` on a 2xx answer.
async fn http_get(target: SocketAddr, path: &str) -> Option<bool> {
    let stream = TcpStream::connect(target).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::USER_AGENT, "meridian-health-check")
        .body(Empty::<Bytes>::new())
        .ok()?;
    // The connection is driven here, beside the request, rather than by a spawned task.
    tokio::pin!(conn);
    let response = tokio::select! {
        response = sender.send_request(request) => response.ok()?,
        _ = &mut conn => return Some(false),
    };
    Some(response.status().is_success())
}
