//! Least outstanding requests: two random picks, the one with fewer requests in flight (power of
//! two choices avoids the herd a global minimum causes when many pick at once).

use std::sync::Arc;

use super::{Endpoint, two_indices};

/// `candidates` is non-empty.
pub(super) fn pick<'a>(
    candidates: &[&'a Arc<Endpoint>],
    rng: &mut fastrand::Rng,
) -> &'a Arc<Endpoint> {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let (a, b) = two_indices(candidates.len(), rng);
    let (a, b) = (candidates[a], candidates[b]);
    if b.in_flight() < a.in_flight() { b } else { a }
}
