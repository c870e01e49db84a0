//! A small HTTP/1.1 client codec driven by the request's own task: the request head (and a
//! buffered body) goes out in one `write`, the response head is parsed with `httparse`, and
//! the body streams back through [`UpstreamBody`], which owns the connection and hands it back
//! to its endpoint's pool when the body ends cleanly.
//!
//! Why not hyper's `client::conn::http1`: it drives each connection in a task of its own,
//! linked to the request by channels — two extra task wake-ups and hand-offs per request, the
//! largest cost left in the proxy's profile. Here nothing but the request's task (and, for the
//! body, the downstream connection's task that polls it) touches the socket.
//!
//! Anything unusual (`101`, a malformed head, a body cut short, bytes after the end of a
//! response) closes the connection: only a cleanly ended exchange is reused.

mod body;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub(crate) use body::UpstreamBody;
pub(crate) use decode::Head;
pub(crate) use decode::{BodyDecoder, Decoded, Framing, copy_out, has_token, parse_decimal};
use decode::{Parsed, parse_head};
use encode::{BodyFraming, COPY_BODY_UP_TO, request_framing, write_head};
pub(crate) use encode::{field, finish_chunked, push_chunk_header, push_decimal};

use crate::body::RequestBody;

/// The read buffer grows by at least this much before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Room for response heads: a typical head several times over before the buffer is reused.
const HEADS_CAPACITY: usize = 2048;

/// One upstream HTTP/1.1 connection between exchanges.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    read: BytesMut,
    /// Copies of response heads (their field values are slices of it).
    heads: BytesMut,
    /// The request head being written (its capacity kept for the next request).
    write: Vec<u8>,
}

/// What goes wrong on an upstream HTTP/1.1 connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the response ended")]
    Truncated,
    #[error("connection closed before any response")]
    Closed,
    #[error("reading the request body: {0}")]
    RequestBody(String),
}

/// How far an exchange got before it failed: whether the request can be sent again elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Writing the request failed.
    Write,
    /// The request was written; not one byte of response came back.
    NoResponse,
    /// A response had begun.
    Response,
}

/// The request line and fields to send (borrowed: retries send the same ones again).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbound<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    /// `host` when the request has none: the endpoint's address.
    pub(crate) host: &'a HeaderValue,
}

/// A request body to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Read in full beforehand (possibly empty): can be sent again.
    Buffered(Bytes),
    /// Streamed from the client as it comes: sent once.
    Streamed(RequestBody),
}

// === impl Conn ===

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            heads: BytesMut::with_capacity(HEADS_CAPACITY),
            write: Vec::with_capacity(1024),
        }
    }

    /// Whether the idle connection can carry a request: not closed by the server, no stray
    /// bytes waiting. Costs no system call when the runtime saw no event on it since its last
    /// read emptied the socket.
    pub(crate) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends the request and reads the response head; `Stage` tells how far a failure got.
    pub(crate) async fn exchange(
        &mut self,
        request: Outbound<'_>,
        body: Outgoing,
    ) -> Result<Head, (Error, Stage)> {
        self.send(request, body)
            .await
            .map_err(|e| (e, Stage::Write))?;
        self.read_head(request.method).await
    }

    async fn send(&mut self, request: Outbound<'_>, body: Outgoing) -> Result<(), Error> {
        let buffered = match &body {
            Outgoing::Buffered(bytes) => Some(bytes),
            Outgoing::Streamed(_) => None,
        };
        let framing = request_framing(request.method, request.headers, buffered);
        self.write.clear();
        write_head(
            &mut self.write,
            request.method,
            request.uri,
            request.headers,
            request.host,
            framing,
        );
        match body {
            Outgoing::Buffered(bytes) if bytes.len() <= COPY_BODY_UP_TO => {
                self.write.extend_from_slice(&bytes);
                self.stream.write_all(&self.write).await?;
            }
            Outgoing::Buffered(bytes) => {
                self.stream.write_all(&self.write).await?;
                self.stream.write_all(&bytes).await?;
            }
            Outgoing::Streamed(body) => {
                self.stream.write_all(&self.write).await?;
                self.stream_body(body, framing == BodyFraming::Chunked)
                    .await?;
            }
        }
        Ok(())
    }

    async fn stream_body(&mut self, mut body: RequestBody, chunked: bool) -> Result<(), Error> {
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::RequestBody(e.to_string()))?;
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Trailers go out after the last chunk (a body with a stated length has
                    // nowhere to carry them: they are dropped, as RFC 9110 §6.5.1 allows).
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                self.write.clear();
                push_chunk_header(&mut self.write, data.len());
                self.write.extend_from_slice(&data);
                self.write.extend_from_slice(b"\r\n");
                self.stream.write_all(&self.write).await?;
            } else {
                self.stream.write_all(&data).await?;
            }
        }
        if chunked {
            self.write.clear();
            finish_chunked(&mut self.write, &trailers.unwrap_or_default());
            self.stream.write_all(&self.write).await?;
        }
        Ok(())
    }

    async fn read_head(&mut self, method: &Method) -> Result<Head, (Error, Stage)> {
        let mut any = !self.read.is_empty();
        loop {
            if !self.read.is_empty() {
                match parse_head(&mut self.read, &mut self.heads, method) {
                    Ok(Parsed::Final(head)) => return Ok(head),
                    Ok(Parsed::Interim) => continue,
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err((e, Stage::Response)),
                }
            }
            self.read.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) if any => return Err((Error::Truncated, Stage::Response)),
                Ok(0) => return Err((Error::Closed, Stage::NoResponse)),
                Ok(_) => any = true,
                Err(e) if any => return Err((e.into(), Stage::Response)),
                Err(e) => return Err((e.into(), Stage::NoResponse)),
            }
        }
    }

    /// Reads what the socket has into the buffer (`Ok(0)`: the peer closed).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_CHUNK);
        // `read_buf` only reads once polled, and nothing is lost when it is dropped pending.
        let read = pin!(self.stream.read_buf(&mut self.read));
        std::future::Future::poll(read, cx)
    }
}
