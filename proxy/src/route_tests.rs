use std::time::Duration;

use http::HeaderValue;

use super::*;
use crate::config::{Subset, Target};

fn rule(matcher: RouteMatch) -> Rule {
    Rule {
        name: None,
        matcher,
        targets: vec![Target {
            subset: Subset::default(),
            weight: 1,
        }],
        timeout: Duration::from_secs(1),
        retry: None,
    }
}

fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method,
        path,
        headers,
    }
}

fn header(name: &str, value: HeaderValueMatch) -> HeaderMatch {
    HeaderMatch {
        name: name.parse().unwrap(),
        value,
    }
}

#[test]
fn first_matching_rule_wins() {
    let rules = vec![
        rule(RouteMatch {
            path: Some(PathMatch::Exact("/health".into())),
            ..Default::default()
        }),
        rule(RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            method: Some(Method::POST),
            headers: vec![],
        }),
        rule(RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            ..Default::default()
        }),
    ];
    let h = HeaderMap::new();
    assert_eq!(
        first_match(&rules, view(&Method::GET, "/health", &h)),
        Some(0)
    );
    assert_eq!(
        first_match(&rules, view(&Method::GET, "/health/x", &h)),
        None
    );
    assert_eq!(
        first_match(&rules, view(&Method::POST, "/api/orders", &h)),
        Some(1)
    );
    assert_eq!(
        first_match(&rules, view(&Method::GET, "/api/orders", &h)),
        Some(2)
    );
    assert_eq!(first_match(&rules, view(&Method::GET, "/other", &h)), None);
}

#[test]
fn catch_all_rule_matches_everything() {
    let rules = vec![rule(RouteMatch::default())];
    assert_eq!(
        first_match(&rules, view(&Method::DELETE, "/", &HeaderMap::new())),
        Some(0)
    );
}

#[test]
fn header_conditions() {
    let m = RouteMatch {
        headers: vec![
            header("x-canary", HeaderValueMatch::Exact("yes".into())),
            header("user-agent", HeaderValueMatch::Prefix("curl/".into())),
            header("x-trace", HeaderValueMatch::Present),
        ],
        ..Default::default()
    };
    let mut h = HeaderMap::new();
    h.insert("x-canary", HeaderValue::from_static("yes"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.0"));
    h.insert("x-trace", HeaderValue::from_static(""));
    assert!(matches(&m, view(&Method::GET, "/", &h)));
    h.insert("x-canary", HeaderValue::from_static("YES"));
    assert!(
        !matches(&m, view(&Method::GET, "/", &h)),
        "exact is case-sensitive"
    );
    h.insert("x-canary", HeaderValue::from_static("yes"));
    h.remove("x-trace");
    assert!(
        !matches(&m, view(&Method::GET, "/", &h)),
        "present requires the header"
    );
    h.insert("x-trace", HeaderValue::from_static("1"));
    h.insert("user-agent", HeaderValue::from_static("wget"));
    assert!(!matches(&m, view(&Method::GET, "/", &h)));
}

#[test]
fn any_value_of_a_repeated_header_can_match() {
    let m = RouteMatch {
        headers: vec![header("x-tag", HeaderValueMatch::Exact("b".into()))],
        ..Default::default()
    };
    let mut h = HeaderMap::new();
    h.append("x-tag", HeaderValue::from_static("a"));
    h.append("x-tag", HeaderValue::from_static("b"));
    assert!(matches(&m, view(&Method::GET, "/", &h)));
}

#[test]
fn weighted_choice_follows_weights_within_4_sigma() {
    let weights = [80, 20];
    let n = 20_000u32;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut counts = [0u32; 2];
    for _ in 0..n {
        counts[pick_weighted(&weights, &mut rng).unwrap()] += 1;
    }
    // Binomial: mean 16,000, sd = sqrt(20,000 × 0.8 × 0.2) ≈ 56.6; 4 sigma ≈ 226.
    let diff = (f64::from(counts[0]) - 16_000.0).abs();
    assert!(diff < 4.0 * 56.6, "{counts:?}");
}

#[test]
fn weighted_choice_chi_square_over_four_targets() {
    let weights = [10, 20, 30, 40];
    let n = 40_000.0;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut counts = [0.0f64; 4];
    for _ in 0..n as u32 {
        counts[pick_weighted(&weights, &mut rng).unwrap()] += 1.0;
    }
    let chi2: f64 = counts
        .iter()
        .zip(weights)
        .map(|(o, w)| {
            let e = n * f64::from(w) / 100.0;
            (o - e).powi(2) / e
        })
        .sum();
    // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
}

#[test]
fn zero_weights_get_nothing() {
    let mut rng = fastrand::Rng::with_seed(1);
    assert!((0..1000).all(|_| pick_weighted(&[0, 5, 0], &mut rng) == Some(1)));
    assert_eq!(pick_weighted(&[0, 0], &mut rng), None);
}
