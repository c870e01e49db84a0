//! A downstream HTTP/1.1 connection's socket and read buffer, shared between the connection's
//! task (request heads, responses) and the body of the request in flight, which reads itself
//! off the same buffer as the handler polls it — possibly from another task (an h2c upstream
//! pumps it from hyper's connection task), hence the lock. It is never held across an
//! `.await` and never contended in the common case (one task): a few uncontended locks per
//! request.

use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpStream;

use super::head::Scratch;
use crate::body::BoxError;
use crate::h1::{BodyDecoder, Decoded, Framing};

/// The read buffer grows by at least this much before each read.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One downstream connection's I/O, shared by its task and its request body.
#[derive(Debug)]
pub(crate) struct Shared {
    io: Mutex<Io>,
}

/// The socket, what was read and not yet consumed, and the current request body's state.
#[derive(Debug)]
pub(crate) struct Io {
    pub(crate) stream: TcpStream,
    pub(crate) read: BytesMut,
    /// What parsing request heads reuses.
    pub(crate) scratch: Scratch,
    /// The current request's body (done when it has none).
    body: BodyDecoder,
    /// Counts request bodies: a body handle of an earlier request reads nothing more.
    generation: u64,
    /// Bytes of `100 Continue` still to write (from the end of [`CONTINUE`]).
    continue_left: usize,
    /// The response to the current request has begun: too late for `100 Continue`.
    responding: bool,
    /// The client closed its sending side (a read returned 0).
    pub(crate) eof: bool,
}

/// The body of the request in flight on a downstream HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct DownstreamBody {
    shared: Arc<Shared>,
    generation: u64,
}

/// A request body that broke off.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub(crate) struct BodyError(String);

// === impl Shared ===

impl Shared {
    pub(crate) fn new(stream: TcpStream, read: BytesMut) -> Arc<Self> {
        Arc::new(Self {
            io: Mutex::new(Io {
                stream,
                read,
                scratch: Scratch::new(),
                body: BodyDecoder::new(Framing::Empty),
                generation: 0,
                continue_left: 0,
                responding: false,
                eof: false,
            }),
        })
    }

    /// The I/O (a poisoned lock only means a panic elsewhere while holding it: keep going).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads what the socket has into the buffer (`Ok(0)`: the client closed).
    pub(crate) async fn read(&self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.lock().poll_read(cx)).await
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut written = 0;
        std::future::poll_fn(|cx| {
            let mut io = self.lock();
            while written < data.len() {
                match ready!(Pin::new(&mut io.stream).poll_write(cx, &data[written..])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => written += n,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Closes the sending side (FIN).
    pub(crate) async fn shutdown(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| Pin::new(&mut self.lock().stream).poll_shutdown(cx)).await
    }

    /// Gives the socket and the unread bytes back (the connection turned out to be h2c).
    /// `None` while a body handle still shares it (never the case before the first request).
    pub(crate) fn into_parts(self: Arc<Self>) -> Option<(TcpStream, BytesMut)> {
        let shared = Arc::into_inner(self)?;
        let io = shared
            .io
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Some((io.stream, io.read))
    }
}

// === impl Io ===

impl Io {
    /// Reads what the socket has into the buffer (`Ok(0)`: the client closed).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_CHUNK);
        // `read_buf` only reads once polled, and nothing is lost when it is dropped pending.
        let read = pin!(self.stream.read_buf(&mut self.read));
        let result = ready!(std::future::Future::poll(read, cx));
        if let Ok(0) = result {
            self.eof = true;
        }
        Poll::Ready(result)
    }

    /// A new request with a body framed by `framing` starts.
    pub(crate) fn start_body(&mut self, framing: Framing, expect_continue: bool) -> u64 {
        self.body = BodyDecoder::new(framing);
        self.generation += 1;
        self.continue_left = if expect_continue { CONTINUE.len() } else { 0 };
        self.responding = false;
        self.generation
    }

    /// The response begins: a `100 Continue` not begun yet is dropped (its unsent rest, if
    /// it was partly written, is returned to go out before the response). Then whether the
    /// request body is complete — a body nobody holds any more is finished from what is
    /// already buffered; anything else leaves the connection unusable for another request.
    pub(crate) fn respond(&mut self, body_held: bool) -> (&'static [u8], bool) {
        self.responding = true;
        let left = std::mem::take(&mut self.continue_left);
        let rest = if left < CONTINUE.len() {
            &CONTINUE[CONTINUE.len() - left..]
        } else {
            &[]
        };
        if !self.body.is_done() && !body_held {
            // Discard what the client already sent of a body nobody read.
            while let Ok(Decoded::Data(_) | Decoded::Trailers(_)) = self.body.decode(&mut self.read)
            {
            }
        }
        (rest, self.body.is_done())
    }

    /// Writes the rest of `100 Continue`, if the client waits for it and no response began.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_left > 0 && !self.responding {
            let from = CONTINUE.len() - self.continue_left;
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= n;
        }
        Poll::Ready(Ok(()))
    }
}

// === impl DownstreamBody ===

impl DownstreamBody {
    pub(crate) fn new(shared: Arc<Shared>, generation: u64) -> Self {
        Self { shared, generation }
    }

    /// Whether the connection is still shared with a body handle (the connection's own
    /// reference aside).
    pub(crate) fn is_held(shared: &Arc<Shared>) -> bool {
        Arc::strong_count(shared) > 1
    }
}

impl hyper::body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.shared.lock();
        let io = &mut *guard;
        if io.generation != self.generation || io.body.is_done() {
            return Poll::Ready(None);
        }
        if let Err(e) = ready!(io.poll_continue(cx)) {
            return Poll::Ready(Some(Err(BodyError(e.to_string()).into())));
        }
        loop {
            match io.body.decode(&mut io.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError(e.to_string()).into()))),
            }
            match ready!(io.poll_read(cx)) {
                // A request body ends by its framing, never by a close: this one broke off.
                Ok(0) => {
                    let error = io
                        .body
                        .eof()
                        .err()
                        .map_or_else(|| "connection closed".to_owned(), |e| e.to_string());
                    return Poll::Ready(Some(Err(BodyError(error).into())));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError(e.to_string()).into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let io = self.shared.lock();
        io.generation != self.generation || io.body.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let io = self.shared.lock();
        match io.body.remaining() {
            _ if io.generation != self.generation => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}
