//! The set-up shared by the tests of `control_plane_telemetry.rs`: one collector and one
//! exporting global subscriber per test process, per-node telemetry, and request helpers.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use meridian_proto::v1 as pb;
use meridian_telemetry::{Telemetry, TelemetryConfig};
use meridian_tests::mesh::prometheus::{self, Sample};
use meridian_tests::mesh::{Call, MeshClient};
use meridian_tests::otlp::{Collector, ReceivedSpan, hex};
use meridian_tests::wait_for;

pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// OTLP span kinds.
pub(crate) const SERVER: i32 = 2;
pub(crate) const CLIENT: i32 = 3;

/// The collector, the exporting telemetry behind the global subscriber, and their runtime.
pub(crate) struct Shared {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) collector: Collector,
    pub(crate) telemetry: Telemetry,
}

// === setup ===

pub(crate) fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    // Built on a thread of its own: the tests call this from inside their runtimes, where
    // blocking on another one is not allowed.
    SHARED.get_or_init(|| std::thread::spawn(build_shared).join().unwrap())
}

fn build_shared() -> Shared {
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("telemetry runtime");
        let (collector, telemetry) = runtime.block_on(async {
            let collector = Collector::start().await;
            let telemetry =
                Telemetry::new(config("tests-global", Some(collector.endpoint()))).unwrap();
            // Our spans are at info; other crates' logs would only be noise here.
            telemetry
                .install("warn,meridian_control_plane=info")
                .unwrap();
            (collector, telemetry)
        });
        Shared {
            runtime,
            collector,
            telemetry,
        }
    }
}

fn config(instance: &str, endpoint: Option<String>) -> TelemetryConfig {
    let mut config =
        TelemetryConfig::from_vars(|_| None, "meridian-control-plane", "test", instance)
            .with_endpoint(endpoint);
    config.metric_interval = Duration::from_millis(200);
    config
}

/// A node's own telemetry, exporting metrics to the shared collector as `instance`.
pub(crate) fn node_telemetry(instance: &str, endpoint: Option<String>) -> Telemetry {
    let shared = shared();
    let _runtime = shared.runtime.enter();
    Telemetry::new(config(instance, endpoint)).unwrap()
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A fresh caller span: (trace id, span id, `traceparent` value).
pub(crate) fn caller() -> (String, String, String) {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let span = format!("{:016x}", fastrand::u64(1..));
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

pub(crate) fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

/// The spans of `trace` once `done` holds for them (flushing the exporter while waiting).
pub(crate) async fn spans_of(
    trace: &str,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let shared = shared();
    wait_for(&format!("the spans of trace {trace}"), PATIENCE, || {
        let spans: Vec<ReceivedSpan> = shared
            .collector
            .spans()
            .into_iter()
            .filter(|s| hex(&s.span.trace_id) == trace)
            .collect();
        let complete = done(&spans);
        async move {
            if complete {
                Some(spans)
            } else {
                shared.telemetry.flush().await;
                None
            }
        }
    })
    .await
}

pub(crate) fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

pub(crate) async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let reply = MeshClient::new(admin)
        .send(&Call::get("/metrics"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    prometheus::parse(&reply.body).unwrap()
}

pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

pub(crate) async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let reply = MeshClient::new(admin).send(&Call::get(path)).await.unwrap();
    (reply.status.as_u16(), reply.body)
}

pub(crate) fn register_request(service: &str, id: &str) -> pb::RegisterInstanceRequest {
    pb::RegisterInstanceRequest {
        service: service.into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port: 8080,
        attributes: Default::default(),
    }
}

fn dns_query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

pub(crate) async fn dns_exchange(dns: SocketAddr, name: &str, qtype: RecordType) -> ResponseCode {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&dns_query(name, qtype), dns).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("a DNS answer")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap().response_code
}

/// Cancels the in-process nodes of a test if it panics before stopping them.
pub(crate) struct StopOnDrop(pub(crate) Vec<tokio_util::sync::CancellationToken>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for token in &self.0 {
            token.cancel();
        }
    }
}
