//! `meridian-bench`: Meridian against its peer, side by side, in one run, on one machine.
//!
//! Scenario measured: **single-node registration writes**. A single-node Meridian
//! (`meridian server`, Raft log fsynced before each acknowledgement) and a single-member etcd
//! (fsync on, its default) are each started as real processes on loopback, with their data dirs
//! in temporary directories on the same disk. For each concurrency level in `--clients`, that many
//! clients each loop sequential unary writes of about 256 bytes — `RegisterInstance` into
//! `svc.bench.local` for Meridian, `KV.Put` of a 256-byte value for etcd — and every request's
//! latency goes into an HDR histogram. The report gives writes/s, p50 and p99 per system and the
//! Meridian/etcd throughput ratio, as a Markdown table ready for BENCHMARKS.md.
//!
//! Run it with `scripts/bench` (installs etcd, builds in release mode, forwards its arguments):
//!
//! ```text
//! scripts/bench                          # --clients 1,64
//! scripts/bench --pin --repeat 3         # servers on core 0, load generator on core 1, median of 3
//! scripts/bench --systems etcd           # only one side
//! scripts/bench --pin --scenario proxy   # meridian-proxy vs haproxy, 90/10 over nginx, wrk
//! scripts/bench --pin --scenario cluster --writes-only   # 3 nodes vs 3 members, writes only
//! ```
//!
//! The `meridian` binary is looked up next to this one (`target/release/meridian`) unless
//! `--meridian-bin` says otherwise; `etcd` is taken from `PATH` unless `--etcd-bin` says otherwise.
//! Progress goes to stderr, the report to stdout.

// The report is this program's output: printing is the point.
#![allow(clippy::print_stdout, clippy::print_stderr)]

// A binary's root module resolves `mod x;` beside itself, hence the explicit paths.
#[path = "meridian-bench/cluster.rs"]
mod cluster;
#[path = "meridian-bench/dns.rs"]
mod dns;
#[path = "meridian-bench/load.rs"]
mod load;
#[path = "meridian-bench/proxy.rs"]
mod proxy;
#[path = "meridian-bench/servers.rs"]
mod servers;
#[path = "meridian-bench/watch.rs"]
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};

use crate::load::{ETCD_VALUE_BYTES, Load, MERIDIAN_PAYLOAD, RunResult, System};

/// Generated client of etcd's KV service (the slice in `tests/proto/etcd/kv.proto`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Meridian vs etcd: single-node registration writes (fsync on), side by side in one run.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Concurrency levels: number of clients, each looping sequential unary writes.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,

    /// Writes per concurrency level [default: 3000 per client, at most 20000].
    #[arg(long)]
    requests: Option<u64>,

    /// Upper bound on one measured run, in seconds (the run stops early if it is reached).
    #[arg(long, default_value_t = 20)]
    max_seconds: u64,

    /// Unrecorded writes before each measured run, to warm connections and caches.
    #[arg(long, default_value_t = 500)]
    warmup: u64,

    /// HTTP/2 connections shared by the clients of a run (at most one per client).
    #[arg(long, default_value_t = 4)]
    conns: usize,

    /// Measured runs per system and level; the report shows the median by writes/s.
    #[arg(long, default_value_t = 3)]
    repeat: usize,

    /// Systems to measure.
    #[arg(long, value_delimiter = ',', default_value = "etcd,meridian")]
    systems: Vec<SystemArg>,

    /// Run the servers on core 0 (`taskset -c 0`) and this load generator on core 1.
    #[arg(long)]
    pin: bool,

    /// The `meridian` binary [default: `meridian` next to this executable].
    #[arg(long)]
    meridian_bin: Option<PathBuf>,

    /// The `etcd` binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,

    /// Which comparison: `writes` (Meridian vs etcd), `dns` (Meridian vs Knot, dnsperf),
    /// `watch`, `cluster`, or `proxy` (meridian-proxy vs haproxy over nginx, wrk).
    #[arg(long, value_enum, default_value = "writes")]
    scenario: Scenario,

    /// `dns` scenario: seconds of dnsperf load per server.
    #[arg(long, default_value_t = 10)]
    dns_seconds: u64,

    /// `dns` scenario: the Knot DNS daemon.
    #[arg(long, default_value = "knotd")]
    knot_bin: PathBuf,

    /// `proxy` scenario: wrk connections, one measured level per value.
    #[arg(long, value_delimiter = ',', default_value = "50")]
    http_connections: Vec<usize>,

    /// `proxy` scenario: wrk threads.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,

    /// `proxy` scenario: seconds of wrk load per run.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,

    /// `proxy` scenario: the `meridian-proxy` binary [default: next to this executable].
    #[arg(long)]
    proxy_bin: Option<PathBuf>,

    /// `proxy` scenario: haproxy.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy_bin: PathBuf,

    /// `proxy` scenario: nginx, the backend.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,

    /// `cluster` scenario: run only part 1 (writes at the leader), about 2 minutes; with
    /// `--systems` one side only (e.g. to profile it).
    #[arg(long)]
    writes_only: bool,

    /// Directory in which both data dirs are created [default: the system temp dir].
    #[arg(long)]
    data_root: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Writes,
    Dns,
    /// Registration → watchers on followers, 3-node Meridian vs 3-member etcd.
    Watch,
    /// 3-node Meridian vs 3-member etcd: writes, leader failover, scale (100k instances).
    Cluster,
    /// meridian-proxy vs haproxy (90/10 split over nginx, wrk), memory, route apply time.
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SystemArg {
    Etcd,
    Meridian,
}

/// The median run of one system at one concurrency level.
struct Cell {
    system: System,
    clients: usize,
    result: RunResult,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        !args.clients.is_empty() && !args.clients.contains(&0),
        "--clients needs positive numbers"
    );
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let machine = machine_facts();
    if args.pin {
        pin_self_to_core_1()?;
    }
    // Built after pinning, so every runtime thread inherits this thread's CPU affinity.
    tokio::runtime::Runtime::new()
        .context("starting the tokio runtime")?
        .block_on(run(args, machine))
}

async fn run(args: Args, machine: String) -> Result<()> {
    let meridian_bin = match &args.meridian_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench executable has no parent directory")?
            .join("meridian"),
    };
    let want = |s| args.systems.contains(&s);
    if want(SystemArg::Meridian) && !meridian_bin.is_file() {
        bail!(
            "no meridian binary at {}: run `cargo build --release --bins` first \
             (or pass --meridian-bin PATH)",
            meridian_bin.display()
        );
    }
    if args.scenario == Scenario::Dns {
        return dns::run(
            &meridian_bin,
            &args.knot_bin,
            args.dns_seconds,
            args.pin,
            &machine,
        )
        .await;
    }
    if args.scenario == Scenario::Proxy {
        let proxy = match &args.proxy_bin {
            Some(path) => path.clone(),
            None => meridian_bin.with_file_name("meridian-proxy"),
        };
        return proxy::run(&proxy::Options {
            meridian: meridian_bin,
            proxy,
            haproxy: args.haproxy_bin,
            nginx: args.nginx_bin,
            connections: args.http_connections,
            threads: args.http_threads,
            seconds: args.http_seconds,
            repeat: args.repeat,
            pin: args.pin,
            machine,
        })
        .await;
    }
    let data_root = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    if args.scenario == Scenario::Cluster {
        let kinds: Vec<watch::Kind> = [
            (SystemArg::Etcd, watch::Kind::Etcd),
            (SystemArg::Meridian, watch::Kind::Meridian),
        ]
        .into_iter()
        .filter(|(s, _)| want(*s))
        .map(|(_, k)| k)
        .collect();
        ensure!(
            args.writes_only || kinds.len() == 2,
            "--scenario cluster measures both systems unless --writes-only is given"
        );
        return cluster::run(
            &meridian_bin,
            &args.etcd_bin,
            &data_root,
            &cluster::Options {
                pin: args.pin,
                writes_only: args.writes_only,
                kinds,
            },
            &machine,
        )
        .await;
    }
    if args.scenario == Scenario::Watch {
        return watch::run(
            &meridian_bin,
            &args.etcd_bin,
            &data_root,
            args.pin,
            &machine,
        )
        .await;
    }

    let mut header = vec![
        format!("- machine: {machine}"),
        format!("- data dirs: {}", filesystem_of(&data_root)),
        format!(
            "- command: `{}`",
            std::env::args().collect::<Vec<_>>().join(" ")
        ),
        format!(
            "- pinning: {}",
            if args.pin {
                "servers on core 0 (`taskset -c 0`), load generator on core 1 \
                 (`taskset -a -p -c 1` on itself before its runtime starts)"
            } else {
                "none (servers and load generator share all cores)"
            }
        ),
        format!(
            "- load: per level, N clients each loop sequential unary writes, sharing \
             min(N, {}) HTTP/2 connections; {} unrecorded warm-up writes first; {}",
            args.conns,
            args.warmup,
            if args.repeat > 1 {
                format!("median of {} runs by writes/s", args.repeat)
            } else {
                "one run".to_owned()
            }
        ),
    ];

    let mut cells = Vec::new();
    for system in [SystemArg::Etcd, SystemArg::Meridian] {
        if !want(system) {
            continue;
        }
        let (system, server) = match system {
            SystemArg::Etcd => {
                let version = servers::version(&args.etcd_bin);
                eprintln!("starting etcd ({version})");
                let server = servers::start_etcd(&args.etcd_bin, &data_root, args.pin)
                    .await
                    .context(
                        "etcd (Debian: `apt-get install etcd-server`, as scripts/bench does)",
                    )?;
                header.push(format!(
                    "- etcd: {version}, 1 member, fsync on; `KV.Put` of a {ETCD_VALUE_BYTES} B \
                     value under `/bench/<id>`; server: `{}`",
                    server.command
                ));
                (System::Etcd, server)
            }
            SystemArg::Meridian => {
                let version = servers::version(&meridian_bin);
                eprintln!("starting meridian ({version})");
                let server = servers::start_meridian(&meridian_bin, &data_root, args.pin).await?;
                header.push(format!(
                    "- Meridian: {version}, 1 node, fsync on; `RegisterInstance` (id, address, \
                     port, attributes `version` and a {MERIDIAN_PAYLOAD} B `payload`) into \
                     `{}`; server: `{}`",
                    servers::BENCH_SERVICE,
                    server.command
                ));
                (System::Meridian, server)
            }
        };
        let endpoint = server.endpoint()?;
        for &clients in &args.clients {
            let requests = args
                .requests
                .unwrap_or_else(|| (3000 * clients as u64).min(20_000));
            let load = |tag: String, requests| Load {
                clients,
                conns: args.conns.min(clients).max(1),
                requests,
                max_time: Duration::from_secs(args.max_seconds),
                tag,
                services: 0,
            };
            load::run(system, &endpoint, &load(format!("w{clients}"), args.warmup)).await?;
            let mut runs = Vec::with_capacity(args.repeat);
            for round in 0..args.repeat {
                let r = load::run(
                    system,
                    &endpoint,
                    &load(format!("r{round}c{clients}"), requests),
                )
                .await?;
                eprintln!(
                    "  {:<8} {clients:>3} clients, run {}: {:>7.0} writes/s  p50 {:.2} ms  \
                     p99 {:.2} ms  ({} writes, {} errors, {:.1} s)",
                    system.name(),
                    round + 1,
                    r.writes_per_sec(),
                    r.ms(0.5),
                    r.ms(0.99),
                    r.ok,
                    r.errors,
                    r.elapsed.as_secs_f64()
                );
                runs.push(r);
            }
            runs.sort_by(|a, b| a.writes_per_sec().total_cmp(&b.writes_per_sec()));
            let result = runs.swap_remove(runs.len() / 2);
            if result.ok == 0 {
                bail!(
                    "{}: every write failed, e.g. {}; server log:\n{}",
                    system.name(),
                    result.first_error.as_deref().unwrap_or("?"),
                    server.log_tail(20)
                );
            }
            cells.push(Cell {
                system,
                clients,
                result,
            });
        }
        drop(server);
    }

    println!("## Registration writes: Meridian vs etcd, single node, fsync on\n");
    for line in &header {
        println!("{line}");
    }
    println!("\n{}", table(&args.clients, &cells));
    for cell in &cells {
        if let Some(err) = &cell.result.first_error {
            println!(
                "\n{} with {} clients: {} of {} writes failed; first error: {err}",
                cell.system.name(),
                cell.clients,
                cell.result.errors,
                cell.result.errors + cell.result.ok
            );
        }
    }
    Ok(())
}

/// The Markdown table: one row per concurrency level, both systems side by side.
fn table(levels: &[usize], cells: &[Cell]) -> String {
    let find = |system, clients| {
        cells
            .iter()
            .find(|c| c.system == system && c.clients == clients)
    };
    let throughput = |c: Option<&Cell>| {
        c.map_or("—".to_owned(), |c| {
            format!(
                "{} ({} writes)",
                thousands(c.result.writes_per_sec()),
                c.result.ok
            )
        })
    };
    let latency = |c: Option<&Cell>| {
        c.map_or("—".to_owned(), |c| {
            format!("{:.2} / {:.2}", c.result.ms(0.5), c.result.ms(0.99))
        })
    };
    let mut out = String::from(
        "| clients | Meridian writes/s | etcd writes/s | Meridian / etcd | \
         Meridian p50 / p99 (ms) | etcd p50 / p99 (ms) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for &clients in levels {
        let (m, e) = (find(System::Meridian, clients), find(System::Etcd, clients));
        let ratio = match (m, e) {
            (Some(m), Some(e)) => format!(
                "**{:.2}×**",
                m.result.writes_per_sec() / e.result.writes_per_sec()
            ),
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {clients} | {} | {} | {ratio} | {} | {} |\n",
            throughput(m),
            throughput(e),
            latency(m),
            latency(e),
        ));
    }
    out
}

/// `12345.6` → `"12,346"`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// "2 × Intel(R) Xeon(R) Processor, Linux 6.1.0" from /proc.
fn machine_facts() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} × {model}, Linux {}", kernel.trim())
}

/// "ext4 (/dev/vda), /tmp": the filesystem the data dirs live on, from `df -T`.
fn filesystem_of(dir: &Path) -> String {
    let fs = Command::new("df")
        .arg("-T")
        .arg(dir)
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text.lines().nth(1)?.to_owned();
            let mut cols = line.split_whitespace();
            let (device, kind) = (cols.next()?, cols.next()?);
            Some(format!("{kind} ({device})"))
        })
        .unwrap_or_else(|| "unknown filesystem".to_owned());
    format!("{fs}, under {}", dir.display())
}

/// Moves this process (it has one thread yet) to core 1; threads started later inherit that.
fn pin_self_to_core_1() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cpus >= 2,
        "--pin needs at least 2 cores, this machine has {cpus}"
    );
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (package util-linux)")?;
    ensure!(status.success(), "taskset failed: {status}");
    Ok(())
}
