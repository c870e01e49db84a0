//! The HTTP/1.1 server side of one downstream connection: one request at a time — read its
//! head (bytes after it are kept: pipelined requests are answered in order), hand the request
//! to the handler with a body that reads itself off the connection, write the response, and
//! go on while both sides keep the connection alive.
//!
//! The header-read timeout runs while the server waits for a request head — from the accept,
//! and on a kept-alive connection from the end of the previous response — as hyper's did. It
//! counts from the coarse clock ([`Clock::now_upper`]): never early, at most one clock tick
//! late, and it costs no clock read and no timer operation per request (one timer per
//! connection, re-armed only when it fires during a later wait).
//!
//! Drain ([`Gate`](super::Gate)): a connection between exchanges (waiting for a head, even
//! one partly received, as hyper) is closed at once by its listener; a request in flight is
//! answered with `connection: close`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Method, Response, Version, header};
use tokio::time::Sleep;

use super::Connection;
use super::body::{DownstreamBody, Io, Shared};
use super::clock::Clock;
use super::head::{MAX_REQUEST_HEAD, Parsed, Refusal, RequestHead, parse_head};
use super::response::{self, Exchange};
use crate::body::{RequestBody, full};
use crate::h1::Framing;

/// What a prior-knowledge HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After answering a malformed request, the server reads (and drops) what the client still
/// sends for at most this long before closing, so the answer is not lost to a reset.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// ... and at most this much.
const LINGER_BYTES: usize = 256 * 1024;

/// How the HTTP/1.1 side of a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Closed (by either side, the drain, or the header-read timeout).
    Closed,
    /// The client sent the HTTP/2 preface: hyper's HTTP/2 server takes the connection.
    H2c,
}

/// What waiting for a request head gave.
#[allow(clippy::large_enum_variant)] // Moved once per request; a box would cost an allocation.
enum Wait {
    Head(RequestHead),
    Refused(Refusal),
    H2c,
    Closed,
}

/// Serves HTTP/1.1 requests on `shared` until the connection closes (or turns out to be h2c).
pub(crate) async fn serve_http1(shared: &Arc<Shared>, conn: &Connection) -> io::Result<Ended> {
    let mut out = Vec::with_capacity(1024);
    let sleep = tokio::time::sleep_until(head_deadline(conn));
    tokio::pin!(sleep);
    let mut first = true;
    loop {
        let head = match read_head(shared, conn, sleep.as_mut(), first).await? {
            Wait::Head(head) => head,
            Wait::Refused(refusal) => {
                refuse(shared, &mut out, refusal, &conn.clock).await?;
                return Ok(Ended::Closed);
            }
            Wait::H2c => return Ok(Ended::H2c),
            Wait::Closed => return Ok(Ended::Closed),
        };
        first = false;
        if !conn.gate.enter() {
            // The drain came first: the request is not started (the client sees a close, as
            // for any request that races a server's shutdown).
            return Ok(Ended::Closed);
        }
        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_only = request.method() == Method::HEAD;
        let trailers = accepts_trailers(request.headers());
        let version = request.version();
        let body = if framing == Framing::Empty {
            RequestBody::Empty
        } else {
            let generation = shared.lock().start_body(framing, expect_continue);
            RequestBody::Downstream(DownstreamBody::new(Arc::clone(shared), generation))
        };
        let watch_close = matches!(body, RequestBody::Empty);
        let handling = (conn.handler)(request.map(|()| body), conn.peer.clone());
        let response = if watch_close {
            // Nothing more to read for this request: a reset seen meanwhile means the client
            // is gone, and the request is abandoned (dropping it cancels the upstream try), as
            // hyper did. A close of the client's sending side only is not: the answer still
            // goes out. Pipelined bytes read meanwhile are kept.
            tokio::select! {
                biased;
                response = handling => response,
                () = client_gone(shared) => return Ok(Ended::Closed),
            }
        } else {
            handling.await
        };
        let exchange = Exchange {
            head_only,
            version,
            keep_alive: keep_alive && !conn.gate.is_draining(),
            trailers,
        };
        let reusable = response::write(shared, &mut out, response, exchange, &conn.clock).await?;
        if !(reusable && conn.gate.leave()) {
            let _ = shared.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

/// Waits for the next request head (or the end of the connection).
async fn read_head(
    shared: &Shared,
    conn: &Connection,
    mut sleep: Pin<&mut Sleep>,
    first: bool,
) -> io::Result<Wait> {
    let deadline = head_deadline(conn);
    loop {
        tokio::select! {
            biased;
            wait = std::future::poll_fn(|cx| poll_head(shared, cx, first)) => return wait,
            () = &mut sleep => {
                // The timer may still be set for an earlier wait (it is re-armed only when it
                // fires): only a deadline at or after this wait's means this wait is over.
                if sleep.deadline() >= deadline {
                    tracing::trace!(peer = ?conn.peer, "header read timeout");
                    return Ok(Wait::Closed);
                }
                sleep.as_mut().reset(deadline);
            }
        }
    }
}

/// Parses what is buffered, reading more until a head (or the end) is there: one lock per
/// wake-up.
fn poll_head(shared: &Shared, cx: &mut Context<'_>, first: bool) -> Poll<io::Result<Wait>> {
    let mut io = shared.lock();
    loop {
        if !io.read.is_empty() {
            let Io { read, scratch, .. } = &mut *io;
            let maybe_h2 =
                first && H2_PREFACE.starts_with(&read[..read.len().min(H2_PREFACE.len())]);
            if maybe_h2 && read.len() >= H2_PREFACE.len() {
                return Poll::Ready(Ok(Wait::H2c));
            }
            if !maybe_h2 {
                match parse_head(read, scratch) {
                    Ok(Parsed::Complete(head)) => return Poll::Ready(Ok(Wait::Head(head))),
                    Ok(Parsed::Partial) => {}
                    Err(refusal) => return Poll::Ready(Ok(Wait::Refused(refusal))),
                }
            }
        }
        // The client sent all it will: what is left is not a whole request.
        if io.eof || ready!(io.poll_read(cx))? == 0 {
            return Poll::Ready(Ok(Wait::Closed));
        }
    }
}

/// Whether the request's `TE` lists `trailers`.
fn accepts_trailers(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let coding = t.split(|&b| b == b';').next().unwrap_or_default();
            coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// When a wait for a request head that starts now times out.
fn head_deadline(conn: &Connection) -> tokio::time::Instant {
    tokio::time::Instant::from_std(conn.clock.now_upper() + conn.header_read_timeout)
}

/// Resolves once the connection broke. Bytes the client sends meanwhile are kept for the next
/// request (up to a head's worth: then it stops reading); after the client closed its sending
/// side it never resolves.
async fn client_gone(shared: &Shared) {
    let gone = std::future::poll_fn(|cx| {
        let mut io = shared.lock();
        while io.read.len() <= MAX_REQUEST_HEAD && !io.eof {
            if ready!(io.poll_read(cx)).is_err() {
                return Poll::Ready(true);
            }
        }
        Poll::Ready(false)
    })
    .await;
    if !gone {
        std::future::pending::<()>().await;
    }
}

/// Answers a request the server cannot take (`400`, `431`, `501`: a short body saying why),
/// then closes the connection, reading and dropping what the client still sends for a moment
/// so the answer is not lost to a reset.
async fn refuse(
    shared: &Arc<Shared>,
    out: &mut Vec<u8>,
    refusal: Refusal,
    clock: &Clock,
) -> io::Result<()> {
    tracing::trace!(status = refusal.status.as_u16(), reason = %refusal.reason, "request refused");
    let mut response = Response::new(full(format!("{}\n", refusal.reason)));
    *response.status_mut() = refusal.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let exchange = Exchange {
        head_only: false,
        version: Version::HTTP_11,
        keep_alive: false,
        trailers: false,
    };
    response::write(shared, out, response, exchange, clock).await?;
    shared.shutdown().await?;
    let linger = async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            shared.lock().read.clear();
            match shared.read().await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
    Ok(())
}
