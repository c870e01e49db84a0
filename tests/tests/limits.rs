//! Stream limits against a real node: `--max-watchers-per-client` (watch and discovery streams
//! per caller: client address without ACLs, token with them; a slot is freed when its stream
//! ends, whoever ends it) and `--max-concurrent-streams` (HTTP/2 streams per connection).

use std::time::Duration;

use meridian_control_plane::auth::AccessConfig;
use meridian_proto::v1 as pb;
use meridian_proto::v1::acl_client::AclClient;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::{TestNode, wait_for, with_token};
use pb::discovery_request::Body;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const PATIENCE: Duration = Duration::from_secs(20);
const ROOT: &str = "root-secret-for-the-limits-test";

// === helpers ===

/// Opens a watch of `cafe.local` on `channel` and reads its first message (the initial
/// state), so the stream is known to be open on the node.
async fn watch(
    channel: &Channel,
    token: Option<&str>,
) -> Result<Streaming<pb::WatchResponse>, Status> {
    let request = pb::WatchRequest {
        namespace: "cafe.local".into(),
        ..Default::default()
    };
    let mut stream = RegistryClient::new(channel.clone())
        .watch(with_token(request, token))
        .await?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the initial state in time")?;
    assert!(first.is_some(), "the stream ended before its initial state");
    Ok(stream)
}

/// A proxy's discovery stream: the sender (dropping it hangs up) and the responses.
struct Proxy {
    _tx: mpsc::Sender<pb::DiscoveryRequest>,
    rx: Streaming<pb::DiscoveryResponse>,
}

/// Opens a discovery stream whose first message is `first`, and waits for its headers.
async fn discovery(channel: &Channel, token: Option<&str>, first: Body) -> Result<Proxy, Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::DiscoveryRequest { body: Some(first) })
        .await
        .expect("queued");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    let rx = DiscoveryClient::new(channel.clone())
        .stream(request)
        .await?
        .into_inner();
    Ok(Proxy { _tx: tx, rx })
}

fn hello(id: &str) -> Body {
    Body::Hello(pb::ProxyHello {
        proxy_id: id.into(),
        service_name: String::new(),
        build: "limits-test".into(),
    })
}

#[track_caller]
fn assert_over_the_limit<T>(result: Result<T, Status>, limit: usize) {
    let Err(status) = result else {
        panic!("a stream past the limit of {limit} was accepted");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("at most {limit} "))
            && status.message().contains("--max-watchers-per-client"),
        "the message should name the limit and the flag: {:?}",
        status.message()
    );
}

/// A new connection (its own HTTP/2 connection: `Channel::connect` dials anew).
async fn connect(node: &TestNode) -> Channel {
    node.channel().await
}

// === --max-watchers-per-client ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_per_client_address_are_capped_and_freed_when_streams_end() {
    let node = TestNode::start_with_access(AccessConfig {
        max_watchers_per_client: Some(2),
        ..AccessConfig::default()
    })
    .await;
    let _registry = node.cafe(&["orders"]).await;
    // Two connections from one address: the limit is per client, not per connection.
    let (a, b) = (connect(&node).await, connect(&node).await);

    let first = watch(&a, None).await.expect("first watch");
    let proxy = discovery(&b, None, hello("proxy-1"))
        .await
        .expect("a discovery stream counts as the second");
    assert_over_the_limit(watch(&a, None).await, 2);
    assert_over_the_limit(watch(&b, None).await, 2);
    assert_over_the_limit(discovery(&a, None, hello("proxy-2")).await, 2);
    // Unary calls are not streams: still served.
    RegistryClient::new(a.clone())
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await
        .expect("unary calls unaffected");

    // The client hangs up one watch: its slot comes back (once the node has seen the reset).
    drop(first);
    let second = wait_for("a freed slot after a hang-up", PATIENCE, || {
        let a = a.clone();
        async move { watch(&a, None).await.ok() }
    })
    .await;
    assert_over_the_limit(watch(&b, None).await, 2);

    // The node ends a stream (a discovery stream must start with a hello): its slot comes back
    // although the client still holds its end.
    drop(proxy);
    let mut bad = wait_for("a slot for the bad stream", PATIENCE, || {
        let b = b.clone();
        async move {
            discovery(&b, None, Body::Ack(pb::Ack { version: 1 }))
                .await
                .ok()
        }
    })
    .await;
    let ended = tokio::time::timeout(PATIENCE, bad.rx.message())
        .await
        .expect("the node answers in time")
        .expect_err("a stream without a hello fails");
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    let third = wait_for(
        "a freed slot after the node ended a stream",
        PATIENCE,
        || {
            let b = b.clone();
            async move { watch(&b, None).await.ok() }
        },
    )
    .await;
    assert_over_the_limit(watch(&a, None).await, 2);
    drop((second, third, bad));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_watchers_are_counted_per_token() {
    let node = TestNode::start_with_access(AccessConfig {
        acl_enabled: true,
        bootstrap_token: Some(ROOT.into()),
        max_watchers_per_client: Some(1),
        ..AccessConfig::default()
    })
    .await;
    let channel = connect(&node).await;
    RegistryClient::new(channel.clone())
        .create_namespace(with_token(
            pb::CreateNamespaceRequest {
                name: "cafe.local".into(),
                description: String::new(),
            },
            Some(ROOT),
        ))
        .await
        .unwrap();
    let reader = AclClient::new(channel.clone())
        .create_token(with_token(
            pb::CreateTokenRequest {
                description: "dashboard".into(),
                policy: Some(pb::AclPolicy {
                    admin: false,
                    rules: vec![pb::AclRule {
                        resource: pb::AclResource::Namespace.into(),
                        name: Some(pb::acl_rule::Name::Exact("cafe.local".into())),
                        access: pb::AclAccess::Read.into(),
                    }],
                }),
            },
            Some(ROOT),
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;

    // Same address, same connection, two tokens: each has its own one slot.
    let root_watch = watch(&channel, Some(ROOT)).await.expect("root's watch");
    assert_over_the_limit(watch(&channel, Some(ROOT)).await, 1);
    let reader_watch = watch(&channel, Some(&reader))
        .await
        .expect("another token is another caller");
    assert_over_the_limit(watch(&channel, Some(&reader)).await, 1);
    // A call without a valid token is refused as unauthenticated, not counted.
    let anonymous = watch(&channel, None).await.expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    drop(reader_watch);
    let _again = wait_for("the reader's slot back", PATIENCE, || {
        let (channel, reader) = (channel.clone(), reader.clone());
        async move { watch(&channel, Some(&reader)).await.ok() }
    })
    .await;
    assert_over_the_limit(watch(&channel, Some(ROOT)).await, 1);
    drop(root_watch);
    node.stop().await.unwrap();
}

// === --max-concurrent-streams ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_max_concurrent_streams() {
    let node = TestNode::start_with_access(AccessConfig {
        max_concurrent_streams: Some(2),
        ..AccessConfig::default()
    })
    .await;
    let mut writer = node.cafe(&["orders"]).await;
    let shared = connect(&node).await;
    let mut first = watch(&shared, None).await.expect("first stream");
    let mut second = watch(&shared, None).await.expect("second stream");

    // A third stream on the same connection: the client honours the node's
    // SETTINGS_MAX_CONCURRENT_STREAMS and holds it back until a stream ends.
    let third = tokio::spawn({
        let shared = shared.clone();
        async move { watch(&shared, None).await.map(drop) }
    });
    // A change written (on another connection) after the third was asked for reaches the
    // two open watches, while the third still has not even its initial state.
    writer
        .register_instance(pb::RegisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
            address: "127.0.0.1".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .unwrap();
    for stream in [&mut first, &mut second] {
        let event = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the change in time")
            .unwrap()
            .expect("stream open");
        assert!(
            matches!(event.body, Some(pb::watch_response::Body::Events(_))),
            "{event:?}"
        );
    }
    assert!(
        !third.is_finished(),
        "a third stream opened on a 2-stream connection"
    );
    // Another connection is not affected.
    let other = connect(&node).await;
    let _elsewhere = watch(&other, None)
        .await
        .expect("another connection has its own streams");

    // One of the two ends: the third gets its turn.
    drop(first);
    tokio::time::timeout(PATIENCE, third)
        .await
        .expect("the third stream opens once one ended")
        .unwrap()
        .expect("the third stream is served");
    drop(second);
    node.stop().await.unwrap();
}
