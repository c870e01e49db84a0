//! The admin port: `GET /ready` (200 once discovery delivered what the proxy needs, 503 before
//! and while draining), `GET /config` (the config it runs, as JSON) and `GET /metrics`
//! (Prometheus text).

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::body::{Body, full};
use crate::config::{HeaderValueMatch, Health, LoadBalancer, PathMatch, Route};
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::table::ServiceTable;

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) proxy_id: String,
    pub(crate) discovery: Discovery,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when the proxy starts draining: `/ready` turns 503.
    pub(crate) draining: CancellationToken,
}

// === impl Admin ===

impl Admin {
    pub(crate) fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
        }
        match req.uri().path() {
            "/ready" => {
                if self.draining.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
                } else if self.discovery.status().is_ready() {
                    text(StatusCode::OK, "ready\n".to_owned())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first discovery state\n".to_owned(),
                    )
                }
            }
            "/config" => {
                let mut response = Response::new(full(self.config_json().to_string()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            "/metrics" => {
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "admin endpoints: /ready /config /metrics\n".to_owned(),
            ),
        }
    }

    fn config_json(&self) -> Value {
        let table = self.discovery.table();
        let status = self.discovery.status();
        let now = Instant::now();
        let mut services: Vec<&Arc<ServiceTable>> = table.services.values().collect();
        services.sort_by(|a, b| a.state.name.cmp(&b.state.name));
        let services: serde_json::Map<String, Value> = services
            .into_iter()
            .map(|s| (s.state.name.clone(), service_json(s, now)))
            .collect();
        json!({
            "proxy_id": self.proxy_id,
            "version": table.version,
            "control_plane_node": table.node_id,
            "control_plane_url": status.url(),
            "connected": status.is_connected(),
            "ready": status.is_ready(),
            "last_error": status.last_error(),
            "services": services,
        })
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn service_json(s: &ServiceTable, now: Instant) -> Value {
    let endpoints: Vec<Value> = s
        .state
        .instances
        .iter()
        .zip(&s.endpoints)
        .map(|(i, e)| {
            let outlier = e.outlier();
            json!({
                "id": i.id,
                "address": i.addr.to_string(),
                "attributes": i.attributes,
                "health": match i.health { Health::Healthy => "HEALTHY", Health::Unhealthy => "UNHEALTHY", Health::Unknown => "UNKNOWN" },
                "protocol": match i.protocol { crate::config::Protocol::Http1 => "http1", crate::config::Protocol::H2c => "h2c" },
                "ejected": outlier.is_ejected(now),
                "ejections": outlier.ejections(),
                "ewma_ms": e.ewma(now).as_secs_f64() * 1000.0,
                "in_flight": e.in_flight(),
            })
        })
        .collect();
    let subsets: Vec<Value> = s
        .rules
        .iter()
        .flat_map(|r| r.subsets.iter())
        .map(|sub| json!({ "subset": sub.label, "healthy_endpoints": sub.pool.endpoints().iter().map(|e| e.id.clone()).collect::<Vec<_>>() }))
        .collect();
    json!({
        "exists": s.state.exists,
        "revision": s.state.revision,
        "route": s.state.route.as_ref().map(route_json),
        "effective_route": route_json(&s.route),
        "subsets": subsets,
        "endpoints": endpoints,
    })
}

fn route_json(route: &Route) -> Value {
    let rules: Vec<Value> = route
        .rules
        .iter()
        .map(|r| {
            let headers: Vec<Value> = r
                .matcher
                .headers
                .iter()
                .map(|h| match &h.value {
                    HeaderValueMatch::Exact(v) => json!({ "name": h.name.as_str(), "exact": v }),
                    HeaderValueMatch::Prefix(v) => json!({ "name": h.name.as_str(), "prefix": v }),
                    HeaderValueMatch::Present => json!({ "name": h.name.as_str(), "present": true }),
                })
                .collect();
            json!({
                "name": r.name,
                "path_prefix": match &r.matcher.path { Some(PathMatch::Prefix(p)) => Some(p), _ => None },
                "path_exact": match &r.matcher.path { Some(PathMatch::Exact(p)) => Some(p), _ => None },
                "method": r.matcher.method.as_ref().map(|m| m.as_str()),
                "headers": headers,
                "targets": r.targets.iter().map(|t| json!({ "subset": t.subset.0, "weight": t.weight })).collect::<Vec<_>>(),
                "timeout_ms": r.timeout.as_millis() as u64,
                "retry": r.retry.as_ref().map(|p| json!({
                    "attempts": p.attempts,
                    "per_try_timeout_ms": p.per_try_timeout.map(|d| d.as_millis() as u64),
                    "retry_non_idempotent": p.retry_non_idempotent,
                    "retry_on": {
                        "connect_failure": p.retry_on.connect_failure,
                        "reset": p.retry_on.reset,
                        "gateway_error": p.retry_on.gateway_error,
                        "server_error": p.retry_on.server_error,
                        "per_try_timeout": p.retry_on.per_try_timeout,
                    },
                })),
            })
        })
        .collect();
    let load_balancer = match &route.load_balancer {
        LoadBalancer::P2cEwma => json!({ "policy": "P2C_EWMA" }),
        LoadBalancer::RoundRobin => json!({ "policy": "ROUND_ROBIN" }),
        LoadBalancer::LeastRequest => json!({ "policy": "LEAST_REQUEST" }),
        LoadBalancer::RingHash { hash_header } => {
            json!({ "policy": "RING_HASH", "hash_header": hash_header.as_ref().map(|h| h.as_str()) })
        }
    };
    json!({
        "rules": rules,
        "load_balancer": load_balancer,
        "outlier_detection": route.outlier.map(|o| json!({
            "consecutive_failures": o.consecutive_failures,
            "base_ejection_ms": o.base_ejection.as_millis() as u64,
            "max_ejection_percent": o.max_ejection_percent,
        })),
    })
}
