//! Tests of the HTTP/1.1 client codec: framings, interim responses, malformed input (errors,
//! never panics), and exchanges over real loopback sockets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::decode::{BodyDecoder, Decoded, Framing, Parsed, parse_head};
use super::{Conn, Error, Outbound, Outgoing, UpstreamBody};
use crate::balance::Endpoint;
use crate::config::Protocol;
use crate::pool::{Connector, SendError};

/// Parses a whole response (head, then body) from `bytes` fed `step` bytes at a time, as
/// reads would deliver them; the peer closes after the last byte.
fn decode_all(
    bytes: &[u8],
    method: &Method,
    step: usize,
) -> Result<(StatusCode, bool, Vec<u8>, HeaderMap), Error> {
    let mut feed = bytes.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        match parse_head(&mut buf, &mut BytesMut::new(), method)? {
            Parsed::Final(head) => break head,
            Parsed::Interim => {}
            Parsed::Partial => match feed.next() {
                Some(more) => buf.extend_from_slice(more),
                None => return Err(Error::Closed),
            },
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let (mut body, mut trailers) = (Vec::new(), HeaderMap::new());
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(t) => trailers = t,
            Decoded::End => break,
            Decoded::NeedMore => match feed.next() {
                Some(more) => buf.extend_from_slice(more),
                None => {
                    decoder.eof()?;
                }
            },
        }
    }
    let reusable = head.reusable && buf.is_empty();
    Ok((head.status, reusable, body, trailers))
}

#[test]
fn content_length_chunked_and_close_delimited_bodies() {
    for step in [1, 3, 7, 1000] {
        let (status, reusable, body, _) = decode_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &Method::GET,
            step,
        )
        .unwrap();
        assert_eq!(
            (status, reusable, body.as_slice()),
            (StatusCode::OK, true, b"hello".as_slice())
        );

        let chunked = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 9\r\n\r\n";
        let (status, reusable, body, trailers) = decode_all(chunked, &Method::POST, step).unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(reusable);
        assert_eq!(body, b"hello 0123456789");
        assert_eq!(trailers["x-sum"], "9");

        let (_, reusable, body, _) =
            decode_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", &Method::GET, step).unwrap();
        assert_eq!(
            (reusable, body.as_slice()),
            (false, b"until the end".as_slice())
        );
    }
}

#[test]
fn responses_without_a_body() {
    for (raw, method) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"[..],
            Method::HEAD,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
        (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\n\r\n",
            Method::GET,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET),
    ] {
        let mut buf = BytesMut::from(raw);
        let Parsed::Final(head) = parse_head(&mut buf, &mut BytesMut::new(), &method).unwrap()
        else {
            panic!("no final head");
        };
        assert_eq!(
            head.framing,
            Framing::Empty,
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(head.reusable && buf.is_empty());
    }
}

#[test]
fn interim_responses_are_skipped_and_101_refused() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (status, _, body, _) = decode_all(raw, &Method::GET, 5).unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"ok".as_slice())
    );
    let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
    assert!(decode_all(upgrade, &Method::GET, 100).is_err());
}

#[test]
fn connection_reuse_follows_version_and_framing() {
    let head = |raw: &[u8]| {
        let mut buf = BytesMut::from(raw);
        match parse_head(&mut buf, &mut BytesMut::new(), &Method::GET).unwrap() {
            Parsed::Final(head) => head,
            other => panic!("{other:?}"),
        }
    };
    assert!(!head(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").reusable);
    let old = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
    assert_eq!(old.version, Version::HTTP_10);
    assert!(!old.reusable);
    assert!(
        head(b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n").reusable
    );
    // Both framings at once: chunked wins, the connection is not trusted after.
    let both = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(both.framing, Framing::Chunked);
    assert!(!both.reusable);
    let gzip = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
    assert_eq!((gzip.framing, gzip.reusable), (Framing::Close, false));
    // Repeated equal lengths are one length.
    assert_eq!(
        head(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n").framing,
        Framing::Length(2)
    );
}

#[test]
fn malformed_responses_are_errors() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        // Cut short: the peer closed before the announced end.
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\ncontent-len",
    ] {
        assert!(
            decode_all(raw, &Method::GET, 4).is_err(),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
    huge.extend_from_slice(&vec![b'a'; super::decode::MAX_HEAD + 1]);
    assert!(parse_head(&mut huge, &mut BytesMut::new(), &Method::GET).is_err());
}

proptest! {
    /// Random bytes (alone or after a valid head) never panic the decoder.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        step in 1usize..64,
    ) {
        let _ = decode_all(&bytes, &Method::GET, step);
        let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(&bytes);
        let _ = decode_all(&chunked, &Method::GET, step);
    }

    /// A chunked body comes out the same however the reads split it.
    #[test]
    fn chunked_bodies_survive_any_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..8),
        step in 1usize..40,
    ) {
        let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut expected = Vec::new();
        for chunk in &chunks {
            raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            raw.extend_from_slice(chunk);
            raw.extend_from_slice(b"\r\n");
            expected.extend_from_slice(chunk);
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let (_, reusable, body, _) = decode_all(&raw, &Method::GET, step).unwrap();
        prop_assert!(reusable);
        prop_assert_eq!(body, expected);
    }
}

/// A raw backend: answers each connection's requests with `responses` in turn (one per
/// request head read), then closes; sends each request's bytes to `requests`.
async fn raw_backend(
    responses: Vec<Vec<u8>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let responses = responses.clone();
            tokio::spawn(async move {
                for response in responses {
                    let mut request = Vec::new();
                    let mut byte = [0u8; 1];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => request.push(byte[0]),
                            _ => return,
                        }
                    }
                    let _ = tx.send(request);
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                }
                // Dropping the stream closes the connection.
            });
        }
    });
    (addr, rx)
}

fn endpoint(addr: std::net::SocketAddr) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        "i-1".into(),
        addr,
        Protocol::Http1,
        Instant::now(),
    ))
}

async fn get(
    connector: &Connector,
    endpoint: &Arc<Endpoint>,
    method: Method,
) -> Result<(StatusCode, Bytes), SendError> {
    let uri = Uri::from_static("/x?y=1");
    let request = Outbound {
        method: &method,
        uri: &uri,
        headers: &HeaderMap::new(),
        host: &endpoint.host,
    };
    let (head, conn) = connector
        .send(endpoint, request, Outgoing::Buffered(Bytes::new()))
        .await?;
    let body = UpstreamBody::new(&head, conn, endpoint.start(), Instant::now());
    Ok((head.status, body.collect().await.unwrap().to_bytes()))
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used() {
    // One response per connection, then the server closes (without saying so): each next
    // request finds its pooled connection closed (seen before use, or as no byte coming back
    // to an idempotent request) and goes on a new one.
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let (addr, mut requests) = raw_backend(vec![ok]).await;
    let endpoint = endpoint(addr);
    let connector = Connector::new();
    for method in [Method::GET, Method::OPTIONS, Method::GET] {
        let (status, body) = get(&connector, &endpoint, method.clone()).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let request = requests.recv().await.unwrap();
        let line = format!(
            "{method} /x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n",
            addr.port()
        );
        assert!(
            request.starts_with(line.as_bytes()),
            "{}",
            String::from_utf8_lossy(&request)
        );
    }
    assert_eq!(endpoint.in_flight(), 0);
}

#[tokio::test]
async fn a_response_larger_than_one_read_streams_and_the_connection_is_reused() {
    let big = vec![b'z'; 1 << 20];
    let mut length =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
    length.extend_from_slice(&big);
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for part in big.chunks(300_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head_only = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n".to_vec();
    let (addr, _requests) = raw_backend(vec![length, chunked, head_only]).await;
    let endpoint = endpoint(addr);
    let connector = Connector::new();
    for method in [Method::GET, Method::GET, Method::HEAD] {
        let (status, body) = get(&connector, &endpoint, method.clone()).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let expected = if method == Method::HEAD { 0 } else { big.len() };
        assert_eq!(body.len(), expected);
        assert!(body.iter().all(|&b| b == b'z'));
        assert_eq!(endpoint.http1_pool().idle(), 1, "the connection went back");
    }
}

#[tokio::test]
async fn a_broken_response_is_an_error_and_its_connection_dropped() {
    let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec();
    let (addr, _requests) = raw_backend(vec![cut]).await;
    let endpoint = endpoint(addr);
    let connector = Connector::new();
    let uri = Uri::from_static("/");
    let request = Outbound {
        method: &Method::GET,
        uri: &uri,
        headers: &HeaderMap::new(),
        host: &endpoint.host,
    };
    let (head, conn) = connector
        .send(&endpoint, request, Outgoing::Buffered(Bytes::new()))
        .await
        .unwrap();
    let body = UpstreamBody::new(&head, conn, endpoint.start(), Instant::now());
    assert!(body.collect().await.is_err());
    assert_eq!(endpoint.http1_pool().idle(), 0);
    assert_eq!(endpoint.in_flight(), 0);

    let (addr, _requests) = raw_backend(vec![b"garbage\r\n\r\n".to_vec()]).await;
    let endpoint = self::endpoint(addr);
    let result = get(&connector, &endpoint, Method::GET).await;
    assert!(matches!(result, Err(SendError::Failed(_))), "{result:?}");
}

/// A streamed request body (a hyper `Incoming`, as the proxy receives one) goes out chunked,
/// and the echoed chunked response comes back whole.
#[tokio::test]
async fn a_streamed_request_body_is_sent_chunked() {
    // Upstream: echoes the request body back (hyper answers it chunked).
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            let service = service_fn(|req: Request<Incoming>| async move {
                let chunked = req.headers().get(http::header::TRANSFER_ENCODING)
                    == Some(&http::HeaderValue::from_static("chunked"));
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut answer = format!("{chunked}:").into_bytes();
                answer.extend_from_slice(&body);
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_stream(answer))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let endpoint = endpoint(upstream_addr);
    // Front: hands the incoming body to the codec as a stream.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let connector = Connector::new();
    let (front_endpoint, front_connector) = (Arc::clone(&endpoint), connector.clone());
    tokio::spawn(async move {
        let (stream, _) = front.accept().await.unwrap();
        let service = service_fn(move |req: Request<Incoming>| {
            let (endpoint, connector) = (Arc::clone(&front_endpoint), front_connector.clone());
            async move {
                let (parts, body) = req.into_parts();
                let request = Outbound {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &HeaderMap::new(),
                    host: &endpoint.host,
                };
                let (head, conn) = connector
                    .send(
                        &endpoint,
                        request,
                        Outgoing::Streamed(crate::body::RequestBody::Hyper(body)),
                    )
                    .await
                    .unwrap();
                let body = UpstreamBody::new(&head, conn, endpoint.start(), Instant::now());
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .unwrap();
    });
    let stream = TcpStream::connect(front_addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let parts: Vec<Result<Frame<Bytes>, Infallible>> = (0..50)
        .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; 3000]))))
        .collect();
    let expected: Vec<u8> = (0..50)
        .flat_map(|i| vec![b'a' + (i % 26) as u8; 3000])
        .collect();
    let body = StreamBody::new(tokio_stream::iter(parts));
    let request = Request::post("/echo")
        .header("host", "front")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(!response.body().is_end_stream());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut want = b"true:".to_vec();
    want.extend_from_slice(&expected);
    assert_eq!(body.len(), want.len());
    assert!(body == want);
    assert_eq!(endpoint.http1_pool().idle(), 1);
}

/// `bytes` as a stream of three frames (so hyper sends it chunked).
fn futures_stream(
    bytes: Vec<u8>,
) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let bytes = Bytes::from(bytes);
    let third = bytes.len() / 3;
    let frames = vec![
        Ok(Frame::data(bytes.slice(..third))),
        Ok(Frame::data(bytes.slice(third..2 * third))),
        Ok(Frame::data(bytes.slice(2 * third..))),
    ];
    tokio_stream::iter(frames)
}

#[tokio::test]
async fn conn_reads_a_fresh_socket_as_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let conn = Conn::new(stream);
    assert!(conn.is_open());
    drop(server);
    // The close is seen once the runtime has the event.
    meridian_tests::wait_for("the close to be seen", Duration::from_secs(10), || {
        std::future::ready((!conn.is_open()).then_some(()))
    })
    .await;
}
