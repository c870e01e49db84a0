//! One request's way through the proxy: authority → service (subscribing on demand) → first
//! matching rule → weighted subset → [`forward`](crate::forward); every outcome counted in the
//! metrics, every failure answered through the one mapping in [`RequestError`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};

use crate::authority::{is_service_name, request_host};
use crate::balance::hash_bytes;
use crate::body::{Body, RequestBody};
use crate::config::LoadBalancer;
use crate::discovery::Discovery;
use crate::error::RequestError;
use crate::forward::{Plan, Tries, Upstream};
use crate::headers::Peer;
use crate::metrics::{Metrics, UNKNOWN_SERVICE};
use crate::route::{self, RequestView};
use crate::table::ServiceTable;
use crate::trace::{RequestSpan, Tracing};

/// How long the first request for a service not yet subscribed waits for its first state.
/// The control plane answers a subscription at once, so this only runs out when it is slow or
/// unreachable mid-stream; 3 s stays well below common client timeouts.
pub(crate) const ON_DEMAND_PATIENCE: Duration = Duration::from_secs(3);

/// The data path's shared state.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) discovery: Discovery,
    pub(crate) default_service: Option<String>,
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Arc<Metrics>,
    /// Per-request spans; `None` (no OTLP endpoint): trace headers are not even read.
    pub(crate) tracing: Option<Tracing>,
}

// === impl Handler ===

impl Handler {
    /// Answers one request (never fails: errors become short text responses).
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        client: Peer,
    ) -> Response<Body> {
        let started = Instant::now();
        // Wall-clock start for the span, read only when tracing.
        let wall = self.tracing.as_ref().map(|_| SystemTime::now());
        let service = match self.resolve(&req).await {
            Ok(service) => service,
            Err((label, error)) => {
                let span = self.span(&req, None, wall);
                return self.refuse(&label, error, started, span);
            }
        };
        let span = self.span(&req, Some(&service.state.name), wall);
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        let Some(index) = route::first_match(&service.route.rules, view) else {
            let error = RequestError::NoRuleMatched {
                service: service.state.name.clone(),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
            };
            return self.refuse(&service.state.name, error, started, span);
        };
        let (rule, resolved) = (&service.route.rules[index], &service.rules[index]);
        let mut rng = fastrand::Rng::new();
        let Some(target) = route::pick_weighted(&resolved.weights, &mut rng) else {
            // Unreachable: validation requires a positive total weight.
            let error = RequestError::NoHealthyEndpoints {
                service: service.state.name.clone(),
                subset: "-".into(),
            };
            return self.refuse(&service.state.name, error, started, span);
        };
        let subset = &resolved.subsets[target];
        let hash = match &service.route.load_balancer {
            LoadBalancer::RingHash { hash_header } => {
                let header = hash_header.as_ref().and_then(|h| req.headers().get(h));
                Some(match header {
                    Some(value) => hash_bytes(value.as_bytes()),
                    None => hash_bytes(client.ip_text()),
                })
            }
            _ => None,
        };
        let plan = Plan {
            service: &service,
            rule,
            subset,
            hash,
            client: &client,
            started,
        };
        if let Some(span) = &span {
            span.inject(req.headers_mut());
        }
        let mut tries = Tries::default();
        // Let every other connection with a request ready read it before this one goes
        // upstream (the task runs again after the runtime's next look at its sockets). Reads
        // first, then writes, as haproxy orders its work: a backend on the proxy's core is
        // then woken about once per batch of requests instead of once per request, and each
        // wake-up is a context switch that costs both processes kernel time and cold caches
        // (nginx on the proxy's core: 0.36 instead of 0.69 switches per request, ~11 % less CPU
        // per request for the two). A lone request waits for nothing but that look.
        tokio::task::yield_now().await;
        let (response, ended) = match self.upstream.forward(&plan, req, &mut tries).await {
            // The response head came with the last try: its end is the request's (no clock read).
            Ok(response) => (response, tries.ended),
            Err(error) => {
                tracing::debug!(service = %service.state.name, subset = %subset.label, %error, "request failed");
                (error.into_response(), None)
            }
        };
        let latency = ended.map_or_else(
            || started.elapsed(),
            |ended| ended.saturating_duration_since(started),
        );
        subset.metrics.record(response.status().as_u16(), latency);
        tracing::trace!(service = %service.state.name, subset = %subset.label, status = response.status().as_u16(), "proxied");
        if let Some(span) = span {
            span.finish(response.status().as_u16(), Some(&subset.label), tries);
        }
        response
    }

    /// The service a request is for; on failure, the metrics label to count it under too.
    async fn resolve(
        &self,
        req: &Request<RequestBody>,
    ) -> Result<Arc<ServiceTable>, (String, RequestError)> {
        let host = request_host(req);
        if let Some(name) = host.as_deref().filter(|h| is_service_name(h)) {
            match self.discovery.service(name, ON_DEMAND_PATIENCE).await {
                Some(service) if service.state.exists => return Ok(service),
                // Ingress mode: a name the registry does not know goes to the default service.
                Some(_) if self.default_service.as_deref().is_some_and(|d| d != name) => {}
                Some(_) => {
                    return Err((
                        name.to_owned(),
                        RequestError::ServiceNotFound {
                            service: name.to_owned(),
                        },
                    ));
                }
                None if self.default_service.is_some() => {}
                None => {
                    let error = RequestError::DiscoveryPending {
                        service: name.to_owned(),
                        waited: ON_DEMAND_PATIENCE,
                    };
                    return Err((UNKNOWN_SERVICE.to_owned(), error));
                }
            }
        }
        let Some(default) = &self.default_service else {
            let error = match host {
                None => RequestError::NoAuthority,
                Some(service) => RequestError::UnknownService {
                    service: service.into_owned(),
                },
            };
            return Err((UNKNOWN_SERVICE.to_owned(), error));
        };
        match self.discovery.service(default, ON_DEMAND_PATIENCE).await {
            Some(service) if service.state.exists => Ok(service),
            Some(_) => Err((
                default.clone(),
                RequestError::ServiceNotFound {
                    service: default.clone(),
                },
            )),
            None => {
                let error = RequestError::DiscoveryPending {
                    service: default.clone(),
                    waited: ON_DEMAND_PATIENCE,
                };
                Err((default.clone(), error))
            }
        }
    }

    /// The request's span, when tracing (`service`: what it resolved to, if anything).
    fn span(
        &self,
        req: &Request<RequestBody>,
        service: Option<&str>,
        wall: Option<SystemTime>,
    ) -> Option<RequestSpan> {
        let tracing = self.tracing.as_ref()?;
        Some(tracing.start(
            req.method(),
            req.uri().path(),
            request_host(req).as_deref(),
            service,
            req.headers(),
            wall.unwrap_or_else(SystemTime::now),
        ))
    }

    fn refuse(
        &self,
        service_label: &str,
        error: RequestError,
        started: Instant,
        span: Option<RequestSpan>,
    ) -> Response<Body> {
        tracing::debug!(service = %service_label, %error, "request refused");
        let response = error.into_response();
        self.metrics
            .service(service_label)
            .subset("-")
            .record(response.status().as_u16(), started.elapsed());
        if let Some(span) = span {
            span.finish(response.status().as_u16(), None, Tries::default());
        }
        response
    }
}
