//! Sending a request to an endpoint of the chosen subset: pooled upstream connections (HTTP/1.1
//! through [`crate::pool`], or h2c through hyper-util's client for instances whose `protocol`
//! attribute says so), per-try and whole-request timeouts, retries on a different endpoint per
//! the rule's policy, outlier bookkeeping, and the in-flight count held until the response body
//! is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::balance::{Endpoint, PickContext};
use crate::body::{Body, RequestBody, Tracked, empty, full};
use crate::config::{Protocol, Rule};
use crate::error::RequestError;
use crate::h1::{self, Outbound, Outgoing};
use crate::headers::{Peer, prepare_headers, strip_hop_by_hop};
use crate::outlier::{self, TryResult};
use crate::pool::{CONNECT_TIMEOUT, Connector, POOL_IDLE, SendError};
use crate::retry::{self, Attempt};
use crate::table::{ServiceTable, SubsetTable};

/// Request bodies up to this size are buffered so a retry can send them again; larger (or
/// unsized) bodies stream through and are not retried. 64 KiB covers typical JSON/gRPC unary
/// requests while bounding the memory a burst of uploads can pin.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Pooled connections, one pool per upstream protocol.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    http1: Connector,
    /// h2c multiplexes: one connection per endpoint, kept by hyper-util's client.
    h2c: Client<HttpConnector, Body>,
}

/// What one request is sent to.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) service: &'a ServiceTable,
    pub(crate) rule: &'a Rule,
    pub(crate) subset: &'a SubsetTable,
    pub(crate) hash: Option<u64>,
    pub(crate) client: &'a Peer,
    /// When the request arrived: the rule's timeout counts from here.
    pub(crate) started: Instant,
}

/// What the tries of one request did, for its span: written by [`Upstream::forward`] as it
/// goes (two stores per try, on the stack: nothing to pay for when tracing is off).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tries {
    /// The endpoint of the last try (none: no endpoint was picked).
    pub(crate) endpoint: Option<SocketAddr>,
    /// Tries after the first.
    pub(crate) retries: u32,
    /// When the last try ended (its response head arrived, or it failed).
    pub(crate) ended: Option<Instant>,
}

// === impl Upstream ===

impl Upstream {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let h2c = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self {
            http1: Connector::new(),
            h2c,
        }
    }

    /// Closes idle HTTP/1.1 connections as they age, until `shutdown`.
    pub(crate) async fn reap_idle(&self, shutdown: CancellationToken) {
        self.http1.reap_idle(shutdown).await;
    }

    /// Sends the request per `plan`, retrying as its rule allows, within the rule's timeout;
    /// `report` says where the tries went.
    pub(crate) async fn forward(
        &self,
        plan: &Plan<'_>,
        req: Request<RequestBody>,
        report: &mut Tries,
    ) -> Result<Response<Body>, RequestError> {
        let (mut parts, body) = req.into_parts();
        prepare_headers(&mut parts.headers, &parts.uri, plan.client);
        // The rule's timeout covers reading a buffered body too: a client trickling its body
        // cannot hold the request longer than the route allows.
        let whole = async {
            let replay = match body.size_hint().upper() {
                // Nothing to read (a GET): no collecting, nothing to copy per try.
                _ if body.is_end_stream() => Ok(Bytes::new()),
                Some(n) if n <= MAX_REPLAY_BODY => {
                    let collected = body
                        .collect()
                        .await
                        .map_err(|e| RequestError::RequestBody(e.to_string()))?;
                    Ok(collected.to_bytes())
                }
                _ => Err(body),
            };
            self.tries(plan, &mut parts, replay, report).await
        };
        let timeout = plan.rule.timeout;
        // From the arrival instant the handler already read (one clock read fewer per request;
        // a rule's timeout is at most an hour, so the sum cannot overflow).
        let deadline = tokio::time::Instant::from_std(plan.started + timeout);
        match tokio::time::timeout_at(deadline, whole).await {
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
        replay: Result<Bytes, RequestBody>,
        report: &mut Tries,
    ) -> Result<Response<Body>, RequestError> {
        let service = &plan.service.state.name;
        let policy = plan.rule.retry.as_ref();
        let max_tries = 1 + policy.map_or(0, |p| p.attempts);
        let (buffered, mut streamed) = match replay {
            Ok(bytes) => (Some(bytes), None),
            Err(body) => (None, Some(body)),
        };
        let mut rng = fastrand::Rng::new();
        // Endpoints to avoid on a retry; filled only when there is one (no allocation else).
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut tries = 0;
        loop {
            // One clock read serves the pick and the start of the latency measurement.
            let sent = Instant::now();
            let ctx = PickContext {
                hash: plan.hash,
                tried: &tried,
                now: sent,
            };
            let Some(endpoint) = plan.subset.pool.pick(&ctx, &mut rng) else {
                return Err(RequestError::NoHealthyEndpoints {
                    service: service.clone(),
                    subset: plan.subset.label.clone(),
                });
            };
            report.endpoint = Some(endpoint.addr);
            report.retries = u32::try_from(tries).unwrap_or(u32::MAX);
            let last_try =
                policy.is_none() || buffered.is_none() || tries + 1 >= max_tries as usize;
            let h2c = match endpoint.protocol {
                Protocol::H2c => {
                    let body = match (&buffered, streamed.take()) {
                        (Some(bytes), _) if bytes.is_empty() => empty(),
                        (Some(bytes), _) => full(bytes.clone()),
                        (None, Some(body)) => body.boxed(),
                        (None, None) => empty(),
                    };
                    Some(h2c_request(parts, &endpoint, body, last_try)?)
                }
                Protocol::Http1 => None,
            };
            let in_flight = endpoint.start();
            let send = async {
                match endpoint.protocol {
                    Protocol::Http1 => {
                        let body = match (&buffered, streamed.take()) {
                            (Some(bytes), _) => Outgoing::Buffered(bytes.clone()),
                            (None, Some(body)) => Outgoing::Streamed(body),
                            (None, None) => Outgoing::Buffered(Bytes::new()),
                        };
                        let request = Outbound {
                            method: &parts.method,
                            uri: &parts.uri,
                            headers: &parts.headers,
                            host: &endpoint.host,
                        };
                        self.http1
                            .send(&endpoint, request, body)
                            .await
                            .map(|(head, conn)| Answer::Http1(head, conn))
                    }
                    Protocol::H2c => match h2c {
                        Some(request) => self
                            .h2c
                            .request(request)
                            .await
                            .map(Answer::H2c)
                            .map_err(legacy_error),
                        None => Err(SendError::Failed("no request built".into())),
                    },
                }
            };
            let per_try = policy.and_then(|p| p.per_try_timeout);
            let result = match per_try {
                Some(limit) => tokio::time::timeout(limit, send).await,
                None => Ok(send.await),
            };
            let (attempt, outcome, failure) = classify(result);
            let now = Instant::now();
            report.ended = Some(now);
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
            tries += 1;
            let again = policy.is_some_and(|p| {
                tries < max_tries as usize
                    && retry::should_retry(p, &parts.method, attempt, buffered.is_some())
            });
            if again {
                tried.push(Arc::clone(&endpoint));
                plan.service.metrics.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = %service, endpoint = %endpoint.addr, ?attempt, "retrying");
                continue;
            }
            return match outcome {
                Some(answer) => Ok(finish(answer, in_flight, now)),
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

/// A response: for HTTP/1.1 its head and the pooled connection its body comes on.
#[derive(Debug)]
enum Answer {
    Http1(h1::Head, h1::Conn),
    H2c(Response<Incoming>),
}
/// The outer `Err`: the per-try timeout fired.
type TryOutcome = Result<Result<Answer, SendError>, tokio::time::error::Elapsed>;

fn legacy_error(e: hyper_util::client::legacy::Error) -> SendError {
    if e.is_connect() {
        SendError::Connect(e.to_string())
    } else {
        // The legacy client's own message is generic; its source says what broke.
        SendError::Failed(
            std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string),
        )
    }
}

/// How a try ended, its response if any, and why it failed if it did (for the 502 body).
fn classify(result: TryOutcome) -> (Attempt, Option<Answer>, Option<String>) {
    match result {
        Ok(Ok(answer)) => {
            let status = match &answer {
                Answer::Http1(head, _) => head.status,
                Answer::H2c(response) => response.status(),
            };
            (Attempt::Response(status), Some(answer), None)
        }
        Ok(Err(SendError::Connect(reason))) => {
            tracing::debug!(error = %reason, "upstream connect failed");
            (Attempt::ConnectFailure, None, None)
        }
        Ok(Err(SendError::Failed(reason))) => {
            tracing::debug!(error = %reason, "upstream try failed");
            (Attempt::Reset, None, Some(reason))
        }
        Err(_) => (Attempt::PerTryTimeout, None, None),
    }
}

/// The request as sent to an h2c `endpoint`: the endpoint's address in the URI (the client's
/// pool key); the original method, path and headers. (HTTP/1.1 requests are written straight
/// from the parts by [`crate::h1`].)
fn h2c_request(
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
    *request.version_mut() = Version::HTTP_2;
    // The last try takes the headers; earlier ones copy them for the retries after.
    *request.headers_mut() = if last_try {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    Ok(request)
}

/// The upstream response, hop-by-hop headers out, its body carrying the in-flight guard so the
/// endpoint counts the request until the body is finished or dropped; an HTTP/1.1 body owns
/// its connection, which goes back to the pool once the body is complete.
fn finish(answer: Answer, in_flight: crate::balance::InFlight, now: Instant) -> Response<Body> {
    match answer {
        Answer::Http1(head, conn) => {
            let body = h1::UpstreamBody::new(&head, conn, in_flight, now);
            let mut response = Response::new(body.map_err(Into::into).boxed());
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Answer::H2c(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = Tracked::new(body, in_flight).map_err(Into::into).boxed();
            Response::from_parts(parts, body)
        }
    }
}
