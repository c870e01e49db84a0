//! `cafe-customer`: asks reports for the daily report N times and prints the observed split
//! of orders lookups by version (see `meridian_cafe::customer`).
#![allow(clippy::print_stdout)] // the observed split is this program's output

use std::time::Duration;

use clap::Parser;
use meridian_cafe::app::{self, parse_duration};
use meridian_cafe::client::Client;
use meridian_cafe::customer::Tally;
use meridian_telemetry::TelemetryArgs;

/// Asks cafe-reports for the daily report COUNT times and prints which orders versions
/// answered the lookups.
#[derive(Debug, Parser)]
#[command(name = "cafe-customer")]
struct Args {
    /// The reports service, e.g. http://127.0.0.1:8090.
    #[arg(long, value_name = "URL")]
    reports: String,
    /// How many daily reports to ask for (each makes 12 orders lookups).
    #[arg(long, default_value_t = 17, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Versions always listed in the output, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "v1,v2")]
    versions: Vec<String>,
    /// Limit for one report, e.g. 10s.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reports = args.reports.trim_end_matches('/').to_owned();
    app::run("cafe-customer", &args.telemetry, |cx| async move {
        let tracer = cx.tracer;
        let tally = Tally::ask(&Client::new(args.timeout), &tracer, &reports, args.count).await;
        let versions: Vec<&str> = args.versions.iter().map(String::as_str).collect();
        println!("{}", tally.observed_line(&versions));
        if let Some(id) = &tally.trace_id {
            println!("trace     {id}");
        }
        if let Some(error) = &tally.first_error {
            println!("error     {error}");
        }
        if tally.reports_failed == tally.reports {
            anyhow::bail!("no report came back from {reports}");
        }
        Ok(())
    })
}
