//! Sending a request to an endpoint of the chosen subset: pooled upstream connections (HTTP/1.1,
//! or h2c for instances whose `protocol` attribute says so), per-try and whole-request
//! timeouts, retries on a different endpoint per the rule's policy, outlier bookkeeping, and the
//! in-flight count held until the response body is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{Endpoint, PickContext};
use crate::body::{Body, full};
use crate::config::{Protocol, Rule};
use crate::error::RequestError;
use crate::outlier::{self, TryResult};
use crate::retry::{self, Attempt};
use crate::table::{ServiceTable, SubsetTable};

/// Request bodies up to this size are buffered so a retry can send them again; larger (or
/// unsized) bodies stream through and are not retried. 64 KiB covers typical JSON/gRPC unary
/// requests while bounding the memory a burst of uploads can pin.
const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// Connecting to an endpoint that does not answer is a connect failure after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections are closed after this (below common server keep-alive limits).
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Pooled clients, one per upstream protocol.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

/// What one request is sent to.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) service: &'a ServiceTable,
    pub(crate) rule: &'a Rule,
    pub(crate) subset: &'a SubsetTable,
    pub(crate) hash: Option<u64>,
    pub(crate) client: SocketAddr,
}

// === impl Upstream ===

impl Upstream {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .timer(TokioTimer::new());
        let http1 = builder.build(connector.clone());
        let h2c = builder.http2_only(true).build(connector);
        Self { http1, h2c }
    }

    /// Sends the request per `plan`, retrying as its rule allows, within the rule's timeout.
    pub(crate) async fn forward(
        &self,
        plan: &Plan<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        let (mut parts, body) = req.into_parts();
        prepare_headers(&mut parts.headers, &parts.uri, plan.client);
        // The rule's timeout covers reading a buffered body too: a client trickling its body
        // cannot hold the request longer than the route allows.
        let whole = async {
            let replay = match body.size_hint().upper() {
                Some(n) if n <= MAX_REPLAY_BODY => {
                    let collected = body
                        .collect()
                        .await
                        .map_err(|e| RequestError::RequestBody(e.to_string()))?;
                    Ok(collected.to_bytes())
                }
                _ => Err(body),
            };
            self.tries(plan, &mut parts, replay).await
        };
        let timeout = plan.rule.timeout;
        match tokio::time::timeout(timeout, whole).await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Timeout {
                service: plan.service.state.name.clone(),
                after: timeout,
            }),
        }
    }

    async fn tries(
        &self,
        plan: &Plan<'_>,
        parts: &mut http::request::Parts,
        replay: Result<Bytes, Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        let service = &plan.service.state.name;
        let policy = plan.rule.retry.as_ref();
        let max_tries = 1 + policy.map_or(0, |p| p.attempts);
        let (buffered, mut streamed) = match replay {
            Ok(bytes) => (Some(bytes), None),
            Err(body) => (None, Some(body)),
        };
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        loop {
            let ctx = PickContext {
                hash: plan.hash,
                tried: &tried,
                now: Instant::now(),
            };
            let Some(endpoint) = plan.subset.pool.pick(&ctx, &mut rng) else {
                return Err(RequestError::NoHealthyEndpoints {
                    service: service.clone(),
                    subset: plan.subset.label.clone(),
                });
            };
            let body = match (&buffered, streamed.take()) {
                (Some(bytes), _) => full(bytes.clone()),
                (None, Some(body)) => body.boxed(),
                (None, None) => full(Bytes::new()),
            };
            let last_try =
                policy.is_none() || buffered.is_none() || tried.len() + 1 >= max_tries as usize;
            let request = upstream_request(parts, &endpoint, body, last_try)?;
            let in_flight = endpoint.start();
            let sent = Instant::now();
            let client = match endpoint.protocol {
                Protocol::Http1 => &self.http1,
                Protocol::H2c => &self.h2c,
            };
            let per_try = policy.and_then(|p| p.per_try_timeout);
            let result = match per_try {
                Some(limit) => tokio::time::timeout(limit, client.request(request)).await,
                None => Ok(client.request(request).await),
            };
            let (attempt, outcome, failure) = classify(result);
            let now = Instant::now();
            endpoint.observe(now.saturating_duration_since(sent), now);
            let verdict = if attempt.is_failure() {
                TryResult::Failure
            } else {
                TryResult::Success
            };
            if let Some(ejected_for) = outlier::record(
                plan.service.route.outlier.as_ref(),
                plan.subset.pool.endpoints(),
                &endpoint,
                verdict,
                now,
            ) {
                plan.service
                    .metrics
                    .ejections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(service = %service, endpoint = %endpoint.addr, ?ejected_for, "outlier ejected");
            }
            tried.push(Arc::clone(&endpoint));
            let again = policy.is_some_and(|p| {
                tried.len() < max_tries as usize
                    && retry::should_retry(p, &parts.method, attempt, buffered.is_some())
            });
            if again {
                plan.service.metrics.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = %service, endpoint = %endpoint.addr, ?attempt, "retrying");
                continue;
            }
            return match outcome {
                Some(response) => Ok(finish(response, in_flight)),
                None => Err(match attempt {
                    Attempt::ConnectFailure => RequestError::ConnectFailure {
                        service: service.clone(),
                        endpoint: endpoint.addr,
                    },
                    Attempt::PerTryTimeout => RequestError::Timeout {
                        service: service.clone(),
                        after: per_try.unwrap_or(plan.rule.timeout),
                    },
                    Attempt::Reset | Attempt::Response(_) => RequestError::Upstream {
                        service: service.clone(),
                        endpoint: endpoint.addr,
                        reason: failure.unwrap_or_else(|| "no response".to_owned()),
                    },
                }),
            };
        }
    }
}

/// The outer `Err`: the per-try timeout fired.
type TryOutcome = Result<
    Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    tokio::time::error::Elapsed,
>;

/// How a try ended, its response if any, and why it failed if it did (for the 502 body).
fn classify(result: TryOutcome) -> (Attempt, Option<Response<Incoming>>, Option<String>) {
    match result {
        Ok(Ok(response)) => (Attempt::Response(response.status()), Some(response), None),
        Ok(Err(e)) if e.is_connect() => (Attempt::ConnectFailure, None, None),
        Ok(Err(e)) => {
            // The legacy client's own message is generic; its source says what broke.
            let reason =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            tracing::debug!(error = %reason, "upstream try failed");
            (Attempt::Reset, None, Some(reason))
        }
        Err(_) => (Attempt::PerTryTimeout, None, None),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; `te: trailers` is kept because
/// gRPC needs it end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Hop-by-hop headers out; `Host` set from the request's authority (an HTTP/2 request carries
/// it only in `:authority`); the client's address appended to `X-Forwarded-For`; a W3C
/// `traceparent` continued (new span id, same trace) or started.
fn prepare_headers(headers: &mut HeaderMap, uri: &Uri, client: SocketAddr) {
    strip_hop_by_hop(headers);
    if let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    let ip = client.ip().to_string();
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", value);
    }
    let traceparent = continue_trace(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert("traceparent", value);
    }
}

/// `00-<trace id>-<parent id>-<flags>`: keeps a valid incoming trace id and flags with this hop
/// as the new parent, or starts a sampled trace.
fn continue_trace(incoming: Option<&str>) -> String {
    let span = format!("{:016x}", fastrand::u64(1..));
    let valid = incoming.filter(|t| {
        let parts: Vec<&str> = t.split('-').collect();
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
            && parts[1].bytes().any(|b| b != b'0')
    });
    match valid {
        Some(t) => format!("00-{}-{span}-{}", &t[3..35], &t[53..55]),
        None => format!(
            "00-{:016x}{:016x}-{span}-01",
            fastrand::u64(1..),
            fastrand::u64(..)
        ),
    }
}

/// The request as sent to `endpoint`: its address in the URI (the pool's key), the protocol's
/// version, the original path and headers.
fn upstream_request(
    parts: &mut http::request::Parts,
    endpoint: &Endpoint,
    body: Body,
    last_try: bool,
) -> Result<Request<Body>, RequestError> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(endpoint.authority.clone());
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(target)
        .map_err(|e| RequestError::RequestBody(format!("bad request target: {e}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = match endpoint.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c => Version::HTTP_2,
    };
    // The last try takes the headers; earlier ones copy them for the retries after.
    *request.headers_mut() = if last_try {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    Ok(request)
}

/// The upstream response, hop-by-hop headers out, its body carrying the in-flight guard so the
/// endpoint counts the request until the body is finished or dropped.
fn finish(response: Response<Incoming>, in_flight: crate::balance::InFlight) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = body
        .map_err(move |e| {
            let _held = &in_flight;
            e
        })
        .boxed();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_or_started() {
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let next = continue_trace(Some(incoming));
        assert!(
            next.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{next}"
        );
        assert!(next.ends_with("-01"));
        assert_ne!(&next[36..52], "b7ad6b7169203331");
        let fresh = continue_trace(Some("garbage"));
        assert_eq!(fresh.len(), 55);
        assert!(fresh.starts_with("00-") && fresh.ends_with("-01"));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        prepare_headers(
            &mut h,
            &"http://orders.cafe.local:15001/x".parse().unwrap(),
            "10.0.0.9:5555".parse().unwrap(),
        );
        assert!(
            h.get(header::CONNECTION).is_none()
                && h.get("x-private").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["host"], "orders.cafe.local:15001");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }
}
