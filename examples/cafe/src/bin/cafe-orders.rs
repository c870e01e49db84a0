//! `cafe-orders`: the café's orders service (see `meridian_cafe::orders`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use meridian_cafe::app::{self, parse_duration, parse_ratio};
use meridian_cafe::orders::{Orders, Version};
use meridian_telemetry::TelemetryArgs;

/// The café's orders service: GET /orders?hour=H, GET /healthz.
#[derive(Debug, Parser)]
#[command(name = "cafe-orders")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Which version to be: v1 (totals as decimals) or v2 (totals in cents, with channels).
    #[arg(long, value_parser = Version::parse, default_value = "v1")]
    version: Version,
    /// Share of order requests to answer with 500, 0 to 1 (a bad canary).
    #[arg(long, value_parser = parse_ratio, default_value = "0")]
    error_rate: f64,
    /// Delay added to every order request, e.g. 50ms (a slow canary).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    latency: Duration,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    app::run("cafe-orders", &args.telemetry, |cx| async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, version = args.version.as_str(), "orders listening");
        // For scripts and tests that pass port 0: the address actually bound, on stdout, the
        // one line this program writes there.
        #[allow(clippy::print_stdout)]
        {
            println!("listening on http://{bound}");
        }
        let orders = Arc::new(Orders {
            version: args.version,
            error_rate: args.error_rate,
            latency: args.latency,
        });
        let tracer = cx.tracer.clone();
        let handler = move |request| Arc::clone(&orders).handle(tracer.clone(), request);
        meridian_cafe::serve::serve(listener, handler, cx.shutdown).await;
        Ok(())
    })
}
