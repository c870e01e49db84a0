//! The discovery client: one bidirectional `meridian.v1.Discovery/Stream` to the control plane,
//! feeding the routing table the data path reads.
//!
//! - [`client`] runs the stream: hello, subscribe, apply, ack/nack; reconnects with backoff over
//!   every listed control-plane URL and re-subscribes to everything on each new stream.
//! - [`apply`] turns one `DiscoveryResponse` into a new [`Table`] (all or nothing) and the
//!   Ack/Nack to send back.
//! - [`Discovery`] is the data path's and admin's handle: the current table, readiness, and
//!   subscribe-on-demand for services first seen in traffic.
//!
//! Fail static: the table is only ever replaced by a newer good config, never cleared, so while
//! no control plane answers the proxy keeps routing on what it last applied.

pub(crate) mod apply;
pub(crate) mod client;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::table::{ServiceTable, Table};

/// The data path's view of discovery.
#[derive(Debug, Clone)]
pub(crate) struct Discovery {
    table: watch::Receiver<Arc<Table>>,
    subscribe: mpsc::UnboundedSender<String>,
    status: Arc<Status>,
}

/// What `/ready` and `/config` report about the stream.
#[derive(Debug, Default)]
pub(crate) struct Status {
    connected: AtomicBool,
    ready: AtomicBool,
    /// The URL of the control plane currently (or last) streamed from.
    url: Mutex<Option<String>>,
    /// The last reason a stream failed or an update was rejected.
    last_error: Mutex<Option<String>>,
}

// === impl Discovery ===

impl Discovery {
    pub(crate) fn new(
        table: watch::Receiver<Arc<Table>>,
        subscribe: mpsc::UnboundedSender<String>,
        status: Arc<Status>,
    ) -> Self {
        Self {
            table,
            subscribe,
            status,
        }
    }

    /// The table as of now.
    pub(crate) fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.borrow())
    }

    pub(crate) fn status(&self) -> &Status {
        &self.status
    }

    /// The service's table; if it is not known yet, subscribes and waits up to `patience` for
    /// its first state (not at all while no stream is up: fail static answers at once).
    pub(crate) async fn service(
        &self,
        name: &str,
        patience: Duration,
    ) -> Option<Arc<ServiceTable>> {
        if let Some(found) = self.table.borrow().services.get(name) {
            return Some(Arc::clone(found));
        }
        let mut table = self.table.clone();
        if let Some(found) = table.borrow_and_update().services.get(name) {
            return Some(Arc::clone(found));
        }
        // The client dedups; a send error means it stopped (shutdown): nothing to wait for.
        self.subscribe.send(name.to_owned()).ok()?;
        if !self.status.is_connected() {
            return None;
        }
        let wait = async {
            loop {
                table.changed().await.ok()?;
                if let Some(found) = table.borrow_and_update().services.get(name) {
                    return Some(Arc::clone(found));
                }
            }
        };
        tokio::time::timeout(patience, wait).await.ok().flatten()
    }
}

// === impl Status ===

impl Status {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn url(&self) -> Option<String> {
        self.url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_connected(&self, url: Option<&str>) {
        self.connected.store(url.is_some(), Ordering::Release);
        if let Some(url) = url {
            *self
                .url
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url.to_owned());
        }
    }

    fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn set_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }
}
