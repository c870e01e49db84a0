//! Whether an HTTP/1.1 connection may start another exchange: the handshake between a
//! connection and its listener's drain, in one atomic per connection (no lock, no waker on
//! the request path).
//!
//! The connection enters the gate when it has a request head and leaves it when the response
//! is written; the drain closes the gate of an idle connection (which the listener then
//! aborts: nothing is in flight on it) and marks a busy one, which closes after its response.

use std::sync::atomic::{AtomicU8, Ordering};

const IDLE: u8 = 0;
const BUSY: u8 = 1;
/// Busy, and told to close after its response.
const DRAINING: u8 = 2;
const CLOSED: u8 = 3;

/// One connection's gate.
#[derive(Debug, Default)]
pub(crate) struct Gate(AtomicU8);

// === impl Gate ===

impl Gate {
    /// An exchange starts; false: the drain closed the connection first.
    pub(crate) fn enter(&self) -> bool {
        self.0
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The exchange ended; false: the drain asked the connection to close.
    pub(crate) fn leave(&self) -> bool {
        self.0
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The connection is to close after its current exchange.
    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) >= DRAINING
    }

    /// The drain: closes an idle connection's gate (true: the connection may be cut at once,
    /// nothing is in flight on it) or tells a busy one to close after its exchange (false).
    pub(crate) fn drain(&self) -> bool {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE | CLOSED => CLOSED,
                _ => DRAINING,
            };
            match self
                .0
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next == CLOSED,
                Err(now) => state = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_closed_and_a_busy_one_finishes_first() {
        let idle = Gate::default();
        assert!(idle.drain());
        assert!(!idle.enter(), "no exchange starts after the drain");

        let busy = Gate::default();
        assert!(busy.enter());
        assert!(!busy.is_draining());
        assert!(!busy.drain());
        assert!(busy.is_draining());
        assert!(!busy.leave(), "it closes after its exchange");

        let kept = Gate::default();
        assert!(kept.enter() && kept.leave() && kept.enter());
    }
}
