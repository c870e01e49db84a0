//! `--scenario cluster`: a 3-node Meridian against a 3-member etcd (fsync on both), in one run.
//!
//! Three parts, each bounded in count and time, every server process owned by a
//! [`ServerGuard`] (killed and reaped on every path, its data dir removed):
//!
//! 1. **Writes.** One cluster per system (started by [`watch::start_meridian`] /
//!    [`watch::start_etcd`]). At [`LEVELS`] concurrent clients, all sent to the leader through
//!    [`load::run`] — `RegisterInstance` (about 256 B) for Meridian, `KV.Put` of a 256 B value
//!    for etcd — [`WARMUP`] unrecorded writes, then [`REPEAT`] measured runs; the median run by
//!    writes/s is reported with its p50/p99, and the Meridian/etcd ratio.
//! 2. **Leader failover.** [`FAILOVER_RUNS`] times per system, on a fresh cluster: connect to
//!    both followers, SIGKILL the leader, then start a new write every [`RETRY_EVERY`],
//!    alternating between the two survivors (each attempt bounded by [`ATTEMPT_TIMEOUT`], any
//!    number in flight). The figure is the time from the kill to the first acknowledgement.
//!    Then the same with SIGTERM instead of SIGKILL: a planned stop, which both systems
//!    answer by handing leadership to a follower before they exit.
//! 3. **Scale.** Meridian: [`SCALE_INSTANCES`] registrations over [`SCALE_SERVICES`] services
//!    by [`SCALE_CLIENTS`] clients at the leader; once every node has applied them, each
//!    node's RSS (`VmRSS`), then `Cluster/Snapshot` on each node and the size of its data dir;
//!    then node 4 is added (`Cluster/AddNode` at the leader while `meridian server --join`
//!    starts; the call returns once node 4 is a voter, after catching up by snapshot), timed
//!    from the call, with node 4's RSS then and again at least 3 s later; then a follower is SIGKILLed and restarted on its data dir, timed from the
//!    restart until its `Cluster/Status` shows `applied_index` ≥ the leader's commit index at
//!    the kill. etcd: [`SCALE_INSTANCES`] puts of 256 B by [`SCALE_CLIENTS`] clients at the
//!    leader of a 3-member cluster, then each member's RSS and data dir size.
//!
//! With `--writes-only`, part 1 alone runs (about 2 minutes), for the systems `--systems`
//! names.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::etcdserverpb::PutRequest;
use crate::etcdserverpb::kv_client::KvClient;
use crate::load::{self, ETCD_VALUE_BYTES, Load, RunResult, System};
use crate::servers::{self, BENCH_SERVICE, ServerGuard};
use crate::watch::{self, Cluster, Kind};

/// Concurrency levels of part 1.
const LEVELS: [usize; 3] = [1, 16, 64];
/// Measured runs per level; the median by writes/s is reported.
const REPEAT: usize = 3;
/// Unrecorded writes before the runs of a level.
const WARMUP: u64 = 500;
/// HTTP/2 connections shared by the clients of a run (at most one per client).
const CONNS: usize = 4;
/// Bound on one measured run of part 1.
const MAX_RUN: Duration = Duration::from_secs(15);
/// Starts of one cluster tried before giving up, when ports were taken meanwhile.
const START_ATTEMPTS: usize = 3;
/// Fresh clusters (leader kills) per system in part 2.
const FAILOVER_RUNS: usize = 10;
/// A new write attempt against a survivor this often after the kill.
const RETRY_EVERY: Duration = Duration::from_millis(5);
/// Bound on one write attempt after the kill.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the whole wait for the first acknowledgement after the kill.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(20);
/// Part 3: registrations (Meridian) or puts (etcd).
const SCALE_INSTANCES: u64 = 100_000;
/// Part 3: services the Meridian registrations are spread over.
const SCALE_SERVICES: u64 = 1_000;
/// Part 3: concurrent clients.
const SCALE_CLIENTS: usize = 64;
/// Part 3: bound on the load, on catching up, on adding node 4, on restarting a node.
const SCALE_PATIENCE: Duration = Duration::from_secs(180);
/// Status polling interval while waiting for a node to catch up.
const POLL: Duration = Duration::from_millis(10);

/// The median run of one system at one level.
struct WriteCell {
    kind: Kind,
    clients: usize,
    result: RunResult,
    /// CPU time of the whole cluster (every node, user + system) over the run, per write.
    cpu_per_write: Duration,
}

/// What part 3 measured on Meridian.
struct MeridianScale {
    load: RunResult,
    /// Per node: (label, RSS bytes, data dir after `Cluster/Snapshot`, snapshot index).
    nodes: Vec<(String, u64, DiskSize, u64)>,
    add_node: Duration,
    /// Node 4 once a voter: RSS and data dir.
    node4: (u64, DiskSize),
    /// Node 4's RSS again at the end of part 3, and how long after it became a voter: what
    /// it keeps, as opposed to what restoring the snapshot briefly needed.
    node4_later: (u64, Duration),
    restart: Duration,
    restart_target: u64,
}

/// What part 3 measured on etcd.
struct EtcdScale {
    load: RunResult,
    /// Per member: (label, RSS bytes, data dir).
    members: Vec<(String, u64, DiskSize)>,
}

/// What to run.
pub(crate) struct Options {
    /// Servers on core 0, this load generator on core 1.
    pub(crate) pin: bool,
    /// Part 1 only.
    pub(crate) writes_only: bool,
    /// The systems part 1 measures (both unless `writes_only`).
    pub(crate) kinds: Vec<Kind>,
}

/// Runs the scenario and prints its Markdown report.
pub(crate) async fn run(
    meridian_bin: &Path,
    etcd_bin: &Path,
    data_root: &Path,
    options: &Options,
    machine: &str,
) -> Result<()> {
    let pin = options.pin;
    // Ports are picked free (bound to 0, then released) before the servers bind them; across
    // the ~30 clusters of a run, one was taken in between once (etcd: "bind: address already
    // in use"). Such a start is retried on fresh ports; any other failure is not.
    let start = |kind| async move {
        let mut attempt = 1;
        loop {
            let started = match kind {
                Kind::Meridian => watch::start_meridian(meridian_bin, data_root, pin).await,
                Kind::Etcd => watch::start_etcd(etcd_bin, data_root, pin).await,
            };
            match started {
                Err(e) if attempt < START_ATTEMPTS && port_taken(&e) => {
                    eprintln!("{kind:?}: a port was taken meanwhile; starting again on others");
                    attempt += 1;
                }
                started => return started,
            }
        }
    };
    let mut servers = Vec::new();

    // 1. Writes at the leader.
    let mut cells = Vec::new();
    for &kind in &options.kinds {
        let cluster = start(kind).await?;
        eprintln!(
            "{kind:?} ({}) is up; node {} leads",
            cluster.version,
            cluster.leader + 1
        );
        servers.push(format!(
            "- {}: {}, 3 nodes, fsync on; e.g. `{}`",
            system(kind).name(),
            cluster.version,
            cluster.nodes[cluster.leader].command
        ));
        let endpoint = cluster.nodes[cluster.leader].endpoint()?;
        for clients in LEVELS {
            let shape = |tag: String, requests| Load {
                clients,
                conns: clients.min(CONNS),
                requests,
                max_time: MAX_RUN,
                tag,
                services: 0,
            };
            load::run(
                system(kind),
                &endpoint,
                &shape(format!("w{clients}"), WARMUP),
            )
            .await?;
            let mut runs = Vec::with_capacity(REPEAT);
            for round in 0..REPEAT {
                let requests = (2_000 * clients as u64).min(20_000);
                let cpu_before = cluster_cpu(&cluster)?;
                let r = load::run(
                    system(kind),
                    &endpoint,
                    &shape(format!("r{round}c{clients}"), requests),
                )
                .await?;
                let cpu = cluster_cpu(&cluster)?.saturating_sub(cpu_before);
                let cpu_per_write = cpu / u32::try_from(r.ok.max(1)).unwrap_or(u32::MAX);
                eprintln!(
                    "  {kind:?} {clients:>2} clients, run {}: {:.0} writes/s, p50 {:.2} ms, \
                     p99 {:.2} ms, {} µs CPU per write ({} ok, {} errors)",
                    round + 1,
                    r.writes_per_sec(),
                    r.ms(0.5),
                    r.ms(0.99),
                    cpu_per_write.as_micros(),
                    r.ok,
                    r.errors
                );
                runs.push((r, cpu_per_write));
            }
            runs.sort_by(|a, b| a.0.writes_per_sec().total_cmp(&b.0.writes_per_sec()));
            let (result, cpu_per_write) = runs.swap_remove(runs.len() / 2);
            if result.ok == 0 {
                bail!(
                    "{kind:?}: every write failed, e.g. {}",
                    result.first_error.as_deref().unwrap_or("?")
                );
            }
            cells.push(WriteCell {
                kind,
                clients,
                result,
                cpu_per_write,
            });
        }
        drop(cluster);
    }
    if options.writes_only {
        report_writes(&cells, &servers, pin, machine, data_root);
        return Ok(());
    }

    // 2. Leader failover, a fresh cluster per run: the leader killed, then stopped.
    let mut failovers = Vec::new();
    for stop in [Stop::Kill, Stop::Term] {
        for kind in [Kind::Etcd, Kind::Meridian] {
            let mut times = Vec::with_capacity(FAILOVER_RUNS);
            for round in 0..FAILOVER_RUNS {
                let cluster = start(kind).await?;
                let t = failover(cluster, stop, round).await?;
                eprintln!(
                    "  {kind:?} failover ({stop:?}) {}: {:.1} ms",
                    round + 1,
                    ms(t)
                );
                times.push(t);
            }
            times.sort();
            failovers.push((stop, kind, times));
        }
    }

    // 3. Scale.
    let meridian =
        scale_meridian(start(Kind::Meridian).await?, meridian_bin, data_root, pin).await?;
    let etcd = scale_etcd(start(Kind::Etcd).await?).await?;

    report_writes(&cells, &servers, pin, machine, data_root);
    report(&failovers, &meridian, &etcd);
    Ok(())
}

/// Whether starting a cluster failed because a port picked free was taken before the server
/// bound it.
fn port_taken(error: &anyhow::Error) -> bool {
    format!("{error:#}")
        .to_ascii_lowercase()
        .contains("address already in use")
}

fn system(kind: Kind) -> System {
    match kind {
        Kind::Meridian => System::Meridian,
        Kind::Etcd => System::Etcd,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How the leader is taken down in part 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a planned stop (a restart, a deploy).
    Term,
}

/// Takes the leader of `cluster` down by `stop`, then writes through the survivors until one
/// write is acknowledged; returns the time from the signal to that acknowledgement.
async fn failover(mut cluster: Cluster, stop: Stop, round: usize) -> Result<Duration> {
    let mut survivors = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != cluster.leader {
            survivors.push(node.endpoint()?.connect().await.context("connecting")?);
        }
    }
    let kind = cluster.kind;
    let signalled = Instant::now();
    match stop {
        Stop::Kill => cluster.nodes[cluster.leader].kill()?,
        Stop::Term => cluster.nodes[cluster.leader].terminate()?,
    }
    let mut attempts = JoinSet::new();
    let mut tick = tokio::time::interval(RETRY_EVERY);
    let mut n = 0usize;
    let mut last_error = String::from("none finished");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if signalled.elapsed() > FAILOVER_PATIENCE {
                    bail!(
                        "{kind:?}: no write acknowledged {FAILOVER_PATIENCE:?} after \
                         stopping the leader ({stop:?}); last error: {last_error}"
                    );
                }
                let channel = survivors[n % survivors.len()].clone();
                let id = format!("failover-{stop:?}-{round}-{n}");
                attempts.spawn(tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(kind, channel, id)));
                n += 1;
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(Ok(acked))) => return Ok(acked.duration_since(signalled)),
                Ok(Ok(Err(e))) => last_error = format!("{e:#}"),
                Ok(Err(_)) => last_error = "attempt timed out".to_owned(),
                Err(e) => last_error = e.to_string(),
            },
        }
    }
    // `attempts` (aborted) and `cluster` (killed) are dropped on return.
}

/// One write through `channel`; returns when it was acknowledged.
async fn attempt(kind: Kind, channel: Channel, id: String) -> Result<Instant> {
    match kind {
        Kind::Meridian => {
            RegistryClient::new(channel)
                .register_instance(pb::RegisterInstanceRequest {
                    service: BENCH_SERVICE.to_owned(),
                    id,
                    address: "10.0.0.1".to_owned(),
                    port: 8080,
                    ..Default::default()
                })
                .await?;
        }
        Kind::Etcd => {
            KvClient::new(channel)
                .put(PutRequest {
                    key: format!("/bench/{id}").into_bytes(),
                    value: vec![b'x'; ETCD_VALUE_BYTES],
                    ..Default::default()
                })
                .await?;
        }
    }
    Ok(Instant::now())
}

/// `Cluster/Status` of `node`.
async fn status(node: &ServerGuard) -> Result<pb::StatusResponse> {
    Ok(ClusterClient::new(node.endpoint()?.connect().await?)
        .status(pb::StatusRequest {})
        .await?
        .into_inner())
}

/// Waits until `node` has applied at least `index`; returns how long that took.
async fn wait_applied(node: &ServerGuard, index: u64) -> Result<Duration> {
    let start = Instant::now();
    loop {
        match status(node).await {
            Ok(s) if s.applied_index >= index => return Ok(start.elapsed()),
            Ok(_) | Err(_) => {}
        }
        if start.elapsed() > SCALE_PATIENCE {
            bail!(
                "a node did not apply index {index} within {SCALE_PATIENCE:?}; last log \
                 lines:\n{}",
                node.log_tail(20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Size of the files under `dir`: apparent (their lengths) and allocated (blocks on disk,
/// as `du` counts them).
fn dir_size(dir: &Path) -> Result<DiskSize> {
    use std::os::unix::fs::MetadataExt;
    let mut total = DiskSize::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let sub = dir_size(&entry.path())?;
            total.apparent += sub.apparent;
            total.allocated += sub.allocated;
        } else {
            total.apparent += meta.len();
            total.allocated += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Bytes of a directory's files.
#[derive(Clone, Copy, Default)]
struct DiskSize {
    apparent: u64,
    allocated: u64,
}

impl std::fmt::Display for DiskSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} / {:.1}", mib(self.apparent), mib(self.allocated))
    }
}

/// The role of node `i` of `cluster`, for the report.
fn role(cluster: &Cluster, i: usize) -> String {
    let role = if i == cluster.leader {
        "leader"
    } else {
        "follower"
    };
    format!("node {} ({role})", i + 1)
}

async fn scale_meridian(
    mut cluster: Cluster,
    bin: &Path,
    data_root: &Path,
    pin: bool,
) -> Result<MeridianScale> {
    let leader = cluster.leader;
    let channel = cluster.nodes[leader].endpoint()?.connect().await?;
    eprintln!("Meridian scale: creating {SCALE_SERVICES} services");
    futures::stream::iter(0..SCALE_SERVICES)
        .map(|k| {
            let mut registry = RegistryClient::new(channel.clone());
            async move {
                registry
                    .create_service(pb::CreateServiceRequest {
                        name: load::service_name(k),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating {}", load::service_name(k)))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!("Meridian scale: {SCALE_INSTANCES} registrations, {SCALE_CLIENTS} clients");
    let load = load::run(
        System::Meridian,
        &cluster.nodes[leader].endpoint()?,
        &Load {
            clients: SCALE_CLIENTS,
            conns: CONNS,
            requests: SCALE_INSTANCES,
            max_time: SCALE_PATIENCE,
            tag: "scale".to_owned(),
            services: SCALE_SERVICES,
        },
    )
    .await?;
    ensure!(
        load.ok == SCALE_INSTANCES,
        "only {} of {SCALE_INSTANCES} registrations succeeded; first error: {}",
        load.ok,
        load.first_error.as_deref().unwrap_or("none (time limit)")
    );
    let commit = status(&cluster.nodes[leader]).await?.commit_index;
    for node in &cluster.nodes {
        wait_applied(node, commit).await?;
    }

    let mut nodes = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let rss = watch::rss(&[node])?;
        let snapshot_index = ClusterClient::new(node.endpoint()?.connect().await?)
            .snapshot(pb::SnapshotRequest {})
            .await
            .context("Cluster/Snapshot")?
            .into_inner()
            .snapshot_index;
        let disk = dir_size(&node.dir().join("data"))?;
        nodes.push((role(&cluster, i), rss, disk, snapshot_index));
    }
    eprintln!("Meridian scale: RSS and snapshots done; adding node 4");

    // Node 4 joins empty and catches up by snapshot; AddNode returns once it is a voter.
    let listen = format!("127.0.0.1:{}", servers::free_port()?);
    let mut peers: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.url.trim_start_matches("http://")))
        .collect();
    peers.push(format!("4={listen}"));
    let dir = servers::data_dir(data_root, "bench-cluster-node4-")?;
    let args = vec![
        "server".to_owned(),
        "--id".to_owned(),
        "4".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen".to_owned(),
        listen.clone(),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{}", servers::free_port()?),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{}", servers::free_port()?),
        "--join".to_owned(),
        "--peers".to_owned(),
        peers.join(","),
    ];
    let mut admin = ClusterClient::new(channel.clone());
    let address = listen.clone();
    let add_started = Instant::now();
    let add = tokio::spawn(async move {
        admin
            .add_node(pb::AddNodeRequest {
                id: 4,
                address,
                timeout_ms: u32::try_from(SCALE_PATIENCE.as_millis()).unwrap_or(u32::MAX),
            })
            .await
    });
    let url = format!("http://{listen}");
    let node4 = ServerGuard::spawn("meridian", bin, args, pin, url, dir);
    let added = add.await.context("the AddNode task panicked")?;
    let add_node = add_started.elapsed();
    let node4 = node4?;
    added.context("Cluster/AddNode")?;
    let node4_facts = (watch::rss(&[&node4])?, dir_size(&node4.dir().join("data"))?);
    let voter_at = Instant::now();
    eprintln!(
        "Meridian scale: node 4 is a voter after {:.0} ms",
        ms(add_node)
    );

    // Restart a follower on its data dir.
    let follower = (0..cluster.nodes.len())
        .find(|&i| i != leader)
        .context("no follower")?;
    let target = status(&cluster.nodes[leader]).await?.commit_index;
    cluster.nodes[follower].kill()?;
    let restarted = Instant::now();
    cluster.nodes[follower].restart()?;
    wait_applied(&cluster.nodes[follower], target).await?;
    let restart = restarted.elapsed();
    eprintln!(
        "Meridian scale: restarted follower serving after {:.0} ms",
        ms(restart)
    );
    // At least a few seconds after it became a voter (the allocator returns freed memory lazily).
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(voter_at.elapsed())).await;
    let node4_later = (watch::rss(&[&node4])?, voter_at.elapsed());
    drop(node4);
    drop(cluster);
    Ok(MeridianScale {
        load,
        nodes,
        add_node,
        node4: node4_facts,
        node4_later,
        restart,
        restart_target: target,
    })
}

async fn scale_etcd(cluster: Cluster) -> Result<EtcdScale> {
    eprintln!("etcd scale: {SCALE_INSTANCES} puts, {SCALE_CLIENTS} clients");
    let load = load::run(
        System::Etcd,
        &cluster.nodes[cluster.leader].endpoint()?,
        &Load {
            clients: SCALE_CLIENTS,
            conns: CONNS,
            requests: SCALE_INSTANCES,
            max_time: SCALE_PATIENCE,
            tag: "scale".to_owned(),
            services: 0,
        },
    )
    .await?;
    ensure!(
        load.ok == SCALE_INSTANCES,
        "only {} of {SCALE_INSTANCES} puts succeeded; first error: {}",
        load.ok,
        load.first_error.as_deref().unwrap_or("none (time limit)")
    );
    // Followers apply asynchronously; one put through every member, then a short pause.
    for node in &cluster.nodes {
        attempt(
            Kind::Etcd,
            node.endpoint()?.connect().await?,
            "settle".to_owned(),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut members = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        members.push((
            role(&cluster, i),
            watch::rss(&[node])?,
            dir_size(&node.dir().join("data"))?,
        ));
    }
    Ok(EtcdScale { load, members })
}

/// CPU time used so far by every node of `cluster` together.
fn cluster_cpu(cluster: &Cluster) -> Result<Duration> {
    cluster
        .nodes
        .iter()
        .try_fold(Duration::ZERO, |sum, node| Ok(sum + node.cpu_time()?))
}

/// Prints the Markdown report.
#[allow(clippy::too_many_arguments, clippy::print_stdout)] // the report is the output
/// The header and part 1's table (a system that was not measured shows as "-").
fn report_writes(
    cells: &[WriteCell],
    servers: &[String],
    pin: bool,
    machine: &str,
    data_root: &Path,
) {
    println!("## Cluster (3 nodes)\n");
    println!("- machine: {machine}");
    println!("- data dirs: under {}", data_root.display());
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- pinning: {}",
        if pin {
            "all servers of a cluster on core 0 (`taskset -c 0`); the load generator on \
             core 1. One cluster at a time; each is killed before the next starts"
        } else {
            "none (servers and load generator share all cores)"
        }
    );
    for line in servers {
        println!("{line}");
    }

    println!(
        "\n### Writes at the leader (median of {REPEAT} runs by writes/s; {WARMUP} unrecorded \
         writes first; clients share min(N, {CONNS}) HTTP/2 connections)\n"
    );
    println!(
        "| clients | Meridian registrations/s | etcd puts/s | Meridian / etcd | \
         Meridian p50 / p99 (ms) | etcd p50 / p99 (ms) | CPU per write, Meridian / etcd (µs, \
         all 3 nodes) |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for clients in LEVELS {
        let find = |kind| {
            cells
                .iter()
                .find(|c| c.kind == kind && c.clients == clients)
        };
        let (m, e) = (find(Kind::Meridian), find(Kind::Etcd));
        if m.is_none() && e.is_none() {
            continue;
        }
        let cell = |c: &WriteCell| {
            let errors = if c.result.errors > 0 {
                format!(", {} errors", c.result.errors)
            } else {
                String::new()
            };
            format!(
                "{:.0} ({} writes{errors})",
                c.result.writes_per_sec(),
                c.result.ok
            )
        };
        let latency = |c: &WriteCell| format!("{:.2} / {:.2}", c.result.ms(0.5), c.result.ms(0.99));
        let ratio = match (m, e) {
            (Some(m), Some(e)) => format!(
                "**{:.2}×**",
                m.result.writes_per_sec() / e.result.writes_per_sec().max(1e-9)
            ),
            _ => "-".to_owned(),
        };
        let or_dash = |c: Option<&WriteCell>, f: &dyn Fn(&WriteCell) -> String| {
            c.map_or_else(|| "-".to_owned(), f)
        };
        let cpu = |c: &WriteCell| c.cpu_per_write.as_micros().to_string();
        println!(
            "| {clients} | {} | {} | {ratio} | {} | {} | {} / {} |",
            or_dash(m, &cell),
            or_dash(e, &cell),
            or_dash(m, &latency),
            or_dash(e, &latency),
            or_dash(m, &cpu),
            or_dash(e, &cpu),
        );
    }
}

/// Parts 2 and 3.
fn report(failovers: &[(Stop, Kind, Vec<Duration>)], meridian: &MeridianScale, etcd: &EtcdScale) {
    println!(
        "\n### Leader failover: SIGKILL (a crash) or SIGTERM (a planned stop) of the leader → \
         first acknowledged write through a survivor ({FAILOVER_RUNS} runs each, fresh cluster \
         each; a new write every {RETRY_EVERY:?}, alternating between the two survivors)\n"
    );
    println!(
        "| leader | system | p50 (ms) | min (ms) | max (ms) | all runs, sorted (ms) |\n\
         |---|---|---:|---:|---:|---|"
    );
    for (stop, kind, times) in failovers {
        let Some(p50) = times.get(times.len() / 2) else {
            continue;
        };
        let all: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
        let how = match stop {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
        };
        println!(
            "| {how} | {} | **{:.0}** | {:.0} | {:.0} | {} |",
            system(*kind).name(),
            ms(*p50),
            times.first().map_or(0.0, |t| ms(*t)),
            times.last().map_or(0.0, |t| ms(*t)),
            all.join(", ")
        );
    }

    println!(
        "\n### Scale: {SCALE_INSTANCES} instances over {SCALE_SERVICES} services \
         (Meridian) / {SCALE_INSTANCES} puts of {ETCD_VALUE_BYTES} B (etcd), \
         {SCALE_CLIENTS} clients at the leader\n"
    );
    println!(
        "- Meridian load: {:.0} registrations/s (p50 {:.2} ms, p99 {:.2} ms); etcd load: \
         {:.0} puts/s (p50 {:.2} ms, p99 {:.2} ms)",
        meridian.load.writes_per_sec(),
        meridian.load.ms(0.5),
        meridian.load.ms(0.99),
        etcd.load.writes_per_sec(),
        etcd.load.ms(0.5),
        etcd.load.ms(0.99),
    );
    println!(
        "\n| system | node | RSS (MiB) | data dir, apparent / allocated (MiB) |\n|---|---|---:|---:|"
    );
    for (label, rss, disk, index) in &meridian.nodes {
        println!(
            "| Meridian | {label} | {:.1} | {disk} after `Cluster/Snapshot` (index {index}) |",
            mib(*rss)
        );
    }
    println!(
        "| Meridian | node 4 (added, caught up by snapshot) | {:.1} | {} |",
        mib(meridian.node4.0),
        meridian.node4.1
    );
    println!(
        "| Meridian | node 4, {:.1} s after it became a voter | {:.1} | — |",
        meridian.node4_later.1.as_secs_f64(),
        mib(meridian.node4_later.0)
    );
    for (label, rss, disk) in &etcd.members {
        println!(
            "| etcd | {label} | {:.1} | {disk} (no compaction/defrag) |",
            mib(*rss)
        );
    }
    println!("\n| Meridian with that state | time (ms) |\n|---|---:|");
    println!(
        "| add node 4: `Cluster/AddNode` call → it returns (node 4 a voter, caught up by \
         snapshot) | **{:.0}** |",
        ms(meridian.add_node)
    );
    println!(
        "| restart a follower on its data dir → its `applied_index` ≥ {} (the leader's commit \
         index at the kill) | **{:.0}** |",
        meridian.restart_target,
        ms(meridian.restart)
    );
}
