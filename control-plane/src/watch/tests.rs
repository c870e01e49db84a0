//! The diff, the history and the hub, without a node: registries are built by applying
//! commands, views are published by hand.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::registry::{Command, InstanceSpec, ServiceSpec};
use crate::replica::View;

fn svc(name: &str) -> ServiceName {
    ServiceName::parse("service", name).unwrap()
}

struct Log {
    registry: Registry,
    index: u64,
}

impl Log {
    fn new() -> Self {
        let mut log = Self {
            registry: Registry::new(),
            index: 0,
        };
        for ns in ["a.local", "b.local"] {
            log.apply(Command::CreateNamespace {
                name: ns.into(),
                description: String::new(),
            });
        }
        for s in ["x.a.local", "y.a.local", "z.b.local"] {
            log.apply(Command::CreateService(ServiceSpec {
                name: svc(s),
                description: String::new(),
                dns_ttl_seconds: 5,
                health_check: None,
            }));
        }
        log
    }

    fn apply(&mut self, command: Command) -> u64 {
        self.index += 1;
        self.registry.apply(self.index, &command).unwrap();
        self.index
    }

    fn register(&mut self, service: &str, id: &str, port: u16) -> u64 {
        self.apply(Command::RegisterInstance {
            service: svc(service),
            instance: InstanceSpec {
                id: id.into(),
                address: "127.0.0.1".parse().unwrap(),
                port,
                attributes: Default::default(),
            },
        })
    }

    fn deregister(&mut self, service: &str, id: &str) -> u64 {
        self.apply(Command::DeregisterInstance {
            service: svc(service),
            id: id.into(),
        })
    }

    fn snapshot(&self) -> Arc<Registry> {
        Arc::new(self.registry.clone())
    }
}

/// `(service, kind, id or "", revision)` per event.
fn summary(changes: &[ServiceChanges]) -> Vec<(String, &'static str, String, u64)> {
    changes
        .iter()
        .flat_map(|c| {
            c.events.iter().map(move |e| {
                let (kind, id) = match &e.kind {
                    EventKind::InstanceAdded(i) => ("added", i.id.clone()),
                    EventKind::InstanceUpdated(i) => ("updated", i.id.clone()),
                    EventKind::InstanceRemoved(i) => ("removed", i.id.clone()),
                    EventKind::ServiceCreated(_) => ("created", String::new()),
                    EventKind::ServiceDeleted(_) => ("deleted", String::new()),
                };
                (c.service.to_string(), kind, id, e.revision)
            })
        })
        .collect()
}

#[test]
fn diff_reports_only_changed_services_with_their_revisions() {
    let mut log = Log::new();
    log.register("x.a.local", "i-1", 1);
    let before = log.snapshot();
    let added = log.register("x.a.local", "i-2", 2);
    let moved = log.register("x.a.local", "i-1", 11);
    let other = log.register("z.b.local", "i-9", 9);
    let after = log.snapshot();
    let d = diff(&before, &after);
    assert_eq!(
        summary(&d),
        [
            ("x.a.local".into(), "added", "i-2".into(), added),
            ("x.a.local".into(), "updated", "i-1".into(), moved),
            ("z.b.local".into(), "added", "i-9".into(), other),
        ]
    );
    // y.a.local did not change: not even mentioned.
    assert!(d.iter().all(|c| c.service != svc("y.a.local")));

    let gone = log.deregister("x.a.local", "i-2");
    assert_eq!(
        summary(&diff(&after, &log.snapshot())),
        [("x.a.local".into(), "removed", "i-2".into(), gone)]
    );
    assert!(diff(&after, &after).is_empty());
}

#[test]
fn diff_reports_service_deletion_and_recreation() {
    let mut log = Log::new();
    log.register("y.a.local", "i-1", 1);
    let before = log.snapshot();
    let deleted = log.apply(Command::DeleteService {
        name: svc("y.a.local"),
        force: true,
    });
    let mid = log.snapshot();
    assert_eq!(
        summary(&diff(&before, &mid)),
        [
            ("y.a.local".into(), "removed", "i-1".into(), deleted),
            ("y.a.local".into(), "deleted", String::new(), deleted),
        ]
    );
    let created = log.apply(Command::CreateService(ServiceSpec {
        name: svc("y.a.local"),
        description: String::new(),
        dns_ttl_seconds: 5,
        health_check: None,
    }));
    let kinds: Vec<_> = summary(&diff(&before, &log.snapshot()))
        .into_iter()
        .map(|(_, k, _, r)| (k, r))
        .collect();
    // Deleted and re-created between the two views: removal first, then creation.
    assert_eq!(
        kinds,
        [
            ("removed", created),
            ("deleted", created),
            ("created", created)
        ]
    );
}

#[test]
fn history_replays_what_came_after_a_revision_and_knows_what_it_forgot() {
    let mut log = Log::new();
    let start = log.registry.revision();
    let mut history = History::new(start, 3);
    let mut prev = log.snapshot();
    let mut revisions = Vec::new();
    for (i, service) in ["x.a.local", "y.a.local", "x.a.local", "z.b.local"]
        .iter()
        .enumerate()
    {
        revisions.push(log.register(service, &format!("i-{i}"), 1));
        let next = log.snapshot();
        let changes = diff(&prev, &next).into_iter().map(Arc::new).collect();
        history.push(Arc::new(history::Batch::new(
            prev.revision(),
            next.revision(),
            changes,
        )));
        prev = next;
    }
    // Four events, room for three: the first batch was dropped.
    assert!(history.since(&Scope::All, start).is_none());
    let x = history
        .since(&Scope::Service(svc("x.a.local")), revisions[0])
        .unwrap();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].events[0].revision, revisions[2]);
    let ns = history
        .since(&Scope::Namespace("b.local".into()), revisions[0])
        .unwrap();
    assert_eq!(ns.len(), 1);
    assert!(history.since(&Scope::All, revisions[3]).unwrap().is_empty());
}

use super::history::{self, History};

fn publish(tx: &watch::Sender<View>, registry: Arc<Registry>) {
    tx.send_replace(View {
        applied_index: registry.revision(),
        registry,
        ..View::default()
    });
}

#[tokio::test]
async fn hub_feeds_each_scope_only_its_changes_and_resyncs_a_lagging_watcher() {
    let mut log = Log::new();
    let (tx, rx) = watch::channel(View::default());
    publish(&tx, log.snapshot());
    let (hub, handle) = Hub::new(
        rx,
        HubConfig {
            queue: 4,
            history_events: 100,
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop.clone()));

    let mut x = handle
        .subscribe(Scope::Service(svc("x.a.local")), 0)
        .await
        .unwrap();
    let mut b = handle
        .subscribe(Scope::Namespace("b.local".into()), 0)
        .await
        .unwrap();
    let mut slow = handle.subscribe(Scope::All, 0).await.unwrap();
    for sub in [&mut x, &mut b] {
        assert!(matches!(
            sub.next().await,
            Some(Update::Snapshot {
                reason: SnapshotReason::Initial,
                ..
            })
        ));
    }

    // Ten changes to z.b.local, one at a time: x hears nothing, b hears each.
    for port in 1..=10 {
        log.register("z.b.local", "i-1", port);
        publish(&tx, log.snapshot());
        let Some(Update::Delta { changes, .. }) = b.next().await else {
            panic!("b gets a delta");
        };
        assert_eq!(changes[0].service, svc("z.b.local"));
    }
    let rev = log.register("x.a.local", "i-1", 1);
    publish(&tx, log.snapshot());
    let Some(Update::Delta { to, changes, .. }) = x.next().await else {
        panic!("x gets a delta");
    };
    assert_eq!((to, changes.len()), (rev, 1));

    // `slow` never read: its queue of 4 filled, it was marked, and now gets a full state.
    let mut got = Vec::new();
    while let Some(update) = slow.next().await {
        let done = matches!(update, Update::Snapshot { reason: SnapshotReason::Resync, ref registry } if registry.revision() == rev);
        got.push(update);
        if done {
            break;
        }
    }
    assert_eq!(got.len(), 1 + 2 + 1, "initial, two deltas, then the resync");

    // Resuming after a revision replays what came later, within scope.
    let mut again = handle
        .subscribe(Scope::Namespace("a.local".into()), rev - 1)
        .await
        .unwrap();
    let Some(Update::Delta { from, to, changes }) = again.next().await else {
        panic!("a delta");
    };
    assert_eq!((from, to, changes.len()), (rev - 1, rev, 1));

    stop.cancel();
    task.await.unwrap();
    assert!(x.next().await.is_none(), "streams end with the hub");
}

#[tokio::test]
async fn hub_answers_a_revision_older_than_its_history_with_a_compacted_full_state() {
    let mut log = Log::new();
    let (tx, rx) = watch::channel(View::default());
    publish(&tx, log.snapshot());
    let start = log.registry.revision();
    let (hub, handle) = Hub::new(
        rx,
        HubConfig {
            queue: 4,
            history_events: 1,
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop.clone()));
    let mut all = handle.subscribe(Scope::All, 0).await.unwrap();
    all.next().await.unwrap();
    let mut last = 0;
    for port in 1..=3 {
        last = log.register("x.a.local", "i-1", port);
        publish(&tx, log.snapshot());
        all.next().await.unwrap(); // processed by the hub
    }
    let mut late = handle.subscribe(Scope::All, start).await.unwrap();
    let Some(Update::Snapshot { reason, registry }) = late.next().await else {
        panic!("a full state");
    };
    assert_eq!(
        (reason, registry.revision()),
        (SnapshotReason::Compacted, last)
    );
    stop.cancel();
    task.await.unwrap();
}

/// The change feed and a comparison of snapshots tell the same story, command by command:
/// registrations, re-registrations, health changes, deregistrations, forced service deletion
/// and re-creation. (Watchers take the feed; they fall back to comparing when they skipped a
/// view, so both must agree.)
#[test]
fn change_feed_matches_snapshot_comparison() {
    use crate::registry::HealthStatus;

    let mut log = Log::new();
    let register = |id: &str, port: u16| Command::RegisterInstance {
        service: svc("x.a.local"),
        instance: InstanceSpec {
            id: id.into(),
            address: "127.0.0.1".parse().unwrap(),
            port,
            attributes: Default::default(),
        },
    };
    let commands = vec![
        register("i-1", 80),
        register("i-2", 81),
        register("i-1", 82),
        Command::SetHealth {
            service: svc("x.a.local"),
            id: "i-2".into(),
            health: HealthStatus::Unhealthy,
        },
        Command::SetHealth {
            service: svc("x.a.local"),
            id: "i-2".into(),
            health: HealthStatus::Unhealthy,
        },
        Command::DeregisterInstance {
            service: svc("x.a.local"),
            id: "i-1".into(),
        },
        Command::DeleteService {
            name: svc("x.a.local"),
            force: true,
        },
        Command::CreateService(ServiceSpec {
            name: svc("x.a.local"),
            description: String::new(),
            dns_ttl_seconds: 5,
            health_check: None,
        }),
        Command::DeregisterInstance {
            service: svc("x.a.local"),
            id: "nope".into(),
        },
    ];
    for command in commands {
        let before = log.snapshot();
        let mut feed = Vec::new();
        log.index += 1;
        let _ = log.registry.apply_logged(log.index, &command, &mut feed);
        let batch = crate::replica::FeedBatch {
            previous_index: log.index - 1,
            applied_index: log.index,
            changes: feed,
            timing: Default::default(),
        };
        let view = View {
            applied_index: log.index,
            registry: log.snapshot(),
            feed: imbl::Vector::unit(Arc::new(batch)),
        };
        let from_feed = changes_since(&before, Some(log.index - 1), &view);
        let compared = changes_since(&before, None, &view);
        assert_eq!(summary(&from_feed), summary(&compared), "{command:?}");
    }
}
