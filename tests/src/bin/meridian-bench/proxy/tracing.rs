//! The proxy scenario's tracing table: meridian-proxy with tracing off, at 100% and at 1%
//! sampling, measured in the same run.

use std::collections::BTreeMap;

use super::Path3;
use super::wrk::Wrk;

/// Prints the tracing comparison: per connection count, each path's median run (by
/// requests/s) and its ratio to tracing off; then the spans each collector received and the
/// traced proxies' memory after the load.
pub(super) fn print_report(
    connections: &[usize],
    runs: &BTreeMap<(usize, Path3), Vec<Wrk>>,
    spans: [u64; 2],
    rss: [u64; 2],
) {
    let median = |key| {
        runs.get(&key).map(|v: &Vec<Wrk>| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            v.swap_remove(v.len() / 2)
        })
    };
    println!(
        "\n### Tracing (same run)\n\nmeridian-proxy with `--otlp-endpoint` set to an OTLP \
         collector in the bench process, `--trace-sampling 1` and `0.01`, beside the same \
         proxy without an endpoint (tracing off: trace headers are not even parsed).\n"
    );
    println!(
        "| connections | path | req/s | p50 (ms) | p99 (ms) | req/s vs tracing off | \
         p99 vs tracing off | errors (median run) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    for &conns in connections {
        let off = median((conns, Path3::Meridian));
        for path in [Path3::Meridian, Path3::Traced100, Path3::Traced1] {
            let Some(r) = median((conns, path)) else {
                continue;
            };
            let (ratio, p99) = match &off {
                Some(o) => (
                    format!("**{:.2}×**", r.rps / o.rps),
                    format!("{:.2}×", r.p99_ms / o.p99_ms),
                ),
                None => ("—".to_owned(), "—".to_owned()),
            };
            let label = match path {
                Path3::Meridian => "meridian-proxy, tracing off",
                other => other.label(),
            };
            println!(
                "| {conns} | {label} | {} | {:.3} | {:.3} | {ratio} | {p99} | {} |",
                crate::thousands(r.rps),
                r.p50_ms,
                r.p99_ms,
                r.errors
            );
        }
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "\nSpans received by the collectors over the whole run (the SDK's batch processor \
         holds at most 2,048 finished spans and drops the rest when the exporter falls \
         behind): 100% — {}, 1% — {}. Memory (VmRSS) after the load: 100% — {:.1} MiB, \
         1% — {:.1} MiB.",
        crate::thousands(spans[0] as f64),
        crate::thousands(spans[1] as f64),
        mib(rss[0]),
        mib(rss[1])
    );
}
