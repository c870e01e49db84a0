//! The listeners: accept connections, serve HTTP/1.1 (the proxy's own server codec) and
//! HTTP/2 (h2c, prior knowledge: detected from the first bytes) on each ([`downstream`]), and
//! drain gracefully on shutdown: stop accepting, let in-flight requests finish (HTTP/1.1
//! connections close after their current response, idle ones at once; HTTP/2 ones get
//! GOAWAY) up to the drain limit, then cut what is left.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, RequestBody};
use crate::downstream::{self, Clock, Connection, Gate};
use crate::headers::Peer;

/// A request handler: the request and the client in, a response out.
pub(crate) type HandlerFn = Arc<
    dyn Fn(Request<RequestBody>, Peer) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// How long a client may take to send a request head (hyper's default, kept); an idle
/// kept-alive connection is closed after it too.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    serve_with(
        name,
        listener,
        handler,
        shutdown,
        drain,
        HEADER_READ_TIMEOUT,
    )
    .await;
}

/// [`serve`] with another header-read timeout.
pub(crate) async fn serve_with(
    name: &'static str,
    listener: TcpListener,
    handler: HandlerFn,
    shutdown: CancellationToken,
    drain: Duration,
    header_read_timeout: Duration,
) {
    // The connections' coarse clock (`Date`, timeouts), read once a second here.
    let clock = Arc::new(Clock::new());
    let mut ticks = tokio::time::interval_at(Clock::first_tick(), downstream::TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut connections = JoinSet::new();
    // Each open connection's task and drain gate.
    let mut open: HashMap<Id, (AbortHandle, Arc<Gate>)> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => clock.tick(),
            Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                open.remove(&joined.map_or_else(|e| e.id(), |(id, ())| id));
            }
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
                let gate = Arc::new(Gate::default());
                let connection = Connection {
                    handler: Arc::clone(&handler),
                    peer: Peer::new(remote),
                    drain: shutdown.clone(),
                    gate: Arc::clone(&gate),
                    clock: Arc::clone(&clock),
                    header_read_timeout,
                };
                let task = connections.spawn(async move {
                    if let Err(error) = connection.serve(stream).await {
                        tracing::trace!(listener = name, %remote, %error, "connection ended with an error");
                    }
                });
                open.insert(task.id(), (task, gate));
            }
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        open = connections.len(),
        ?drain,
        "draining"
    );
    // HTTP/1.1 connections between exchanges are cut now (nothing is in flight on them); busy
    // ones close after their current response. HTTP/2 ones saw the cancellation: GOAWAY.
    for (task, gate) in open.values() {
        if gate.drain() {
            task.abort();
        }
    }
    // The clock keeps ticking for the busy ones meanwhile.
    let limit = tokio::time::sleep(drain);
    tokio::pin!(limit);
    loop {
        tokio::select! {
            () = &mut limit => {
                tracing::warn!(
                    listener = name,
                    "drain limit reached; closing the remaining connections"
                );
                break;
            }
            _ = ticks.tick() => clock.tick(),
            joined = connections.join_next() => if joined.is_none() { break },
        }
    }
    connections.shutdown().await;
    tracing::info!(listener = name, "stopped");
}
