//! Garbage on every RPC: random bytes and random-but-well-formed protobuf, sent to every
//! method the node serves (found in the descriptor set, so a new RPC is covered the day it is
//! added). The node must answer each call with a status (never a dropped stream from a
//! panicking handler) and keep serving real writes and reads afterwards.

use std::str::FromStr as _;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use meridian_proto::v1::{
    CreateNamespaceRequest, DiscoverInstancesRequest, RegisterInstanceRequest,
    cluster_client::ClusterClient,
};
use meridian_tests::TestNode;
use prost::Message as _;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Random payloads per method.
const PAYLOADS: usize = 200;
/// How long one call may take before the test calls the node stuck.
const PATIENCE: Duration = Duration::from_secs(15);

/// Passes bytes through untouched, in both directions.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One RPC of the contract.
#[derive(Debug)]
struct Method {
    path: String,
    client_streaming: bool,
    server_streaming: bool,
}

fn methods() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(meridian_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        for service in &file.service {
            for method in &service.method {
                methods.push(Method {
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    methods
}

/// A random protobuf message: well-formed wire format with random field numbers, types and
/// values, nested up to `depth`, so that it decodes into real messages with odd contents.
fn random_message(rng: &mut fastrand::Rng, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.usize(0..8) {
        let field = if rng.u8(..) < 230 {
            rng.u32(1..16)
        } else {
            rng.u32(1..1 << 20)
        };
        match rng.u8(0..4) {
            0 => {
                put_varint(&mut out, u64::from(field << 3));
                let value = match rng.u8(0..5) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => u64::from(u32::MAX),
                    3 => rng.u64(0..1000),
                    _ => rng.u64(..),
                };
                put_varint(&mut out, value);
            }
            1 => {
                put_varint(&mut out, u64::from(field << 3 | 1));
                out.extend_from_slice(&rng.u64(..).to_le_bytes());
            }
            2 => {
                put_varint(&mut out, u64::from(field << 3 | 5));
                out.extend_from_slice(&rng.u32(..).to_le_bytes());
            }
            _ => {
                put_varint(&mut out, u64::from(field << 3 | 2));
                let body = match rng.u8(0..5) {
                    0 if depth > 0 => random_message(rng, depth - 1),
                    1 => random_text(rng),
                    2 => vec![b'a'; rng.usize(0..70_000)],
                    _ => (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect(),
                };
                put_varint(&mut out, body.len() as u64);
                out.extend_from_slice(&body);
            }
        }
    }
    out
}

/// Text that looks like names, numbers, paths, weights — and sometimes not.
fn random_text(rng: &mut fastrand::Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "orders",
        "cafe.local",
        ".",
        "-",
        "v1",
        "v2",
        "=",
        ",",
        "90",
        "/",
        "*",
        "0",
        "",
        " ",
        "\u{0}",
        "é",
        "xn--",
        "..",
        "127.0.0.1",
        "::1",
        "http:/healthz",
        "ttl:5s",
        "9999999999",
        "-1",
        "NaN",
        "version",
        "Bearer ",
    ];
    let mut text = String::new();
    for _ in 0..rng.usize(0..6) {
        text.push_str(PIECES[rng.usize(..PIECES.len())]);
    }
    text.into_bytes()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn payload(rng: &mut fastrand::Rng, i: usize) -> Bytes {
    Bytes::from(match i % 4 {
        // Not protobuf at all.
        0 => (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
        _ => random_message(rng, 3),
    })
}

/// A stream that opened: reads what comes at once, then hangs up.
async fn glance(response: tonic::Response<tonic::Streaming<Bytes>>) {
    let mut stream = response.into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(20), stream.message()).await;
}

/// Sends one garbage call; the answer must be a status or a (streamed) response, whose code
/// is returned.
async fn call(channel: &Channel, method: &Method, body: Bytes) -> Result<Code, String> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let path = http::uri::PathAndQuery::from_str(&method.path).expect("path");
    let outcome = match (method.client_streaming, method.server_streaming) {
        (false, false) => grpc
            .unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(drop),
        (false, true) => match grpc
            .server_streaming(tonic::Request::new(body), path, RawCodec)
            .await
        {
            Ok(response) => {
                glance(response).await;
                Ok(())
            }
            Err(status) => Err(status),
        },
        (true, _) => {
            let frames = tokio_stream::iter(vec![body.clone(), body]);
            match grpc
                .streaming(tonic::Request::new(frames), path, RawCodec)
                .await
            {
                Ok(response) => {
                    glance(response).await;
                    Ok(())
                }
                Err(status) => Err(status),
            }
        }
    };
    match outcome {
        Ok(()) => Ok(Code::Ok),
        // A handler that panicked or a connection torn down shows as Unknown/Cancelled with a
        // transport message; every refusal of ours carries a proper code.
        Err(status) if matches!(status.code(), Code::Unknown | Code::Cancelled) => Err(format!(
            "{}: {:?} {:?}",
            method.path,
            status.code(),
            status.message()
        )),
        Err(status) => Ok(status.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_rpc_is_refused_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let channel = node.channel().await;
    let methods = methods();
    assert!(
        methods
            .iter()
            .any(|m| m.path == "/meridian.v1.Registry/RegisterInstance")
            && methods
                .iter()
                .any(|m| m.path == "/meridian.v1.Discovery/Stream")
            && methods.iter().any(|m| m.path == "/meridian.v1.Peer/Raft"),
        "descriptor set misses methods: {methods:?}"
    );
    let seed = std::env::var("MERIDIAN_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("garbage seed {seed} (MERIDIAN_GARBAGE_SEED={seed} repeats this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut failures = Vec::new();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for method in &methods {
        for i in 0..PAYLOADS {
            let body = payload(&mut rng, i);
            let len = body.len();
            // A connection per call, so each answer belongs to its payload alone. On one
            // connection shared by thousands of garbage calls, about one run in five saw a
            // single unary call cancelled client-side ("operation was canceled"), not
            // reproducible by seed; the node kept serving (see the issue notes).
            let channel = node.channel().await;
            match tokio::time::timeout(PATIENCE, call(&channel, method, body)).await {
                Ok(Ok(code)) => *codes.entry(format!("{code:?}")).or_default() += 1,
                Ok(Err(e)) => failures.push(format!("{e} ({len}-byte payload)")),
                Err(_) => failures.push(format!("{}: no answer in {PATIENCE:?}", method.path)),
            }
        }
    }
    eprintln!("answers by code: {codes:?}");
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    // The payloads reached the handlers: most were refused by our validation (or decoding),
    // and some were well-formed enough to be accepted.
    assert!(
        codes.get("InvalidArgument").copied().unwrap_or(0) > methods.len(),
        "{codes:?}"
    );
    assert!(codes.get("Ok").copied().unwrap_or(0) > 0, "{codes:?}");

    // Still a working node: a write commits and reads back, on a fresh connection too.
    let mut registry = node.registry().await;
    registry
        .create_namespace(CreateNamespaceRequest {
            name: "after-garbage.local".into(),
            description: String::new(),
        })
        .await
        .expect("namespace after garbage");
    registry
        .create_service(meridian_proto::v1::CreateServiceRequest {
            name: "orders.after-garbage.local".into(),
            ..Default::default()
        })
        .await
        .expect("service after garbage");
    registry
        .register_instance(RegisterInstanceRequest {
            service: "orders.after-garbage.local".into(),
            id: "i-1".into(),
            address: "127.0.0.1".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .expect("register after garbage");
    let found = registry
        .discover_instances(DiscoverInstancesRequest {
            service: "orders.after-garbage.local".into(),
            ..Default::default()
        })
        .await
        .expect("discover after garbage");
    assert_eq!(found.get_ref().instances.len(), 1);
    let status = ClusterClient::new(channel)
        .status(meridian_proto::v1::StatusRequest {})
        .await
        .expect("status");
    assert_ne!(status.get_ref().leader_id, 0, "still a leader");
    node.stop().await.expect("clean stop");
}
