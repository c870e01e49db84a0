//! Scenario `dns`: Meridian's DNS server against Knot DNS, with dnsperf, in one run.
//!
//! Both serve the same names: namespace `bench.local` with [`SERVICES`] services of
//! [`INSTANCES`] instances each. Knot gets them as a static zone file written from the same
//! loop; Meridian gets them registered over gRPC, and while dnsperf runs against Meridian a
//! writer keeps re-registering instances (a new port each time), so every answer cache is
//! invalidated service by service: "from a live registry". Meridian runs with
//! `--dns-max-answers` = [`INSTANCES`], so both servers return the same records.
//! A second Meridian run with `MERIDIAN_DNS_NO_CACHE=1` shows what the answer cache buys.
//! With `--pin`, each server runs alone on core 0 and dnsperf on core 1, so the figure is
//! what one core of server does: Meridian's UDP threads follow the affinity mask (one
//! thread on one core).
//!
//! dnsperf queries, round robin over the whole file: `svcN.bench.local A`,
//! `_svcN._tcp.bench.local SRV` (with A additionals) and `i-K.svcN.bench.local A`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

/// Services in the benchmark namespace.
pub(crate) const SERVICES: usize = 100;
/// Instances per service.
pub(crate) const INSTANCES: usize = 10;
const NAMESPACE: &str = "bench.local";
const TTL: u32 = 5;

/// One dnsperf run.
pub(crate) struct PerfResult {
    /// Which server, as the table shows it.
    pub(crate) label: String,
    pub(crate) qps: f64,
    pub(crate) avg_ms: f64,
    pub(crate) lost: String,
    /// Registry writes committed during the run (Meridian only).
    pub(crate) writes: u64,
}

/// A server process killed and reaped when dropped, its directory removed after.
struct Guard {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the whole scenario and prints the Markdown report on stdout.
pub(crate) async fn run(
    meridian: &Path,
    knot: &Path,
    seconds: u64,
    pin: bool,
    machine: &str,
) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("bench-dns-").tempdir()?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file())?;

    let mut rows = Vec::new();
    {
        let port = free_udp_port()?;
        let _knot = start_knot(knot, port, pin)?;
        wait_answering(port).await.context("knotd never answered")?;
        eprintln!("knot on {port}: running dnsperf for {seconds} s");
        rows.push(dnsperf("Knot (static zone)", port, &queries, seconds, pin, None).await?);
    }
    for (label, cache) in [
        ("Meridian, live registry (answer cache)", true),
        ("Meridian, live registry, answer cache off", false),
    ] {
        let (guard, grpc, port) = start_meridian(meridian, pin, cache)?;
        let mut registry = connect(&grpc).await?;
        populate(&mut registry).await?;
        wait_answering(port)
            .await
            .context("meridian DNS never answered")?;
        eprintln!("{label} on {port}: running dnsperf for {seconds} s with writes going on");
        rows.push(dnsperf(label, port, &queries, seconds, pin, Some(registry)).await?);
        drop(guard);
    }

    let knot_qps = rows[0].qps;
    println!("## DNS\n");
    println!("- machine: {machine}");
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- pinning: {}",
        if pin {
            "servers on core 0 (`taskset -c 0`), dnsperf and the registry writer on core 1"
        } else {
            "none"
        }
    );
    println!(
        "- data: `{NAMESPACE}`, {SERVICES} services × {INSTANCES} instances; Meridian with \
         `--dns-max-answers {INSTANCES}` so both return the same records; dnsperf {} \
         ({seconds} s, 100 outstanding queries), {} names round robin",
        version("dnsperf"),
        SERVICES * 3
    );
    println!("- Knot: {}\n", version(&knot.display().to_string()));
    println!("| server | queries/s | avg latency (ms) | lost | writes during run | vs Knot |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.3} | {} | {} | **{:.2}×** |",
            r.label,
            r.qps,
            r.avg_ms,
            r.lost,
            r.writes,
            r.qps / knot_qps
        );
    }
    Ok(())
}

fn query_file() -> String {
    let mut out = String::new();
    for s in 0..SERVICES {
        let _ = writeln!(out, "svc{s}.{NAMESPACE} A");
        let _ = writeln!(out, "_svc{s}._tcp.{NAMESPACE} SRV");
        let _ = writeln!(out, "i-{}.svc{s}.{NAMESPACE} A", s % INSTANCES);
    }
    out
}

fn address(service: usize, instance: usize) -> String {
    format!("127.1.{service}.{}", instance + 1)
}

/// The zone Knot serves: what Meridian answers, as static records.
fn zone_file() -> String {
    let mut z = format!(
        "$ORIGIN {NAMESPACE}.\n$TTL {TTL}\n@ SOA ns hostmaster 1 3600 600 86400 5\n@ NS ns\nns A 127.0.0.1\n"
    );
    for s in 0..SERVICES {
        for i in 0..INSTANCES {
            let ip = address(s, i);
            let _ = writeln!(z, "svc{s} A {ip}");
            let _ = writeln!(z, "i-{i}.svc{s} A {ip}");
            let _ = writeln!(z, "_svc{s}._tcp SRV 1 1 {} i-{i}.svc{s}", 8000 + i);
        }
    }
    z
}

fn start_knot(knotd: &Path, port: u16, pin: bool) -> Result<Guard> {
    let dir = tempfile::Builder::new().prefix("bench-knot-").tempdir()?;
    let d = dir.path().display();
    std::fs::write(dir.path().join("bench.local.zone"), zone_file())?;
    let conf = format!(
        "server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\n\
         database:\n  storage: {d}\n\
         template:\n  - id: default\n    storage: {d}\n    semantic-checks: off\n\
         zone:\n  - domain: {NAMESPACE}\n    file: {d}/bench.local.zone\n\
         log:\n  - target: stderr\n    any: warning\n"
    );
    let conf_path = dir.path().join("knot.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = pinned(knotd, pin);
    cmd.arg("-c").arg(&conf_path);
    let log = std::fs::File::create(dir.path().join("knot.log"))?;
    cmd.stdout(Stdio::null()).stderr(log).stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (Debian: apt-get install knot)",
            knotd.display()
        )
    })?;
    Ok(Guard { child, _dir: dir })
}

fn start_meridian(bin: &Path, pin: bool, cache: bool) -> Result<(Guard, String, u16)> {
    let dir = tempfile::Builder::new()
        .prefix("bench-meridian-dns-")
        .tempdir()?;
    let grpc = format!("127.0.0.1:{}", free_tcp_port()?);
    let port = free_udp_port()?;
    let mut cmd = pinned(bin, pin);
    cmd.args(["server", "--id", "1", "--listen", &grpc])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--dns-listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_tcp_port()?)])
        .args(["--peers", &format!("1={grpc}")])
        .args(["--dns-max-answers", &INSTANCES.to_string()])
        .env("RUST_LOG", "warn");
    if !cache {
        cmd.env("MERIDIAN_DNS_NO_CACHE", "1");
    }
    let log = std::fs::File::create(dir.path().join("meridian.log"))?;
    cmd.stdout(Stdio::null()).stderr(log).stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok((Guard { child, _dir: dir }, format!("http://{grpc}"), port))
}

fn pinned(program: &Path, pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(program);
        c
    } else {
        Command::new(program)
    }
}

async fn connect(url: &str) -> Result<RegistryClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Channel::from_shared(url.to_owned())?.connect().await {
            let mut client = RegistryClient::new(channel);
            let created = client
                .create_namespace(pb::CreateNamespaceRequest {
                    name: NAMESPACE.into(),
                    description: String::new(),
                })
                .await;
            if created.is_ok() {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!("meridian at {url} did not accept writes within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn populate(r: &mut RegistryClient<Channel>) -> Result<()> {
    for s in 0..SERVICES {
        r.create_service(pb::CreateServiceRequest {
            name: format!("svc{s}.{NAMESPACE}"),
            dns_ttl_seconds: TTL,
            ..Default::default()
        })
        .await?;
        for i in 0..INSTANCES {
            register(r, s, i, 8000 + i as u32).await?;
        }
    }
    Ok(())
}

async fn register(r: &mut RegistryClient<Channel>, s: usize, i: usize, port: u32) -> Result<()> {
    r.register_instance(pb::RegisterInstanceRequest {
        service: format!("svc{s}.{NAMESPACE}"),
        id: format!("i-{i}"),
        address: address(s, i),
        port,
        attributes: HashMap::new(),
    })
    .await?;
    Ok(())
}

/// Runs dnsperf against `port`; with a registry, re-registers instances until it ends.
async fn dnsperf(
    label: &str,
    port: u16,
    queries: &Path,
    seconds: u64,
    pin: bool,
    registry: Option<RegistryClient<Channel>>,
) -> Result<PerfResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = registry.map(|mut r| {
        let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
        tokio::spawn(async move {
            let mut n: usize = 0;
            while !stop.load(Ordering::Relaxed) {
                let (s, i) = (n % SERVICES, (n / SERVICES) % INSTANCES);
                if register(&mut r, s, i, 9000 + (n % 1000) as u32)
                    .await
                    .is_ok()
                {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        })
    });
    let mut cmd = if pin {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1", "dnsperf"]);
        c
    } else {
        tokio::process::Command::new("dnsperf")
    };
    cmd.args([
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-l",
        &seconds.to_string(),
    ])
    .args(["-c", "1", "-q", "100", "-d"])
    .arg(queries);
    let out = cmd
        .output()
        .await
        .context("running dnsperf (Debian: apt-get install dnsperf)")?;
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        let _ = w.await;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("dnsperf printed no {key:?}:\n{text}"))
    };
    let qps: f64 = field("Queries per second:")?.parse()?;
    let avg: f64 = field("Average Latency (s):")?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()?;
    let lost = field("Queries lost:")?;
    Ok(PerfResult {
        label: label.to_owned(),
        qps,
        avg_ms: avg * 1000.0,
        lost,
        writes: writes.load(Ordering::Relaxed),
    })
}

/// Polls `127.0.0.1:port` with a DNS query until it answers.
async fn wait_answering(port: u16) -> Result<()> {
    let mut q = Message::new(1, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("svc0.bench.local.")?,
        RecordType::A,
    ));
    let packet = q.to_vec()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket.send_to(&packet, target)?;
        if let Ok(len) = socket.recv(&mut buf)
            && Message::from_vec(&buf[..len]).is_ok_and(|m| !m.answers.is_empty())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no answer on port {port} within 30 s")
}

fn free_udp_port() -> Result<u16> {
    // A port free for UDP and for TCP (Meridian binds both).
    for _ in 0..16 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP")
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn version(program: &str) -> String {
    let flag = if program.contains("dnsperf") {
        "-h"
    } else {
        "-V"
    };
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines()
                .find(|l| l.contains("ersion") || l.contains("knotd"))
                .unwrap_or("unknown version")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown version".to_owned())
}
