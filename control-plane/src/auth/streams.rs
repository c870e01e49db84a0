//! Stream limits: [`StreamLimitLayer`], at most N long-lived streams (`Registry.Watch` and
//! `Discovery.Stream`) open at once per caller (`--max-watchers-per-client`), and
//! [`DEFAULT_MAX_CONCURRENT_STREAMS`], the HTTP/2 streams one connection may hold.
//!
//! A watcher costs a node memory and work on every change for as long as it stays open, so
//! one client (a script opening watches in a loop, a stolen token) must not be able to open
//! them without bound. Callers are keyed as the rate limiter keys them (`layer::client_key`):
//! by token accessor when ACLs are on, by client IP address otherwise. The stream past the
//! limit is refused at once with `RESOURCE_EXHAUSTED`, before its handler runs.
//!
//! A slot is an RAII guard ([`StreamSlot`]) carried by the response body, which the HTTP/2
//! server drops when the stream ends for any reason: the server ends it (node shutdown, an
//! error), the client hangs up (RST_STREAM), or the connection breaks. Counting in one layer
//! over both paths, rather than in each handler, keeps the two kinds under one budget and
//! leaves the handlers as they are.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use tonic::Status;

use super::check::Caller;
use super::layer::client_key;

/// Default HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of the gRPC listener
/// (`--max-concurrent-streams`). grpc-go and etcd leave it unlimited (2³²−1), hyper's server
/// defaults to 200 and Go's `net/http2` to 250; tonic passes "unlimited" to hyper. A bound
/// keeps one connection from holding unbounded per-stream state on the node; 1024 leaves
/// room for clients that multiplex hundreds of watches or calls on one connection (a
/// dashboard, the benchmark's 50 watchers per connection) with no effect on ordinary ones.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The calls whose streams count against `--max-watchers-per-client`.
const LIMITED: &[&str] = &[
    "/meridian.v1.Registry/Watch",
    "/meridian.v1.Discovery/Stream",
];

/// Open streams per caller, at most `max` each.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of one caller; frees its place when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    limiter: Arc<StreamLimiter>,
    key: String,
}

/// Applies a [`StreamLimiter`] to the streaming calls of the services below it. Sits under
/// [`super::AuthLayer`], whose [`Caller`] it reads. Without `--max-watchers-per-client` the
/// node does not add it at all (`tower::util::option_layer`), so unlimited nodes pay nothing
/// per call.
#[derive(Debug, Clone)]
pub struct StreamLimitLayer {
    limiter: Arc<StreamLimiter>,
}

/// [`StreamLimitLayer`] around a service.
#[derive(Debug, Clone)]
pub struct StreamLimitService<S> {
    inner: S,
    limiter: Arc<StreamLimiter>,
}

/// A response body holding its stream's slot until the server drops it.
#[derive(Debug)]
struct SlotBody {
    inner: tonic::body::Body,
    _slot: StreamSlot,
}

// === impl StreamLimiter ===

impl StreamLimiter {
    /// At most `max` open streams per caller.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more stream of `key`, or RESOURCE_EXHAUSTED naming the limit and the
    /// flag that sets it.
    pub fn acquire(self: &Arc<Self>, key: String) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return Err(Status::resource_exhausted(format!(
                "at most {} watch and discovery streams may be open per client \
                 (--max-watchers-per-client); close one first",
                self.max
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            limiter: Arc::clone(self),
            key,
        })
    }

    /// How many streams `key` has open.
    pub fn open(&self, key: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(key).copied().unwrap_or(0)
    }
}

// === impl StreamSlot ===

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            // Forget callers with nothing open: the table holds only current streamers.
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

// === impl StreamLimitLayer ===

impl StreamLimitLayer {
    /// At most `max` streams per caller.
    pub fn new(max: usize) -> Self {
        Self {
            limiter: Arc::new(StreamLimiter::new(max)),
        }
    }
}

impl<S> tower::Layer<S> for StreamLimitLayer {
    type Service = StreamLimitService<S>;

    fn layer(&self, inner: S) -> StreamLimitService<S> {
        StreamLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

// === impl StreamLimitService ===

impl<S, B> tower::Service<http::Request<B>> for StreamLimitService<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let slot = if LIMITED.contains(&req.uri().path()) {
            let caller = req
                .extensions()
                .get::<Caller>()
                .cloned()
                .unwrap_or(Caller::Anyone);
            match self.limiter.acquire(client_key(&caller, req.extensions())) {
                Ok(slot) => Some(slot),
                Err(status) => {
                    tracing::debug!(path = req.uri().path(), "stream limit reached");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        } else {
            None
        };
        // The clone is the one polled ready; keep it (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            Ok(match slot {
                Some(slot) => {
                    response.map(|inner| tonic::body::Body::new(SlotBody { inner, _slot: slot }))
                }
                None => response,
            })
        })
    }
}

// === impl SlotBody ===

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_max_slots_and_each_drop_frees_one() {
        let limiter = Arc::new(StreamLimiter::new(2));
        let a1 = limiter.acquire("a".into()).unwrap();
        let a2 = limiter.acquire("a".into()).unwrap();
        let err = limiter.acquire("a".into()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("at most 2"), "{err:?}");
        assert!(
            err.message().contains("--max-watchers-per-client"),
            "{err:?}"
        );
        // Another caller has its own budget.
        let b = limiter.acquire("b".into()).unwrap();
        assert_eq!((limiter.open("a"), limiter.open("b")), (2, 1));
        drop(a1);
        let a3 = limiter.acquire("a".into()).unwrap();
        drop((a2, a3, b));
        assert_eq!((limiter.open("a"), limiter.open("b")), (0, 0));
        assert!(
            limiter.open.lock().unwrap().is_empty(),
            "idle callers forgotten"
        );
    }
}
