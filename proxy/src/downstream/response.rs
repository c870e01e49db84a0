//! Writing a response to a downstream HTTP/1.1 client: the status line, the fields (a cached
//! `Date` when the response has none), the framing (RFC 9112 §6: the response's own
//! `content-length`, else the body's exact size, else chunked — or, to an HTTP/1.0 client,
//! delimited by closing the connection; no body at all for HEAD, 1xx, 204 and 304) and the
//! connection's fate (`connection: close` / `keep-alive`); then the body as it comes.
//!
//! Writes are gathered: the head and every body frame already available go out in one `write`
//! (a typical response leaves in a single system call); a frame not ready yet flushes what was
//! gathered first, and large frames are written on their own instead of copied.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};
use hyper::body::{Body as _, Frame};

use super::body::{DownstreamBody, Shared};
use super::clock::Clock;
use crate::body::{Body, BoxError};
use crate::h1::{field, finish_chunked, parse_decimal, push_chunk_header, push_decimal};

/// Body frames up to this size are copied behind what is gathered; larger ones are written on
/// their own.
const COPY_UP_TO: usize = 16 * 1024;
/// Gathered bytes are written once they reach this much.
const FLUSH_AT: usize = 64 * 1024;

/// What the response depends on in the request it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// The request was a HEAD: the response has no body, whatever its fields say.
    pub(crate) head_only: bool,
    pub(crate) version: Version,
    /// The connection may carry another request afterwards (client's wish, no drain).
    pub(crate) keep_alive: bool,
    /// The client accepts trailer fields (`TE: trailers`): a chunked body carries the
    /// response's trailers (otherwise they are dropped, as hyper did).
    pub(crate) trailers: bool,
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimit {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes `response`; returns whether the connection may carry another request (framing
/// intact, keep-alive on both sides, the request body fully read).
pub(crate) async fn write(
    shared: &Arc<Shared>,
    out: &mut Vec<u8>,
    response: Response<Body>,
    exchange: Exchange,
    clock: &Clock,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let held = DownstreamBody::is_held(shared);
    let hint = body.size_hint().exact();
    // One lock for the request's state, the head and the recycled field map.
    let (delimit, keep_alive) = {
        let mut io = shared.lock();
        let (continue_rest, body_done) = io.respond(held);
        out.clear();
        out.extend_from_slice(continue_rest);
        let exchange = Exchange {
            keep_alive: exchange.keep_alive && body_done,
            ..exchange
        };
        let decided = head(out, &parts, hint, exchange, clock);
        // The field map's memory serves the connection's next request head.
        io.scratch.recycle(parts.headers);
        decided
    };
    if delimit == Delimit::None {
        drop(body);
        shared.write_all(out).await?;
        return Ok(keep_alive);
    }
    let intact = write_body(shared, out, &mut body, delimit, exchange.trailers).await?;
    Ok(keep_alive && intact)
}

/// Decides the framing and writes the head into `out`: (how the body is delimited, whether
/// the connection stays open).
fn head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    hint: Option<u64>,
    exchange: Exchange,
    clock: &Clock,
) -> (Delimit, bool) {
    let mut keep_alive = exchange.keep_alive;
    let status = parts.status;
    let bodiless = exchange.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let stated = stated_length(&parts.headers);
    // (delimiting, a `content-length` to write, the stated one is dropped)
    let (delimit, add_length, drop_stated) = if bodiless {
        // A HEAD answer keeps the length its GET would have; 204 must not state one.
        let add = (exchange.head_only && stated.is_none())
            .then_some(hint)
            .flatten();
        (
            Delimit::None,
            add.filter(|&n| n > 0),
            status == StatusCode::NO_CONTENT,
        )
    } else if let Some(n) = stated {
        (Delimit::Length(n), None, false)
    } else if let Some(n) = hint {
        (Delimit::Length(n), Some(n), true)
    } else if exchange.version == Version::HTTP_11 {
        (Delimit::Chunked, None, true)
    } else {
        keep_alive = false;
        (Delimit::Close, None, true)
    };
    write_head(
        out,
        status,
        &parts.headers,
        clock,
        add_length,
        drop_stated,
        delimit == Delimit::Chunked,
        (keep_alive, exchange.version),
    );
    (delimit, keep_alive)
}

/// The response's own `content-length`, when it states a valid one.
fn stated_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_LENGTH)?;
    parse_decimal(value.as_bytes().trim_ascii())
}

#[allow(clippy::too_many_arguments)]
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    clock: &Clock,
    add_length: Option<u64>,
    drop_stated: bool,
    chunked: bool,
    (keep_alive, version): (bool, Version),
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !headers.contains_key(header::DATE) {
        field(out, "date", &clock.date());
    }
    for (name, value) in headers {
        // The framing and the connection's fate are this hop's: written below.
        let skip = name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (drop_stated && name == header::CONTENT_LENGTH);
        if !skip {
            field(out, name.as_str(), value.as_bytes());
        }
    }
    if let Some(n) = add_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the next poll of the body gave.
enum Step {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    /// Nothing yet: write what is gathered before waiting.
    Flush,
}

/// Streams the body after the head gathered in `out`; returns whether its framing ended
/// intact (a body that fails or ends short of its length leaves the connection unusable).
async fn write_body(
    shared: &Shared,
    out: &mut Vec<u8>,
    body: &mut Body,
    delimit: Delimit,
    send_trailers: bool,
) -> io::Result<bool> {
    let mut left = match delimit {
        Delimit::Length(n) => n,
        _ => 0,
    };
    loop {
        let gathered = !out.is_empty();
        let step = std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending if gathered => Poll::Ready(Step::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
        })
        .await;
        let frame = match step {
            Step::Flush => {
                shared.write_all(out).await?;
                out.clear();
                continue;
            }
            Step::Frame(None) => break,
            Step::Frame(Some(Ok(frame))) => frame,
            Step::Frame(Some(Err(error))) => {
                // The client must see the response break off: no final chunk, and the
                // connection closes.
                tracing::trace!(%error, "response body failed");
                shared.write_all(out).await?;
                return Ok(false);
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if delimit == Delimit::Chunked
                    && let Ok(trailers) = frame.into_trailers()
                {
                    // The last chunk carries them (if the client takes them); the body ends
                    // here.
                    let none = HeaderMap::new();
                    finish_chunked(out, if send_trailers { &trailers } else { &none });
                    shared.write_all(out).await?;
                    return Ok(true);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match delimit {
            Delimit::Length(_) => {
                if data.len() as u64 > left {
                    tracing::trace!("response body longer than its content-length");
                    data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    push(shared, out, &data).await?;
                    shared.write_all(out).await?;
                    return Ok(false);
                }
                left -= data.len() as u64;
                push(shared, out, &data).await?;
            }
            Delimit::Chunked => {
                push_chunk_header(out, data.len());
                push(shared, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Delimit::Close | Delimit::None => push(shared, out, &data).await?,
        }
        if out.len() >= FLUSH_AT {
            shared.write_all(out).await?;
            out.clear();
        }
    }
    let intact = match delimit {
        Delimit::Chunked => {
            finish_chunked(out, &HeaderMap::new());
            true
        }
        Delimit::Length(_) => {
            if left > 0 {
                tracing::trace!(left, "response body shorter than its content-length");
            }
            left == 0
        }
        Delimit::Close | Delimit::None => false,
    };
    if !out.is_empty() {
        shared.write_all(out).await?;
        out.clear();
    }
    Ok(intact)
}

/// Appends `data` to what is gathered, or (large) writes both.
async fn push(shared: &Shared, out: &mut Vec<u8>, data: &Bytes) -> io::Result<()> {
    if data.len() <= COPY_UP_TO {
        out.extend_from_slice(data);
        return Ok(());
    }
    if !out.is_empty() {
        shared.write_all(out).await?;
        out.clear();
    }
    shared.write_all(data).await
}
