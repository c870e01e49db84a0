//! Health checking against a real node on loopback and real backends that go up and down:
//! TTL expiry and recovery on heartbeat, HTTP (hyper), TCP (tokio listener) and gRPC
//! (tonic-health) checks, thresholds, deregister-after, fail-open discovery, bad heartbeats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::{TestNode, wait_for};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(20);
const SERVICE: &str = "orders.cafe.local";

async fn service_with(node: &TestNode, check: pb::HealthCheck) -> RegistryClient<Channel> {
    let mut r = node.registry().await;
    r.create_namespace(pb::CreateNamespaceRequest {
        name: "cafe.local".into(),
        description: String::new(),
    })
    .await
    .expect("test step");
    r.create_service(pb::CreateServiceRequest {
        name: SERVICE.into(),
        health_check: Some(check),
        ..Default::default()
    })
    .await
    .expect("test step");
    r
}

/// Checks every 100 ms (the shortest interval allowed), 2 passes to turn healthy, 3 failures to
/// turn unhealthy.
fn active(kind: pb::health_check::Kind) -> pb::HealthCheck {
    pb::HealthCheck {
        kind: Some(kind),
        interval_ms: 100,
        timeout_ms: 90,
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        deregister_after_ms: 0,
    }
}

fn ttl(ttl_ms: u32, deregister_after_ms: u32) -> pb::HealthCheck {
    pb::HealthCheck {
        kind: Some(pb::health_check::Kind::Ttl(pb::TtlCheck { ttl_ms })),
        deregister_after_ms,
        ..Default::default()
    }
}

async fn register(r: &mut RegistryClient<Channel>, id: &str, port: u16) -> pb::Instance {
    r.register_instance(pb::RegisterInstanceRequest {
        service: SERVICE.into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port: u32::from(port),
        attributes: Default::default(),
    })
    .await
    .expect("test step")
    .into_inner()
    .instance
    .expect("test step")
}

async fn health(r: &RegistryClient<Channel>, id: &str) -> Option<pb::HealthStatus> {
    let got = r
        .clone()
        .get_instance(pb::GetInstanceRequest {
            service: SERVICE.into(),
            id: id.into(),
            ..Default::default()
        })
        .await
        .ok()?;
    pb::HealthStatus::try_from(got.into_inner().instance?.health).ok()
}

async fn wait_health(r: &RegistryClient<Channel>, id: &str, want: pb::HealthStatus) {
    wait_for(&format!("{id} to be {want:?}"), PATIENCE, || async move {
        (health(r, id).await == Some(want)).then_some(())
    })
    .await;
}

async fn heartbeat(
    r: &mut RegistryClient<Channel>,
    id: &str,
) -> Result<pb::HeartbeatResponse, tonic::Status> {
    r.heartbeat(pb::HeartbeatRequest {
        service: SERVICE.into(),
        id: id.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn discover(r: &mut RegistryClient<Channel>, filter: pb::HealthFilter) -> Vec<String> {
    r.discover_instances(pb::DiscoverInstancesRequest {
        service: SERVICE.into(),
        health_filter: filter as i32,
        ..Default::default()
    })
    .await
    .expect("test step")
    .into_inner()
    .instances
    .into_iter()
    .map(|i| i.id)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_expires_without_heartbeats_and_recovers_on_one() {
    let node = TestNode::start().await;
    let mut r = service_with(&node, ttl(1_000, 0)).await;
    let i = register(&mut r, "i-1", 8081).await;
    assert_eq!(
        i.health,
        pb::HealthStatus::Healthy as i32,
        "registration is the first beat"
    );
    let beat = heartbeat(&mut r, "i-1").await.unwrap();
    assert_eq!(beat.ttl_ms, 1_000);

    // Silence: the leader marks it unhealthy; discovery fails open.
    wait_health(&r, "i-1", pb::HealthStatus::Unhealthy).await;
    assert!(discover(&mut r, pb::HealthFilter::Healthy).await.is_empty());
    assert_eq!(
        discover(&mut r, pb::HealthFilter::HealthyOrElseAll).await,
        ["i-1"]
    );

    // One heartbeat revives it.
    let beat = heartbeat(&mut r, "i-1").await.unwrap();
    assert_eq!(beat.health, pb::HealthStatus::Unhealthy as i32);
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_an_instance_healthy_without_writes() {
    let node = TestNode::start().await;
    let mut r = service_with(&node, ttl(1_000, 0)).await;
    let i = register(&mut r, "i-1", 8081).await;
    // Three TTLs' worth of heartbeats, every 200 ms: still healthy, and nothing was written.
    // (A count of beats, not a time window: a slow machine must not make the test fail.)
    for _ in 0..15 {
        let beat = heartbeat(&mut r, "i-1").await.unwrap();
        assert_eq!(beat.health, pb::HealthStatus::Healthy as i32);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = r
        .get_instance(pb::GetInstanceRequest {
            service: SERVICE.into(),
            id: "i-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.instance.unwrap().mod_revision, i.mod_revision);
    assert_eq!(
        now.revision, i.mod_revision,
        "heartbeats are not Raft writes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_ttl_instances_are_deregistered_after_the_grace_time() {
    let node = TestNode::start().await;
    let mut r = service_with(&node, ttl(1_000, 1_000)).await;
    register(&mut r, "i-1", 8081).await;
    wait_for("i-1 to be deregistered", PATIENCE, || {
        let r = r.clone();
        async move { health(&r, "i-1").await.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_heartbeats_get_the_right_code() {
    let node = TestNode::start().await;
    let mut r = service_with(&node, ttl(1_000, 0)).await;
    register(&mut r, "i-1", 8081).await;
    let status = heartbeat(&mut r, "Not_A_Label").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("id: "), "{status:?}");
    let status = r
        .heartbeat(pb::HeartbeatRequest {
            service: "orders".into(),
            id: "i-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("service: "), "{status:?}");
    assert_eq!(
        heartbeat(&mut r, "i-404").await.unwrap_err().code(),
        Code::NotFound
    );

    r.create_service(pb::CreateServiceRequest {
        name: "plain.cafe.local".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    r.register_instance(pb::RegisterInstanceRequest {
        service: "plain.cafe.local".into(),
        id: "i-1".into(),
        address: "127.0.0.1".into(),
        port: 1,
        attributes: Default::default(),
    })
    .await
    .unwrap();
    let status = r
        .heartbeat(pb::HeartbeatRequest {
            service: "plain.cafe.local".into(),
            id: "i-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no TTL check"), "{status:?}");
}

/// An HTTP backend whose `/healthz` answers 200 or 503 at will, counting what it answered.
struct HttpBackend {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    failures: Arc<AtomicU32>,
    passes: Arc<AtomicU32>,
    stop: CancellationToken,
}

impl HttpBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (up, failures, passes) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let stop = CancellationToken::new();
        let (u, f, p, s) = (up.clone(), failures.clone(), passes.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => accepted.expect("accept"),
                };
                let (u, f, p) = (u.clone(), f.clone(), p.clone());
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let ok = req.uri().path() == "/healthz" && u.load(Ordering::SeqCst);
                    if ok { &p } else { &f }.fetch_add(1, Ordering::SeqCst);
                    let status = if ok { 200 } else { 503 };
                    async move {
                        hyper::Response::builder()
                            .status(status)
                            .body(Empty::<Bytes>::new())
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            up,
            failures,
            passes,
            stop,
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_check_follows_a_backend_with_its_thresholds() {
    let node = TestNode::start().await;
    let backend = HttpBackend::start().await;
    let mut r = service_with(
        &node,
        active(pb::health_check::Kind::Http(pb::HttpCheck {
            path: "/healthz".into(),
        })),
    )
    .await;
    let i = register(&mut r, "i-1", backend.addr.port()).await;
    assert_eq!(i.health, pb::HealthStatus::Unknown as i32, "no verdict yet");
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;
    assert!(
        backend.passes.load(Ordering::SeqCst) >= 2,
        "healthy_threshold is 2"
    );

    backend.up.store(false, Ordering::SeqCst);
    wait_health(&r, "i-1", pb::HealthStatus::Unhealthy).await;
    assert!(
        backend.failures.load(Ordering::SeqCst) >= 3,
        "unhealthy_threshold is 3"
    );

    let passes = backend.passes.load(Ordering::SeqCst);
    backend.up.store(true, Ordering::SeqCst);
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;
    assert!(backend.passes.load(Ordering::SeqCst) >= passes + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_check_follows_a_listener_that_closes_and_reopens() {
    let node = TestNode::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut r = service_with(&node, active(pb::health_check::Kind::Tcp(pb::TcpCheck {}))).await;
    register(&mut r, "i-1", addr.port()).await;
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;

    drop(listener);
    wait_health(&r, "i-1", pb::HealthStatus::Unhealthy).await;

    let _listener = TcpListener::bind(addr).await.unwrap();
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_check_follows_the_standard_health_service() {
    let node = TestNode::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let mut r = service_with(
        &node,
        active(pb::health_check::Kind::Grpc(pb::GrpcCheck {
            service: "orders".into(),
        })),
    )
    .await;
    register(&mut r, "i-1", addr.port()).await;
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;

    reporter
        .set_service_status("orders", tonic_health::ServingStatus::NotServing)
        .await;
    wait_health(&r, "i-1", pb::HealthStatus::Unhealthy).await;

    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    wait_health(&r, "i-1", pb::HealthStatus::Healthy).await;

    // The whole server going away counts as failing too.
    stop.cancel();
    server.await.unwrap().unwrap();
    wait_health(&r, "i-1", pb::HealthStatus::Unhealthy).await;
}
