//! Power of two choices over peak-EWMA latency (Linkerd's and tower's balancer): two random
//! picks, the one with the lower `decayed peak latency × (in flight + 1)`.

use std::sync::Arc;
use std::time::Instant;

use super::{Endpoint, two_indices};

/// `candidates` is non-empty.
pub(super) fn pick<'a>(
    candidates: &[&'a Arc<Endpoint>],
    rng: &mut fastrand::Rng,
    now: Instant,
) -> &'a Arc<Endpoint> {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let (a, b) = two_indices(candidates.len(), rng);
    let (a, b) = (candidates[a], candidates[b]);
    if b.cost(now) < a.cost(now) { b } else { a }
}
