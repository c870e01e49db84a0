//! Round robin: each pick takes the next eligible endpoint in the subset's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Endpoint;

/// `candidates` is non-empty.
pub(super) fn pick<'a>(candidates: &[&'a Arc<Endpoint>], next: &AtomicUsize) -> &'a Arc<Endpoint> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    candidates[i % candidates.len()]
}
