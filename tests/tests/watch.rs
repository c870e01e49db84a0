//! `Registry.Watch` against a real node on loopback: full state then deltas, scoping (a watcher
//! is woken only by its own service), 1,000 concurrent watchers, a stalled watcher that delays
//! nobody and is resynced, resume after a disconnect, bad input.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::{TestNode, wait_for};
use pb::watch_response::Body;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const PATIENCE: Duration = Duration::from_secs(20);

async fn register(r: &mut RegistryClient<Channel>, service: &str, id: &str, port: u32) -> u64 {
    register_with(r, service, id, port, HashMap::new()).await
}

async fn register_with(
    r: &mut RegistryClient<Channel>,
    service: &str,
    id: &str,
    port: u32,
    attributes: HashMap<String, String>,
) -> u64 {
    r.register_instance(pb::RegisterInstanceRequest {
        service: format!("{service}.cafe.local"),
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
        attributes,
    })
    .await
    .expect("test step")
    .into_inner()
    .revision
}

async fn watch(
    r: &mut RegistryClient<Channel>,
    service: &str,
    start_revision: u64,
) -> Streaming<pb::WatchResponse> {
    r.watch(pb::WatchRequest {
        service: service.into(),
        start_revision,
        ..Default::default()
    })
    .await
    .expect("test step")
    .into_inner()
}

/// What a client builds from a watch: the instances in scope, as of `revision`.
#[derive(Debug, Default)]
struct Mirror {
    instances: BTreeMap<(String, String), pb::Instance>,
    revision: u64,
    parts: Vec<pb::Instance>,
    resyncs: usize,
}

impl Mirror {
    fn apply(&mut self, msg: pb::WatchResponse) {
        match msg.body.expect("a body") {
            Body::Snapshot(s) => {
                if s.reason == pb::SnapshotReason::Resync as i32 {
                    self.resyncs += 1;
                }
                self.parts.extend(s.instances);
                if s.complete {
                    self.instances = self
                        .parts
                        .drain(..)
                        .map(|i| ((i.service.clone(), i.id.clone()), i))
                        .collect();
                }
            }
            Body::Events(e) => {
                for event in e.events {
                    let Some(i) = event.instance else { continue };
                    let key = (i.service.clone(), i.id.clone());
                    if event.r#type == pb::WatchEventType::InstanceRemoved as i32 {
                        self.instances.remove(&key);
                    } else {
                        self.instances.insert(key, i);
                    }
                }
            }
        }
        self.revision = msg.revision;
    }

    /// Reads until the mirror has reached `revision`.
    async fn follow(&mut self, stream: &mut Streaming<pb::WatchResponse>, revision: u64) {
        while self.revision < revision {
            let msg = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .expect("a message in time")
                .expect("test step")
                .expect("the stream goes on");
            self.apply(msg);
        }
    }

    fn ids(&self) -> Vec<&str> {
        self.instances.keys().map(|(_, id)| id.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_state_first_then_every_kind_of_delta() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    let first = register(&mut r, "orders", "i-1", 8081).await;

    let mut stream = watch(&mut r, "orders.cafe.local", 0).await;
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.revision, first);
    let Some(Body::Snapshot(s)) = &msg.body else {
        panic!("a snapshot first: {msg:?}");
    };
    assert_eq!(s.reason, pb::SnapshotReason::Initial as i32);
    assert!(s.complete);
    assert_eq!(s.services[0].name, "orders.cafe.local");
    assert_eq!(s.instances[0].id, "i-1");

    let added = register(&mut r, "orders", "i-2", 8082).await;
    let health = r
        .update_instance_health(pb::UpdateInstanceHealthRequest {
            service: "orders.cafe.local".into(),
            id: "i-2".into(),
            health: pb::HealthStatus::Unhealthy as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let removed = r
        .delete_service(pb::DeleteServiceRequest {
            name: "orders.cafe.local".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;

    let mut events = Vec::new();
    while events.last().is_none_or(|(_, rev, _)| *rev < removed) {
        let msg = stream.message().await.unwrap().unwrap();
        let Some(Body::Events(e)) = msg.body else {
            panic!("deltas after the snapshot");
        };
        events.extend(e.events.into_iter().map(|e| {
            let id = e.instance.map(|i| i.id).unwrap_or_default();
            (e.r#type, e.revision, id)
        }));
    }
    use pb::WatchEventType as T;
    assert_eq!(
        events,
        [
            (T::InstanceAdded as i32, added, "i-2".into()),
            (T::InstanceUpdated as i32, health, "i-2".into()),
            (T::InstanceRemoved as i32, removed, "i-1".into()),
            (T::InstanceRemoved as i32, removed, "i-2".into()),
            (T::ServiceDeleted as i32, removed, String::new()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_is_woken_only_by_its_own_service() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders", "reports"]).await;
    let mut orders = watch(&mut r, "orders.cafe.local", 0).await;
    let mut namespace = r
        .watch(pb::WatchRequest {
            namespace: "cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    orders.message().await.unwrap().unwrap(); // the initial state
    namespace.message().await.unwrap().unwrap();

    for port in 1..=50 {
        register(&mut r, "reports", "busy", port).await;
    }
    let mine = register(&mut r, "orders", "i-1", 8081).await;

    // The first message after the snapshot is the orders change: none of the 50 others.
    let msg = orders.message().await.unwrap().unwrap();
    assert_eq!(msg.revision, mine);
    let Some(Body::Events(e)) = msg.body else {
        panic!("a delta");
    };
    assert_eq!(e.events.len(), 1);
    assert_eq!(e.events[0].instance.as_ref().unwrap().id, "i-1");

    // The namespace watcher sees both services.
    let mut mirror = Mirror::default();
    mirror.follow(&mut namespace, mine).await;
    assert_eq!(mirror.ids(), ["i-1", "busy"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_watchers_all_see_a_change() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    // Ten connections of 100 streams each (HTTP/2 servers cap concurrent streams per connection).
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut client = node.registry().await;
        for _ in 0..100 {
            let mut s = watch(&mut client, "orders.cafe.local", 0).await;
            s.message().await.unwrap().unwrap();
            streams.push(s);
        }
    }
    let revision = register(&mut r, "orders", "i-1", 8081).await;
    let seen = futures::future::join_all(streams.iter_mut().map(|s| async move {
        let msg = tokio::time::timeout(PATIENCE, s.message())
            .await
            .ok()?
            .ok()??;
        Some(msg.revision)
    }))
    .await;
    assert_eq!(seen.len(), 1000);
    assert!(seen.iter().all(|r| *r == Some(revision)), "{seen:?}");
}

fn bulky(n: usize) -> HashMap<String, String> {
    // ~7.5 KB per instance: the stalled client's 64 KiB window and the server's ~400 KiB send
    // buffer fill after some 60 messages, then its queue of 64 in the hub.
    (0..30)
        .map(|k| (format!("k{k}"), format!("{n}-{}", "x".repeat(240))))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_watcher_delays_nobody_and_is_resynced() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    // Its own connection, so its full flow-control window blocks only itself; a small window
    // (64 KiB instead of hyper's 2 MiB) so that a few hundred changes overflow it.
    let small = Channel::from_shared(node.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stalled = watch(&mut RegistryClient::new(small), "orders.cafe.local", 0).await;
    let mut live = watch(&mut node.registry().await, "orders.cafe.local", 0).await;
    let mut live_mirror = Mirror::default();

    let mut last = 0;
    for n in 0..300 {
        last = register_with(&mut r, "orders", &format!("i-{}", n % 50), 1, bulky(n)).await;
        // The live watcher keeps up while the other reads nothing at all.
        live_mirror.follow(&mut live, last).await;
    }
    assert_eq!(live_mirror.instances.len(), 50);

    // The stalled one now reads: its backlog was cut, a full state replaced it, and it ends
    // with exactly the registry's state.
    let mut mirror = Mirror::default();
    mirror.follow(&mut stalled, last).await;
    assert!(mirror.resyncs >= 1, "it fell behind and was resynced");
    assert_eq!(mirror.instances, live_mirror.instances);
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_after_a_disconnect_loses_nothing() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    register(&mut r, "orders", "i-0", 8080).await;
    let mut mirror = Mirror::default();
    let mut stream = watch(&mut r, "orders.cafe.local", 0).await;
    mirror.apply(stream.message().await.unwrap().unwrap());
    drop(stream);

    // Changes while away: additions, an update, a removal.
    for n in 1..=20 {
        register(&mut r, "orders", &format!("i-{n}"), 8080 + n).await;
    }
    register(&mut r, "orders", "i-3", 9999).await;
    let last = r
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;

    let mut stream = watch(&mut r, "orders.cafe.local", mirror.revision).await;
    mirror.follow(&mut stream, last).await;
    assert_eq!(mirror.resyncs, 0);
    let listed = r
        .list_instances(pb::ListInstancesRequest {
            service: "orders.cafe.local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let expected: BTreeMap<_, _> = listed
        .instances
        .into_iter()
        .map(|i| ((i.service.clone(), i.id.clone()), i))
        .collect();
    assert_eq!(mirror.instances, expected);
    assert_eq!(
        mirror.instances[&("orders.cafe.local".into(), "i-3".into())].port,
        9999
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_watch_requests_name_the_field() {
    let node = TestNode::start().await;
    let mut r = node.registry().await;
    let cases = [
        (("orders.cafe.local", "cafe.local"), "namespace: "),
        (("orders", ""), "service: "),
        (("", "bad_domain!"), "namespace: "),
    ];
    for ((service, namespace), prefix) in cases {
        let status = r
            .watch(pb::WatchRequest {
                service: service.into(),
                namespace: namespace.into(),
                start_revision: 0,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(prefix), "{status:?}");
    }
}

/// Registration → watcher latency on one node: 100 watchers, 1,000 registrations, each
/// measured from the write's acknowledgement to its arrival at every watcher. Run with
/// `cargo test --release -p meridian-tests --test watch -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a test: see BENCHMARKS.md"]
#[allow(clippy::print_stderr)]
async fn latency_from_ack_to_watchers() {
    let node = TestNode::start().await;
    let mut r = node.cafe(&["orders"]).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut client = node.registry().await;
    for w in 0..100 {
        if w % 50 == 0 {
            client = node.registry().await;
        }
        let mut s = watch(&mut client, "orders.cafe.local", 0).await;
        s.message().await.unwrap().unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = s.message().await {
                let _ = tx.send((msg.revision, Instant::now()));
            }
        });
    }
    drop(tx);
    let mut acks = HashMap::new();
    let mut sent = HashMap::new();
    let mut last = 0;
    for n in 0..1000u32 {
        let before = Instant::now();
        let revision = register(&mut r, "orders", &format!("i-{}", n % 100), 1 + n).await;
        acks.insert(revision, Instant::now());
        sent.insert(revision, before);
        last = revision;
    }
    let mut arrivals = Vec::new();
    wait_for("every arrival", PATIENCE, || {
        while let Ok(arrival) = rx.try_recv() {
            arrivals.push(arrival);
        }
        // Changes applied together arrive as one message: wait for the last one everywhere.
        let done = arrivals.iter().filter(|(rev, _)| *rev == last).count() == 100;
        std::future::ready(done.then_some(()))
    })
    .await;
    for (name, origin) in [("acknowledgement", &acks), ("request", &sent)] {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for (rev, at) in &arrivals {
            // An arrival may beat the acknowledgement back to the client: that counts as 0.
            let micros = at.saturating_duration_since(origin[rev]).as_micros();
            hist.record(u64::try_from(micros).unwrap()).unwrap();
        }
        eprintln!(
            "watch latency from {name}, 1 node, 100 watchers, 1000 changes: \
             p50 {} µs, p99 {} µs, max {} µs ({} arrivals)",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max(),
            hist.len()
        );
    }
}
