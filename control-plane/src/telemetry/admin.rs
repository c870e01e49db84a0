//! The admin HTTP listener (`--admin-listen`, default `127.0.0.1:7401`):
//! - `GET /metrics`: every instrument as Prometheus text (format 0.0.4);
//! - `GET /ready`: 200 once a Raft leader is known and this node has applied every entry it
//!   knows to be committed, else 503 with the reason (a restarted or lagging node is not
//!   ready until it has caught up; a node cut off from its leader is not ready either);
//! - `GET /health`: 200 while the process serves (liveness);
//! - anything else: 404; a method other than GET/HEAD: 405.
//!
//! HTTP/1.1 only (probes and scrapers speak it), served with hyper; connections are drained
//! when the node shuts down.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use meridian_telemetry::Prometheus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::raft::RaftHandle;
use crate::replica::{ApplyResult, Replica};

/// What the admin endpoints read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    raft: RaftHandle<ApplyResult>,
    prometheus: Prometheus,
}

// === impl Admin ===

impl Admin {
    /// Endpoints over `replica`'s Raft progress and `prometheus`' instruments.
    pub fn new(replica: &Replica, prometheus: Prometheus) -> Self {
        Self {
            raft: replica.raft().clone(),
            prometheus,
        }
    }

    /// Serves `listener` until `shutdown` is cancelled, then lets open requests finish.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(addr = ?local, "admin HTTP listening (/metrics /ready /health)");
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, _peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, do not spin.
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let response = admin.handle(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::trace!(error = %e, "admin connection ended");
                }
            });
        }
        // Bounded: a scrape takes milliseconds; a stuck client does not hold shutdown up.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
    }

    fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match request.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => {
                let progress = self.raft.progress();
                if progress.ready() {
                    text(StatusCode::OK, "ready\n".into())
                } else if progress.leader_id.is_none() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no Raft leader known\n".into(),
                    )
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "not ready: applied index {} behind commit index {}\n",
                            progress.applied_index, progress.commit_index
                        ),
                    )
                }
            }
            "/metrics" => match self.prometheus.render() {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            meridian_telemetry::prometheus::CONTENT_TYPE,
                        ),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "admin endpoints: /metrics /ready /health\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
