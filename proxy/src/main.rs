//! The `meridian-proxy` binary: flags → [`meridian_proxy::start`]; SIGTERM or SIGINT drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use meridian_proxy::{ProxyConfig, ProxyTelemetry};
use meridian_telemetry::{Telemetry, TelemetryArgs};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: a proxied request allocates and frees dozens of small
/// buffers (headers, bodies, futures), and mimalloc's thread-local free lists take ~4 % off the
/// CPU per request. Without transparent huge pages (the workspace's `no_thp` feature) the
/// proxy's RSS is ~9 MiB idle rather than ~14.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Meridian's per-service proxy.
#[derive(Debug, Parser)]
#[command(name = "meridian-proxy", version)]
struct Args {
    /// Control-plane gRPC URLs (any nodes of the cluster), comma-separated.
    #[arg(
        long,
        env = "MERIDIAN_CONTROL_PLANE",
        value_delimiter = ',',
        required = true
    )]
    control_plane: Vec<String>,
    /// Data-path listen address (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddr,
    /// Admin listen address (/ready, /config, /metrics).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The service this proxy fronts.
    #[arg(long)]
    service_name: Option<String>,
    /// Ingress mode: requests whose authority is not a known service go to this one.
    #[arg(long)]
    default_service: Option<String>,
    /// Services to subscribe at start, comma-separated (others on their first request).
    #[arg(long, value_delimiter = ',')]
    subscribe: Vec<String>,
    /// Unique proxy id (default: NAME-PID@LISTEN).
    #[arg(long)]
    proxy_id: Option<String>,
    /// How long in-flight requests may finish on shutdown, e.g. 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Worker threads (default: the CPUs this process may run on; 1 runs a single-threaded
    /// scheduler).
    #[arg(long, env = "MERIDIAN_PROXY_THREADS")]
    threads: Option<usize>,
    /// The ACL token secret to stream from the control plane with (it needs `subscribe` on
    /// the services this proxy serves).
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) the control plane's certificate must chain to. With it, the
    /// proxy connects to the control plane over TLS.
    #[arg(long, env = "MERIDIAN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The proxy's certificate (PEM), for a control plane run with --require-client-cert.
    #[arg(long, env = "MERIDIAN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MERIDIAN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    }
}

/// Builds the runtime: one thread runs tokio's current-thread scheduler (no work-stealing
/// bookkeeping: ~20 % more requests/s than a one-worker multi-thread runtime on this machine);
/// more run the multi-thread one. Linkerd's proxy makes the same choice.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ProxyConfig {
        control_plane: args.control_plane,
        listen: args.listen,
        admin: args.admin,
        service_name: args.service_name,
        default_service: args.default_service,
        proxy_id: args.proxy_id,
        subscribe: args.subscribe,
        drain_timeout: args.drain_timeout,
        telemetry: ProxyTelemetry::default(),
        token: args.token,
        control_plane_tls: meridian_tls::config::client_from_flags(
            args.tls_ca.as_deref(),
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )
        .map_err(anyhow::Error::msg)?,
    };
    // Built inside the runtime: the OTLP exporters' channels live on it.
    let telemetry =
        Telemetry::new(config.telemetry_config(&args.telemetry)).context("setting up telemetry")?;
    telemetry.install("info").context("installing logging")?;
    config.telemetry = ProxyTelemetry::from_telemetry(&telemetry);
    if let Some(endpoint) = &telemetry.config().otlp_endpoint {
        tracing::info!(%endpoint, sampling = ?telemetry.config().sampling, "exporting traces and metrics over OTLP");
    }
    let result = serve(config).await;
    // After the drain: export what is buffered (bounded by the export timeout when the
    // collector is down), then stop the exporters.
    telemetry.shutdown().await;
    result
}

async fn serve(config: ProxyConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let proxy = meridian_proxy::start(config, shutdown.clone())
        .await
        .context("starting the proxy")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signals = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received; draining");
        shutdown.cancel();
    };
    let waiter = tokio::spawn(signals);
    let result = proxy.wait().await;
    waiter.abort();
    tracing::info!("proxy stopped");
    result.context("proxy stopped with an error")
}
