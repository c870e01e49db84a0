//! The body types of the data path: [`RequestBody`], what every request the handler gets
//! carries (read off the proxy's own HTTP/1.1 server connection, or hyper's for h2c), and
//! [`Body`], what every response carries (upstream bodies streamed through, or short local
//! texts), with the helpers to make one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::balance::InFlight;
use crate::downstream::DownstreamBody;

/// Any body error (hyper's, or the proxy's own HTTP/1.1 client's).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: an upstream stream or a local buffer.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// The body of a request the proxy received.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body (most requests: no allocation, no shared state).
    Empty,
    /// Read off the proxy's own HTTP/1.1 server connection as the handler polls it.
    Downstream(DownstreamBody),
    /// hyper's (h2c clients).
    Hyper(Incoming),
}

/// A body that keeps its endpoint's in-flight count until it is dropped.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

/// A body from a buffer.
pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (no allocation: the boxed body is zero-sized).
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

// === impl RequestBody ===

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Downstream(body) => Pin::new(body).poll_frame(cx),
            Self::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Downstream(body) => body.is_end_stream(),
            Self::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Downstream(body) => body.size_hint(),
            Self::Hyper(body) => body.size_hint(),
        }
    }
}

// === impl Tracked ===

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
