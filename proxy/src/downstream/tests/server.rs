use std::time::Duration;

use super::raw::{PATIENCE, Raw, echo_backend};
use crate::tests::backend::TestBackend;
use crate::tests::{Harness, ORDERS};

const DRAIN: Duration = Duration::from_secs(5);

/// A proxy in front of the echo backend.
async fn proxy_to_echo() -> (Harness, tokio::task::JoinHandle<()>) {
    let (echo, task) = echo_backend().await;
    let mut proxy = Harness::start(None, DRAIN).await;
    proxy.serve_orders_from("echo", echo);
    (proxy, task)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {ORDERS}\r\n\r\n").into_bytes()
}

/// Sends `GET path` on `client` and checks the echo backend's answer: the connection still
/// carries requests.
async fn get_echoed(client: &mut Raw, path: &str) {
    client.send(&get(path)).await;
    assert_eq!(
        client.response(false).await.text(),
        format!("GET {path} body= trailers=")
    );
}

#[tokio::test]
async fn malformed_heads_are_answered_400_saying_why_and_closed() {
    let (proxy, _echo) = proxy_to_echo().await;
    let cases: [(&str, u16, &str); 6] = [
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
            400,
            "malformed request head",
        ),
        ("GET /x HTTP/1.1\r\n\r\n", 400, "missing Host header"),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "more than one Host header",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both transfer-encoding and content-length",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            400,
            "conflicting content-length",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "unsupported transfer-encoding",
        ),
    ];
    for (request, status, reason) in cases {
        let mut client = Raw::connect(proxy.addr).await;
        client.send(request.as_bytes()).await;
        let response = client.response(false).await;
        assert_eq!(response.status, status, "{request:?}: {}", response.text());
        assert!(
            response.text().contains(reason),
            "{request:?}: {}",
            response.text()
        );
        assert_eq!(response.header("connection"), Some("close"));
        assert!(
            client.closed().await,
            "{request:?}: closed after the answer"
        );
    }
}

#[tokio::test]
async fn oversized_heads_are_answered_431() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    let big = "a".repeat(70 * 1024);
    client
        .send(format!("GET / HTTP/1.1\r\nHost: {ORDERS}\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await;
    let response = client.response(false).await;
    assert_eq!(response.status, 431, "{}", response.text());
    assert!(response.text().contains("request head larger than 64 KiB"));
    assert!(client.closed().await);

    let mut client = Raw::connect(proxy.addr).await;
    let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    client
        .send(format!("GET / HTTP/1.1\r\nHost: {ORDERS}\r\n{many}\r\n").as_bytes())
        .await;
    let response = client.response(false).await;
    assert_eq!(response.status, 431, "{}", response.text());
    assert!(response.text().contains("too many header fields"));
}

#[tokio::test]
async fn a_chunked_request_body_and_its_trailers_reach_the_backend() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    client
        .send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: {ORDERS}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.text(),
        "POST /upload body=hello world trailers=x-checksum:42"
    );
    // The connection carries the next request.
    get_echoed(&mut client, "/next").await;
}

#[tokio::test]
async fn response_trailers_reach_a_client_that_accepts_them() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    client
        .send(
            format!("GET /trailers HTTP/1.1\r\nHost: {ORDERS}\r\nTE: trailers\r\n\r\n").as_bytes(),
        )
        .await;
    let response = client.response(false).await;
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.text(), "abc");
    assert_eq!(response.trailers, ["x-sum: 7"], "{response:?}");
    assert_eq!(response.header("trailer"), Some("x-sum"));
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    client
        .send(
            format!(
                "PUT /doc HTTP/1.1\r\nHost: {ORDERS}\r\nContent-Length: 5\r\n\
                 Expect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    // Nothing of the body was sent: the proxy asks for it.
    client.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    client.send(b"hello").await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "PUT /doc body=hello trailers=");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    let mut burst = Vec::new();
    for i in 0..5 {
        burst.extend(get(&format!("/{i}")));
    }
    burst.extend(
        format!("POST /post HTTP/1.1\r\nHost: {ORDERS}\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
    );
    burst.extend(get("/last"));
    client.send(&burst).await;
    for i in 0..5 {
        assert_eq!(
            client.response(false).await.text(),
            format!("GET /{i} body= trailers=")
        );
    }
    assert_eq!(
        client.response(false).await.text(),
        "POST /post body=abc trailers="
    );
    assert_eq!(
        client.response(false).await.text(),
        "GET /last body= trailers="
    );
}

#[tokio::test]
async fn a_client_done_sending_still_gets_every_answer() {
    let slow = TestBackend::start("slow").await;
    let mut proxy = Harness::start(None, DRAIN).await;
    proxy.serve_orders_from("slow", slow.addr);
    let mut client = Raw::connect(proxy.addr).await;
    let mut burst = get("/?delay_ms=200");
    burst.extend(get("/"));
    client.send(&burst).await;
    // A half-close while the first request is in flight is not a client gone.
    client.shutdown_write().await;
    for _ in 0..2 {
        let response = client.response(false).await;
        assert_eq!(response.status, 200);
        assert!(response.text().starts_with("slow "), "{}", response.text());
    }
    assert!(client.closed().await);
}

#[tokio::test]
async fn http_1_0_closes_unless_kept_alive() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    client
        .send(format!("GET /old HTTP/1.0\r\nHost: {ORDERS}\r\n\r\n").as_bytes())
        .await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "GET /old body= trailers=");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed().await);

    let mut client = Raw::connect(proxy.addr).await;
    for path in ["/a", "/b"] {
        client
            .send(
                format!("GET {path} HTTP/1.0\r\nHost: {ORDERS}\r\nConnection: keep-alive\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        let response = client.response(false).await;
        assert_eq!(response.text(), format!("GET {path} body= trailers="));
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    // HTTP/1.1 with `Connection: close`.
    let mut client = Raw::connect(proxy.addr).await;
    client
        .send(format!("GET /c HTTP/1.1\r\nHost: {ORDERS}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    let response = client.response(false).await;
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed().await);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    // Pipelined: a body where there must be none would be read as the next response's head.
    let mut burst = format!("HEAD /h HTTP/1.1\r\nHost: {ORDERS}\r\n\r\n").into_bytes();
    burst.extend(get("/?status=204"));
    burst.extend(get("/?status=304"));
    burst.extend(get("/after"));
    client.send(&burst).await;
    let head = client.response(true).await;
    assert_eq!(head.status, 200);
    // The length its GET would have.
    assert_eq!(
        head.header("content-length"),
        Some("HEAD /h body= trailers=".len().to_string().as_str())
    );
    let no_content = client.response(false).await;
    assert_eq!(no_content.status, 204);
    assert_eq!(no_content.header("content-length"), None);
    assert_eq!(no_content.header("transfer-encoding"), None);
    assert_eq!(client.response(false).await.status, 304);
    let after = client.response(false).await;
    assert_eq!(after.text(), "GET /after body= trailers=");
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_answers_are_dated() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    for i in 0..3 {
        client.send(&get(&format!("/{i}"))).await;
        let response = client.response(false).await;
        assert_eq!(response.text(), format!("GET /{i} body= trailers="));
        assert_eq!(response.header("connection"), None, "kept alive");
        let date = response.header("date").unwrap();
        assert!(date.len() == 29 && date.ends_with(" GMT"), "{date}");
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let (proxy, _echo) = proxy_to_echo().await;
    let mut client = Raw::connect(proxy.addr).await;
    // 1 MiB: beyond what the proxy buffers for retries, so it streams up; back it comes with
    // the backend's length.
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut request = format!(
        "POST /mirror HTTP/1.1\r\nHost: {ORDERS}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(&body);
    client.send(&request).await;
    let response = client.response(false).await;
    assert_eq!(response.status, 200);
    assert!(response.body == body, "the body came back whole");
    get_echoed(&mut client, "/again").await;
}

#[tokio::test]
async fn drain_finishes_the_request_in_flight_and_closes_idle_connections_at_once() {
    let slow = TestBackend::start("slow").await;
    let mut proxy = Harness::start(None, Duration::from_secs(10)).await;
    proxy.serve_orders_from("slow", slow.addr);
    let mut idle = Raw::connect(proxy.addr).await;
    idle.send(&get("/")).await;
    assert_eq!(idle.response(false).await.status, 200);
    let mut busy = Raw::connect(proxy.addr).await;
    busy.send(&get("/?delay_ms=500")).await;
    slow.wait_for_hits(2).await;
    proxy.shutdown_token().cancel();
    assert!(idle.closed().await, "an idle connection closes at once");
    let response = busy.response(false).await;
    assert_eq!(response.status, 200, "the request in flight is answered");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(busy.closed().await);
    tokio::time::timeout(PATIENCE, proxy.take_task())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_slow_client_is_cut_by_the_header_read_timeout() {
    let (echo, _task) = echo_backend().await;
    let mut proxy = Harness::start_with(None, DRAIN, Duration::from_millis(200)).await;
    proxy.serve_orders_from("echo", echo);
    // Half a head, never finished.
    let mut slow = Raw::connect(proxy.addr).await;
    slow.send(format!("GET / HTTP/1.1\r\nHost: {ORDERS}\r\n").as_bytes())
        .await;
    assert!(slow.closed().await, "cut without an answer");
    // An idle kept-alive connection too, after its answer.
    let mut idle = Raw::connect(proxy.addr).await;
    get_echoed(&mut idle, "/one").await;
    assert!(idle.closed().await);
}
