//! What changed between two registry snapshots, service by service.
//!
//! Pure and cheap: a namespace or service whose `mod_revision` (and `create_revision`) did not
//! move is skipped without looking inside, so the cost of a diff is proportional to the
//! services that changed, not to the size of the registry. Instances of a changed service are
//! compared by `mod_revision` (an `Arc` pointer check first).

use std::sync::Arc;

use std::collections::BTreeMap;

use crate::registry::{ChangeKind, Instance, Namespace, Registry, Service, ServiceName};
use crate::replica::{FeedBatch, View};

/// One change, stamped with its revision.
///
/// The stamp is exact for additions, updates and creations (the object's `mod_revision`). A
/// removal leaves nothing behind to read its revision from, so it is stamped with the revision
/// of the service or namespace that recorded it (or the registry's), which is the removal's own
/// revision or a later one of the same batch: never earlier. So "every event stamped after R"
/// never misses a change made after R.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision of the change (see above for removals).
    pub revision: u64,
    /// What changed.
    pub kind: EventKind,
}

/// The kinds of change a watcher sees: the registry's change feed kinds that concern
/// instances and services. Route changes are not watch events (`Registry.Watch` has none;
/// proxies learn routes through `Discovery`), so [`EventKind::from_change`] drops them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A new instance.
    InstanceAdded(Arc<Instance>),
    /// An instance's health, address, port or attributes changed; its new state.
    InstanceUpdated(Arc<Instance>),
    /// An instance left; its last state.
    InstanceRemoved(Arc<Instance>),
    /// A new service (its instances follow as `InstanceAdded`).
    ServiceCreated(Arc<Service>),
    /// A service was deleted (after `InstanceRemoved` for each of its instances); its last state.
    ServiceDeleted(Arc<Service>),
}

/// The changes to one service between two snapshots, in the order they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChanges {
    /// The service.
    pub service: ServiceName,
    /// Its changes.
    pub events: Vec<Event>,
}

type Services = imbl::OrdMap<String, Arc<Service>>;

// === impl EventKind ===

impl EventKind {
    /// The watch event of a change feed entry; `None` for a route change.
    pub fn from_change(kind: &ChangeKind) -> Option<Self> {
        Some(match kind {
            ChangeKind::InstanceAdded(i) => Self::InstanceAdded(Arc::clone(i)),
            ChangeKind::InstanceUpdated(i) => Self::InstanceUpdated(Arc::clone(i)),
            ChangeKind::InstanceRemoved(i) => Self::InstanceRemoved(Arc::clone(i)),
            ChangeKind::ServiceCreated(s) => Self::ServiceCreated(Arc::clone(s)),
            ChangeKind::ServiceDeleted(s) => Self::ServiceDeleted(Arc::clone(s)),
            ChangeKind::RouteChanged(_) => return None,
        })
    }

    /// The instance this event is about, if any.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        match self {
            Self::InstanceAdded(i) | Self::InstanceUpdated(i) | Self::InstanceRemoved(i) => Some(i),
            Self::ServiceCreated(_) | Self::ServiceDeleted(_) => None,
        }
    }
}

/// The changes from a registry a consumer holds (`old`, taken from the view with applied index
/// `seen`; `None` if it did not come from a view) to the view `new`, per service in name
/// order. While the view's feed reaches back to `seen` (readers may skip views), they come
/// from the feed at a cost proportional to the changes; otherwise (far behind, or a restored
/// snapshot in between) the two registries are compared.
pub fn changes_since(old: &Registry, seen: Option<u64>, new: &View) -> Vec<ServiceChanges> {
    match seen.and_then(|seen| new.changes_since(seen)) {
        Some(batches) => from_feed(&batches),
        None => diff(old, &new.registry),
    }
}

fn from_feed(batches: &imbl::Vector<Arc<FeedBatch>>) -> Vec<ServiceChanges> {
    let mut by_service: BTreeMap<&ServiceName, Vec<Event>> = BTreeMap::new();
    for change in batches.iter().flat_map(|b| b.changes.iter()) {
        let Some(kind) = EventKind::from_change(&change.kind) else {
            continue;
        };
        by_service.entry(&change.service).or_default().push(Event {
            revision: change.revision,
            kind,
        });
    }
    by_service
        .into_iter()
        .map(|(service, events)| ServiceChanges {
            service: service.clone(),
            events,
        })
        .collect()
}

/// Every service that differs between `old` and `new`, with its changes, in name order.
pub fn diff(old: &Registry, new: &Registry) -> Vec<ServiceChanges> {
    let mut out = Vec::new();
    let empty = Services::new();
    for (name, old_ns) in old.namespaces() {
        if !new.namespaces().contains_key(name) {
            // The namespace is gone, with every service it had.
            diff_services(&old_ns.services, &empty, new.revision(), &mut out);
        }
    }
    for (name, new_ns) in new.namespaces() {
        match old.namespaces().get(name) {
            Some(old_ns) if unchanged_ns(old_ns, new_ns) => {}
            Some(old_ns) => diff_services(
                &old_ns.services,
                &new_ns.services,
                new_ns.mod_revision,
                &mut out,
            ),
            None => diff_services(&empty, &new_ns.services, new_ns.mod_revision, &mut out),
        }
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

fn unchanged_ns(old: &Arc<Namespace>, new: &Arc<Namespace>) -> bool {
    Arc::ptr_eq(old, new)
        || (old.create_revision == new.create_revision && old.mod_revision == new.mod_revision)
}

/// `deleted_at`: the stamp of service deletions (the namespace's `mod_revision`, or the
/// registry's revision when the namespace itself is gone).
fn diff_services(old: &Services, new: &Services, deleted_at: u64, out: &mut Vec<ServiceChanges>) {
    for (label, old_svc) in old {
        match new.get(label) {
            Some(new_svc) if Arc::ptr_eq(old_svc, new_svc) => {}
            Some(new_svc) if old_svc.create_revision == new_svc.create_revision => {
                if old_svc.mod_revision != new_svc.mod_revision {
                    let events = diff_instances(old_svc, new_svc);
                    if !events.is_empty() {
                        out.push(changes(new_svc, events));
                    }
                }
            }
            Some(new_svc) => {
                // Deleted and created again between the two snapshots.
                let mut events = deleted(old_svc, deleted_at);
                events.extend(created(new_svc));
                out.push(changes(new_svc, events));
            }
            None => out.push(changes(old_svc, deleted(old_svc, deleted_at))),
        }
    }
    for (label, new_svc) in new {
        if !old.contains_key(label) {
            out.push(changes(new_svc, created(new_svc)));
        }
    }
}

fn changes(service: &Service, events: Vec<Event>) -> ServiceChanges {
    ServiceChanges {
        service: ServiceName {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
        },
        events,
    }
}

fn deleted(service: &Arc<Service>, at: u64) -> Vec<Event> {
    let mut events: Vec<Event> = service
        .instances
        .values()
        .map(|i| Event {
            revision: at,
            kind: EventKind::InstanceRemoved(Arc::clone(i)),
        })
        .collect();
    events.push(Event {
        revision: at,
        kind: EventKind::ServiceDeleted(Arc::clone(service)),
    });
    events
}

fn created(service: &Arc<Service>) -> Vec<Event> {
    let mut events = vec![Event {
        revision: service.create_revision,
        kind: EventKind::ServiceCreated(Arc::clone(service)),
    }];
    events.extend(service.instances.values().map(|i| Event {
        revision: i.mod_revision,
        kind: EventKind::InstanceAdded(Arc::clone(i)),
    }));
    events
}

/// Instance changes of a service that exists in both snapshots, in revision order. Removals are
/// stamped with the service's new `mod_revision` (deregistering moves it).
fn diff_instances(old: &Service, new: &Service) -> Vec<Event> {
    let mut events = Vec::new();
    for (id, old_i) in &old.instances {
        match new.instances.get(id) {
            Some(new_i)
                if Arc::ptr_eq(old_i, new_i) || old_i.mod_revision == new_i.mod_revision => {}
            // (Deregistered and registered again in between is, to a watcher, a change too.)
            Some(new_i) => events.push(Event {
                revision: new_i.mod_revision,
                kind: EventKind::InstanceUpdated(Arc::clone(new_i)),
            }),
            None => events.push(Event {
                revision: new.mod_revision,
                kind: EventKind::InstanceRemoved(Arc::clone(old_i)),
            }),
        }
    }
    for (id, new_i) in &new.instances {
        if !old.instances.contains_key(id) {
            events.push(Event {
                revision: new_i.mod_revision,
                kind: EventKind::InstanceAdded(Arc::clone(new_i)),
            });
        }
    }
    events.sort_by_key(|e| e.revision);
    events
}
