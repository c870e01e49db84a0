//! `Registry.Watch`: a watch subscription turned into a stream of protobuf messages, and the
//! conversion of watch updates to `meridian.v1` types.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use meridian_proto::v1 as pb;
use tonic::Status;

use super::convert;
use super::error::registry_status;
use crate::auth::Caller;
use crate::registry::{Access, Registry, RegistryError, Service, ServiceName};
use crate::watch::{EventKind, Scope, SnapshotReason, Subscription, Update, WatchHandle};

/// Most instances (or events) in one message: keeps every message far below gRPC's default
/// 4 MiB limit (an instance with 30 full attributes is ~10 KiB; a typical one ~100 bytes).
pub(crate) const PART: usize = 1000;

/// The server stream of one watcher.
pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Validates the request, checks that `caller` may read its scope (everything: admins
/// only), subscribes and returns the stream.
pub(crate) async fn watch(
    hub: &WatchHandle,
    caller: &Caller,
    req: pb::WatchRequest,
) -> Result<WatchStream, Status> {
    let scope = scope(&req).map_err(registry_status)?;
    match &scope {
        Scope::All => caller.require_admin()?,
        Scope::Namespace(namespace) => caller.require_namespace(namespace, Access::Read)?,
        Scope::Service(service) => caller.require_service(service, Access::Read)?,
    }
    let subscription = hub
        .subscribe(scope.clone(), req.start_revision)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let state = (subscription, scope, VecDeque::new());
    let stream = futures::stream::unfold(state, |(mut sub, scope, mut pending)| async move {
        loop {
            if let Some(message) = pending.pop_front() {
                return Some((Ok(message), (sub, scope, pending)));
            }
            let update = Subscription::next(&mut sub).await?;
            pending.extend(messages(&scope, &update));
        }
    });
    Ok(Box::pin(stream))
}

fn scope(req: &pb::WatchRequest) -> Result<Scope, RegistryError> {
    match (req.service.is_empty(), req.namespace.is_empty()) {
        (true, true) => Ok(Scope::All),
        (false, true) => Ok(Scope::Service(convert::service_name(
            "service",
            &req.service,
        )?)),
        (true, false) => Ok(Scope::Namespace(convert::namespace_name(
            "namespace",
            &req.namespace,
        )?)),
        (false, false) => Err(RegistryError::invalid(
            "namespace",
            "set service or namespace, not both",
        )),
    }
}

/// The messages of one update, split in parts of at most [`PART`] instances or events.
pub(crate) fn messages(scope: &Scope, update: &Update) -> Vec<pb::WatchResponse> {
    match update {
        Update::Snapshot { reason, registry } => snapshot(scope, *reason, registry),
        Update::Delta { from, to, changes } => {
            let events: Vec<pb::WatchEvent> = changes
                .iter()
                .flat_map(|c| c.events.iter().map(|e| event(&c.service, e)))
                .collect();
            let parts = events.len().div_ceil(PART);
            let mut events = events.into_iter();
            (0..parts)
                .map(|n| pb::WatchResponse {
                    // A client that stops after an early part resumes from `from` and sees
                    // the whole delta again (events are idempotent), never a gap.
                    revision: if n + 1 == parts { *to } else { *from },
                    body: Some(pb::watch_response::Body::Events(pb::WatchEvents {
                        events: events.by_ref().take(PART).collect(),
                    })),
                })
                .collect()
        }
    }
}

fn snapshot(scope: &Scope, reason: SnapshotReason, registry: &Registry) -> Vec<pb::WatchResponse> {
    let services: Vec<&Service> = match scope {
        Scope::All => registry
            .namespaces()
            .values()
            .flat_map(|ns| ns.services.values().map(AsRef::as_ref))
            .collect(),
        Scope::Namespace(ns) => registry
            .namespaces()
            .get(ns)
            .map(|ns| ns.services.values().map(AsRef::as_ref).collect())
            .unwrap_or_default(),
        Scope::Service(name) => registry
            .service(name)
            .map(AsRef::as_ref)
            .into_iter()
            .collect(),
    };
    let reason = match reason {
        SnapshotReason::Initial => pb::SnapshotReason::Initial,
        SnapshotReason::Compacted => pb::SnapshotReason::Compacted,
        SnapshotReason::Resync => pb::SnapshotReason::Resync,
    } as i32;
    let empty = || pb::WatchSnapshot {
        reason,
        ..Default::default()
    };
    let mut parts = vec![empty()];
    for service in services {
        let name = ServiceName {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
        };
        let mut part = parts.last_mut().expect("invariant: starts with one part");
        part.services.push(convert::service(service));
        for instance in service.instances.values() {
            if part.instances.len() == PART {
                parts.push(empty());
                part = parts.last_mut().expect("invariant: just pushed");
            }
            part.instances.push(convert::instance(&name, instance));
        }
    }
    if let Some(last) = parts.last_mut() {
        last.complete = true;
    }
    parts
        .into_iter()
        .map(|part| pb::WatchResponse {
            revision: registry.revision(),
            body: Some(pb::watch_response::Body::Snapshot(part)),
        })
        .collect()
}

fn event(service: &ServiceName, e: &crate::watch::Event) -> pb::WatchEvent {
    use pb::WatchEventType as T;
    let (kind, svc, instance) = match &e.kind {
        EventKind::InstanceAdded(i) => (T::InstanceAdded, None, Some(i)),
        EventKind::InstanceUpdated(i) => (T::InstanceUpdated, None, Some(i)),
        EventKind::InstanceRemoved(i) => (T::InstanceRemoved, None, Some(i)),
        EventKind::ServiceCreated(s) => (T::ServiceCreated, Some(s), None),
        EventKind::ServiceDeleted(s) => (T::ServiceDeleted, Some(s), None),
    };
    pb::WatchEvent {
        r#type: kind as i32,
        revision: e.revision,
        service: svc.map(|s| convert::service(s)),
        instance: instance.map(|i| convert::instance(service, i)),
    }
}
