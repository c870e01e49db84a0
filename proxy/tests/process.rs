//! The `meridian-proxy` binary's telemetry wiring, as a real process: its flags, its
//! resource attributes, a caller's trace continued to a real backend, and the spans flushed
//! when SIGTERM ends it. (The data path's tracing in detail: `tests/tests/proxy_tracing.rs`,
//! in-process.) Cargo gives `CARGO_BIN_EXE_meridian-proxy` only to this package's tests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use meridian_tests::mesh::{Call, Mesh, MeshClient, PATIENCE, SERVICE};
use meridian_tests::otlp::{Collector, attribute, hex};
use meridian_tests::{free_loopback_addr, send_signal, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_meridian-proxy");
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The proxy process; killed (and reaped) when dropped, e.g. on a failed assertion.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_spans_with_its_resource_and_flushes_on_sigterm() {
    let collector = Collector::start().await;
    // A control plane and a backend `v1-0` of orders.cafe.local (the mesh's own in-process
    // proxy is not used here).
    let mesh = Mesh::start(&[("v1", 1)]).await;
    let (listen, admin): (SocketAddr, SocketAddr) = (free_loopback_addr(), free_loopback_addr());
    let mut proxy = Proxy(
        Command::new(BIN)
            .args(["--control-plane", &mesh.node().url()])
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--subscribe", SERVICE])
            .args(["--service-name", "frontend.cafe.local"])
            .args(["--proxy-id", "bin-proxy"])
            .args(["--otlp-endpoint", &collector.endpoint()])
            .args(["--trace-sampling", "1"])
            .args(["--drain-timeout", "1s"])
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .spawn()
            .expect("start meridian-proxy"),
    );

    let client = MeshClient::new(listen);
    let call = Call::get("/").header("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"));
    let reply = wait_for("the proxy binary to route", PATIENCE, || {
        let (client, call) = (client.clone(), call.clone());
        async move {
            client
                .send(&call)
                .await
                .ok()
                .filter(|r| r.status.is_success())
        }
    })
    .await;
    assert_eq!(reply.backend.as_deref(), Some("v1-0"));
    let seen = mesh
        .backend("v1-0")
        .last_seen()
        .expect("the backend got it");
    let upstream = seen.headers["traceparent"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(upstream.starts_with(&format!("00-{TRACE}-")), "{upstream}");
    let proxy_span = upstream[36..52].to_owned();

    // SIGTERM: drain, then flush the batch of spans (sent before the SDK's 5 s schedule).
    send_signal(proxy.0.id(), "-TERM").expect("send SIGTERM");
    let exited = wait_for("the proxy to exit after SIGTERM", PATIENCE, || {
        let done = proxy.0.try_wait().expect("try_wait");
        async move { done }
    })
    .await;
    assert!(exited.success(), "{exited:?}");

    let span = collector
        .wait_for_span_in(TRACE, Some(&proxy_span), PATIENCE)
        .await;
    assert_eq!(hex(&span.span.parent_span_id), CALLER_SPAN);
    assert_eq!(span.span.name, format!("GET {SERVICE}"));
    let r = &span.resource;
    assert_eq!(attribute(r, "service.name"), Some("meridian-proxy"));
    assert_eq!(attribute(r, "service.instance.id"), Some("bin-proxy"));
    assert_eq!(
        attribute(r, "meridian.proxy.service"),
        Some("frontend.cafe.local")
    );
    drop(proxy);
}

#[test]
fn a_bad_sampling_flag_names_the_flag() {
    let output = Command::new(BIN)
        .args(["--control-plane", "http://127.0.0.1:1"])
        .args(["--trace-sampling", "2"])
        .output()
        .expect("run meridian-proxy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--trace-sampling"), "{stderr}");
}
