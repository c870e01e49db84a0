//! Choosing an endpoint inside a subset: the per-service policy (P2C over peak-EWMA, round
//! robin, least request, ring hash) applied to the subset's healthy endpoints.
//!
//! Why not tower's `p2c::Balance`: it is a `Service` over a `Discover` stream that owns its
//! endpoints and picks on readiness. Here one request first picks a subset by weight, then an
//! endpoint inside it, and a retry must avoid the endpoints it already tried; ejected endpoints
//! leave and come back on a clock; and endpoint state must outlive a config swap while in-flight
//! requests keep theirs. So the same algorithm (two random picks, the lower of peak-EWMA latency
//! × (in flight + 1), tower's `PeakEwma` decay) is implemented over our own [`Endpoint`] state
//! in [`p2c_ewma`], a few dozen lines.
//!
//! Eligibility falls back in steps so that a request is never refused while any healthy
//! endpoint exists: not ejected and not yet tried by this request → not ejected → any healthy
//! endpoint (every one ejected or tried: Envoy's "panic mode").

mod endpoint;
mod least_request;
mod p2c_ewma;
mod ring_hash;
mod round_robin;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

pub(crate) use endpoint::{Endpoint, InFlight};
pub(crate) use ring_hash::hash_bytes;

use crate::config::LoadBalancer;
use ring_hash::Ring;

/// The healthy endpoints of one subset, with what its policy needs (a ring, a counter).
#[derive(Debug)]
pub(crate) struct Pool {
    policy: LoadBalancer,
    endpoints: Vec<Arc<Endpoint>>,
    ring: Option<Ring>,
    next: AtomicUsize,
}

/// What a pick may depend on besides the pool.
#[derive(Debug)]
pub(crate) struct PickContext<'a> {
    /// Ring hash key (client IP or the hash header), when the policy is ring hash.
    pub(crate) hash: Option<u64>,
    /// Endpoints this request already tried: avoided while others are available.
    pub(crate) tried: &'a [Arc<Endpoint>],
    pub(crate) now: Instant,
}

// === impl Pool ===

impl Pool {
    /// `endpoints`: the subset's healthy endpoints, in a stable order.
    pub(crate) fn new(policy: LoadBalancer, endpoints: Vec<Arc<Endpoint>>) -> Self {
        let ring = matches!(policy, LoadBalancer::RingHash { .. }).then(|| Ring::new(&endpoints));
        Self {
            policy,
            endpoints,
            ring,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Picks an endpoint, or `None` when the subset has no healthy endpoint.
    pub(crate) fn pick(
        &self,
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<Arc<Endpoint>> {
        let untried = |e: &Endpoint| !ctx.tried.iter().any(|t| std::ptr::eq(t.as_ref(), e));
        if self.ring.is_none()
            && let Some(found) = self.sample(&|e| !e.is_ejected(ctx.now) && untried(e), ctx, rng)
        {
            return Some(found);
        }
        let steps: [&dyn Fn(&Endpoint) -> bool; 3] = [
            &|e| !e.is_ejected(ctx.now) && untried(e),
            &|e| !e.is_ejected(ctx.now),
            &|_| true,
        ];
        for eligible in steps {
            if let Some(found) = self.pick_among(eligible, ctx, rng) {
                return Some(found);
            }
        }
        None
    }

    /// The common case without a scan (nor an allocation): P2C draws its two endpoints from the
    /// whole subset and keeps them if both are eligible (the only one, in a subset of one);
    /// round robin walks on from its counter to the next eligible one. `None` sends the caller
    /// to the filtering steps.
    fn sample(
        &self,
        eligible: &dyn Fn(&Endpoint) -> bool,
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        match self.policy {
            // A subset of one (a canary, a small service): nothing to compare.
            LoadBalancer::P2cEwma | LoadBalancer::LeastRequest if n == 1 => {
                let only = &self.endpoints[0];
                eligible(only).then(|| Arc::clone(only))
            }
            LoadBalancer::P2cEwma | LoadBalancer::LeastRequest if n >= 2 => {
                let (a, b) = two_indices(n, rng);
                let pair = [&self.endpoints[a], &self.endpoints[b]];
                if !(eligible(pair[0]) && eligible(pair[1])) {
                    return None;
                }
                let chosen = match self.policy {
                    LoadBalancer::P2cEwma => p2c_ewma::pick(&pair, rng, ctx.now),
                    _ => least_request::pick(&pair, rng),
                };
                Some(Arc::clone(chosen))
            }
            LoadBalancer::RoundRobin => {
                let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (0..n)
                    .map(|k| &self.endpoints[start.wrapping_add(k) % n])
                    .find(|e| eligible(e))
                    .cloned()
            }
            _ => None,
        }
    }

    fn pick_among(
        &self,
        eligible: &dyn Fn(&Endpoint) -> bool,
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<Arc<Endpoint>> {
        if let (Some(ring), Some(hash)) = (&self.ring, ctx.hash) {
            return ring.pick(hash, &self.endpoints, eligible).cloned();
        }
        let candidates: Vec<&Arc<Endpoint>> =
            self.endpoints.iter().filter(|e| eligible(e)).collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.policy {
            LoadBalancer::P2cEwma => p2c_ewma::pick(&candidates, rng, ctx.now),
            LoadBalancer::LeastRequest => least_request::pick(&candidates, rng),
            LoadBalancer::RoundRobin => round_robin::pick(&candidates, &self.next),
            // Ring hash without a key (cannot happen: the client IP is always known): random.
            LoadBalancer::RingHash { .. } => candidates[rng.usize(..candidates.len())],
        };
        Some(Arc::clone(chosen))
    }
}

/// Two distinct random indices below `n` (n ≥ 2).
fn two_indices(n: usize, rng: &mut fastrand::Rng) -> (usize, usize) {
    let a = rng.usize(..n);
    let mut b = rng.usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
mod tests;
