//! `meridian.v1.Discovery` against a real node on loopback, with raw gRPC streams playing the
//! proxies: the first answer at once (also "does not exist"), pushes on every kind of change
//! to a followed service and never for another, acks and rejections in `ListProxies` and
//! `WaitApplied`, bad input, disconnects.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::routing_client::RoutingClient;
use meridian_tests::{TestNode, wait_for};
use pb::discovery_request::Body;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const PATIENCE: Duration = Duration::from_secs(20);

/// A proxy's end of a discovery stream.
struct Proxy {
    tx: mpsc::Sender<pb::DiscoveryRequest>,
    rx: Streaming<pb::DiscoveryResponse>,
}

impl Proxy {
    /// Opens a stream; `hello` is sent first unless `None`.
    async fn open(node: &TestNode, hello: Option<&str>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        if let Some(id) = hello {
            tx.send(request(Body::Hello(pb::ProxyHello {
                proxy_id: id.into(),
                service_name: "frontend.cafe.local".into(),
                build: "test".into(),
            })))
            .await
            .unwrap();
        }
        let rx = DiscoveryClient::new(node.channel().await)
            .stream(ReceiverStream::new(rx))
            .await
            .expect("stream opens")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, body: Body) {
        self.tx.send(request(body)).await.expect("stream open");
    }

    async fn subscribe(&self, services: &[&str]) {
        self.send(Body::Subscribe(pb::Subscribe {
            services: services.iter().map(|s| s.to_string()).collect(),
        }))
        .await;
    }

    async fn ack(&self, version: u64) {
        self.send(Body::Ack(pb::Ack { version })).await;
    }

    /// The next response (within the patience).
    async fn next(&mut self) -> pb::DiscoveryResponse {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("stream open")
    }

    /// The status the stream ended with.
    async fn error(&mut self) -> tonic::Status {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("an answer in time")
            .expect_err("the stream should fail")
    }
}

fn request(body: Body) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest { body: Some(body) }
}

fn only(r: &pb::DiscoveryResponse, service: &str) -> pb::ServiceState {
    let names: Vec<&str> = r.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names, [service], "{r:?}");
    r.services[0].clone()
}

/// A push for orders.cafe.local alone, with a version above the last one.
fn pushed(version: &mut u64, r: pb::DiscoveryResponse) -> pb::ServiceState {
    assert!(
        r.version > *version,
        "versions increase: {} then {}",
        version,
        r.version
    );
    *version = r.version;
    only(&r, "orders.cafe.local")
}

async fn routing(node: &TestNode) -> RoutingClient<Channel> {
    RoutingClient::new(node.channel().await)
}

async fn discovery(node: &TestNode) -> DiscoveryClient<Channel> {
    DiscoveryClient::new(node.channel().await)
}

fn route(service: &str, v1: u32, v2: u32) -> pb::PutRouteRequest {
    let target = |v: &str, weight| pb::WeightedTarget {
        subset: HashMap::from([("version".to_string(), v.to_string())]),
        weight,
    };
    pb::PutRouteRequest {
        route: Some(pb::Route {
            service: service.into(),
            rules: vec![pb::RouteRule {
                targets: vec![target("v1", v1), target("v2", v2)],
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn register(service: &str, id: &str, port: u32) -> pb::RegisterInstanceRequest {
    pb::RegisterInstanceRequest {
        service: service.into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
        attributes: HashMap::from([("version".to_string(), "v1".to_string())]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_state_at_once_then_a_push_per_change_of_a_followed_service_only() {
    let node = TestNode::start().await;
    let mut registry = node.cafe(&["menu"]).await;
    let mut routes = routing(&node).await;
    let mut proxy = Proxy::open(&node, Some("p-1")).await;
    proxy.subscribe(&["orders.cafe.local"]).await;

    // Not created yet: an explicit "does not exist", at once.
    let first = proxy.next().await;
    let state = only(&first, "orders.cafe.local");
    assert!(!state.exists);
    assert_eq!(first.node_id, 1);
    let mut version = first.version;
    assert!(version > 0);

    // Changes to another service are never pushed; each change to ours is, with a new version.
    registry
        .register_instance(register("menu.cafe.local", "m-1", 9000))
        .await
        .unwrap();
    let created = registry
        .create_service(pb::CreateServiceRequest {
            name: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let state = pushed(&mut version, proxy.next().await);
    assert!(state.exists);
    assert_eq!(state.service_revision, created.revision);
    assert!(state.instances.is_empty() && state.route.is_none());

    registry
        .register_instance(register("orders.cafe.local", "i-1", 8081))
        .await
        .unwrap();
    let state = pushed(&mut version, proxy.next().await);
    assert_eq!(state.instances.len(), 1);
    assert_eq!(state.instances[0].health, pb::HealthStatus::Healthy as i32);

    routes
        .put_route(route("menu.cafe.local", 1, 1))
        .await
        .unwrap();
    registry
        .update_instance_health(pb::UpdateInstanceHealthRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
            health: pb::HealthStatus::Unhealthy as i32,
        })
        .await
        .unwrap();
    let state = pushed(&mut version, proxy.next().await);
    // Unhealthy instances are sent too (the proxy filters).
    assert_eq!(
        state.instances[0].health,
        pb::HealthStatus::Unhealthy as i32
    );

    let put = routes
        .put_route(route("orders.cafe.local", 80, 20))
        .await
        .unwrap()
        .into_inner();
    let state = pushed(&mut version, proxy.next().await);
    assert_eq!(state.service_revision, put.revision);
    assert_eq!(state.route.unwrap().rules[0].targets[1].weight, 20);

    registry
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-1".into(),
        })
        .await
        .unwrap();
    let state = pushed(&mut version, proxy.next().await);
    assert!(state.instances.is_empty());
    assert!(state.route.is_some(), "the route stays");

    routes
        .delete_route(pb::DeleteRouteRequest {
            service: "orders.cafe.local".into(),
        })
        .await
        .unwrap();
    assert!(pushed(&mut version, proxy.next().await).route.is_none());

    // Subscribing to a second service answers with that one alone; unsubscribing stops pushes.
    // (Its version is the current revision: no write came since the last push, so the same.)
    proxy.subscribe(&["menu.cafe.local"]).await;
    let answer = proxy.next().await;
    assert_eq!(answer.version, version);
    assert!(only(&answer, "menu.cafe.local").exists);
    proxy
        .send(Body::Unsubscribe(pb::Unsubscribe {
            services: vec!["menu.cafe.local".into()],
        }))
        .await;
    // Wait until the unsubscription is in effect, then change both services: only ours comes.
    let mut d = discovery(&node).await;
    wait_for("the unsubscription", PATIENCE, || {
        let mut d = d.clone();
        async move {
            let list = d
                .list_proxies(pb::ListProxiesRequest::default())
                .await
                .ok()?
                .into_inner();
            (list.proxies.first()?.services == ["orders.cafe.local"]).then_some(())
        }
    })
    .await;
    registry
        .register_instance(register("menu.cafe.local", "m-2", 9001))
        .await
        .unwrap();
    registry
        .delete_service(pb::DeleteServiceRequest {
            name: "orders.cafe.local".into(),
            force: true,
        })
        .await
        .unwrap();
    let state = pushed(&mut version, proxy.next().await);
    assert!(!state.exists, "a deleted service is pushed as not existing");
    let list = d
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.proxies[0].sent_version, version);
    drop(proxy);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_and_rejections_show_in_list_proxies_and_wait_applied() {
    let node = TestNode::start().await;
    node.cafe(&["orders", "menu"]).await;
    let mut routes = routing(&node).await;
    let mut d = discovery(&node).await;

    // No proxy follows the service: the wait is over at once.
    let put = routes
        .put_route(route("orders.cafe.local", 90, 10))
        .await
        .unwrap()
        .into_inner();
    let w = d
        .wait_applied(pb::WaitAppliedRequest {
            service: "orders.cafe.local".into(),
            revision: put.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.subscribed, w.applied), (0, 0));

    let mut good = Proxy::open(&node, Some("good")).await;
    let mut bad = Proxy::open(&node, Some("bad")).await;
    let mut silent = Proxy::open(&node, Some("silent")).await;
    for p in [&mut good, &mut bad, &mut silent] {
        p.subscribe(&["orders.cafe.local"]).await;
        let first = p.next().await;
        assert_eq!(
            only(&first, "orders.cafe.local").route.unwrap().rules[0].targets[0].weight,
            90
        );
    }
    let put = routes
        .put_route(route("orders.cafe.local", 50, 50))
        .await
        .unwrap()
        .into_inner();
    let pushed = good.next().await;
    assert!(pushed.version >= put.revision);
    good.ack(pushed.version).await;
    let pushed = bad.next().await;
    bad.send(Body::Nack(pb::Nack {
        version: pushed.version,
        error: "subset version=v2 has no endpoints".into(),
    }))
    .await;
    let _ = silent.next().await; // received, never acknowledged

    // The silent proxy keeps the wait until its timeout: reported pending.
    let w = d
        .wait_applied(pb::WaitAppliedRequest {
            service: "orders.cafe.local".into(),
            revision: put.revision,
            timeout_ms: 300,
            local_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.subscribed, w.applied), (3, 1), "{w:?}");
    assert_eq!(w.rejected.len(), 1);
    assert_eq!(w.rejected[0].proxy_id, "bad");
    assert_eq!(
        w.rejected[0].rejected_error,
        "subset version=v2 has no endpoints"
    );
    assert_eq!(w.pending.len(), 1);
    assert_eq!(w.pending[0].proxy_id, "silent");
    assert!(w.unreachable_nodes.is_empty());

    // ListProxies reports each one's versions.
    let list = d
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let by_id: HashMap<&str, &pb::ProxyStatus> = list
        .proxies
        .iter()
        .map(|p| (p.proxy_id.as_str(), p))
        .collect();
    assert_eq!(by_id.len(), 3);
    assert_eq!(by_id["good"].acked_version, pushed.version);
    assert_eq!(by_id["bad"].rejected_version, pushed.version);
    assert_eq!(by_id["silent"].acked_version, 0);
    assert_eq!(by_id["silent"].sent_version, pushed.version);
    for p in by_id.values() {
        assert_eq!(p.node_id, 1);
        assert_eq!(p.services, ["orders.cafe.local"]);
        assert_eq!(p.service_name, "frontend.cafe.local");
        assert!(p.remote_address.starts_with("127.0.0.1:"), "{p:?}");
        assert!(p.connected_at_unix_ms > 0);
    }

    // Once the silent one acknowledges, a wait (without a timeout of its own) ends.
    let wait = {
        let mut d = d.clone();
        tokio::spawn(async move {
            d.wait_applied(pb::WaitAppliedRequest {
                service: "orders.cafe.local".into(),
                revision: put.revision,
                timeout_ms: 60_000,
                local_only: true,
            })
            .await
        })
    };
    silent.ack(pushed.version).await;
    let w = wait.await.unwrap().unwrap().into_inner();
    assert_eq!(
        (w.subscribed, w.applied, w.rejected.len(), w.pending.len()),
        (3, 2, 1, 0)
    );

    // A write to another service: the proxies of orders already run its state as of it.
    let other = routes
        .put_route(route("menu.cafe.local", 1, 1))
        .await
        .unwrap()
        .into_inner();
    let w = d
        .wait_applied(pb::WaitAppliedRequest {
            service: "orders.cafe.local".into(),
            revision: other.revision,
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.applied, w.rejected.len(), w.pending.len()), (2, 1, 0));

    // Bad waits.
    for (req, field) in [
        (
            pb::WaitAppliedRequest {
                service: "x".into(),
                revision: 1,
                ..Default::default()
            },
            "service:",
        ),
        (
            pb::WaitAppliedRequest {
                service: "orders.cafe.local".into(),
                ..Default::default()
            },
            "revision:",
        ),
        (
            pb::WaitAppliedRequest {
                service: "orders.cafe.local".into(),
                revision: 1,
                timeout_ms: 300_001,
                ..Default::default()
            },
            "timeout_ms:",
        ),
    ] {
        let status = d.wait_applied(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{status:?}");
    }
    drop((good, bad, silent));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_streams_are_refused_naming_the_field_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    node.cafe(&["orders"]).await;

    // No hello first.
    let mut p = Proxy::open(&node, None).await;
    p.subscribe(&["orders.cafe.local"]).await;
    let status = p.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("hello:"), "{status:?}");

    // A hello without an id.
    let mut p = Proxy::open(&node, Some("")).await;
    let status = p.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("hello.proxy_id:"),
        "{status:?}"
    );

    // Garbage names: the index of the bad one.
    let mut p = Proxy::open(&node, Some("p")).await;
    p.subscribe(&["orders.cafe.local", "NOT A NAME", "x"]).await;
    let status = p.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("subscribe.services[1]:"),
        "{status:?}"
    );

    // A second hello.
    let mut p = Proxy::open(&node, Some("p")).await;
    p.send(Body::Hello(pb::ProxyHello {
        proxy_id: "again".into(),
        ..Default::default()
    }))
    .await;
    let status = p.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("hello:"), "{status:?}");

    // An empty message.
    let mut p = Proxy::open(&node, Some("p")).await;
    p.tx.send(pb::DiscoveryRequest { body: None })
        .await
        .unwrap();
    assert_eq!(p.error().await.code(), Code::InvalidArgument);

    // Refused streams left nothing behind, and a good stream still works.
    let mut d = discovery(&node).await;
    wait_for("refused streams to leave", PATIENCE, || {
        let mut d = d.clone();
        async move {
            let list = d
                .list_proxies(pb::ListProxiesRequest::default())
                .await
                .ok()?;
            list.into_inner().proxies.is_empty().then_some(())
        }
    })
    .await;
    let mut good = Proxy::open(&node, Some("good")).await;
    good.subscribe(&["orders.cafe.local"]).await;
    assert!(only(&good.next().await, "orders.cafe.local").exists);
    let list = d
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.proxies.len(), 1);
    drop(good);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disconnected_proxy_leaves_the_table_and_the_waits() {
    let node = TestNode::start().await;
    node.cafe(&["orders"]).await;
    let mut d = discovery(&node).await;
    let mut a = Proxy::open(&node, Some("a")).await;
    let mut b = Proxy::open(&node, Some("b")).await;
    for p in [&mut a, &mut b] {
        p.subscribe(&["orders.cafe.local"]).await;
        p.next().await;
    }
    let list = d
        .list_proxies(pb::ListProxiesRequest { local_only: true })
        .await
        .unwrap();
    assert_eq!(list.into_inner().proxies.len(), 2);

    // b never acks a route; when it goes away, the wait for it ends with a alone.
    let put = routing(&node)
        .await
        .put_route(route("orders.cafe.local", 1, 0))
        .await
        .unwrap()
        .into_inner();
    let v = a.next().await.version;
    a.ack(v).await;
    let wait = {
        let mut d = d.clone();
        tokio::spawn(async move {
            d.wait_applied(pb::WaitAppliedRequest {
                service: "orders.cafe.local".into(),
                revision: put.revision,
                timeout_ms: 60_000,
                ..Default::default()
            })
            .await
        })
    };
    drop(b);
    let w = wait.await.unwrap().unwrap().into_inner();
    assert_eq!((w.subscribed, w.applied, w.pending.len()), (1, 1, 0));
    let list = d
        .list_proxies(pb::ListProxiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = list.proxies.iter().map(|p| p.proxy_id.as_str()).collect();
    assert_eq!(ids, ["a"]);

    // A node shutting down ends its streams (so proxies reconnect elsewhere) and still stops.
    node.stop().await.unwrap();
    let end = tokio::time::timeout(PATIENCE, a.rx.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

/// 1,000 proxies on 10 connections follow one service: a registration reaches every one of them
/// (one push each), all acknowledge, and `WaitApplied` reports 1000/1000. A write to another
/// service reaches none of them. Prints how long the fan-out took (no timing assertion).
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_proxies_get_one_push_each_and_acknowledge() {
    const PROXIES: usize = 1000;
    let node = TestNode::start().await;
    let mut registry = node.cafe(&["orders", "menu"]).await;
    // h2 caps concurrent streams per connection (hyper: 200); spread them over 10.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(node.channel().await);
    }
    let mut proxies = Vec::new();
    for i in 0..PROXIES {
        let (tx, rx) = mpsc::channel(4);
        tx.send(request(Body::Hello(pb::ProxyHello {
            proxy_id: format!("p-{i}"),
            ..Default::default()
        })))
        .await
        .unwrap();
        tx.send(request(Body::Subscribe(pb::Subscribe {
            services: vec!["orders.cafe.local".into()],
        })))
        .await
        .unwrap();
        let rx = DiscoveryClient::new(channels[i % channels.len()].clone())
            .stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut proxy = Proxy { tx, rx };
        proxy.next().await;
        proxies.push(proxy);
    }

    registry
        .register_instance(register("menu.cafe.local", "m-1", 9000))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let written = registry
        .register_instance(register("orders.cafe.local", "i-1", 8081))
        .await
        .unwrap()
        .into_inner();
    let mut acks = Vec::new();
    for mut proxy in proxies {
        acks.push(tokio::spawn(async move {
            let push = proxy.next().await;
            // The menu write came first: had it been pushed, this would be it.
            let state = only(&push, "orders.cafe.local");
            assert_eq!(state.instances.len(), 1);
            proxy.ack(push.version).await;
            proxy
        }));
    }
    let mut proxies = Vec::new();
    for ack in acks {
        proxies.push(ack.await.unwrap());
    }
    let fanned_out = started.elapsed();
    let w = discovery(&node)
        .await
        .wait_applied(pb::WaitAppliedRequest {
            service: "orders.cafe.local".into(),
            revision: written.revision,
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.subscribed, w.applied), (1000, 1000));
    println!(
        "1,000 proxies: write to last push received {fanned_out:?}; all acknowledged in {:?}",
        started.elapsed()
    );
    drop(proxies);
    node.stop().await.unwrap();
}
