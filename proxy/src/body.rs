//! The body type every response of the proxy carries (upstream bodies streamed through, or
//! short local texts), and the helpers to make one.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed body: an upstream stream or a local buffer.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

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
