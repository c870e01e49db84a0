//! The café's binaries as processes on loopback, without the mesh: what orders answers, how
//! reports sums it up and what it sends on (the trace headers it was given, untouched, when
//! nothing is exported), and flags that are refused with a reason. The demo with the mesh and
//! a collector is `tests/tests/cafe.rs` in `meridian-tests`.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ORDERS: &str = env!("CARGO_BIN_EXE_cafe-orders");
const REPORTS: &str = env!("CARGO_BIN_EXE_cafe-reports");

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A service process, killed when dropped.
struct Service {
    child: Child,
    addr: SocketAddr,
}

// === impl Service ===

impl Service {
    /// Starts `bin` on port 0 and reads the address it bound from its first line of output:
    /// no port is chosen here, so no other process on the machine can take it in between.
    fn start(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut service = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{bin} said nothing within 20 s"));
        service.addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{bin}: expected `listening on http://ADDR`, got {line:?}"));
        service
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0 with `headers`: status, headers (lower-case names), body.
fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn orders_answers_in_its_version() {
    let v1 = Service::start(ORDERS, &["--version", "v1"]);
    let v2 = Service::start(ORDERS, &["--version", "v2"]);
    let (status, headers, body) = get(v1.addr, "/orders?hour=9", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-cafe-version"), Some("v1"));
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["version"], "v1");
    assert!(page["orders"][0]["total"].is_string(), "{page}");

    let (_, headers, body) = get(v2.addr, "/orders?hour=9", &[]);
    assert_eq!(header(&headers, "x-cafe-version"), Some("v2"));
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(page["orders"][0]["total_cents"].is_u64(), "{page}");

    assert_eq!(get(v1.addr, "/healthz", &[]).0, 200);
    let (status, _, body) = get(v1.addr, "/orders?hour=23", &[]);
    assert_eq!(status, 400);
    assert!(body.contains("open from 7 to 19"), "{body}");
    assert_eq!(get(v1.addr, "/menu", &[]).0, 404);
}

#[test]
fn a_bad_canary_fails_as_asked() {
    let bad = Service::start(ORDERS, &["--version", "v2", "--error-rate", "1"]);
    let (status, headers, body) = get(bad.addr, "/orders", &[]);
    assert_eq!(status, 500, "{body}");
    assert_eq!(header(&headers, "x-cafe-version"), Some("v2"));
}

#[test]
fn reports_sums_up_both_versions() {
    let orders = Service::start(ORDERS, &["--version", "v2"]);
    let via = format!("http://{}", orders.addr);
    let reports = Service::start(REPORTS, &["--orders-via", &via]);
    let (status, _, body) = get(reports.addr, "/reports/daily", &[]);
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["lookups"], 12);
    assert_eq!(summary["answered_by"]["v2"], 12);
    assert_eq!(summary["failed"], 0);
    assert!(summary["orders"].as_u64().unwrap() >= 24, "{summary}");
    assert!(
        summary["trace_id"].is_null(),
        "nothing traced without an endpoint"
    );
}

/// A stand-in for the proxy that records the headers of each lookup and answers as v1.
fn recording_upstream() -> (SocketAddr, mpsc::Receiver<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_ascii_lowercase());
                }
                let body = r#"{"version":"v1","orders":[{"items":["tea"],"total":"2.50"}]}"#;
                // One answer per connection, and said so: a client that pooled the connection
                // would otherwise send its next lookup into one this thread has closed.
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nx-cafe-version: v1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tx.send(head);
            });
        }
    });
    (addr, rx)
}

#[test]
fn reports_passes_the_callers_trace_on_when_not_exporting() {
    let (upstream, heads) = recording_upstream();
    let via = format!("http://{upstream}");
    let reports = Service::start(REPORTS, &["--orders-via", &via]);
    let (status, _, body) = get(
        reports.addr,
        "/reports/daily",
        &[("traceparent", TRACEPARENT), ("tracestate", "cafe=1")],
    );
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["revenue"], "30.00", "12 teas at 2.50");
    for _ in 0..12 {
        let head = heads
            .recv_timeout(Duration::from_secs(10))
            .expect("a lookup");
        assert!(
            head.contains(&"host: orders.cafe.local".to_owned()),
            "{head:?}"
        );
        assert!(
            head.contains(&format!("traceparent: {TRACEPARENT}")),
            "{head:?}"
        );
        assert!(head.contains(&"tracestate: cafe=1".to_owned()), "{head:?}");
    }
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    for (bin, args, needle) in [
        (ORDERS, &["--version", "v3"][..], "v1 or v2"),
        (ORDERS, &["--error-rate", "2"][..], "from 0 to 1"),
        (ORDERS, &["--latency", "soon"][..], "250ms"),
        (
            REPORTS,
            &["--orders-via", "127.0.0.1:1"][..],
            "--orders-via",
        ),
    ] {
        let output = Command::new(bin).args(args).output().unwrap();
        assert!(!output.status.success(), "{bin} {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{bin} {args:?}: {stderr}");
    }
}
