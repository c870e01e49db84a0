//! What every café binary's `main` shares: a multi-thread tokio runtime (the telemetry SDK's
//! flush must not run on a current-thread one), telemetry from the `OTEL_*` variables and
//! flags, SIGTERM / Ctrl-C handling, and a final flush of the spans.

use std::future::Future;

use meridian_telemetry::{Telemetry, TelemetryArgs};
use tokio_util::sync::CancellationToken;

use crate::trace::Tracer;

/// What a program gets to run with.
#[derive(Debug, Clone)]
pub struct Context {
    /// Spans go here (records nothing without an OTLP endpoint).
    pub tracer: Tracer,
    /// Cancelled on SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
}

/// Runs `program` with telemetry set up for `service_name` (unless the flags or
/// `OTEL_SERVICE_NAME` say otherwise) and returns its result once it is done, after the spans
/// it recorded are exported (best effort, bounded by the exporter's timeout).
pub fn run<P, F>(service_name: &str, telemetry: &TelemetryArgs, program: P) -> anyhow::Result<()>
where
    P: FnOnce(Context) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let instance = format!("{service_name}-{}", std::process::id());
        let config = telemetry.config(service_name, env!("CARGO_PKG_VERSION"), &instance);
        let telemetry = Telemetry::new(config)?;
        telemetry.install("info")?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let result = program(Context {
            tracer: Tracer::new(telemetry.tracer()),
            shutdown: shutdown.clone(),
        })
        .await;
        shutdown.cancel();
        let _ = signals.await;
        telemetry.shutdown().await;
        result
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT (or returns once it is cancelled otherwise).
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            shutdown.cancelled().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

/// Parses a duration flag: `250ms`, `2s` or `0`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 250ms or 2s"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "" if n == 0 => Ok(std::time::Duration::ZERO),
        _ => Err(format!("{text:?} is not a duration such as 250ms or 2s")),
    }
}

/// Parses a share from 0 to 1 (`--error-rate`).
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flags_parse_or_say_why_not() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "1m", "ms", "-1s"] {
            assert!(parse_duration(bad).unwrap_err().contains("250ms"), "{bad}");
        }
        assert_eq!(parse_ratio("0.2"), Ok(0.2));
        assert!(parse_ratio("1.5").unwrap_err().contains("from 0 to 1"));
    }
}
