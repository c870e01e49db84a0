//! A real HTTP backend on a loopback port, for the proxy's end-to-end tests and the benchmark.
//!
//! One [`Backend`] is one instance of a service: it listens on `127.0.0.1:0`, speaks HTTP/1.1
//! and HTTP/2 prior knowledge (h2c) on the same port (hyper-util's `auto` server), and answers
//! every request with its instance id, in the body (`"<id>\n"`) and in the [`ID_HEADER`]
//! header, so a client behind a proxy can tell who served it. Per request, the query string
//! can ask for a delay (`?delay_ms=250`) or a status (`?status=503`). The backend counts the
//! requests it received (at arrival, before any delay), remembers the method, version and
//! headers of the last one, and can be switched to drop every request's connection without
//! answering ([`Backend::set_reset`]), which a proxy sees as a reset.
//!
//! Dropping a backend stops it; [`Backend::kill`] stops it and waits until its port is closed
//! and every connection (including requests still waiting on a delay) is gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The response header carrying the id of the backend that answered.
pub const ID_HEADER: &str = "x-backend-id";

/// The longest delay a request may ask for (`?delay_ms=`): bounds a forgotten request.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// A running HTTP backend. Stopped when dropped.
pub struct Backend {
    id: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// What the last request looked like when it arrived.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// Its headers, as received.
    pub headers: HeaderMap,
}

/// Shared between the backend handle and its connections.
struct State {
    id: String,
    requests: AtomicU64,
    reset: AtomicBool,
    last: Mutex<Option<Seen>>,
}

// === impl Backend ===

impl Backend {
    /// Starts a backend answering as `id` on a free loopback port.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for a test backend");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            id: id.to_owned(),
            requests: AtomicU64::new(0),
            reset: AtomicBool::new(false),
            last: Mutex::new(None),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::clone(&state), shutdown.clone()));
        Self {
            id: id.to_owned(),
            addr,
            state,
            shutdown,
            task: Some(task),
        }
    }

    /// The instance id this backend answers with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far (counted on arrival, whatever happened to them next).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The last request received, if any.
    pub fn last_seen(&self) -> Option<Seen> {
        self.state
            .last
            .lock()
            .expect("invariant: no panic while holding the lock")
            .clone()
    }

    /// While `on`, every request is counted, then its connection is dropped without an answer
    /// (HTTP/1.1: the connection closes; HTTP/2: the stream is reset).
    pub fn set_reset(&self, on: bool) {
        self.state.reset.store(on, Ordering::SeqCst);
    }

    /// Stops the backend as abruptly as a crash: closes the port and drops every open
    /// connection, including requests still being answered. Returns once all of it is gone.
    pub async fn kill(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // A panicking connection task is already gone too.
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Accepts connections until `shutdown`; then drops (aborts) every connection task.
async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Finished connections are reaped as new ones arrive, so the set stays small.
        while connections.try_join_next().is_some() {}
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors or a connection reset before accept: keep serving.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
            let builder = auto::Builder::new(TokioExecutor::new());
            // Errors are the client's or the test's doing (resets, kills): nothing to report.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Answers one request: counts and records it, then resets, delays or answers as asked.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    *state
        .last
        .lock()
        .expect("invariant: no panic while holding the lock") = Some(Seen {
        method: req.method().clone(),
        path,
        version: req.version(),
        headers: req.headers().clone(),
    });
    if state.reset.load(Ordering::SeqCst) {
        // A service error makes hyper drop the connection (HTTP/1.1) or reset the stream
        // (HTTP/2) without writing a response.
        return Err(std::io::Error::other("test backend told to reset"));
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let delay = query
        .get("delay_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
    let status = query
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    // Read the whole body first, like a real service would before answering.
    let _ = req.into_body().collect().await;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = Response::builder()
        .status(status)
        .header(ID_HEADER, state.id.as_str())
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(format!("{}\n", state.id))))
        .expect("invariant: a status, two valid headers and a body make a response");
    Ok(response)
}

/// `a=1&b=2` → {a: 1, b: 2} (no percent-decoding: the tests send plain tokens).
fn parse_query(query: &str) -> HashMap<&str, &str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use hyper::{StatusCode, Version};

    use super::Backend;
    use crate::mesh::{Call, MeshClient};

    /// The backend answers over both protocols with its id, honours `delay_ms` and `status`,
    /// counts and records requests, resets when told, and closes its port when killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_counts_resets_and_dies() {
        let mut backend = Backend::start("v1-0").await;
        let client = MeshClient::new(backend.addr());
        for call in [Call::get("/a"), Call::get("/a").http2()] {
            let reply = client.send(&call).await.expect("an answer");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.backend.as_deref(), Some("v1-0"));
            assert_eq!(reply.body, "v1-0\n");
        }
        assert_eq!(backend.last_seen().expect("seen").version, Version::HTTP_2);

        let reply = client
            .send(&Call::get("/x?status=503&delay_ms=50").header("x-canary", "true"))
            .await
            .expect("an answer");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let seen = backend.last_seen().expect("seen");
        assert_eq!(seen.path, "/x?status=503&delay_ms=50");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.headers["x-canary"], "true");
        assert_eq!(backend.requests(), 3);

        backend.set_reset(true);
        let reset = client.send(&Call::get("/").post("x")).await;
        assert!(
            reset.is_err(),
            "a reset request gets no response: {reset:?}"
        );
        assert_eq!(backend.requests(), 4);
        backend.set_reset(false);

        backend.kill().await;
        let dead = client.send(&Call::get("/")).await;
        assert!(dead.is_err(), "a killed backend answers nothing: {dead:?}");
        assert_eq!(backend.requests(), 4);
    }
}
