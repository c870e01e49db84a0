//! Outlier ejection: an endpoint whose tries fail `consecutive_failures` times in a row (connect
//! errors, resets, timeouts, 5xx) is taken out of balancing for `base_ejection × times ejected`,
//! unless that would eject more than `max_ejection_percent` of the subset it failed in.
//!
//! Time is always passed in (`now`), so tests drive a clock of their own. The ejection
//! multiplier drops by one for every `base_ejection` an endpoint stayed in since its last
//! readmission (Envoy's rule), so a flapping endpoint stays out longer and longer while one that
//! recovered goes back to short ejections. An ejection lasts at most
//! `max(base_ejection, MAX_EJECTION)`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::Endpoint;
use crate::config::OutlierPolicy;

/// Envoy's default cap on one ejection, so an endpoint that flapped all night is not out for
/// hours once it is fixed.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// One endpoint's failure streak and ejection record.
#[derive(Debug, Default, Clone)]
pub(crate) struct OutlierState {
    consecutive_failures: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    ejections: u64,
}

/// The result of one try, for outlier bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryResult {
    Success,
    Failure,
}

// === impl OutlierState ===

impl OutlierState {
    /// Whether the endpoint is out of balancing at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Times ejected over the endpoint's life (for `/config`).
    pub(crate) fn ejections(&self) -> u64 {
        self.ejections
    }

    fn eject(&mut self, policy: &OutlierPolicy, now: Instant) -> Duration {
        if let Some(until) = self.ejected_until {
            let stayed = now.saturating_duration_since(until);
            let forgiven = stayed.as_nanos() / policy.base_ejection.as_nanos().max(1);
            self.times_ejected = self
                .times_ejected
                .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX));
        }
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.ejections += 1;
        self.consecutive_failures = 0;
        let duration = policy
            .base_ejection
            .saturating_mul(self.times_ejected)
            .min(policy.base_ejection.max(MAX_EJECTION));
        self.ejected_until = Some(now + duration);
        duration
    }
}

/// Records one try's result on `endpoint`, which was picked from `subset`; ejects it when the
/// streak reaches the threshold and the subset's cap allows. Returns the ejection's length.
///
/// The cap is checked without a subset-wide lock, so two endpoints crossing the threshold at the
/// same instant may both be ejected: the cap is a guard against ejecting a whole subset, and a
/// rare one-endpoint overshoot does not defeat that.
pub(crate) fn record(
    policy: Option<&OutlierPolicy>,
    subset: &[Arc<Endpoint>],
    endpoint: &Endpoint,
    result: TryResult,
    now: Instant,
) -> Option<Duration> {
    let policy = policy?;
    {
        let mut state = endpoint.outlier();
        match result {
            TryResult::Success => {
                state.consecutive_failures = 0;
                return None;
            }
            TryResult::Failure => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                if state.consecutive_failures < policy.consecutive_failures || state.is_ejected(now)
                {
                    return None;
                }
            }
        }
    }
    let ejected = subset
        .iter()
        .filter(|e| !std::ptr::eq(e.as_ref(), endpoint) && e.is_ejected(now))
        .count();
    // (ejected + 1) / len ≤ percent / 100, in integers.
    if (ejected + 1) * 100 > policy.max_ejection_percent as usize * subset.len() {
        return None;
    }
    let mut state = endpoint.outlier();
    endpoint.mark_ejected();
    Some(state.eject(policy, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn endpoints(n: usize, now: Instant) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 8000 + i).parse().unwrap();
                Arc::new(Endpoint::new(format!("i-{i}"), addr, Protocol::Http1, now))
            })
            .collect()
    }

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        }
    }

    fn fail(p: &OutlierPolicy, set: &[Arc<Endpoint>], i: usize, now: Instant) -> Option<Duration> {
        record(Some(p), set, &set[i], TryResult::Failure, now)
    }

    #[test]
    fn consecutive_failures_eject_and_time_readmits() {
        let t0 = Instant::now();
        let set = endpoints(4, t0);
        let p = policy();
        assert_eq!(fail(&p, &set, 0, t0), None);
        assert_eq!(fail(&p, &set, 0, t0), None);
        assert_eq!(fail(&p, &set, 0, t0), Some(Duration::from_secs(10)));
        assert!(set[0].is_ejected(t0 + Duration::from_secs(9)));
        assert!(!set[0].is_ejected(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let t0 = Instant::now();
        let set = endpoints(4, t0);
        let p = policy();
        fail(&p, &set, 1, t0);
        fail(&p, &set, 1, t0);
        assert_eq!(
            record(Some(&p), &set, &set[1], TryResult::Success, t0),
            None
        );
        assert_eq!(fail(&p, &set, 1, t0), None);
        assert!(!set[1].is_ejected(t0));
    }

    #[test]
    fn repeated_ejections_last_longer_and_recovery_forgives() {
        let t0 = Instant::now();
        let set = endpoints(2, t0);
        let p = policy();
        for _ in 0..3 {
            fail(&p, &set, 0, t0);
        }
        // Readmitted at t0+10 s, fails again at once: 2 × base.
        let t1 = t0 + Duration::from_secs(10);
        fail(&p, &set, 0, t1);
        fail(&p, &set, 0, t1);
        assert_eq!(fail(&p, &set, 0, t1), Some(Duration::from_secs(20)));
        // Readmitted at t1+20 s; stays in for 100 s (10 × base): back to 1 × base.
        let t2 = t1 + Duration::from_secs(120);
        fail(&p, &set, 0, t2);
        fail(&p, &set, 0, t2);
        assert_eq!(fail(&p, &set, 0, t2), Some(Duration::from_secs(10)));
    }

    #[test]
    fn max_ejection_percent_caps_the_subset() {
        let t0 = Instant::now();
        let set = endpoints(4, t0);
        let p = policy();
        let mut ejected = 0;
        for i in 0..4 {
            for _ in 0..3 {
                if fail(&p, &set, i, t0).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50 % of 4 endpoints");
        assert_eq!(set.iter().filter(|e| e.is_ejected(t0)).count(), 2);
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected_at_50_percent() {
        let t0 = Instant::now();
        let set = endpoints(1, t0);
        let p = policy();
        for _ in 0..10 {
            assert_eq!(fail(&p, &set, 0, t0), None);
        }
    }

    #[test]
    fn disabled_policy_never_ejects() {
        let t0 = Instant::now();
        let set = endpoints(2, t0);
        for _ in 0..10 {
            assert_eq!(record(None, &set, &set[0], TryResult::Failure, t0), None);
        }
        assert!(!set[0].is_ejected(t0));
    }
}
