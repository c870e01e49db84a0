//! Data-path tests over real sockets: real HTTP backends on loopback, the proxy's real listener,
//! handler, pool and balancer; the routing table is fed through the real [`Applier`] with the
//! protobuf updates a control plane would stream (the stream itself is tested end to end
//! against a real control plane in the workspace's `tests/` crate).

pub(crate) mod backend;
mod data_path;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::discovery::apply::{Applied, Applier};
use crate::discovery::{Discovery, Status};
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::server::{self, HandlerFn};
use crate::table::Table;

/// A proxy data path on a loopback port, fed by [`Harness::push`]. Stopped when dropped.
pub(crate) struct Harness {
    pub(crate) addr: SocketAddr,
    pub(crate) applier: Applier,
    pub(crate) discovery: Discovery,
    pub(crate) metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    _subscriptions: mpsc::UnboundedReceiver<String>,
    version: u64,
}

/// What a test client got back.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
}

impl Harness {
    pub(crate) async fn start(default_service: Option<&str>, drain: Duration) -> Self {
        Self::start_with(default_service, drain, server::HEADER_READ_TIMEOUT).await
    }

    /// [`Harness::start`] with another header-read timeout.
    pub(crate) async fn start_with(
        default_service: Option<&str>,
        drain: Duration,
        header_read_timeout: Duration,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let discovery = Discovery::new(table_rx, sub_tx, Arc::new(Status::default()));
        let handler = Arc::new(Handler {
            discovery: discovery.clone(),
            default_service: default_service.map(str::to_owned),
            upstream: crate::forward::Upstream::new(),
            metrics: Arc::clone(&metrics),
            tracing: None,
        });
        let handler_fn: HandlerFn =
            Arc::new(move |req, client| Box::pin(Arc::clone(&handler).handle(req, client)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve_with(
            "listen",
            listener,
            handler_fn,
            shutdown.clone(),
            drain,
            header_read_timeout,
        ));
        Self {
            addr,
            applier: Applier::new(table_tx, Arc::clone(&metrics)),
            discovery,
            metrics,
            shutdown,
            task: Some(task),
            _subscriptions: sub_rx,
            version: 0,
        }
    }

    /// Applies one discovery update with the next version.
    pub(crate) fn push(&mut self, services: Vec<pb::ServiceState>) -> Applied {
        self.version += 1;
        self.applier.apply(pb::DiscoveryResponse {
            version: self.version,
            services,
            node_id: 1,
        })
    }

    /// Sends [`ORDERS`] to one healthy `v1` instance, `id` at `addr`, with no route (all of
    /// its traffic to that instance).
    pub(crate) fn serve_orders_from(&mut self, id: &str, addr: SocketAddr) {
        self.push(vec![service(
            ORDERS,
            None,
            vec![instance(id, addr, "v1", true)],
        )]);
    }

    /// Stops accepting and waits for the drain to finish.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) fn take_task(&mut self) -> JoinHandle<()> {
        self.task.take().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An HTTP/1.1 client (pooled) or an HTTP/2 prior-knowledge one (a connection per request, so
/// `:authority` can name the service while the connection goes to the proxy).
pub(crate) struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    http2: bool,
}

impl TestClient {
    pub(crate) fn new(proxy: SocketAddr, http2: bool) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            client,
            proxy,
            http2,
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut builder = Request::builder().method(method);
        builder = if self.http2 {
            builder.uri(format!("http://{host}{path}"))
        } else {
            builder
                .uri(format!("http://{}{path}", self.proxy))
                .header("host", host)
        };
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = if self.http2 {
            let stream = tokio::net::TcpStream::connect(self.proxy).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .expect("the proxy answers")
        } else {
            self.client
                .request(request)
                .await
                .expect("the proxy answers")
        };
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub(crate) async fn get(&self, host: &str, path: &str) -> Reply {
        self.send("GET", host, path, &[], "").await
    }
}

/// The service the tests route.
pub(crate) const ORDERS: &str = "orders.cafe.local";

/// A service state as a control plane would stream it.
pub(crate) fn service(
    name: &str,
    route: Option<pb::Route>,
    instances: Vec<pb::Instance>,
) -> pb::ServiceState {
    pb::ServiceState {
        service: name.into(),
        exists: true,
        service_revision: 1,
        route,
        instances,
    }
}

pub(crate) fn instance(id: &str, addr: SocketAddr, version: &str, healthy: bool) -> pb::Instance {
    let health = if healthy {
        pb::HealthStatus::Healthy
    } else {
        pb::HealthStatus::Unhealthy
    };
    pb::Instance {
        service: String::new(),
        id: id.into(),
        address: addr.ip().to_string(),
        port: addr.port().into(),
        attributes: [("version".to_owned(), version.to_owned())].into(),
        health: health as i32,
        create_revision: 1,
        mod_revision: 1,
    }
}

pub(crate) fn split(weights: &[(&str, u32)]) -> pb::RouteRule {
    pb::RouteRule {
        targets: weights
            .iter()
            .map(|(v, w)| pb::WeightedTarget {
                subset: [("version".to_owned(), (*v).to_owned())].into(),
                weight: *w,
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn route(rules: Vec<pb::RouteRule>) -> pb::Route {
    pb::Route {
        rules,
        ..Default::default()
    }
}

/// A loopback port nothing listens on (bound, then closed).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
