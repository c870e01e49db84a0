//! Reading a request head off the wire (RFC 9112): the request line and fields with
//! `httparse`, values sliced out of one copy of the head; how the body that follows is framed;
//! whether the connection stays open after the exchange; `Expect: 100-continue`.
//!
//! A pure function over the connection's read buffer, so every rule and every malformed input
//! is testable without a socket. What it refuses comes back as a [`Refusal`]: the status and a
//! short reason the client is answered with before the connection closes.

use std::mem::MaybeUninit;

use bytes::{Buf as _, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::h1::{Framing, copy_out, has_token, parse_decimal};

/// A request head longer than this is refused with 431 (Envoy's default limit is 60 KiB,
/// nginx's 32 KiB; hyper's was ~400 KiB, more than a proxy should hold per slow client).
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Header fields in one request head at most (hyper's limit too).
pub(crate) const MAX_FIELDS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Method, target, version and fields (the body comes later).
    pub(crate) request: Request<()>,
    /// How the body is delimited (`Empty`, `Length` or `Chunked`; never `Close`).
    pub(crate) framing: Framing,
    /// The client allows the connection to carry another request after this one.
    pub(crate) keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub(crate) expect_continue: bool,
}

/// What [`parse_head`] found at the front of the buffer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Moved once per request; a box would cost an allocation.
pub(crate) enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// A request head (consumed from the buffer).
    Complete(RequestHead),
}

/// What a connection keeps between requests so that parsing a head allocates nothing in the
/// steady state: a buffer the heads are copied into (their fields are slices of it; once the
/// request is done and its head dropped, the same memory takes the next head), and an empty
/// field map with room (the previous response's, cleared).
#[derive(Debug)]
pub(crate) struct Scratch {
    heads: BytesMut,
    /// Taken by the next head (an empty map while none was given back).
    pub(crate) headers: HeaderMap,
}

/// A request the server answers itself, then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// One line for the response body.
    pub(crate) reason: String,
}

/// Room for heads: a typical head several times over before the buffer is reused.
const HEADS_CAPACITY: usize = 4096;
/// Fields the proxy adds to a request (`x-forwarded-for`, `traceparent`, ...): room is made
/// for them up front.
const ADDED_FIELDS: usize = 3;

/// Parses the request head at the front of `buf`.
pub(crate) fn parse_head(buf: &mut BytesMut, scratch: &mut Scratch) -> Result<Parsed, Refusal> {
    // Uninitialised, as the client codec does: zeroing room for 100 fields costs more than
    // parsing the few a client sends.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_HEAD => {
            return Err(too_large());
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_HEAD => {
            return Err(too_large());
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("too many header fields (at most {MAX_FIELDS})"),
            ));
        }
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };
    let method = request.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| bad("malformed request head: invalid method".into()))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // One copy of the head (a few hundred bytes) that the target and every field value are
    // slices of. Copied rather than split off: the read buffer stays unshared and is reused;
    // so is the copy's buffer, once the requests whose heads it holds are done.
    let head = copy_out(&mut scratch.heads, &buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        head.slice(start..start + part.len())
    };
    let target = request.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(slice(target.as_bytes()))
        .map_err(|_| bad(format!("malformed request target {target:?}")))?;
    let mut headers = std::mem::take(&mut scratch.headers);
    headers.reserve(request.headers.len() + ADDED_FIELDS);
    let mut hosts = 0;
    for field in request.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| bad(format!("invalid header name {:?}", field.name)))?;
        let value = HeaderValue::from_maybe_shared(slice(field.value))
            .map_err(|_| bad(format!("invalid value of header {name}")))?;
        if name == header::HOST {
            hosts += 1;
        }
        headers.append(name, value);
    }
    buf.advance(len);

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (at most one in 1.0).
    if hosts > 1 {
        return Err(bad("more than one Host header".into()));
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(bad("missing Host header (required in HTTP/1.1)".into()));
    }
    let framing = framing(&headers, version)?;
    let close = has_token(&headers, "close");
    let keep_alive = match version {
        Version::HTTP_10 => !close && has_token(&headers, "keep-alive"),
        _ => !close,
    };
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Parsed::Complete(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// How the request body is delimited (RFC 9112 §6.3 for requests: chunked, a length, or none).
/// Ambiguous framing is refused rather than guessed: it is how requests are smuggled past a
/// proxy.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Refusal> {
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_some() {
        if version == Version::HTTP_10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 request".into()));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(bad("both transfer-encoding and content-length".into()));
        }
        // Only `chunked`, once: other codings would reach the upstream undeclared once the
        // proxy takes the chunked framing off.
        let mut listed = codings
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let only_chunked = listed
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && listed.next().is_none();
        if !only_chunked {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported transfer-encoding (only chunked)".into(),
            ));
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii())
                .ok_or_else(|| bad("invalid content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

fn bad(reason: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reason)
}

fn too_large() -> Refusal {
    Refusal::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("request head larger than {} KiB", MAX_REQUEST_HEAD / 1024),
    )
}

// === impl Scratch ===

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            heads: BytesMut::with_capacity(HEADS_CAPACITY),
            headers: HeaderMap::new(),
        }
    }

    /// Keeps a finished response's field map (cleared) for the next request head.
    pub(crate) fn recycle(&mut self, mut headers: HeaderMap) {
        headers.clear();
        self.headers = headers;
    }
}

// === impl Refusal ===

impl Refusal {
    pub(crate) fn new(status: StatusCode, reason: String) -> Self {
        Self { status, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Parsed, Refusal> {
        parse_head(&mut BytesMut::from(text.as_bytes()), &mut Scratch::new())
    }

    fn complete(text: &str) -> RequestHead {
        match parse(text) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_head_in_pieces_is_partial_and_what_follows_it_is_kept() {
        assert!(matches!(parse("GET / HTTP/1.1\r\nHo"), Ok(Parsed::Partial)));
        let mut buf = BytesMut::from(&b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b"[..]);
        let mut scratch = Scratch::new();
        let Ok(Parsed::Complete(head)) = parse_head(&mut buf, &mut scratch) else {
            panic!("complete");
        };
        assert_eq!(head.request.uri().path(), "/a");
        assert_eq!(
            &buf[..],
            b"GET /b",
            "the pipelined rest stays in the buffer"
        );
    }

    #[test]
    fn targets_and_authority() {
        let head =
            complete("GET http://Orders.Cafe.Local:81/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(
            head.request.uri().authority().unwrap(),
            "Orders.Cafe.Local:81"
        );
        assert_eq!(head.request.uri().path_and_query().unwrap(), "/x?q=1");
        assert_eq!(head.request.headers()["host"], "other");
        let head = complete("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(head.request.method(), Method::OPTIONS);
        // HTTP/1.0 may leave Host out.
        let head = complete("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.request.version(), Version::HTTP_10);
    }

    #[test]
    fn keep_alive_rules() {
        let keep = |text: &str| complete(text).keep_alive;
        assert!(keep("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn body_framing_and_expect() {
        let head = complete("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(5));
        let head = complete("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.framing, Framing::Chunked);
        let head = complete("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
        assert!(!head.expect_continue, "no body: nothing to wait for");
        let head = complete(
            "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: 100-Continue\r\n\r\n",
        );
        assert!(head.expect_continue);
        let refused = |text: &str| parse(text).err().map(|r| r.status.as_u16());
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(refused("GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n"), Some(400));
    }
}
