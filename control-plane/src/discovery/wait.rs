//! Waiting until the proxies that follow a service run a given revision of it.
//!
//! A proxy has applied revision R of service S when it acknowledged a version V ≥ T, where T
//! is the first version that carries S as of R: R itself in general, or S's current
//! `mod_revision` if that is not later than R and this node has applied R (S has not changed
//! since, so any version from its `mod_revision` on carries the same state). The second case
//! matters when R was a write to another service, or a no-op: no push of S would ever carry
//! a version ≥ R. A proxy that rejected a version ≥ T (after its last ack) counts as rejected.
//!
//! The wait sleeps on the proxy table's change counter and on new views (an ack, a rejection,
//! a departure or an applied write can each end it), never on a timer loop.

use std::time::Duration;

use tokio::time::Instant;

use super::{DiscoveryHandle, ProxyStatus};
use crate::registry::ServiceName;

/// How a wait ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Proxies following the service.
    pub subscribed: u32,
    /// Of those, the ones that applied the revision.
    pub applied: u32,
    /// The ones that rejected it.
    pub rejected: Vec<ProxyStatus>,
    /// The ones still behind when the wait ended.
    pub pending: Vec<ProxyStatus>,
}

// === impl DiscoveryHandle ===

impl DiscoveryHandle {
    /// Waits until every proxy connected here that follows `service` has applied `revision`
    /// or rejected it, or `timeout` passed; reports who is where.
    pub async fn wait_applied(
        &self,
        service: &ServiceName,
        revision: u64,
        timeout: Duration,
    ) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        let mut changes = self.proxies.changes();
        let mut views = self.views.clone();
        loop {
            // Mark both as seen before looking, so a change during the look wakes us.
            changes.borrow_and_update();
            views.borrow_and_update();
            if self
                .proxies
                .pending(service, self.target(service, revision))
                == 0
            {
                break;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = views.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.evaluate(service, revision)
    }

    /// The first version that carries `service` as of `revision` (see the module doc).
    fn target(&self, service: &ServiceName, revision: u64) -> u64 {
        let view = self.views.borrow();
        match view.registry.service(service) {
            Ok(s) if view.registry.revision() >= revision => s.mod_revision.min(revision),
            _ => revision,
        }
    }

    /// Where the proxies following `service` stand with `revision`, right now.
    pub fn evaluate(&self, service: &ServiceName, revision: u64) -> WaitOutcome {
        let target = self.target(service, revision);
        let mut outcome = WaitOutcome::default();
        for proxy in self.proxies.subscribed_to(service) {
            outcome.subscribed += 1;
            if proxy.acked_version >= target {
                outcome.applied += 1;
            } else if proxy.rejected_version >= target {
                outcome.rejected.push(proxy);
            } else {
                outcome.pending.push(proxy);
            }
        }
        outcome
    }
}
