//! Running wrk and reading its `--latency` report.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::{Options, SERVICE};
use crate::servers::ServerGuard;

/// One wrk run.
#[derive(Clone, Debug)]
pub(super) struct Wrk {
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// Non-2xx responses and socket errors, as wrk reports them.
    pub(super) errors: String,
}

/// Runs wrk once against `addr`, sampling `watched`'s RSS meanwhile; returns the result and
/// the peak RSS seen (0 without a process to watch).
pub(super) async fn wrk(
    opts: &Options,
    conns: usize,
    addr: SocketAddr,
    watched: Option<&ServerGuard>,
) -> Result<(Wrk, u64)> {
    let mut cmd = if opts.pin {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        tokio::process::Command::new("wrk")
    };
    let threads = opts.threads.min(conns).max(1);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", opts.seconds))
        .arg("--latency")
        .args(["-H", &format!("Host: {SERVICE}")])
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = cmd.output();
    tokio::pin!(run);
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let out = loop {
        tokio::select! {
            out = &mut run => break out.context("running wrk (Debian: apt-get install wrk)")?,
            _ = tick.tick() => {
                if let Some(p) = watched {
                    peak = peak.max(p.rss().unwrap_or(0));
                }
            }
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {text}");
    Ok((parse_wrk(&text)?, peak))
}

/// Requests/s, p50 and p99 from wrk's `--latency` output.
fn parse_wrk(text: &str) -> Result<Wrk> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:")
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?
        .parse()?;
    let p50 = field("50%").context("no 50% line (wrk --latency)")?;
    let p99 = field("99%").context("no 99% line (wrk --latency)")?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut errors = Vec::new();
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        errors.push(format!("{n} non-2xx"));
    }
    if let Some(s) = field("Socket errors:") {
        errors.push(format!("socket errors: {s}"));
    }
    Ok(Wrk {
        rps,
        p50_ms: wrk_ms(p50)?,
        p99_ms: wrk_ms(p99)?,
        errors: if errors.is_empty() {
            format!("none ({requests} requests)")
        } else {
            errors.join(", ")
        },
    })
}

/// "523.00us" / "1.23ms" / "2.00s" → milliseconds.
fn wrk_ms(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {v:?}"))?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("unknown unit in {v:?}"),
    })
}
