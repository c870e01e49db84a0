use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::config::{OutlierPolicy, Protocol};
use crate::outlier::{self, TryResult};

fn endpoints(n: usize, now: Instant) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
            Arc::new(Endpoint::new(format!("i-{i}"), addr, Protocol::Http1, now))
        })
        .collect()
}

fn ctx(now: Instant) -> PickContext<'static> {
    PickContext {
        hash: None,
        tried: &[],
        now,
    }
}

fn ids(picks: &[Arc<Endpoint>]) -> Vec<&str> {
    picks.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn round_robin_cycles_in_order() {
    let now = Instant::now();
    let pool = Pool::new(LoadBalancer::RoundRobin, endpoints(3, now));
    let mut rng = fastrand::Rng::with_seed(1);
    let picks: Vec<_> = (0..6)
        .map(|_| pool.pick(&ctx(now), &mut rng).unwrap())
        .collect();
    assert_eq!(ids(&picks), ["i-0", "i-1", "i-2", "i-0", "i-1", "i-2"]);
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let now = Instant::now();
    let eps = endpoints(2, now);
    let _busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
    let pool = Pool::new(LoadBalancer::LeastRequest, eps);
    let mut rng = fastrand::Rng::with_seed(2);
    for _ in 0..100 {
        assert_eq!(pool.pick(&ctx(now), &mut rng).unwrap().id, "i-1");
    }
}

#[test]
fn p2c_ewma_prefers_the_faster_endpoint() {
    let now = Instant::now();
    let eps = endpoints(3, now);
    eps[0].observe(Duration::from_millis(200), now);
    eps[1].observe(Duration::from_millis(200), now);
    // i-2 keeps the 30 ms default: with two of three picked at random, it is in the pair 2/3 of
    // the time and wins every time it is.
    let pool = Pool::new(LoadBalancer::P2cEwma, eps);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..3000 {
        *counts
            .entry(pool.pick(&ctx(now), &mut rng).unwrap().id.clone())
            .or_default() += 1;
    }
    let fast = counts["i-2"];
    // Expected 2000, sd = sqrt(3000 × 2/3 × 1/3) ≈ 25.8: 4 sigma ≈ 103.
    assert!((1897..=2103).contains(&fast), "{counts:?}");
}

#[test]
fn p2c_ewma_counts_requests_in_flight() {
    let now = Instant::now();
    let eps = endpoints(2, now);
    // Same latency; i-0 has 3 requests in flight, so its cost is 4×.
    let _busy: Vec<_> = (0..3).map(|_| eps[0].start()).collect();
    let pool = Pool::new(LoadBalancer::P2cEwma, eps);
    let mut rng = fastrand::Rng::with_seed(4);
    assert!((0..50).all(|_| pool.pick(&ctx(now), &mut rng).unwrap().id == "i-1"));
}

#[test]
fn ring_hash_is_sticky_and_moves_only_the_leavers_keys() {
    let now = Instant::now();
    let eps = endpoints(5, now);
    let before = Pool::new(LoadBalancer::RingHash { hash_header: None }, eps.clone());
    let after = Pool::new(
        LoadBalancer::RingHash { hash_header: None },
        eps.iter().filter(|e| e.id != "i-3").cloned().collect(),
    );
    let mut rng = fastrand::Rng::with_seed(5);
    let mut per_endpoint: HashMap<String, u32> = HashMap::new();
    for key in 0..2000u32 {
        let hash = hash_bytes(&key.to_be_bytes());
        let c = PickContext {
            hash: Some(hash),
            tried: &[],
            now,
        };
        let first = before.pick(&c, &mut rng).unwrap();
        // Sticky: the same key always lands on the same endpoint.
        assert!(Arc::ptr_eq(&first, &before.pick(&c, &mut rng).unwrap()));
        let moved = after.pick(&c, &mut rng).unwrap();
        if first.id != "i-3" {
            assert!(
                Arc::ptr_eq(&first, &moved),
                "key {key} moved off {}",
                first.id
            );
        } else {
            assert_ne!(moved.id, "i-3");
        }
        *per_endpoint.entry(first.id.clone()).or_default() += 1;
    }
    // Every endpoint owns a share of the keys (400 expected each).
    assert_eq!(per_endpoint.len(), 5, "{per_endpoint:?}");
    assert!(
        per_endpoint.values().all(|n| (200..=600).contains(n)),
        "{per_endpoint:?}"
    );
}

#[test]
fn retries_avoid_the_endpoints_already_tried() {
    let now = Instant::now();
    let eps = endpoints(3, now);
    for policy in [
        LoadBalancer::P2cEwma,
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
    ] {
        let pool = Pool::new(policy, eps.clone());
        let mut rng = fastrand::Rng::with_seed(6);
        let tried = vec![Arc::clone(&eps[0]), Arc::clone(&eps[2])];
        let c = PickContext {
            hash: None,
            tried: &tried,
            now,
        };
        assert!((0..20).all(|_| pool.pick(&c, &mut rng).unwrap().id == "i-1"));
        // Every endpoint tried: a retry still goes somewhere.
        let all = eps.clone();
        let c = PickContext {
            hash: None,
            tried: &all,
            now,
        };
        assert!(pool.pick(&c, &mut rng).is_some());
    }
}

#[test]
fn ejected_endpoints_get_no_traffic_until_readmitted() {
    let now = Instant::now();
    let eps = endpoints(3, now);
    let policy = OutlierPolicy {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 50,
    };
    assert!(outlier::record(Some(&policy), &eps, &eps[1], TryResult::Failure, now).is_some());
    let pool = Pool::new(LoadBalancer::RoundRobin, eps);
    let mut rng = fastrand::Rng::with_seed(7);
    assert!((0..30).all(|_| pool.pick(&ctx(now), &mut rng).unwrap().id != "i-1"));
    let later = now + Duration::from_secs(30);
    assert!((0..30).any(|_| pool.pick(&ctx(later), &mut rng).unwrap().id == "i-1"));
}

#[test]
fn ring_hash_passes_an_ejected_endpoints_keys_on() {
    let now = Instant::now();
    let eps = endpoints(3, now);
    let policy = OutlierPolicy {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 50,
    };
    let pool = Pool::new(LoadBalancer::RingHash { hash_header: None }, eps.clone());
    let mut rng = fastrand::Rng::with_seed(8);
    let key = (0..1000u32)
        .map(|k| hash_bytes(&k.to_be_bytes()))
        .find(|h| {
            pool.pick(
                &PickContext {
                    hash: Some(*h),
                    tried: &[],
                    now,
                },
                &mut rng,
            )
            .unwrap()
            .id == "i-0"
        })
        .unwrap();
    outlier::record(Some(&policy), &eps, &eps[0], TryResult::Failure, now).unwrap();
    let c = PickContext {
        hash: Some(key),
        tried: &[],
        now,
    };
    assert_ne!(pool.pick(&c, &mut rng).unwrap().id, "i-0");
}

#[test]
fn an_empty_pool_picks_nothing() {
    let pool = Pool::new(LoadBalancer::P2cEwma, Vec::new());
    assert!(
        pool.pick(&ctx(Instant::now()), &mut fastrand::Rng::with_seed(9))
            .is_none()
    );
}

#[test]
fn a_pool_of_one_picks_it_even_when_tried_or_ejected() {
    let now = Instant::now();
    let eps = endpoints(1, now);
    let policy = OutlierPolicy {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
    };
    for lb in [
        LoadBalancer::P2cEwma,
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
    ] {
        let pool = Pool::new(lb, eps.clone());
        let mut rng = fastrand::Rng::with_seed(10);
        assert_eq!(pool.pick(&ctx(now), &mut rng).unwrap().id, "i-0");
        // Tried already (a retry): it is still the only place to go.
        let c = PickContext {
            hash: None,
            tried: &eps,
            now,
        };
        assert_eq!(pool.pick(&c, &mut rng).unwrap().id, "i-0");
    }
    // Ejected too (panic mode): still picked rather than refusing the request.
    outlier::record(Some(&policy), &eps, &eps[0], TryResult::Failure, now);
    assert!(eps[0].is_ejected(now));
    let pool = Pool::new(LoadBalancer::P2cEwma, eps.clone());
    let mut rng = fastrand::Rng::with_seed(11);
    assert_eq!(pool.pick(&ctx(now), &mut rng).unwrap().id, "i-0");
}
