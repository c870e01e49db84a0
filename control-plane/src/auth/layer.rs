//! [`AuthLayer`]: every gRPC call is authenticated once, before it reaches a service; the
//! [`Caller`] it resolves to travels in the request's extensions, where each handler reads it
//! ([`caller`]) for its own, per-resource check.
//!
//! Exempt from tokens: `grpc.health.v1.Health` (load balancers and orchestrators probe it
//! without credentials) and `meridian.v1.Peer` (Raft traffic between nodes, authenticated by
//! mutual TLS rather than tokens).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::Status;

use super::check::{Authorizer, Caller};
use super::rate::RateLimiter;
use crate::replica::View;

/// Paths that need no token.
const EXEMPT: &[&str] = &["/grpc.health.v1.Health/", "/meridian.v1.Peer/"];

/// Resolves each call's [`Caller`] against the node's latest view of the tokens.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Authorizer,
    views: watch::Receiver<View>,
    rate: Option<Arc<RateLimiter>>,
}

/// [`AuthLayer`] around a service.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authorizer,
    views: watch::Receiver<View>,
    rate: Option<Arc<RateLimiter>>,
}

/// The caller [`AuthLayer`] put on a request. Fails closed: a request that did not pass the
/// layer is refused, never treated as allowed.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("call not authenticated (no auth layer)"))
}

// === impl AuthLayer ===

impl AuthLayer {
    /// Checks calls with `auth` against the tokens in the published `views`.
    pub fn new(auth: Authorizer, views: watch::Receiver<View>) -> Self {
        Self {
            auth,
            views,
            rate: None,
        }
    }

    /// Also limits each caller's calls per second (keyed by token accessor, or by client IP
    /// address while ACLs are off).
    #[must_use]
    pub fn with_rate_limit(mut self, rate: Option<Arc<RateLimiter>>) -> Self {
        self.rate = rate;
        self
    }
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("enabled", &self.auth.enabled())
            .finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth,
            views: self.views.clone(),
            rate: self.rate.clone(),
        }
    }
}

// === impl AuthService ===

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let exempt = EXEMPT.iter().any(|p| path.starts_with(p));
        let resolved = if !self.auth.enabled() || exempt {
            Ok(Caller::Anyone)
        } else {
            self.auth
                .caller(&self.views.borrow().registry, req.headers())
        };
        let resolved = match (resolved, &self.rate) {
            (Ok(caller), Some(rate)) if !exempt => rate
                .check(&client_key(&caller, req.extensions()))
                .map(|()| caller),
            (resolved, _) => resolved,
        };
        match resolved {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The clone is the one polled ready; keep it (tower's usual swap).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(req).await })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

/// Who a call counts against, for the rate limit and the stream limit: its token's accessor,
/// or its client's IP address (from the request's `extensions`) while ACLs are off.
pub(crate) fn client_key(caller: &Caller, extensions: &http::Extensions) -> String {
    match caller {
        Caller::Token(token) => token.accessor.clone(),
        Caller::Anyone => {
            remote_addr(extensions).map_or_else(String::new, |addr| addr.ip().to_string())
        }
    }
}

/// The client's address, over plain TCP or TLS.
fn remote_addr(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}
