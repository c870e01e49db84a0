//! Writing an HTTP/1.1 request head (and a buffered body) into one buffer, so a typical
//! request leaves the proxy in a single `write`; and the wire pieces both directions write
//! (fields, decimal lengths, chunk sizes, the last chunk with its trailers), shared with the
//! downstream server's responses (`crate::downstream`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri};

/// Buffered bodies up to this size are copied behind the head (one `write`); larger ones are
/// written on their own.
pub(crate) const COPY_BODY_UP_TO: usize = 16 * 1024;

/// How the request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body, or a `content-length` the request states (the body is written as it comes).
    AsIs,
    /// `content-length` added: the buffered body's length.
    Length(usize),
    /// `transfer-encoding: chunked` added: a streamed body of unknown length.
    Chunked,
}

/// Appends the request head to `out`: request line in origin form, `host` (the endpoint's when
/// the request has none) first, the other fields as they are, and the framing field `framing`
/// asks for.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    host: &HeaderValue,
    framing: BodyFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    // An authority-form or empty target still goes out as a path.
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        field(out, "host", host.as_bytes());
    }
    for (name, value) in headers {
        field(out, name.as_str(), value.as_bytes());
    }
    match framing {
        BodyFraming::AsIs => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => field(out, "transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How a request with `headers` and a buffered `body` (`None`: streamed) is framed.
pub(crate) fn request_framing(
    method: &Method,
    headers: &HeaderMap,
    body: Option<&Bytes>,
) -> BodyFraming {
    if headers.contains_key(header::CONTENT_LENGTH) {
        return BodyFraming::AsIs;
    }
    match body {
        None => BodyFraming::Chunked,
        Some(body) if !body.is_empty() => BodyFraming::Length(body.len()),
        // An empty body: say so where the method expects content (as hyper's client does).
        Some(_) if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            BodyFraming::Length(0)
        }
        Some(_) => BodyFraming::AsIs,
    }
}

/// Appends the start of one chunk of a chunked body: its size in hex and CRLF (no allocation).
pub(crate) fn push_chunk_header(out: &mut Vec<u8>, len: usize) {
    push_digits(out, len as u64, 16);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk of a chunked body and its trailer section.
pub(crate) fn finish_chunked(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        field(out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one field line (`name: value` and CRLF).
pub(crate) fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (no allocation).
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    push_digits(out, n, 10);
}

/// Appends `n` in base `radix` (10 or 16; lower-case hex digits), without allocating.
fn push_digits(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_host_first_and_the_framing_asked_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        let uri: Uri = "/p?q=1".parse().unwrap();
        let body = Bytes::from_static(b"hello");
        let framing = request_framing(&Method::POST, &headers, Some(&body));
        write_head(
            &mut out,
            &Method::POST,
            &uri,
            &headers,
            &HeaderValue::from_static("10.0.0.1:80"),
            framing,
        );
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            request_framing(&Method::GET, &headers, Some(&Bytes::new())),
            BodyFraming::AsIs
        );
        assert_eq!(
            request_framing(&Method::PUT, &headers, Some(&Bytes::new())),
            BodyFraming::Length(0)
        );
        assert_eq!(
            request_framing(&Method::PUT, &headers, None),
            BodyFraming::Chunked
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        assert_eq!(
            request_framing(&Method::PUT, &headers, None),
            BodyFraming::AsIs
        );
    }

    #[test]
    fn numbers_and_chunks_are_written_as_the_wire_wants() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0, 9, 10, 255, 4096, usize::MAX] {
            let mut out = Vec::new();
            push_chunk_header(&mut out, n);
            assert_eq!(out, format!("{n:x}\r\n").as_bytes());
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("42"));
        let mut out = Vec::new();
        finish_chunked(&mut out, &trailers);
        assert_eq!(out, b"0\r\nx-checksum: 42\r\n\r\n");
    }
}
