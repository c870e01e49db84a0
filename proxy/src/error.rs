//! The proxy's errors: [`ProxyError`] for starting and running, and [`RequestError`] for one
//! request, with the single mapping of request failures to HTTP statuses and short text bodies
//! saying why (no endpoints 503, timeout 504, connect failure 502, no rule 404).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Response, StatusCode, header};

use crate::body::{Body, full};

/// Why the proxy could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A setting of [`crate::ProxyConfig`] is unusable.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The setting, e.g. `control_plane[1]`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// `listen` or `admin`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// One of the proxy's tasks panicked or failed.
    #[error("proxy task {task} failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened.
        reason: String,
    },
}

/// Why one request got no answer from an upstream endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("request has no authority (Host header) and the proxy has no default service")]
    NoAuthority,
    #[error("unknown service {service}: not a service name and the proxy has no default service")]
    UnknownService { service: String },
    #[error("service {service} does not exist")]
    ServiceNotFound { service: String },
    #[error(
        "service {service} is not known yet: the control plane did not send it (unreachable, or slower than {waited:?})"
    )]
    DiscoveryPending { service: String, waited: Duration },
    #[error("no route rule of {service} matches {method} {path}")]
    NoRuleMatched {
        service: String,
        method: http::Method,
        path: String,
    },
    #[error("no healthy endpoints for {service} subset {subset}")]
    NoHealthyEndpoints { service: String, subset: String },
    #[error("upstream timeout: {service} did not answer within {after:?}")]
    Timeout { service: String, after: Duration },
    #[error("cannot connect to {service} endpoint {endpoint}")]
    ConnectFailure {
        service: String,
        endpoint: SocketAddr,
    },
    #[error("{service} endpoint {endpoint} failed before answering: {reason}")]
    Upstream {
        service: String,
        endpoint: SocketAddr,
        reason: String,
    },
    #[error("cannot read the request body: {0}")]
    RequestBody(String),
}

// === impl RequestError ===

impl RequestError {
    /// The one place request failures become HTTP statuses.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NoAuthority | Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::NoRuleMatched { .. } => StatusCode::NOT_FOUND,
            Self::UnknownService { .. }
            | Self::ServiceNotFound { .. }
            | Self::DiscoveryPending { .. }
            | Self::NoHealthyEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ConnectFailure { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short `text/plain` response saying why.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(full(format!("{self}\n")));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies() {
        let e = RequestError::NoHealthyEndpoints {
            service: "orders.cafe.local".into(),
            subset: "version=v2".into(),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "no healthy endpoints for orders.cafe.local subset version=v2"
        );
        let timeout = RequestError::Timeout {
            service: "a.b".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let connect = RequestError::ConnectFailure {
            service: "a.b".into(),
            endpoint: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        let rule = RequestError::NoRuleMatched {
            service: "a.b".into(),
            method: http::Method::GET,
            path: "/x".into(),
        };
        assert_eq!(rule.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            RequestError::ServiceNotFound {
                service: "a.b".into()
            }
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
