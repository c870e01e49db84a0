//! `cafe-reports`: the café's reports service (see `meridian_cafe::reports`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use http::HeaderValue;
use meridian_cafe::app::{self, parse_duration};
use meridian_cafe::client::Client;
use meridian_cafe::reports::Reports;
use meridian_telemetry::TelemetryArgs;

/// The café's reports service: GET /reports/daily, GET /healthz.
#[derive(Debug, Parser)]
#[command(name = "cafe-reports")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Where orders lookups go: the local meridian-proxy, e.g. http://127.0.0.1:15001.
    #[arg(long, value_name = "URL")]
    orders_via: String,
    /// The Host header of orders lookups: the mesh service the proxy routes to.
    #[arg(long, default_value = "orders.cafe.local")]
    orders_host: String,
    /// Limit for one orders lookup, e.g. 5s.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    lookup_timeout: Duration,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let orders_via = args.orders_via.trim_end_matches('/').to_owned();
    if !orders_via.starts_with("http://") {
        anyhow::bail!("--orders-via {orders_via:?}: an http:// URL, e.g. http://127.0.0.1:15001");
    }
    let orders_host = HeaderValue::from_str(&args.orders_host)
        .map_err(|e| anyhow::anyhow!("--orders-host {:?}: {e}", args.orders_host))?;
    app::run("cafe-reports", &args.telemetry, |cx| async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, orders_via, "reports listening");
        // For scripts and tests that pass port 0: the address actually bound, on stdout, the
        // one line this program writes there.
        #[allow(clippy::print_stdout)]
        {
            println!("listening on http://{bound}");
        }
        let reports = Arc::new(Reports {
            orders_via,
            orders_host,
            client: Client::new(args.lookup_timeout),
        });
        let tracer = cx.tracer.clone();
        let handler = move |request| Arc::clone(&reports).handle(tracer.clone(), request);
        meridian_cafe::serve::serve(listener, handler, cx.shutdown).await;
        Ok(())
    })
}
