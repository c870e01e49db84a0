//! One proxy's stream, after its hello: subscriptions, acks, and the pushes to send.
//!
//! The hub marks changed services in the stream's [`Outbox`] together with the registry they
//! changed in, and wakes the stream; the stream takes everything marked at once and builds one
//! push from the latest registry. Marks coalesce, so the outbox never holds more than the
//! stream's subscriptions, however slowly the proxy reads.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{
    Cmd, DiscoveryError, DiscoveryHandle, MAX_NACK_ERROR, MAX_SERVICES_PER_MESSAGE,
    MAX_SUBSCRIPTIONS, ProxyStatus, Push, ServiceState,
};
use crate::registry::{Registry, ServiceName};

/// What a proxy says about itself first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// Unique per proxy process; 1 to 253 printable bytes.
    pub proxy_id: String,
    /// The service it fronts (informational; empty for an ingress).
    pub service_name: String,
    /// Its build.
    pub build: String,
}

/// One stream's state. Dropping it unsubscribes everything and removes the proxy from the
/// table.
#[derive(Debug)]
pub struct Session {
    id: u64,
    handle: DiscoveryHandle,
    outbox: Arc<Outbox>,
    subscriptions: BTreeSet<ServiceName>,
    sent: u64,
}

/// Where the hub leaves work for one stream.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    services: BTreeSet<ServiceName>,
    /// The registry the latest mark came from (every marked service is current in it).
    registry: Option<Arc<Registry>>,
    closed: bool,
}

// === impl Hello ===

impl Hello {
    /// Checks the fields (names as the proto spells them, under `hello.`).
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        let printable = |field: &str, value: &str, min: usize, max: usize| {
            if value.len() < min || value.len() > max {
                return Err(DiscoveryError::invalid(
                    field,
                    format!("must be {min}-{max} bytes, is {}", value.len()),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(DiscoveryError::invalid(
                    field,
                    "contains a control character",
                ));
            }
            Ok(())
        };
        printable("hello.proxy_id", &self.proxy_id, 1, 253)?;
        printable("hello.service_name", &self.service_name, 0, 253)?;
        printable("hello.build", &self.build, 0, 256)
    }
}

// === impl Session ===

impl Session {
    /// Registers a proxy after its (validated) hello. `remote` is its address as seen here.
    pub async fn open(
        handle: &DiscoveryHandle,
        hello: Hello,
        remote: String,
    ) -> Result<Self, DiscoveryError> {
        hello.validate()?;
        let id = handle.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        handle
            .cmds
            .send(Cmd::Open {
                id,
                outbox: Arc::clone(&outbox),
            })
            .await
            .map_err(|_| DiscoveryError::Stopped)?;
        let connected_at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tracing::debug!(stream = id, proxy = %hello.proxy_id, %remote, "proxy connected");
        handle.proxies.insert(
            id,
            ProxyStatus {
                proxy_id: hello.proxy_id,
                service_name: hello.service_name,
                build: hello.build,
                node_id: handle.node_id,
                remote_address: remote,
                connected_at_unix_ms,
                services: BTreeSet::new(),
                sent_version: 0,
                acked_version: 0,
                rejected_version: 0,
                rejected_error: String::new(),
            },
        );
        Ok(Self {
            id,
            handle: handle.clone(),
            outbox,
            subscriptions: BTreeSet::new(),
            sent: 0,
        })
    }

    /// Follows `services` (already validated names); their current state is pushed at once,
    /// also for services already followed (a proxy may ask again).
    pub async fn subscribe(&mut self, services: Vec<ServiceName>) -> Result<(), DiscoveryError> {
        if services.len() > MAX_SERVICES_PER_MESSAGE {
            return Err(DiscoveryError::invalid(
                "subscribe.services",
                format!(
                    "{} names; at most {MAX_SERVICES_PER_MESSAGE} per message",
                    services.len()
                ),
            ));
        }
        let new = services
            .iter()
            .filter(|s| !self.subscriptions.contains(*s))
            .collect::<BTreeSet<_>>()
            .len();
        if self.subscriptions.len() + new > MAX_SUBSCRIPTIONS {
            return Err(DiscoveryError::invalid(
                "subscribe.services",
                format!("a stream may follow at most {MAX_SUBSCRIPTIONS} services"),
            ));
        }
        if services.is_empty() {
            return Ok(());
        }
        self.subscriptions.extend(services.iter().cloned());
        let all = self.subscriptions.clone();
        self.handle
            .proxies
            .update(self.id, true, |p| p.services = all);
        self.handle
            .cmds
            .send(Cmd::Subscribe {
                id: self.id,
                services,
            })
            .await
            .map_err(|_| DiscoveryError::Stopped)
    }

    /// Stops following `services`; names not followed are ignored.
    pub async fn unsubscribe(&mut self, services: Vec<ServiceName>) -> Result<(), DiscoveryError> {
        if services.len() > MAX_SERVICES_PER_MESSAGE {
            return Err(DiscoveryError::invalid(
                "unsubscribe.services",
                format!(
                    "{} names; at most {MAX_SERVICES_PER_MESSAGE} per message",
                    services.len()
                ),
            ));
        }
        for s in &services {
            self.subscriptions.remove(s);
        }
        let all = self.subscriptions.clone();
        self.handle
            .proxies
            .update(self.id, true, |p| p.services = all);
        self.handle
            .cmds
            .send(Cmd::Unsubscribe {
                id: self.id,
                services,
            })
            .await
            .map_err(|_| DiscoveryError::Stopped)
    }

    /// The proxy applied `version`. A version never sent, or older than one acknowledged
    /// already, is ignored (acks may cross pushes on the wire).
    pub fn ack(&mut self, version: u64) {
        if version > self.sent {
            tracing::debug!(stream = self.id, version, "ack of a version never sent");
            return;
        }
        self.handle.proxies.update(self.id, true, |p| {
            p.acked_version = p.acked_version.max(version);
        });
    }

    /// The proxy refused `version` and keeps its last good config.
    pub fn nack(&mut self, version: u64, mut error: String) {
        if version > self.sent {
            tracing::debug!(stream = self.id, version, "nack of a version never sent");
            return;
        }
        if error.len() > MAX_NACK_ERROR {
            let mut end = MAX_NACK_ERROR;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        tracing::debug!(stream = self.id, version, %error, "proxy rejected a version");
        self.handle.proxies.update(self.id, true, |p| {
            if version >= p.rejected_version {
                p.rejected_version = version;
                p.rejected_error = error;
            }
        });
    }

    /// The next push: waits until the hub marks a followed service. `None` once the hub stopped.
    /// Cancel-safe: a mark made while nobody waits is kept (and its wake-up too).
    pub async fn next_push(&mut self) -> Option<Push> {
        loop {
            match self.outbox.take() {
                Taken::Push(registry, services) => {
                    let version = registry.revision();
                    // A mark made just before an unsubscribe reached the hub is dropped here:
                    // a proxy never gets a service it does not follow.
                    let states: Vec<ServiceState> = services
                        .into_iter()
                        .filter(|name| self.subscriptions.contains(name))
                        .map(|name| ServiceState {
                            service: registry.service(&name).ok().cloned(),
                            name,
                        })
                        .collect();
                    if !states.is_empty() {
                        return Some(Push { version, states });
                    }
                }
                Taken::Closed => return None,
                Taken::Nothing => self.outbox.notify.notified().await,
            }
        }
    }

    /// Records that the push of `version` was handed to the transport.
    pub fn sent(&mut self, version: u64) {
        self.sent = self.sent.max(version);
        let sent = self.sent;
        self.handle
            .proxies
            .update(self.id, false, |p| p.sent_version = sent);
    }

    /// The services this stream follows.
    pub fn subscriptions(&self) -> &BTreeSet<ServiceName> {
        &self.subscriptions
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tracing::debug!(stream = self.id, "proxy disconnected");
        self.handle.proxies.remove(self.id);
        // If the hub is gone there is nobody to tell.
        let _ = self.handle.closes.send(self.id);
    }
}

enum Taken {
    Push(Arc<Registry>, BTreeSet<ServiceName>),
    Closed,
    Nothing,
}

// === impl Outbox ===

impl Outbox {
    /// Marks `services` as changed in `registry` and wakes the stream.
    pub(super) fn mark(
        &self,
        services: impl IntoIterator<Item = ServiceName>,
        registry: &Arc<Registry>,
    ) {
        {
            let mut p = self.lock();
            p.services.extend(services);
            p.registry = Some(Arc::clone(registry));
        }
        self.notify.notify_one();
    }

    /// Forgets marks of services no longer followed.
    pub(super) fn forget(&self, services: &[ServiceName]) {
        let mut p = self.lock();
        for s in services {
            p.services.remove(s);
        }
    }

    /// Ends the stream (the hub is stopping).
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    fn take(&self) -> Taken {
        let mut p = self.lock();
        if p.closed {
            return Taken::Closed;
        }
        if p.services.is_empty() {
            return Taken::Nothing;
        }
        let services = std::mem::take(&mut p.services);
        match p.registry.clone() {
            Some(registry) => Taken::Push(registry, services),
            None => Taken::Nothing,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .expect("invariant: an outbox lock is never held across a panic")
    }
}
