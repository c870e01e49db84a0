//! What the proxy changes in the headers it forwards: hop-by-hop headers out (both ways), and
//! on requests `Host` from `:authority` and the client appended to `X-Forwarded-For`. Trace
//! headers are not touched here: with tracing on, [`crate::trace`] rewrites them; with it off
//! they pass through like any other header.
//!
//! On the hot path of every request, so written to cost nothing when there is nothing to do:
//! one scan of the names finds hop-by-hop headers before any removal, and the new values are
//! formatted on the stack.

use std::net::SocketAddr;

use bytes::{BufMut as _, BytesMut};
use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; `te: trailers` is kept because
/// gRPC needs it end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan finds the hop-by-hop names present (most requests have none; most responses
    // only `connection`), so only those are removed.
    let mut found: [Option<HeaderName>; HOP_BY_HOP] = Default::default();
    let mut n = 0;
    for name in headers.keys().filter(|name| is_hop_by_hop(name)) {
        // Keys are distinct, so at most `HOP_BY_HOP` of them match.
        if let Some(slot) = found.get_mut(n) {
            *slot = Some(name.clone());
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    // The names `Connection` lists ("keep-alive" is removed anyway, "close" names no header).
    // Its values are cheap clones (shared bytes), taken so the map can change while they are
    // read.
    let listed: Vec<HeaderValue> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter(|v| {
            !(v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || v.as_bytes().eq_ignore_ascii_case(b"close"))
        })
        .cloned()
        .collect();
    for value in &listed {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for name in found.into_iter().flatten() {
        if name != header::TE || headers.get(&name).is_some_and(|v| v != "trailers") {
            headers.remove(name);
        }
    }
}

/// How many names [`is_hop_by_hop`] accepts.
const HOP_BY_HOP: usize = 7;

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Header names are stored lower-case.
    matches!(
        name.as_str(),
        "connection"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
            | "te"
    )
}

/// The client end of a downstream connection, with its `X-Forwarded-For` entry formatted once
/// per connection rather than per request.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's IP address as a header value (cloning it shares its bytes).
    forwarded_for: HeaderValue,
}

// === impl Peer ===

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::try_from(addr.ip().to_string())
            .expect("invariant: an IP address is a valid header value");
        Self { forwarded_for }
    }

    /// The client's IP address as text (`10.0.0.9`, `2001:db8::7`), formatted once.
    pub(crate) fn ip_text(&self) -> &[u8] {
        self.forwarded_for.as_bytes()
    }
}

/// Hop-by-hop headers out; `Host` set from the request's authority (an HTTP/2 request carries
/// it only in `:authority`); the client's address appended to `X-Forwarded-For`.
pub(crate) fn prepare_headers(headers: &mut HeaderMap, uri: &Uri, client: &Peer) {
    strip_hop_by_hop(headers);
    if let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    let ip = client.ip_text();
    let forwarded = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            let mut joined = BytesMut::with_capacity(previous.len() + 2 + ip.len());
            joined.put_slice(previous.as_bytes());
            joined.put_slice(b", ");
            joined.put_slice(ip);
            HeaderValue::from_maybe_shared(joined.freeze())
        }
        None => Ok(client.forwarded_for.clone()),
    };
    if let Ok(value) = forwarded {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        prepare_headers(
            &mut h,
            &"http://orders.cafe.local:15001/x".parse().unwrap(),
            &Peer::new("10.0.0.9:5555".parse().unwrap()),
        );
        assert!(
            h.get(header::CONNECTION).is_none()
                && h.get("x-private").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["host"], "orders.cafe.local:15001");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }

    #[test]
    fn forwarded_for_is_appended_and_te_other_than_trailers_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        prepare_headers(
            &mut h,
            &"/x".parse().unwrap(),
            &Peer::new("[2001:db8::7]:5555".parse().unwrap()),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 2001:db8::7");
        assert!(h.get(header::TE).is_none() && h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get(header::HOST).is_none());
        assert!(h.get("traceparent").is_none(), "no trace header is made up");
    }

    #[test]
    fn nothing_to_strip_leaves_the_map_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
