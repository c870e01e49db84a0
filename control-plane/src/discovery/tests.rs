//! The hub and sessions without a network: views published by hand (with and without a
//! change feed), pushes, coalescing, scoping, waits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::registry::{Command, Registry, ServiceSpec};
use crate::replica::FeedBatch;

fn svc(full: &str) -> ServiceName {
    ServiceName::parse("service", full).unwrap()
}

/// Publishes views the way the replica does: the registry after each command, with or without
/// the change feed (without it the hub falls back to comparing revisions).
struct Publisher {
    registry: Registry,
    index: u64,
    feed: imbl::Vector<Arc<FeedBatch>>,
    tx: watch::Sender<View>,
    with_feed: bool,
}

impl Publisher {
    fn new(with_feed: bool) -> (Self, watch::Receiver<View>) {
        let (tx, rx) = watch::channel(View::default());
        let mut p = Self {
            registry: Registry::new(),
            index: 0,
            feed: imbl::Vector::new(),
            tx,
            with_feed,
        };
        p.apply(Command::CreateNamespace {
            name: "cafe.local".into(),
            description: String::new(),
        });
        (p, rx)
    }

    fn apply(&mut self, command: Command) -> u64 {
        let previous_index = self.index;
        self.index += 1;
        let mut changes = Vec::new();
        self.registry
            .apply_logged(self.index, &command, &mut changes)
            .unwrap();
        if self.with_feed {
            self.feed.push_back(Arc::new(FeedBatch {
                previous_index,
                applied_index: self.index,
                changes,
                timing: Default::default(),
            }));
        }
        self.tx.send_replace(View {
            applied_index: self.index,
            registry: Arc::new(self.registry.clone()),
            feed: self.feed.clone(),
        });
        self.index
    }

    fn create(&mut self, full: &str) -> u64 {
        self.apply(Command::CreateService(ServiceSpec {
            name: svc(full),
            description: String::new(),
            dns_ttl_seconds: 5,
            health_check: None,
        }))
    }
}

async fn session(handle: &DiscoveryHandle, id: &str) -> Session {
    Session::open(
        handle,
        Hello {
            proxy_id: id.into(),
            ..Default::default()
        },
        "127.0.0.1:1".into(),
    )
    .await
    .unwrap()
}

async fn next(s: &mut Session) -> Push {
    tokio::time::timeout(Duration::from_secs(10), s.next_push())
        .await
        .expect("a push")
        .expect("hub running")
}

fn names(p: &Push) -> Vec<(String, bool)> {
    p.states
        .iter()
        .map(|s| (s.name.to_string(), s.service.is_some()))
        .collect()
}

async fn scenario(with_feed: bool) {
    let (mut publisher, views) = Publisher::new(with_feed);
    let (hub, handle) = DiscoveryHub::new(views, 7);
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop.clone()));

    let mut a = session(&handle, "a").await;
    a.subscribe(vec![svc("orders.cafe.local")]).await.unwrap();
    let first = next(&mut a).await;
    assert_eq!(names(&first), [("orders.cafe.local".into(), false)]);
    assert_eq!(first.version, 1);

    // Another service changes: nothing for `a`; then its own service is created.
    publisher.create("menu.cafe.local");
    let created = publisher.create("orders.cafe.local");
    let push = next(&mut a).await;
    assert_eq!(names(&push), [("orders.cafe.local".into(), true)]);
    assert_eq!(push.version, created);

    // Coalescing: three writes while the proxy does not read become one push.
    let mut last = 0;
    for port in 1..=3 {
        last = publisher.apply(Command::RegisterInstance {
            service: svc("orders.cafe.local"),
            instance: crate::registry::InstanceSpec {
                id: "i-1".into(),
                address: "10.0.0.1".parse().unwrap(),
                port,
                attributes: Default::default(),
            },
        });
    }
    let push = loop {
        let p = next(&mut a).await;
        if p.version == last {
            break p;
        }
    };
    let instance = &push.states[0].service.as_ref().unwrap().instances["i-1"];
    assert_eq!(instance.port, 3);

    // Waits: one proxy following, not yet acked; then acked.
    let pending = handle.evaluate(&svc("orders.cafe.local"), last);
    assert_eq!(
        (pending.subscribed, pending.applied, pending.pending.len()),
        (1, 0, 1)
    );
    a.sent(push.version);
    a.ack(push.version);
    let done = handle
        .wait_applied(&svc("orders.cafe.local"), last, Duration::from_secs(10))
        .await;
    assert_eq!((done.subscribed, done.applied), (1, 1));
    // A later write to another service is already "applied" for orders' proxies.
    let other = publisher.create("tea.cafe.local");
    let done = handle
        .wait_applied(&svc("orders.cafe.local"), other, Duration::from_secs(10))
        .await;
    assert_eq!((done.subscribed, done.applied), (1, 1));

    // Unsubscribed: no more pushes for it; a dropped session leaves the table.
    a.unsubscribe(vec![svc("orders.cafe.local")]).await.unwrap();
    assert!(
        handle
            .proxies()
            .subscribed_to(&svc("orders.cafe.local"))
            .is_empty()
    );
    drop(a);
    assert!(handle.proxies().is_empty());

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn pushes_follow_the_change_feed() {
    scenario(true).await;
}

#[tokio::test]
async fn pushes_without_a_feed_compare_revisions() {
    scenario(false).await;
}

#[tokio::test]
async fn rejections_and_timeouts_are_reported() {
    let (mut publisher, views) = Publisher::new(true);
    let (hub, handle) = DiscoveryHub::new(views, 1);
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop.clone()));
    let created = publisher.create("orders.cafe.local");
    let mut good = session(&handle, "good").await;
    let mut bad = session(&handle, "bad").await;
    let mut silent = session(&handle, "silent").await;
    for s in [&mut good, &mut bad, &mut silent] {
        s.subscribe(vec![svc("orders.cafe.local")]).await.unwrap();
        let push = next(s).await;
        assert_eq!(push.version, created);
        s.sent(push.version);
    }
    good.ack(created);
    bad.nack(created, "x".repeat(5000));
    // Acks of versions never sent are ignored.
    silent.ack(created + 100);
    let outcome = handle
        .wait_applied(
            &svc("orders.cafe.local"),
            created,
            Duration::from_millis(50),
        )
        .await;
    assert_eq!((outcome.subscribed, outcome.applied), (3, 1));
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].proxy_id, "bad");
    assert_eq!(outcome.rejected[0].rejected_error.len(), MAX_NACK_ERROR);
    assert_eq!(outcome.pending.len(), 1);
    assert_eq!(outcome.pending[0].proxy_id, "silent");

    // Bad hellos and oversized subscriptions are refused with the field named.
    let err = Session::open(&handle, Hello::default(), String::new())
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("hello.proxy_id:"), "{err}");
    let many = (0..=MAX_SERVICES_PER_MESSAGE)
        .map(|i| svc(&format!("s{i}.cafe.local")))
        .collect();
    let err = good.subscribe(many).await.unwrap_err();
    assert!(err.to_string().starts_with("subscribe.services:"), "{err}");

    // Stopping the hub ends every stream.
    stop.cancel();
    task.await.unwrap();
    assert!(good.next_push().await.is_none());
}
