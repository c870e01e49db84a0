//! Pooled HTTP/1.1 connections to upstream endpoints, spoken with the proxy's own client codec
//! ([`crate::h1`]) in the request's own task: no connection task, no channel.
//!
//! Each endpoint already is the pool key: its idle connections live on the [`Endpoint`] itself
//! (one short uncontended lock), and a connection goes back to it the moment the response body
//! ends ([`UpstreamBody`](crate::h1::UpstreamBody)).
//!
//! Behaviour: most recently used connection first; an idle connection the server closed (or
//! that has stray bytes waiting) is dropped before use; a request sent on a reused connection
//! that got not one byte back — the server closed it as the request went out — is sent again
//! on another connection, invisibly, when that is safe (its body is buffered, and it was not
//! written at all or its method is idempotent); `Host` is set from the endpoint when the
//! request has none; idle connections are closed after [`POOL_IDLE`]; connect failures
//! (including the connect timeout) are told apart from failures after the request left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::balance::Endpoint;
use crate::h1::{Conn, Head, Outbound, Outgoing, Stage};
use crate::retry::is_idempotent;

/// Connecting to an endpoint that does not answer is a connect failure after this long.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections are closed after this (below common server keep-alive limits).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);
/// How often idle connections are looked over; an idle one lives at most `POOL_IDLE` + this.
const REAP_EVERY: Duration = Duration::from_secs(15);

/// One endpoint's idle HTTP/1.1 connections, most recently used last.
#[derive(Debug, Default)]
pub(crate) struct Http1Pool {
    idle: Mutex<Vec<Idle>>,
    /// Set once the endpoint is known to the reaper.
    registered: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// Opens connections and keeps the list of endpoints whose idle connections need reaping.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connector {
    endpoints: Arc<Mutex<Vec<Weak<Endpoint>>>>,
}

/// Why a request got no response from a pooled connection.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: the request never left the proxy.
    Connect(String),
    /// The connection failed after the request (or part of it) was sent.
    Failed(String),
}

// === impl Http1Pool ===

impl Http1Pool {
    /// Takes the most recently used idle connection still open; closed ones are dropped.
    fn take(&self) -> Option<Conn> {
        loop {
            let conn = lock(&self.idle).pop()?.conn;
            if conn.is_open() {
                return Some(conn);
            }
        }
    }

    /// Keeps `conn`, idle since `since`.
    pub(crate) fn put(&self, conn: Conn, since: Instant) {
        lock(&self.idle).push(Idle { conn, since });
    }

    /// Closes connections idle since before `cutoff`.
    fn reap(&self, cutoff: Instant) {
        lock(&self.idle).retain(|i| i.since >= cutoff && i.conn.is_open());
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// A poisoned lock only means a panic elsewhere while holding the list: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl Connector ===

impl Connector {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sends `request` with `body` to `endpoint` over a pooled or new connection and reads the
    /// response head. The connection comes back with it, for the response body to own.
    pub(crate) async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Outbound<'_>,
        body: Outgoing,
    ) -> Result<(Head, Conn), SendError> {
        let mut body = Some(body);
        loop {
            let (mut conn, reused) = match endpoint.http1_pool().take() {
                Some(conn) => (conn, true),
                None => (self.connect(endpoint).await?, false),
            };
            let Some(this) = body.take() else {
                return Err(SendError::Failed("request body already sent".into()));
            };
            // A buffered body can go again if this try finds the connection dead.
            let again = match &this {
                Outgoing::Buffered(bytes) if reused => Some(Outgoing::Buffered(bytes.clone())),
                _ => None,
            };
            match conn.exchange(request, this).await {
                Ok(head) => return Ok((head, conn)),
                Err((error, stage)) => {
                    let resend = match stage {
                        Stage::Write => true,
                        Stage::NoResponse => is_idempotent(request.method),
                        Stage::Response => false,
                    };
                    match again {
                        Some(again) if resend => {
                            tracing::trace!(
                                endpoint = %endpoint.addr,
                                %error,
                                "pooled connection was closed; sending again"
                            );
                            body = Some(again);
                        }
                        _ => return Err(SendError::Failed(error.to_string())),
                    }
                }
            }
        }
    }

    async fn connect(&self, endpoint: &Arc<Endpoint>) -> Result<Conn, SendError> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
                Err(_) => {
                    return Err(SendError::Connect(format!(
                        "no answer within {CONNECT_TIMEOUT:?}"
                    )));
                }
            };
        let _ = stream.set_nodelay(true);
        if !endpoint
            .http1_pool()
            .registered
            .swap(true, Ordering::Relaxed)
        {
            lock(&self.endpoints).push(Arc::downgrade(endpoint));
        }
        Ok(Conn::new(stream))
    }

    /// Closes idle connections older than [`POOL_IDLE`] every [`REAP_EVERY`] until `shutdown`.
    pub(crate) async fn reap_idle(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REAP_EVERY) => {}
            }
            let live: Vec<Arc<Endpoint>> = {
                let mut endpoints = lock(&self.endpoints);
                endpoints.retain(|e| e.strong_count() > 0);
                endpoints.iter().filter_map(Weak::upgrade).collect()
            };
            let cutoff = Instant::now()
                .checked_sub(POOL_IDLE)
                .unwrap_or_else(Instant::now);
            for endpoint in live {
                endpoint.http1_pool().reap(cutoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, Response, Uri};
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Protocol;
    use crate::h1::UpstreamBody;

    /// An HTTP/1.1 backend counting the connections it accepted; `/close` answers with
    /// `connection: close`, `/big` with 4 MiB. Stopped when `stop` is cancelled.
    async fn backend(stop: CancellationToken) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/big" {
                        Bytes::from(vec![b'x'; 4 << 20])
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    let mut response = Response::new(Full::new(body));
                    if req.uri().path() == "/close" {
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
            connections.shutdown().await;
        });
        (addr, accepted)
    }

    /// Sends `GET path` through the pool.
    async fn get(
        connector: &Connector,
        endpoint: &Arc<Endpoint>,
        path: &str,
    ) -> Result<(Head, Conn), SendError> {
        let uri: Uri = path.parse().unwrap();
        let request = Outbound {
            method: &Method::GET,
            uri: &uri,
            headers: &HeaderMap::new(),
            host: &endpoint.host,
        };
        connector
            .send(endpoint, request, Outgoing::Buffered(Bytes::new()))
            .await
    }

    /// An HTTP/1.1 endpoint at `addr`.
    fn http1_endpoint(addr: std::net::SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            "i-1".into(),
            addr,
            Protocol::Http1,
            Instant::now(),
        ))
    }

    /// One request through the pool, its body read to the end.
    async fn round_trip(connector: &Connector, endpoint: &Arc<Endpoint>, path: &str) -> Bytes {
        let (head, conn) = get(connector, endpoint, path).await.unwrap();
        let body = UpstreamBody::new(&head, conn, endpoint.start(), Instant::now());
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn connections_are_reused_and_closed_ones_replaced() {
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let (addr, accepted) = backend(stop).await;
        let endpoint = http1_endpoint(addr);
        let connector = Connector::new();
        for _ in 0..5 {
            assert_eq!(round_trip(&connector, &endpoint, "/").await, "ok");
            assert_eq!(endpoint.http1_pool().idle(), 1);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "one pooled connection");
        assert_eq!(endpoint.in_flight(), 0);
        // The server closes after this answer: the next request opens a new connection.
        assert_eq!(round_trip(&connector, &endpoint, "/close").await, "ok");
        assert_eq!(round_trip(&connector, &endpoint, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        // Reaping with a cutoff after every idle connection's last use closes them all.
        endpoint
            .http1_pool()
            .reap(Instant::now() + Duration::from_secs(1));
        assert_eq!(endpoint.http1_pool().idle(), 0);
        assert_eq!(round_trip(&connector, &endpoint, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let (addr, _) = backend(stop).await;
        let endpoint = http1_endpoint(addr);
        let connector = Connector::new();
        let (head, conn) = get(&connector, &endpoint, "/big").await.unwrap();
        let body = UpstreamBody::new(&head, conn, endpoint.start(), Instant::now());
        assert_eq!(endpoint.in_flight(), 1);
        drop(body);
        assert_eq!(endpoint.in_flight(), 0);
        assert_eq!(endpoint.http1_pool().idle(), 0);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let endpoint = http1_endpoint(addr);
        let result = get(&Connector::new(), &endpoint, "/").await;
        assert!(matches!(result, Err(SendError::Connect(_))), "{result:?}");
    }
}
