//! [`RateLimiter`]: a token bucket per caller, so one client (a runaway script, a stolen
//! token) cannot take a node's whole capacity. A call over its caller's rate is answered
//! `RESOURCE_EXHAUSTED` at once — never queued — and the caller's bucket refills with time.
//!
//! Callers are keyed by token accessor when ACLs are on, by client IP address otherwise. A
//! stream counts once, when it opens. Buckets of callers gone quiet are swept as the table
//! grows, so the table holds about as many entries as there are active callers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Status;

/// Buckets idle this long are full again and can be forgotten.
const IDLE: Duration = Duration::from_secs(60);

/// Calls per second per caller, with a burst allowance.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<String, Bucket>,
    /// Table size at the last sweep: the next sweep runs once it has doubled.
    swept_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// `per_second` calls per second per caller, up to `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(Table::default()),
        }
    }

    /// Takes one call from `caller`'s bucket, or says RESOURCE_EXHAUSTED.
    pub fn check(&self, caller: &str) -> Result<(), Status> {
        self.check_at(caller, Instant::now())
    }

    fn check_at(&self, caller: &str, now: Instant) -> Result<(), Status> {
        let mut table = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if table.buckets.len() >= 2 * table.swept_at.max(512) {
            table
                .buckets
                .retain(|_, b| now.duration_since(b.last) < IDLE);
            table.swept_at = table.buckets.len();
        }
        let bucket = match table.buckets.get_mut(caller) {
            Some(bucket) => bucket,
            None => table.buckets.entry(caller.to_owned()).or_insert(Bucket {
                tokens: self.burst,
                last: now,
            }),
        };
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "rate limit of {} calls/s exceeded; retry later",
                self.per_second
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let limiter = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.check_at("a", t0).unwrap();
        }
        let err = limiter.check_at("a", t0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("10 calls/s"), "{err:?}");
        // Another caller has its own bucket.
        limiter.check_at("b", t0).unwrap();
        // 100 ms at 10/s refills one call, not more.
        let later = t0 + Duration::from_millis(100);
        limiter.check_at("a", later).unwrap();
        limiter.check_at("a", later).unwrap_err();
        // A long pause refills up to the burst only.
        let much_later = t0 + Duration::from_secs(30);
        for _ in 0..5 {
            limiter.check_at("a", much_later).unwrap();
        }
        limiter.check_at("a", much_later).unwrap_err();
    }

    #[test]
    fn idle_callers_are_forgotten_as_the_table_grows() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        for i in 0..1000 {
            limiter.check_at(&format!("old-{i}"), t0).unwrap();
        }
        let later = t0 + IDLE + Duration::from_secs(1);
        for i in 0..100 {
            limiter.check_at(&format!("new-{i}"), later).unwrap();
        }
        let size = limiter.buckets.lock().unwrap().buckets.len();
        assert!(size <= 100 + 24, "{size} buckets kept");
    }
}
