//! One endpoint's live state: requests in flight, the peak-EWMA latency estimate and the outlier
//! state. Shared (`Arc`) by every subset the endpoint belongs to and carried over from one
//! config to the next while the instance stays (same id, address and protocol), so a config
//! push neither forgets a slow endpoint nor readmits an ejected one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Protocol;
use crate::outlier::OutlierState;
use crate::pool::Http1Pool;

/// The estimate of an endpoint nothing has been measured on yet (Linkerd's default): high
/// enough that a new endpoint does not attract all traffic before its first response.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency observations fade (Linkerd's default decay window).
const DECAY: Duration = Duration::from_secs(10);

/// A routable endpoint and its load/health bookkeeping.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Protocol,
    /// `addr` as a URI authority, built once: the upstream request's target and pool key.
    pub(crate) authority: http::uri::Authority,
    /// `Host` for an HTTP/1.1 request that came without one (as the legacy client set it).
    pub(crate) host: http::HeaderValue,
    /// Idle HTTP/1.1 connections to this endpoint.
    http1: Http1Pool,
    in_flight: AtomicUsize,
    rtt: Mutex<PeakEwma>,
    outlier: Mutex<OutlierState>,
    /// Set at the first ejection and never cleared: endpoints never ejected (nearly all) answer
    /// `is_ejected` without taking the outlier lock.
    ever_ejected: AtomicBool,
}

/// Peak-EWMA latency (tower's `PeakEwma`): a slower observation replaces the estimate at once;
/// faster ones blend in with weight `1 - e^(-elapsed/decay)`; idle endpoints decay toward 0 so
/// they get probed again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    rtt_ns: f64,
    updated: Instant,
}

/// Held while a request is in flight on an endpoint (until its response body is dropped).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

// === impl Endpoint ===

impl Endpoint {
    pub(crate) fn new(id: String, addr: SocketAddr, protocol: Protocol, now: Instant) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string())
            .expect("invariant: a socket address is a valid URI authority");
        let host = match addr.port() {
            80 => addr.ip().to_string(),
            _ => addr.to_string(),
        };
        let host = http::HeaderValue::try_from(host)
            .expect("invariant: a socket address is a valid header value");
        Self {
            id,
            addr,
            protocol,
            authority,
            host,
            http1: Http1Pool::default(),
            in_flight: AtomicUsize::new(0),
            rtt: Mutex::new(PeakEwma::new(DEFAULT_RTT, now)),
            outlier: Mutex::new(OutlierState::default()),
            ever_ejected: AtomicBool::new(false),
        }
    }

    /// Requests sent to this endpoint whose responses are not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one more request in flight until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// P2C-EWMA's cost: decayed peak latency × (requests in flight + 1).
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        let rtt = lock(&self.rtt).estimate(now);
        rtt * (self.in_flight() as f64 + 1.0)
    }

    /// The current latency estimate (for `/config`).
    pub(crate) fn ewma(&self, now: Instant) -> Duration {
        Duration::from_nanos(lock(&self.rtt).estimate(now) as u64)
    }

    /// Feeds one observed latency (request sent → response head or failure).
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        lock(&self.rtt).observe(rtt, now);
    }

    /// The endpoint's idle HTTP/1.1 connections.
    pub(crate) fn http1_pool(&self) -> &Http1Pool {
        &self.http1
    }

    /// The outlier state, locked briefly.
    pub(crate) fn outlier(&self) -> MutexGuard<'_, OutlierState> {
        lock(&self.outlier)
    }

    /// Whether the endpoint is ejected at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ever_ejected.load(Ordering::Acquire) && self.outlier().is_ejected(now)
    }

    /// Called (with the outlier lock held) by whoever ejects the endpoint.
    pub(crate) fn mark_ejected(&self) {
        self.ever_ejected.store(true, Ordering::Release);
    }
}

/// A poisoned lock only means a panic elsewhere while holding plain numbers: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl PeakEwma ===

impl PeakEwma {
    pub(crate) fn new(initial: Duration, now: Instant) -> Self {
        Self {
            rtt_ns: initial.as_nanos() as f64,
            updated: now,
        }
    }

    /// The estimate decayed to `now`, in nanoseconds.
    pub(crate) fn estimate(&self, now: Instant) -> f64 {
        self.rtt_ns * decay(now.saturating_duration_since(self.updated))
    }

    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.rtt_ns {
            self.rtt_ns = rtt;
        } else {
            let w = decay(now.saturating_duration_since(self.updated));
            self.rtt_ns = self.rtt_ns * w + rtt * (1.0 - w);
        }
        self.updated = now;
    }
}

fn decay(elapsed: Duration) -> f64 {
    (-(elapsed.as_nanos() as f64) / DECAY.as_nanos() as f64).exp()
}

// === impl InFlight ===

impl InFlight {
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_replaces_and_fast_blends() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(10), t0);
        e.observe(Duration::from_millis(50), t0);
        assert_eq!(e.estimate(t0), 50e6);
        // A fast observation a decay window later moves the estimate most of the way down.
        let t1 = t0 + DECAY;
        e.observe(Duration::from_millis(1), t1);
        let est = e.estimate(t1);
        assert!(est < 50e6 * 0.5 && est > 1e6, "{est}");
    }

    #[test]
    fn idle_estimate_decays() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(100), t0);
        assert!(e.estimate(t0 + DECAY * 5) < e.estimate(t0) / 100.0);
    }

    #[test]
    fn in_flight_guard_counts() {
        let ep = Arc::new(Endpoint::new(
            "i-1".into(),
            "127.0.0.1:1".parse().unwrap(),
            Protocol::Http1,
            Instant::now(),
        ));
        let a = ep.start();
        let b = ep.start();
        assert_eq!(ep.in_flight(), 2);
        drop(a);
        assert_eq!(ep.in_flight(), 1);
        drop(b);
        assert_eq!(ep.in_flight(), 0);
    }
}
