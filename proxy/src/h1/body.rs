//! An upstream HTTP/1.1 response body read straight off its connection, which goes back to the
//! endpoint's pool the moment the body is complete (or at once when the body came whole with
//! the head); the endpoint's in-flight count is held until the body is dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf as _, Bytes};
use hyper::body::{Frame, SizeHint};

use super::decode::{BodyDecoder, Decoded, Framing, Head, copy_out};
use super::{Conn, Error};
use crate::balance::InFlight;

/// A body that came whole with its head and is at most this long is copied beside the head.
const COPY_BESIDE_HEAD: usize = 1024;

/// The body of one upstream HTTP/1.1 response.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    /// Set until the body ends (or fails): the connection it is read from.
    conn: Option<Conn>,
    decoder: BodyDecoder,
    /// The whole body when it arrived with the head (the connection is already back).
    ready: Option<Bytes>,
    /// The connection may be reused once the body is complete.
    reusable: bool,
    in_flight: InFlight,
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// `arrived`: when the head was read; a connection freed at once goes back to the pool
    /// idle since then (no clock read of its own).
    pub(crate) fn new(head: &Head, conn: Conn, in_flight: InFlight, arrived: Instant) -> Self {
        let mut body = Self {
            conn: Some(conn),
            decoder: BodyDecoder::new(head.framing),
            ready: None,
            reusable: head.reusable,
            in_flight,
        };
        match body.decoder.remaining() {
            // No body (HEAD, 204, 304, length 0): the connection is free now.
            Some(0) => body.release(arrived),
            // All of it already read with the head: take it and free the connection too. Small
            // bodies are copied beside the head (no allocation once that buffer is reused).
            Some(n) if body.buffered() >= n => {
                if let Some(conn) = body.conn.as_mut() {
                    let data = match usize::try_from(n) {
                        Ok(n) if n <= COPY_BESIDE_HEAD => {
                            let data = copy_out(&mut conn.heads, &conn.read[..n]);
                            conn.read.advance(n);
                            Some(data)
                        }
                        _ => match body.decoder.decode(&mut conn.read) {
                            Ok(Decoded::Data(data)) => Some(data),
                            _ => None,
                        },
                    };
                    if let Some(data) = data {
                        body.decoder = BodyDecoder::new(Framing::Empty);
                        body.ready = Some(data);
                        body.release(arrived);
                    }
                }
            }
            _ => {}
        }
        body
    }

    fn buffered(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.read.len() as u64)
    }

    /// The body is complete (at `now`): its connection goes back to the pool if nothing odd
    /// was seen.
    fn release(&mut self, now: Instant) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.read.is_empty()
        {
            self.in_flight.endpoint().http1_pool().put(conn, now);
        }
    }

    /// One decoding step, reading from the connection as needed.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Decoded, Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(Decoded::End));
        };
        loop {
            match self.decoder.decode(&mut conn.read)? {
                Decoded::NeedMore => {}
                decoded => return Poll::Ready(Ok(decoded)),
            }
            if ready!(conn.poll_read(cx))? == 0 {
                self.decoder.eof()?;
                // A close-delimited body: complete, its connection gone.
                self.conn = None;
                return Poll::Ready(Ok(Decoded::End));
            }
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let frame = match ready!(this.poll_step(cx)) {
            Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
            Ok(Decoded::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(Decoded::End | Decoded::NeedMore) => None,
            Err(e) => {
                // A broken body leaves the connection in an unknown state: never reuse it.
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        };
        if this.decoder.is_done() && this.conn.is_some() {
            this.release(Instant::now());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |b| b.len() as u64);
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(ready + n),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(ready);
                hint
            }
        }
    }
}
