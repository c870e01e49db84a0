//! The downstream side: serving clients on an accepted connection. HTTP/1.1 is spoken by the
//! proxy's own server codec (`conn.rs`: heads parsed with `httparse` in `head.rs`, request
//! bodies read off the connection as the handler polls them in `body.rs` with the client
//! codec's [`BodyDecoder`](crate::h1::BodyDecoder), responses framed and written in
//! `response.rs`, `Date` and the header-read timeout from the coarse clock in `clock.rs`, the
//! drain's handshake with the listener in `gate.rs`); a
//! connection that opens with the HTTP/2 preface (h2c, prior knowledge) is handed, with the
//! bytes already read put back (`rewind.rs`), to hyper's HTTP/2 server.
//!
//! Why not hyper's HTTP/1.1 server: its per-request costs were the largest left in the
//! proxy's profile — a dispatcher and encoder, three wall-clock reads per request for `Date`,
//! a boxed header-read timer per request. Here the request is served in the connection's task
//! with no channel, no timer operation and no clock read of its own.

mod body;
mod clock;
mod conn;
mod gate;
mod head;
mod response;
mod rewind;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub(crate) use body::DownstreamBody;
pub(crate) use clock::{Clock, TICK};
pub(crate) use gate::Gate;

use crate::body::RequestBody;
use crate::headers::Peer;
use crate::server::HandlerFn;
use body::{READ_CHUNK, Shared};
use conn::Ended;
use rewind::Rewind;

/// One accepted connection and what serving it needs.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) handler: HandlerFn,
    pub(crate) peer: Peer,
    /// Cancelled when the listener drains (HTTP/2: GOAWAY).
    pub(crate) drain: CancellationToken,
    /// The drain's handshake with an HTTP/1.1 connection.
    pub(crate) gate: Arc<Gate>,
    pub(crate) clock: Arc<Clock>,
    /// How long a client may take to send a request head.
    pub(crate) header_read_timeout: Duration,
}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP/2: {0}")]
    Http2(#[from] hyper::Error),
}

// === impl Connection ===

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Serves `stream` until it closes (or the drain closes it).
    pub(crate) async fn serve(self, stream: TcpStream) -> Result<(), ConnectionError> {
        let shared = Shared::new(stream, BytesMut::with_capacity(READ_CHUNK));
        match conn::serve_http1(&shared, &self).await? {
            Ended::Closed => Ok(()),
            Ended::H2c => {
                // From now on the connection is busy for the drain; hyper's GOAWAY ends it.
                if !self.gate.enter() {
                    return Ok(());
                }
                let (stream, read) = shared.into_parts().ok_or_else(|| {
                    io::Error::other("invariant: no request body before the HTTP/2 preface")
                })?;
                self.serve_h2c(Rewind::new(read.freeze(), stream)).await
            }
        }
    }

    /// hyper's HTTP/2 server on the connection; GOAWAY on drain.
    async fn serve_h2c(self, io: Rewind) -> Result<(), ConnectionError> {
        let Self {
            handler,
            peer,
            drain,
            ..
        } = self;
        let service = service_fn(move |req: Request<Incoming>| {
            let response = handler(req.map(RequestBody::Hyper), peer.clone());
            async move { Ok::<_, Infallible>(response.await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => return Ok(result?),
            () = drain.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        Ok(connection.await?)
    }
}
