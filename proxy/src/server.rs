//! The listeners: accept connections, serve HTTP/1.1 and HTTP/2 (h2c, prior knowledge or
//! upgrade-free auto-detection) on each, and drain gracefully on shutdown: stop accepting, let
//! in-flight requests finish (HTTP/1.1 connections close after their current response, HTTP/2
//! ones get GOAWAY) up to the drain limit, then cut what is left.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::headers::Peer;

/// A request handler: the request and the client in, a response out.
pub(crate) type HandlerFn = Arc<
    dyn Fn(Request<Incoming>, Peer) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// How long a client may take to send a request head (hyper's default, made effective by
/// giving hyper a timer).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After a failed `accept` (e.g. out of file descriptors), wait this long before the next one
/// instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown`, then drains for at most `drain`.
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    handler: HandlerFn,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer makes hyper enforce its HTTP/1 header read timeout (a client that opens a
    // connection and sends its head slowly is cut after it) and HTTP/2 keep-alive. Without
    // vectored writes hyper copies a response's head and (small) body into one buffer for one
    // `send`: ~3 % less CPU per request than `writev` with separate buffers.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .writev(false);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&handler);
                let peer = Peer::new(remote);
                let service = service_fn(move |req| {
                    let response = handler(req, peer.clone());
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::trace!(listener = name, %remote, %error, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(listener = name, open, ?drain, "draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain limit reached; closing the remaining connections"
        );
    }
    connections.shutdown().await;
    tracing::info!(listener = name, "stopped");
}
