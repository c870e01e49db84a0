//! `meridian-proxy`: routes HTTP/1.1 and HTTP/2 traffic by the routes and endpoints the
//! Meridian control plane streams to it over `meridian.v1.Discovery`. Depends only on the gRPC
//! contract (`meridian-proto`), never on the control-plane crate.
//!
//! # Layout
//!
//! - [`start`] / [`RunningProxy`]: the composition root, wiring discovery, the data path and the
//!   admin port, with one shutdown token and graceful drain.
//! - `config/`: the domain view of services, instances and routes; `config/convert.rs` is the
//!   only place that reads generated proto types (validated, typed errors naming the field).
//! - `discovery/`: the stream client (hello, subscribe, ack/nack, reconnect over every URL),
//!   the all-or-nothing applier, and the handle the data path uses (subscribe on demand).
//! - `table.rs`: the immutable routing table published per applied version (atomic swap).
//! - `route.rs`: rule matching and weighted subset choice (pure functions).
//! - `balance/`: endpoint state (in flight, peak EWMA) and the policies: P2C-EWMA, round robin,
//!   least request, ring hash.
//! - `outlier.rs`, `retry.rs`: ejection and retry decisions, pure over an explicit clock.
//! - `forward.rs`: tries, timeouts, retries; `pool.rs`: pooled HTTP/1.1 upstream connections;
//!   `headers.rs`: hop-by-hop, `X-Forwarded-For`;
//!   `handler.rs`: one request end to end.
//! - `error.rs`: [`ProxyError`] and the single request-error → HTTP status mapping.
//! - `server.rs`: listeners and drain; `downstream/`: a client connection — the proxy's own
//!   HTTP/1.1 server codec, h2c handed to hyper; `admin.rs`: `/ready`, `/config`, `/metrics`;
//!   `metrics.rs`: the counters behind `/metrics`; `otlp.rs`: the same over OTLP.
//! - `trace.rs`: one OpenTelemetry SERVER span per request, when a tracer is configured
//!   ([`ProxyTelemetry`]); trace headers in and out through `meridian_telemetry::propagation`.

mod admin;
mod authority;
mod balance;
mod body;
mod config;
mod discovery;
mod downstream;
mod error;
mod forward;
mod h1;
mod handler;
mod headers;
mod metrics;
mod otlp;
mod outlier;
mod pool;
mod retry;
mod route;
mod server;
mod table;
#[cfg(test)]
mod tests;
mod trace;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_telemetry::{Telemetry, TelemetryArgs, TelemetryConfig};
use opentelemetry::metrics::Meter;
use opentelemetry_sdk::trace::SdkTracer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use error::ProxyError;

use discovery::Discovery;
use discovery::apply::Applier;
use discovery::client::Client;
use server::HandlerFn;
use table::Table;

/// How to run a proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// gRPC URLs of control-plane nodes (any node of the cluster), e.g. `http://127.0.0.1:7400`.
    pub control_plane: Vec<String>,
    /// Where the data path listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where the admin endpoints listen (port 0 picks a free port).
    pub admin: SocketAddr,
    /// The service this proxy fronts (sent in the hello; informational).
    pub service_name: Option<String>,
    /// Ingress mode: requests whose authority is not a known, valid service name go here.
    pub default_service: Option<String>,
    /// Default: `<service_name or "proxy">-<pid>@<listen address>`.
    pub proxy_id: Option<String>,
    /// Services to subscribe at start; others are subscribed on their first request.
    pub subscribe: Vec<String>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Spans and OTLP metrics (default: neither).
    pub telemetry: ProxyTelemetry,
    /// The ACL token secret the discovery stream is opened with (a token that may subscribe
    /// to the services this proxy serves), when the control plane runs with ACLs.
    pub token: Option<String>,
    /// TLS to the control plane (`--tls-ca`, and `--tls-cert`/`--tls-key` when the cluster
    /// requires client certificates); `None`: plain text. Its certificate is read again
    /// when its files change.
    pub control_plane_tls: Option<meridian_tls::ClientTls>,
}

/// What a proxy exports: spans per request when it has a tracer, its metrics over OTLP when it
/// has a meter. Both `None` (the default): trace headers pass through untouched and nothing
/// is recorded beyond `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ProxyTelemetry {
    /// The tracer of per-request SERVER spans.
    pub tracer: Option<SdkTracer>,
    /// The meter the proxy's metrics are exported through.
    pub meter: Option<Meter>,
}

/// A started proxy: both listeners are bound. Dropping it aborts the proxy's tasks at once
/// (no drain); cancel the shutdown token and [`RunningProxy::wait`] for a graceful stop.
#[derive(Debug)]
pub struct RunningProxy {
    listen: SocketAddr,
    admin: SocketAddr,
    tasks: JoinSet<Result<(), ProxyError>>,
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// Listens on 127.0.0.1:15001 (admin 127.0.0.1:15000), drains for at most 10 s.
    pub fn new(control_plane: Vec<String>) -> Self {
        Self {
            control_plane,
            listen: SocketAddr::from(([127, 0, 0, 1], 15001)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            service_name: None,
            default_service: None,
            proxy_id: None,
            subscribe: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            telemetry: ProxyTelemetry::default(),
            token: None,
            control_plane_tls: None,
        }
    }

    /// The telemetry configuration of this proxy: the `OTEL_*` variables with `args` on top,
    /// `service.name` `meridian-proxy` unless overridden, `service.instance.id` the proxy id
    /// (the default one is built from the configured listen address, not a port 0 picks), and
    /// `meridian.proxy.service` the service it fronts, when set.
    pub fn telemetry_config(&self, args: &TelemetryArgs) -> TelemetryConfig {
        let service = self.service_name.as_ref().map(|s| s.to_ascii_lowercase());
        let id = self
            .proxy_id
            .clone()
            .unwrap_or_else(|| default_proxy_id(service.as_deref(), self.listen));
        let config = args.config("meridian-proxy", env!("CARGO_PKG_VERSION"), &id);
        match service {
            Some(service) => config.with_resource_attribute("meridian.proxy.service", &service),
            None => config,
        }
    }

    fn validate(&self) -> Result<(), ProxyError> {
        if self.control_plane.is_empty() {
            return Err(ProxyError::Config {
                field: "control_plane",
                reason: "at least one URL is required".into(),
            });
        }
        for (i, url) in self.control_plane.iter().enumerate() {
            let uri: http::Uri = url.parse().map_err(|e| ProxyError::Config {
                field: "control_plane",
                reason: format!("[{i}] {url:?}: {e}"),
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(ProxyError::Config {
                    field: "control_plane",
                    reason: format!("[{i}] {url:?}: expected http://HOST:PORT"),
                });
            }
        }
        for (field, name) in [
            ("service_name", &self.service_name),
            ("default_service", &self.default_service),
        ] {
            if let Some(name) = name
                && !authority::is_service_name(&name.to_ascii_lowercase())
            {
                return Err(ProxyError::Config {
                    field,
                    reason: format!("{name:?} is not a full service name"),
                });
            }
        }
        if let Some(bad) = self
            .subscribe
            .iter()
            .find(|s| !authority::is_service_name(&s.to_ascii_lowercase()))
        {
            return Err(ProxyError::Config {
                field: "subscribe",
                reason: format!("{bad:?} is not a full service name"),
            });
        }
        if let Some(id) = &self.proxy_id
            && (id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ProxyError::Config {
                field: "proxy_id",
                reason: "1 to 253 printable bytes".into(),
            });
        }
        Ok(())
    }
}

// === impl ProxyTelemetry ===

impl ProxyTelemetry {
    /// The tracer and meter of `telemetry`; none of either when it exports nothing (the
    /// proxy then reads no trace header and records nothing twice).
    pub fn from_telemetry(telemetry: &Telemetry) -> Self {
        let exports = telemetry.config().exports();
        Self {
            tracer: telemetry.tracer(),
            meter: exports.then(|| telemetry.meter()),
        }
    }
}

/// `<service or "proxy">-<pid>@<listen address>`.
fn default_proxy_id(service: Option<&str>, listen: SocketAddr) -> String {
    format!(
        "{}-{}@{listen}",
        service.unwrap_or("proxy"),
        std::process::id()
    )
}

// === impl RunningProxy ===

impl RunningProxy {
    /// The data path's bound address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin port's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Returns once `shutdown` was cancelled and the drain finished (or a task failed).
    pub async fn wait(mut self) -> Result<(), ProxyError> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| {
                Err(ProxyError::Task {
                    task: "proxy",
                    reason: e.to_string(),
                })
            });
            if let Err(e) = outcome {
                result = result.and(Err(e));
            }
        }
        result
    }
}

/// Starts a proxy: validates `config`, binds both listeners, then runs discovery, the data path
/// and the admin port until `shutdown` is cancelled, draining in-flight requests for at most
/// `config.drain_timeout`.
pub async fn start(
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<RunningProxy, ProxyError> {
    config.validate()?;
    let bind = |listener: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                listener,
                addr,
                source,
            })
    };
    let data_listener = bind("listen", config.listen).await?;
    let admin_listener = bind("admin", config.admin).await?;
    let local = |l: &TcpListener, listener: &'static str, addr: SocketAddr| {
        l.local_addr().map_err(|source| ProxyError::Bind {
            listener,
            addr,
            source,
        })
    };
    let listen = local(&data_listener, "listen", config.listen)?;
    let admin = local(&admin_listener, "admin", config.admin)?;
    let service_name = config.service_name.as_ref().map(|s| s.to_ascii_lowercase());
    let proxy_id = config
        .proxy_id
        .clone()
        .unwrap_or_else(|| default_proxy_id(service_name.as_deref(), listen));
    let default_service = config
        .default_service
        .as_ref()
        .map(|s| s.to_ascii_lowercase());

    let metrics = Arc::new(match &config.telemetry.meter {
        Some(meter) => metrics::Metrics::with_latency(otlp::latency_histogram(meter)),
        None => metrics::Metrics::default(),
    });
    if let Some(meter) = &config.telemetry.meter {
        otlp::register(meter, &metrics);
    }
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
    let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
    let status = Arc::new(discovery::Status::default());
    let discovery = Discovery::new(table_rx, subscribe_tx, Arc::clone(&status));

    // Ready once every configured service (and the ingress's default one) has a state.
    let mut ready_for: BTreeSet<String> = config
        .subscribe
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    ready_for.extend(default_service.clone());
    let subscriptions = ready_for.clone();
    let client = Client {
        urls: config.control_plane.clone(),
        hello: meridian_proto::v1::ProxyHello {
            proxy_id: proxy_id.clone(),
            service_name: service_name.clone().unwrap_or_default(),
            build: format!("meridian-proxy {}", env!("CARGO_PKG_VERSION")),
        },
        subscriptions,
        ready_for,
        on_demand: subscribe_rx,
        applier: Applier::new(table_tx, Arc::clone(&metrics)),
        status,
        metrics: Arc::clone(&metrics),
        authorization: config
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| ProxyError::Config {
                field: "token",
                reason: "not a printable ASCII token".into(),
            })?,
        tls: config
            .control_plane_tls
            .as_ref()
            .map(|tls| Arc::clone(&tls.config)),
    };

    let upstream = forward::Upstream::new();
    let handler = Arc::new(handler::Handler {
        discovery: discovery.clone(),
        default_service,
        upstream: upstream.clone(),
        metrics: Arc::clone(&metrics),
        tracing: config.telemetry.tracer.clone().map(trace::Tracing::new),
    });
    let data_fn: HandlerFn =
        Arc::new(move |req, client| Box::pin(Arc::clone(&handler).handle(req, client)));
    let admin_state = Arc::new(admin::Admin {
        proxy_id: proxy_id.clone(),
        discovery,
        metrics,
        draining: shutdown.clone(),
    });
    let admin_fn: HandlerFn = Arc::new(move |req, _| {
        let response = admin_state.handle(&req);
        Box::pin(async move { response })
    });

    // The admin port outlives the data path's drain so probes can watch it; it stops after.
    let drained = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let span = tracing::info_span!("proxy", id = %proxy_id);
    // The certificate presented to the control plane follows its files (rotation).
    if let Some(key) = config
        .control_plane_tls
        .as_ref()
        .and_then(|t| t.key.clone())
    {
        let watch = key.watch(meridian_tls::reload::DEFAULT_RELOAD_EVERY, shutdown.clone());
        tasks.spawn(async move {
            watch.await;
            Ok(())
        });
    }
    {
        let shutdown = shutdown.clone();
        let drained = drained.clone();
        let drain = config.drain_timeout;
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                server::serve("listen", data_listener, data_fn, shutdown, drain).await;
                drained.cancel();
                Ok(())
            },
            span.clone(),
        ));
    }
    tasks.spawn(tracing::Instrument::instrument(
        async move {
            server::serve(
                "admin",
                admin_listener,
                admin_fn,
                drained,
                Duration::from_secs(1),
            )
            .await;
            Ok(())
        },
        span.clone(),
    ));
    {
        let shutdown = shutdown.clone();
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                upstream.reap_idle(shutdown).await;
                Ok(())
            },
            span.clone(),
        ));
    }
    tasks.spawn(tracing::Instrument::instrument(
        async move {
            client.run(shutdown).await;
            Ok(())
        },
        span,
    ));
    tracing::info!(%listen, %admin, %proxy_id, control_plane = ?config.control_plane, "proxy listening");
    Ok(RunningProxy {
        listen,
        admin,
        tasks,
    })
}
