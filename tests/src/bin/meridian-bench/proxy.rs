//! `--scenario proxy`: HTTP through `meridian-proxy` beside haproxy, with the same backend and
//! the same 90/10 weighted split, in one run, driven by wrk.
//!
//! The backend is nginx (Debian `nginx-light`, one process, `master_process off`) with two
//! server blocks on free loopback ports, answering `v1` and `v2` with an `x-backend-id`
//! header. Three paths are measured with the same wrk command (`--http-connections`,
//! `--http-threads`, `--http-seconds`, `--latency`, `Host: web.bench.local`), interleaved
//! round by round, median of `--repeat` rounds by requests/s:
//! (a) straight to nginx's v1 block; (b) through `meridian-proxy` (the release binary, its own
//! process), which gets the backends from `meridian dev` (the release binary) as instances
//! of `web.bench.local` and the route `version` v1=90,v2=10; (c) through haproxy with a
//! generated `mode http`, `balance roundrobin` config, `weight 90` / `weight 10`.
//! Both proxies' split is checked on 1,000 requests before the load. Memory: each proxy's
//! `VmRSS` once idle (after that check) and its peak while wrk runs. Route changes: the time
//! from sending `PutRoute` to `WaitApplied` confirming that the proxy acknowledged it, over
//! [`ROUTE_CHANGES`] alternating splits (the proxy idle).
//! With `--pin`, every server (nginx, the proxies, the control plane) runs on core 0 and
//! wrk on core 1.
//!
//! Tracing, in the same run: two more `meridian-proxy` processes with
//! `--otlp-endpoint` set, one sampling every request (`--trace-sampling 1`), one 1%
//! (`--trace-sampling 0.01`), each exporting to its own OTLP collector inside the bench
//! process (`meridian_tests::otlp::Collector`, counting spans, keeping none); measured with
//! the same wrk command, interleaved with the other paths, and compared with the proxy
//! without tracing. They run only during the load (the route-change timing sees one proxy).

#[path = "proxy/procs.rs"]
mod procs;
#[path = "proxy/tracing.rs"]
mod tracing;
#[path = "proxy/wrk.rs"]
mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::routing_client::RoutingClient;
use meridian_tests::backend::Backend;
use meridian_tests::mesh::{Call, MeshClient};
use meridian_tests::otlp::Collector;
use tonic::transport::Channel;

use self::procs::{
    connect, populate, put_split, start_haproxy, start_meridian, start_nginx, start_proxy,
    wait_applied,
};
use self::wrk::{Wrk, wrk};
use crate::servers::{ServerGuard, free_port};

const NAMESPACE: &str = "bench.local";
const SERVICE: &str = "web.bench.local";
/// How many route changes are timed.
pub(crate) const ROUTE_CHANGES: usize = 50;
/// Requests sent through each proxy to check its split before the load.
const SPLIT_CHECK: u64 = 1000;

/// What the scenario needs from the command line.
pub(crate) struct Options {
    pub(crate) meridian: PathBuf,
    pub(crate) proxy: PathBuf,
    pub(crate) haproxy: PathBuf,
    pub(crate) nginx: PathBuf,
    pub(crate) connections: Vec<usize>,
    pub(crate) threads: usize,
    pub(crate) seconds: u64,
    pub(crate) repeat: usize,
    pub(crate) pin: bool,
    pub(crate) machine: String,
}

/// The paths under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Path3 {
    Direct,
    Meridian,
    Haproxy,
    /// meridian-proxy exporting spans of every request.
    Traced100,
    /// meridian-proxy exporting spans of 1% of the requests.
    Traced1,
}

// === impl Path3 ===

impl Path3 {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "nginx direct (v1 block)",
            Self::Meridian => "through meridian-proxy (90/10)",
            Self::Haproxy => "through haproxy (90/10)",
            Self::Traced100 => "meridian-proxy, tracing 100%",
            Self::Traced1 => "meridian-proxy, tracing 1%",
        }
    }
}

/// Runs the whole scenario and prints the Markdown report on stdout.
pub(crate) async fn run(opts: &Options) -> Result<()> {
    ensure!(
        opts.proxy.is_file(),
        "no meridian-proxy binary at {}: run `cargo build --release --bins` (scripts/bench does)",
        opts.proxy.display()
    );
    // nginx, or without it two in-process backends (on the bench's own core: a weaker setup,
    // said so in the report).
    let (nginx, in_process, ports, backend_note) = if opts.nginx.is_file() {
        let ports = [free_port()?, free_port()?];
        let mut nginx = start_nginx(&opts.nginx, ports, opts.pin)?;
        wait_http(([127, 0, 0, 1], ports[0]).into(), &mut nginx).await?;
        let note = format!(
            "- backend: {} (`master_process off`: one process), two server blocks `v1`, `v2`: \
             `{}`",
            version(&opts.nginx, "-v"),
            nginx.command
        );
        (Some(nginx), None, ports, note)
    } else {
        eprintln!(
            "no nginx at {} (Debian: nginx-light): using in-process test backends",
            opts.nginx.display()
        );
        let backends = (Backend::start("v1").await, Backend::start("v2").await);
        let ports = [backends.0.addr().port(), backends.1.addr().port()];
        let note = "- backend: **not nginx** (not installed): two meridian-tests `Backend`s \
                    inside the bench process, on wrk's core"
            .to_owned();
        (None, Some(backends), ports, note)
    };
    let direct: SocketAddr = ([127, 0, 0, 1], ports[0]).into();

    let (mut control, grpc) = start_meridian(&opts.meridian, opts.pin)?;
    let channel = connect(&grpc).await?;
    populate(channel.clone(), ports).await?;
    let mut routing = RoutingClient::new(channel.clone());
    let mut discovery = DiscoveryClient::new(channel);
    let (mut meridian, proxy_addr) =
        start_proxy(&opts.proxy, &grpc, opts.pin, "meridian-proxy", &[])?;
    let revision = put_split(&mut routing, 90, 10).await?;
    wait_http(proxy_addr, &mut meridian).await?;
    wait_applied(&mut discovery, revision).await?;
    let (mut haproxy, haproxy_addr) = start_haproxy(&opts.haproxy, ports, opts.pin)?;
    wait_http(haproxy_addr, &mut haproxy).await?;
    // Started after the route was applied (WaitApplied above counts one proxy).
    let collectors = [
        Collector::start_counting().await,
        Collector::start_counting().await,
    ];
    let tracing_flags = |collector: &Collector, ratio: &str| {
        [
            "--otlp-endpoint".to_owned(),
            collector.endpoint(),
            "--trace-sampling".to_owned(),
            ratio.to_owned(),
        ]
    };
    let (mut traced100, traced100_addr) = start_proxy(
        &opts.proxy,
        &grpc,
        opts.pin,
        "meridian-proxy (tracing 100%)",
        &tracing_flags(&collectors[0], "1"),
    )?;
    wait_http(traced100_addr, &mut traced100).await?;
    let (mut traced1, traced1_addr) = start_proxy(
        &opts.proxy,
        &grpc,
        opts.pin,
        "meridian-proxy (tracing 1%)",
        &tracing_flags(&collectors[1], "0.01"),
    )?;
    wait_http(traced1_addr, &mut traced1).await?;

    let mut report = vec![
        format!("- machine: {}", opts.machine),
        format!(
            "- command: `{}`",
            std::env::args().collect::<Vec<_>>().join(" ")
        ),
        format!(
            "- pinning: {}",
            if opts.pin {
                "nginx, meridian-proxy, haproxy and `meridian dev` on core 0 (`taskset -c 0`), \
                 wrk on core 1 (`taskset -c 1`)"
            } else {
                "none"
            }
        ),
        backend_note,
        format!(
            "- control plane: {}: `{}`",
            version(&opts.meridian, "--version"),
            control.command
        ),
        format!(
            "- meridian-proxy: {}, {} build: `{}`",
            version(&opts.proxy, "--version"),
            if opts.proxy.components().any(|c| c.as_os_str() == "debug") {
                "**debug**"
            } else {
                "release"
            },
            meridian.command
        ),
        format!(
            "- haproxy: {}, one thread (it follows the CPU mask): `{}`",
            version(&opts.haproxy, "-v"),
            haproxy.command
        ),
    ];
    for (path, addr) in [
        (Path3::Meridian, proxy_addr),
        (Path3::Haproxy, haproxy_addr),
    ] {
        let split = check_split(addr).await?;
        report.push(format!(
            "- split check, {SPLIT_CHECK} requests {}: {split:?}",
            path.label()
        ));
    }
    let idle = [meridian.rss()?, haproxy.rss()?];

    let targets = [
        (Path3::Direct, direct),
        (Path3::Meridian, proxy_addr),
        (Path3::Traced100, traced100_addr),
        (Path3::Traced1, traced1_addr),
        (Path3::Haproxy, haproxy_addr),
    ];
    let mut runs: BTreeMap<(usize, Path3), Vec<Wrk>> = BTreeMap::new();
    let mut peak = [0u64; 2];
    for &conns in &opts.connections {
        for round in 0..opts.repeat {
            for (path, addr) in targets {
                let watched = match path {
                    Path3::Meridian => Some((0, &meridian)),
                    Path3::Haproxy => Some((1, &haproxy)),
                    Path3::Direct | Path3::Traced100 | Path3::Traced1 => None,
                };
                let (result, rss) = wrk(opts, conns, addr, watched.map(|(_, p)| p)).await?;
                if let Some((i, _)) = watched {
                    peak[i] = peak[i].max(rss);
                }
                eprintln!(
                    "  {conns:>3} conns, round {}: {:<32} {:>9.0} req/s  p50 {:.3} ms  \
                     p99 {:.3} ms  {}",
                    round + 1,
                    path.label(),
                    result.rps,
                    result.p50_ms,
                    result.p99_ms,
                    result.errors
                );
                runs.entry((conns, path)).or_default().push(result);
            }
        }
        meridian.check_alive()?;
        haproxy.check_alive()?;
        traced100.check_alive()?;
        traced1.check_alive()?;
    }
    let traced_rss = [traced100.rss()?, traced1.rss()?];
    // Stop the traced proxies (SIGKILL: what they buffered is not counted) before the
    // route-change timing, which expects one proxy.
    drop((traced100, traced1));
    let spans = [collectors[0].span_count(), collectors[1].span_count()];

    let changes = match route_changes(&mut routing, &mut discovery).await {
        Ok(changes) => changes,
        Err(e) => {
            // Say why if the control plane died; otherwise the error itself.
            control.check_alive()?;
            return Err(e.context("timing route changes"));
        }
    };
    meridian.check_alive()?;
    print_report(opts, &report, &runs, idle, peak, &changes);
    tracing::print_report(&opts.connections, &runs, spans, traced_rss);
    drop((haproxy, meridian, control, nginx, in_process));
    Ok(())
}

fn print_report(
    opts: &Options,
    header: &[String],
    runs: &BTreeMap<(usize, Path3), Vec<Wrk>>,
    idle: [u64; 2],
    peak: [u64; 2],
    changes: &[Duration],
) {
    println!("## Proxy\n");
    for line in header {
        println!("{line}");
    }
    println!(
        "- load: `wrk -t{} -c<connections> -d{}s --latency -H 'Host: {SERVICE}'`, all the \
         paths interleaved round by round; each cell is the median of {} runs by requests/s\n",
        opts.threads, opts.seconds, opts.repeat
    );
    println!(
        "| connections | path | req/s | p50 (ms) | p99 (ms) | req/s vs haproxy | added p50 / p99 \
         over direct (ms) | errors (median run) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    let median = |key| {
        runs.get(&key).map(|v: &Vec<Wrk>| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            v.swap_remove(v.len() / 2)
        })
    };
    for &conns in &opts.connections {
        let direct = median((conns, Path3::Direct));
        let haproxy = median((conns, Path3::Haproxy));
        for path in [Path3::Direct, Path3::Meridian, Path3::Haproxy] {
            let Some(r) = median((conns, path)) else {
                continue;
            };
            let ratio = match (&haproxy, path) {
                (Some(h), Path3::Meridian | Path3::Haproxy) => {
                    format!("**{:.2}×**", r.rps / h.rps)
                }
                _ => "—".to_owned(),
            };
            let added = match (&direct, path) {
                (Some(d), Path3::Meridian | Path3::Haproxy) => {
                    format!("{:+.3} / {:+.3}", r.p50_ms - d.p50_ms, r.p99_ms - d.p99_ms)
                }
                _ => "—".to_owned(),
            };
            println!(
                "| {conns} | {} | {} | {:.3} | {:.3} | {ratio} | {added} | {} |",
                path.label(),
                crate::thousands(r.rps),
                r.p50_ms,
                r.p99_ms,
                r.errors
            );
        }
    }
    println!("\nEvery run (req/s):\n");
    for ((conns, path), v) in runs {
        let all: Vec<String> = v.iter().map(|r| crate::thousands(r.rps)).collect();
        println!(
            "- {conns} connections, {}: {}",
            path.label(),
            all.join(" · ")
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("\n| memory (VmRSS) | idle (MiB) | peak under load (MiB) |");
    println!("|---|---:|---:|");
    println!(
        "| meridian-proxy | {:.1} | {:.1} |",
        mib(idle[0]),
        mib(peak[0])
    );
    println!("| haproxy | {:.1} | {:.1} |", mib(idle[1]), mib(peak[1]));
    let mut sorted = changes.to_vec();
    sorted.sort();
    let pct = |q: f64| {
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i].as_secs_f64() * 1000.0
    };
    if !sorted.is_empty() {
        println!(
            "\nRoute change → applied on the proxy (`PutRoute` sent → `WaitApplied` says \
             applied 1/1), {} alternating changes v1=90,v2=10 ↔ v1=10,v2=90, proxy idle: \
             p50 **{:.2} ms**, p99 **{:.2} ms**, max {:.2} ms",
            sorted.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}

/// Times [`ROUTE_CHANGES`] route changes from `PutRoute` sent to `WaitApplied` confirmed.
async fn route_changes(
    routing: &mut RoutingClient<Channel>,
    discovery: &mut DiscoveryClient<Channel>,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(ROUTE_CHANGES);
    for i in 0..ROUTE_CHANGES {
        let (v1, v2) = if i % 2 == 0 { (10, 90) } else { (90, 10) };
        let start = Instant::now();
        let revision = put_split(routing, v1, v2).await?;
        wait_applied(discovery, revision).await?;
        times.push(start.elapsed());
    }
    Ok(times)
}

/// Polls `addr` with `GET /` until it answers 2xx (30 s at most), failing early if `server`
/// died.
async fn wait_http(addr: SocketAddr, server: &mut ServerGuard) -> Result<()> {
    let client = MeshClient::new(addr);
    let call = Call::get("/").host(SERVICE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_alive()?;
        let why = match client.send(&call).await {
            Ok(r) if r.status.is_success() => return Ok(()),
            Ok(r) => format!("answers {}: {}", r.status, r.body.trim()),
            Err(e) => e,
        };
        ensure!(
            Instant::now() < deadline,
            "{} at {addr} not ready within 30 s: {why}",
            server.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends [`SPLIT_CHECK`] sequential requests and counts them by `x-backend-id`.
async fn check_split(addr: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let tally = MeshClient::new(addr)
        .tally(&Call::get("/").host(SERVICE), SPLIT_CHECK, 1)
        .await;
    ensure!(
        tally.failures == 0,
        "{addr}: {} failures, first: {:?}",
        tally.failures,
        tally.first_failure
    );
    Ok(tally.by_backend)
}

/// The first line of `program flag` (stdout or stderr), e.g. "nginx version: nginx/1.22.1".
fn version(program: &std::path::Path, flag: &str) -> String {
    std::process::Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown version".to_owned())
}
