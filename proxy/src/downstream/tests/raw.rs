//! A raw HTTP/1.1 client (bytes in, responses parsed by hand, so the tests see exactly what
//! the server wrote) and an echo backend that reports what reached it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A bound on a hang, not a timing assertion.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

/// One client connection.
pub(super) struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response as read off the wire.
#[derive(Debug)]
pub(super) struct RawResponse {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub(super) trailers: Vec<String>,
}

impl Raw {
    pub(super) async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Closes the sending side (the client will send nothing more).
    pub(super) async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.unwrap();
    }

    /// Reads more; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes within {PATIENCE:?}; have {:?}", self.text()),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Reads exactly `expected` next.
    pub(super) async fn expect_bytes(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            assert!(self.fill().await, "closed before {expected:?}");
        }
        assert_eq!(&self.buf[..expected.len()], expected, "{}", self.text());
        self.buf.drain(..expected.len());
    }

    /// Reads the next response; `bodiless`: it answers a HEAD (no body whatever it says).
    pub(super) async fn response(&mut self, bodiless: bool) -> RawResponse {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(&self.buf).unwrap() {
                httparse::Status::Complete(len) => {
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_ascii_lowercase(), value)
                        })
                        .collect::<Vec<_>>();
                    break (response.code.unwrap(), headers, len);
                }
                httparse::Status::Partial => {
                    assert!(self.fill().await, "closed mid-head: {:?}", self.text());
                }
            }
        };
        self.buf.drain(..len);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut trailers = Vec::new();
        let body = if bodiless || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else if let Some(n) = get("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await, "closed mid-body");
            }
            self.buf.drain(..n).collect()
        } else if get("transfer-encoding").as_deref() == Some("chunked") {
            self.chunked(&mut trailers).await
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        RawResponse {
            status,
            headers,
            body,
            trailers,
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "closed mid-chunk");
        }
    }

    async fn chunked(&mut self, trailers: &mut Vec<String>) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size = usize::from_str_radix(self.line().await.trim(), 16).unwrap();
            if size == 0 {
                loop {
                    let line = self.line().await;
                    if line.is_empty() {
                        return body;
                    }
                    trailers.push(line);
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill().await, "closed mid-chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Whether the server closes the connection with nothing more to read.
    pub(super) async fn closed(&mut self) -> bool {
        let before = self.buf.len();
        while self.fill().await {}
        self.buf.len() == before
    }
}

impl RawResponse {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A backend (hyper) that answers `<METHOD> <path> body=<body> trailers=<name:value,...>`,
/// `?status=N` with that status, `/mirror` with the request body itself, and `/trailers`
/// with a streamed body and a trailer `x-sum: 7`.
pub(super) async fn echo_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });
    (addr, task)
}

async fn echo(req: Request<Incoming>) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(n, v)| format!("{n}:{}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let body = collected.to_bytes();
    if let Some(status) = parts.uri.query().and_then(|q| q.strip_prefix("status=")) {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not sent")).boxed());
        *response.status_mut() = StatusCode::from_u16(status.parse().unwrap()).unwrap();
        return Ok(response);
    }
    if parts.uri.path() == "/mirror" {
        return Ok(Response::new(Full::new(body).boxed()));
    }
    if parts.uri.path() == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("7"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)).boxed());
        // hyper sends only the trailer fields the head announces.
        response
            .headers_mut()
            .insert("trailer", http::HeaderValue::from_static("x-sum"));
        return Ok(response);
    }
    let text = format!(
        "{} {} body={} trailers={trailers}",
        parts.method,
        parts.uri.path(),
        String::from_utf8_lossy(&body)
    );
    Ok(Response::new(Full::new(Bytes::from(text)).boxed()))
}
