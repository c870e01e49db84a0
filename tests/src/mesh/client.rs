//! The client side of the mesh harness: requests through the proxy over HTTP/1.1 or HTTP/2
//! prior knowledge, and counting who answered.
//!
//! Every connection goes to one fixed address (the proxy's listener or its admin port) whatever
//! the request's authority says, so a request for `http://orders.cafe.local/x` carries
//! `Host: orders.cafe.local` (HTTP/1.1) or `:authority orders.cafe.local` (HTTP/2) exactly as a
//! client of a real proxy would send it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::ID_HEADER;
use crate::mesh::SERVICE;

/// Bounds one request, so that a hung proxy fails a test instead of hanging it.
const REQUEST_PATIENCE: Duration = Duration::from_secs(30);

/// An HTTP client whose every connection goes to one address.
#[derive(Clone)]
pub struct MeshClient {
    http1: Client<ToAddr, Full<Bytes>>,
    http2: Client<ToAddr, Full<Bytes>>,
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Call {
    /// The authority: which service the proxy should route to.
    pub host: String,
    /// GET unless changed.
    pub method: Method,
    /// Path and query, starting with '/'.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// HTTP/2 prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    /// A request body (empty unless set).
    pub body: String,
}

/// A response, read whole.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// The HTTP version it came back over.
    pub version: Version,
    /// The backend that answered ([`ID_HEADER`]), if one did.
    pub backend: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// Who answered a batch of requests.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Successful (2xx) responses per backend id.
    pub by_backend: BTreeMap<String, u64>,
    /// Non-2xx responses and transport errors.
    pub failures: u64,
    /// The first failure, for the assertion message.
    pub first_failure: Option<String>,
}

/// One request of a [`Load`]: when it completed and who served it (or why it failed).
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Completion time.
    pub at: Instant,
    /// The backend id of a 2xx response; otherwise the status or error.
    pub result: Result<String, String>,
}

/// Requests sent in a loop by concurrent workers until stopped, every outcome recorded.
pub struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: CancellationToken,
    workers: JoinSet<()>,
}

/// A connector that dials one address whatever the URI says.
#[derive(Clone, Debug)]
struct ToAddr(SocketAddr);

// === impl MeshClient ===

impl MeshClient {
    /// A client whose connections all go to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let build = |http2: bool| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder.http2_only(http2);
            builder.build(ToAddr(addr))
        };
        Self {
            http1: build(false),
            http2: build(true),
        }
    }

    /// Sends `call`; `Err` on a transport error or when no answer came within
    /// `REQUEST_PATIENCE`.
    pub async fn send(&self, call: &Call) -> Result<Reply, String> {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("http://{}{}", call.host, call.path));
        for (name, value) in &call.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(call.body.clone())))
            .map_err(|e| format!("building the request: {e}"))?;
        let client = if call.http2 { &self.http2 } else { &self.http1 };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                // The legacy client's error says little; its source says what happened.
                let source = std::error::Error::source(&e).map(ToString::to_string);
                format!("{e}: {}", source.unwrap_or_default())
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                version: parts.version,
                backend: parts
                    .headers
                    .get(ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(REQUEST_PATIENCE, exchange)
            .await
            .map_err(|_| format!("no response within {REQUEST_PATIENCE:?}"))?
    }

    /// Sends `call` `n` times, `concurrency` at a time, and counts who answered.
    pub async fn tally(&self, call: &Call, n: u64, concurrency: u64) -> Tally {
        let concurrency = concurrency.clamp(1, n.max(1));
        let mut workers = JoinSet::new();
        for w in 0..concurrency {
            let (client, call) = (self.clone(), call.clone());
            // Worker w sends requests w, w + concurrency, ...: n in all.
            let share = (n + concurrency - 1 - w) / concurrency;
            workers.spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..share {
                    tally.record(client.send(&call).await);
                }
                tally
            });
        }
        let mut total = Tally::default();
        while let Some(part) = workers.join_next().await {
            total.merge(part.expect("a tally worker panicked"));
        }
        total
    }

    /// Starts `concurrency` workers that send `call` back to back until [`Load::stop`].
    pub fn load(&self, call: &Call, concurrency: usize) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (client, call) = (self.clone(), call.clone());
            let (outcomes, stop) = (Arc::clone(&outcomes), stop.clone());
            workers.spawn(async move {
                while !stop.is_cancelled() {
                    let result = match client.send(&call).await {
                        Ok(r) if r.status.is_success() => {
                            Ok(r.backend.unwrap_or_else(|| "?".to_owned()))
                        }
                        Ok(r) => Err(format!("{}: {}", r.status, r.body.trim())),
                        Err(e) => Err(e),
                    };
                    let outcome = Outcome {
                        at: Instant::now(),
                        result,
                    };
                    lock(&outcomes).push(outcome);
                }
            });
        }
        Load {
            outcomes,
            stop,
            workers,
        }
    }
}

// === impl Call ===

impl Call {
    /// A GET of `path` for [`SERVICE`], over HTTP/1.1.
    pub fn get(path: &str) -> Self {
        Self {
            host: SERVICE.to_owned(),
            method: Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            http2: false,
            body: String::new(),
        }
    }

    /// The same request with another authority.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// The same request as a POST with `body`.
    pub fn post(mut self, body: &str) -> Self {
        self.method = Method::POST;
        self.body = body.to_owned();
        self
    }

    /// The same request with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same request over HTTP/2 prior knowledge.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }
}

// === impl Tally ===

impl Tally {
    /// Counts one request's result.
    pub fn record(&mut self, result: Result<Reply, String>) {
        match result {
            Ok(r) if r.status.is_success() => {
                let backend = r.backend.unwrap_or_else(|| "?".to_owned());
                *self.by_backend.entry(backend).or_default() += 1;
            }
            Ok(r) => self.fail(format!("{}: {}", r.status, r.body.trim())),
            Err(e) => self.fail(e),
        }
    }

    /// Successful responses in all.
    pub fn ok(&self) -> u64 {
        self.by_backend.values().sum()
    }

    /// Successful responses from backends whose id starts with `prefix` (e.g. "v2-").
    pub fn with_prefix(&self, prefix: &str) -> u64 {
        self.by_backend
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    fn fail(&mut self, why: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(why);
    }

    fn merge(&mut self, other: Tally) {
        for (backend, n) in other.by_backend {
            *self.by_backend.entry(backend).or_default() += n;
        }
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

// === impl Load ===

impl Load {
    /// The outcomes recorded so far, in completion order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        lock(&self.outcomes).clone()
    }

    /// How many requests have completed so far.
    pub fn completed(&self) -> usize {
        lock(&self.outcomes).len()
    }

    /// Stops the workers (each finishes its request in flight) and returns every outcome.
    pub async fn stop(mut self) -> Vec<Outcome> {
        self.stop.cancel();
        while let Some(done) = self.workers.join_next().await {
            done.expect("a load worker panicked");
        }
        self.outcomes()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// === impl ToAddr ===

impl tower::Service<Uri> for ToAddr {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("invariant: no panic while holding the lock")
}
