//! A minimal real HTTP backend for the data-path tests: answers `"<id> <HTTP version>"`, or a
//! status / a delay asked for in the query (`?status=503`, `?delay_ms=300`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running backend; stopped (with its connections) when dropped.
pub(crate) struct TestBackend {
    pub(crate) addr: SocketAddr,
    hits: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl TestBackend {
    pub(crate) async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let (id, counter, stop) = (id.to_owned(), Arc::clone(&hits), shutdown.clone());
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (id, counter) = (id.clone(), Arc::clone(&counter));
                let service = service_fn(move |req| answer(id.clone(), Arc::clone(&counter), req));
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            connections.shutdown().await;
        });
        Self {
            addr,
            hits,
            shutdown,
        }
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Waits until the backend has seen `n` requests (panics after 20 s).
    pub(crate) async fn wait_for_hits(&self, n: u64) {
        let reached = async {
            while self.hits() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), reached)
            .await
            .unwrap_or_else(|_| panic!("the backend saw {} of {n} requests", self.hits()));
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn answer(
    id: String,
    hits: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(ms) = param("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
    }
    let status = param("status")
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = format!("{id} {:?} host={host} xff={xff}", req.version());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}
