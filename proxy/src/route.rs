//! Which rule routes a request, and which of its targets gets it: pure functions over the
//! domain route, unit-tested without sockets.

use http::{HeaderMap, Method};

use crate::config::{HeaderMatch, HeaderValueMatch, PathMatch, RouteMatch, Rule};

/// The parts of a request that rules match on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
}

/// The index of the first rule whose match accepts the request.
pub(crate) fn first_match(rules: &[Rule], req: RequestView<'_>) -> Option<usize> {
    rules.iter().position(|rule| matches(&rule.matcher, req))
}

/// Whether every condition of `m` holds for the request.
pub(crate) fn matches(m: &RouteMatch, req: RequestView<'_>) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Prefix(prefix)) => req.path.starts_with(prefix.as_str()),
        Some(PathMatch::Exact(exact)) => req.path == exact,
    };
    path_ok
        && m.method.as_ref().is_none_or(|method| method == req.method)
        && m.headers.iter().all(|h| header_matches(h, req.headers))
}

/// Any of the header's values satisfying the condition is enough.
fn header_matches(h: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&h.name).iter();
    match &h.value {
        HeaderValueMatch::Present => values.next().is_some(),
        HeaderValueMatch::Exact(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
        HeaderValueMatch::Prefix(want) => values.any(|v| v.as_bytes().starts_with(want.as_bytes())),
    }
}

/// Picks an index with probability `weight / total`; `None` when every weight is 0.
pub(crate) fn pick_weighted(weights: &[u32], rng: &mut fastrand::Rng) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.u64(..total);
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
