//! Reading an HTTP/1.1 response off the wire: its head (with `httparse`, header values sliced
//! out of the read buffer without copying) and how its body is framed (RFC 9112 §6.3), then
//! the body itself — a known length, chunked, or up to the end of the connection.
//!
//! Pure functions over a `BytesMut` the connection reads into, so every framing and every
//! malformed input is testable without a socket.

use std::mem::MaybeUninit;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::Error;

/// A response head longer than this is refused (hyper's client allows ~400 KiB; 64 KiB is
/// well beyond any sane upstream).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Header fields in one response head (or one trailer section) at most.
const MAX_HEADERS: usize = 100;
/// Body pieces up to this size are copied out of the read buffer rather than split off.
const COPY_UP_TO: usize = 4096;
/// A chunk-size line (with extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 4096;

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// How the body that follows is delimited.
    pub(crate) framing: Framing,
    /// The connection may carry another request once the body is complete.
    pub(crate) reusable: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or `content-length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Everything up to the end of the connection.
    Close,
}

/// What [`Parsed`] found at the front of the buffer.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// An interim `1xx` response (consumed): a final one follows.
    Interim,
    /// A final response head (consumed).
    Final(Head),
}

/// The body decoder's state.
#[derive(Debug)]
pub(crate) enum BodyDecoder {
    /// This many bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// Until the peer closes.
    Close,
    /// The body is complete.
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes to come.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// One step of body decoding.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields of a chunked body (non-empty); the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// Nothing decodable in the buffer: read more.
    NeedMore,
}

/// Parses the response head at the front of `buf` to a request made with `method`; the head
/// is copied into `heads` (the connection's buffer for them, reused once the responses whose
/// fields it holds are gone), its field values sliced out of that copy.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    heads: &mut BytesMut,
    method: &Method,
) -> Result<Parsed, Error> {
    // Uninitialised: zeroing room for 100 fields (3.2 KB) on every response cost more than
    // parsing the half-dozen a backend sends.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Error::Malformed("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(Error::Head(e)),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("bad status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Malformed("unexpected 101 Switching Protocols"));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    // Header values are sliced out of one copy of the head (a few hundred bytes). Copied
    // rather than split off: the read buffer stays unshared, so the next read reuses it; the
    // copy's buffer is reused too once the responses whose heads it holds are dropped (no
    // allocation per response in the steady state).
    let head = copy_out(heads, &buf[..len]);
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| part.as_ptr() as usize - base;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("bad header name"))?;
        let start = offset(field.value);
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + field.value.len()))
            .map_err(|_| Error::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    let (framing, mut reusable) = framing(&headers, status, method)?;
    let close = has_token(&headers, "close");
    reusable &= match version {
        Version::HTTP_10 => !close && has_token(&headers, "keep-alive"),
        _ => !close,
    };
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        framing,
        reusable,
    }))
}

/// The body's framing, and whether it leaves the connection reusable (RFC 9112 §6.3).
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
) -> Result<(Framing, bool), Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // With a content-length too, the message was possibly smuggled: do not reuse.
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n =
                parse_decimal(part.trim_ascii()).ok_or(Error::Malformed("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// `bytes` copied into `buffer` and split off as their own `Bytes`. Once every `Bytes` split
/// from it is dropped, `buffer` reclaims its memory, so a connection that copies each head (or
/// small body) this way allocates nothing in the steady state.
pub(crate) fn copy_out(buffer: &mut BytesMut, bytes: &[u8]) -> Bytes {
    buffer.reserve(bytes.len());
    buffer.extend_from_slice(bytes);
    buffer.split_to(bytes.len()).freeze()
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Whether a `connection` field lists `token`.
pub(crate) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

// === impl BodyDecoder ===

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunk::Size),
            Framing::Close => Self::Close,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// The exact number of body bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            Self::Chunked(_) | Self::Close => None,
        }
    }

    /// Decodes what it can from the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self {
                Self::Done => return Ok(Decoded::End),
                Self::Close if buf.is_empty() => return Ok(Decoded::NeedMore),
                Self::Close => return Ok(Decoded::Data(take(buf, buf.len()))),
                Self::Length(_) if buf.is_empty() => return Ok(Decoded::NeedMore),
                Self::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Self::Done;
                    }
                    return Ok(Decoded::Data(self::take(buf, take)));
                }
                Self::Chunked(chunk) => match decode_chunk(chunk, buf)? {
                    Some(Decoded::End) => {
                        *self = Self::Done;
                        return Ok(Decoded::End);
                    }
                    Some(Decoded::Trailers(trailers)) => {
                        *self = Self::Done;
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Some(decoded) => return Ok(decoded),
                    // A state change: go on with the same buffer.
                    None => {}
                },
            }
        }
    }

    /// The peer closed the connection: the end of a close-delimited body, an error otherwise.
    pub(crate) fn eof(&mut self) -> Result<(), Error> {
        match self {
            Self::Close | Self::Done => {
                *self = Self::Done;
                Ok(())
            }
            Self::Length(_) | Self::Chunked(_) => Err(Error::Truncated),
        }
    }
}

/// One step of chunked decoding: `Some` to report, `None` after a state change.
fn decode_chunk(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
    match *chunk {
        Chunk::Size => {
            let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(Error::Malformed("chunk-size line too long"));
                }
                return Ok(Some(Decoded::NeedMore));
            };
            let line = &buf[..eol];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // Extensions (`;name=value`) are ignored, as RFC 9112 §7.1.1 allows.
            let size = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if size.is_empty() || size.len() > 15 {
                return Err(Error::Malformed("bad chunk size"));
            }
            let size = size.iter().try_fold(0u64, |n, &d| {
                char::from(d).to_digit(16).map(|d| n * 16 + u64::from(d))
            });
            let size = size.ok_or(Error::Malformed("bad chunk size"))?;
            buf.advance(eol + 1);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(None)
        }
        Chunk::Data(_) if buf.is_empty() => Ok(Some(Decoded::NeedMore)),
        Chunk::Data(left) => {
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let left = left - take as u64;
            *chunk = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Some(Decoded::Data(self::take(buf, take))))
        }
        Chunk::DataEnd => match buf.first() {
            None => Ok(Some(Decoded::NeedMore)),
            Some(b'\n') => {
                buf.advance(1);
                *chunk = Chunk::Size;
                Ok(None)
            }
            Some(b'\r') if buf.len() < 2 => Ok(Some(Decoded::NeedMore)),
            Some(b'\r') if buf[1] == b'\n' => {
                buf.advance(2);
                *chunk = Chunk::Size;
                Ok(None)
            }
            Some(_) => Err(Error::Malformed("chunk data longer than its size")),
        },
        Chunk::Trailers => trailers(buf),
    }
}

/// The first `n` bytes of `buf`: small pieces copied (the buffer stays unshared and is reused
/// by the next read), large ones split off without a copy.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_UP_TO {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

/// The trailer section after the last chunk, up to its empty line.
fn trailers(buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
    if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
        buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
        return Ok(Some(Decoded::End));
    }
    if buf.is_empty() || buf == b"\r".as_slice() {
        return Ok(Some(Decoded::NeedMore));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Error::Malformed("trailers too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Some(Decoded::NeedMore)),
        Err(e) => return Err(Error::Head(e)),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(Error::Malformed("bad trailer field"));
        };
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(if map.is_empty() {
        Decoded::End
    } else {
        Decoded::Trailers(map)
    }))
}
