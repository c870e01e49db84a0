//! `--scenario watch`: registration → watcher propagation on the followers of a 3-node
//! Meridian cluster, beside etcd's watch on a 3-member etcd, in one run.
//!
//! For each system: three server processes on loopback (direct peer links, fsync on), the
//! leader found from the cluster's status. For each watcher count, that many watchers of one
//! service (Meridian: `Registry/Watch` of `svc.bench.local`; etcd: `Watch` of the prefix
//! `/bench/`) are opened on the two **followers**, alternating, one gRPC stream each, at most
//! [`STREAMS_PER_CONN`] streams per HTTP/2 connection. Once every watcher holds its initial
//! state, one writer sends [`CHANGES`] sequential writes to the **leader** (a registration of
//! a new instance; a put of a new key), each timed at its acknowledgement. Every arrival of
//! every change at every watcher is timed too; the latency of an arrival is its time minus
//! the acknowledgement's (0 when the change reached the watcher before the writer held the
//! acknowledgement). Memory per watcher is the growth of the followers' RSS from just before
//! the watchers connect to once they all hold their initial state, divided by the watchers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcdserverpb::watch_client::WatchClient;
use crate::etcdserverpb::watch_request::RequestUnion;
use crate::etcdserverpb::{PutRequest, StatusRequest, WatchCreateRequest, WatchRequest};
use crate::servers::{self, BENCH_NAMESPACE, BENCH_SERVICE, ServerGuard};

/// Measured changes per watcher count.
const CHANGES: u64 = 1_000;
/// Unmeasured writes before each measured run (warm connections, caches, watch paths).
const WARMUP: u64 = 100;
/// Watcher counts.
const WATCHERS: [usize; 2] = [100, 1_000];
/// gRPC streams per HTTP/2 connection: below Go's default of 250 concurrent streams, which
/// etcd's server may apply, and the same for both systems.
const STREAMS_PER_CONN: usize = 50;
/// Bounds the wait for every watcher's initial state and for the last arrivals.
const PATIENCE: Duration = Duration::from_secs(60);
/// The etcd prefix every put goes under (and every watcher watches).
const ETCD_PREFIX: &str = "/bench/";

/// Which system a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Meridian,
    Etcd,
}

/// Three server processes, and which of them leads.
pub(crate) struct Cluster {
    pub(crate) kind: Kind,
    pub(crate) nodes: Vec<ServerGuard>,
    pub(crate) leader: usize,
    pub(crate) version: String,
}

/// One measured run: a system, a watcher count, the latencies and the memory.
struct Row {
    kind: Kind,
    watchers: usize,
    /// Arrival − acknowledgement, in microseconds.
    latency: Histogram<u64>,
    /// Arrivals that beat the acknowledgement back to the writer.
    early: u64,
    /// Arrivals expected but never seen (a resync, a lost stream).
    missing: u64,
    rss_per_watcher: f64,
}

/// Runs the scenario and prints its Markdown report.
pub(crate) async fn run(
    meridian_bin: &Path,
    etcd_bin: &Path,
    data_root: &Path,
    pin: bool,
    machine: &str,
) -> Result<()> {
    let mut rows = Vec::new();
    let mut servers = Vec::new();
    for kind in [Kind::Etcd, Kind::Meridian] {
        let cluster = match kind {
            Kind::Etcd => start_etcd(etcd_bin, data_root, pin).await?,
            Kind::Meridian => start_meridian(meridian_bin, data_root, pin).await?,
        };
        eprintln!(
            "{kind:?} ({}) is up; node {} leads",
            cluster.version,
            cluster.leader + 1
        );
        servers.push(format!(
            "- {kind:?}: {}, 3 nodes; node {}: `{}`",
            cluster.version,
            cluster.leader + 1,
            cluster.nodes[cluster.leader].command
        ));
        for (round, &watchers) in WATCHERS.iter().enumerate() {
            let row = measure(&cluster, watchers, &format!("r{round}")).await?;
            eprintln!(
                "  {kind:?} {watchers:>5} watchers: p50 {} µs, p99 {} µs, max {} µs, \
                 {} arrivals ({} before the ack, {} missing), {:.1} KiB RSS per watcher",
                row.latency.value_at_quantile(0.5),
                row.latency.value_at_quantile(0.99),
                row.latency.max(),
                row.latency.len(),
                row.early,
                row.missing,
                row.rss_per_watcher / 1024.0
            );
            rows.push(row);
        }
        drop(cluster);
    }
    report(&rows, &servers, pin, machine);
    Ok(())
}

/// Opens `watchers` watchers on the followers, writes [`CHANGES`] times to the leader, and
/// times every arrival.
async fn measure(cluster: &Cluster, watchers: usize, tag: &str) -> Result<Row> {
    let followers: Vec<&ServerGuard> = (0..cluster.nodes.len())
        .filter(|i| *i != cluster.leader)
        .map(|i| &cluster.nodes[i])
        .collect();
    let rss_before = rss(&followers)?;

    // Connections: per follower, one per STREAMS_PER_CONN watchers.
    let per_follower = watchers.div_ceil(followers.len());
    let mut channels: Vec<Vec<Channel>> = Vec::new();
    for f in &followers {
        let mut list = Vec::new();
        for _ in 0..per_follower.div_ceil(STREAMS_PER_CONN) {
            list.push(
                f.endpoint()?
                    .connect()
                    .await
                    .context("connecting a watcher")?,
            );
        }
        channels.push(list);
    }
    let ready = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    // The revision of the last measured change, once known: a watcher that has seen it ends.
    let (last_tx, last_rx) = watch::channel(u64::MAX);
    let mut tasks = JoinSet::new();
    for w in 0..watchers {
        let (follower, slot) = (w % followers.len(), w / followers.len());
        let channel = channels[follower][slot / STREAMS_PER_CONN].clone();
        let until = Until {
            ready: Arc::clone(&ready),
            last: last_rx.clone(),
            stop: stop.clone(),
        };
        match cluster.kind {
            Kind::Meridian => tasks.spawn(watch_meridian(channel, until)),
            Kind::Etcd => tasks.spawn(watch_etcd(channel, until)),
        };
    }
    let started = Instant::now();
    while ready.load(Ordering::SeqCst) < watchers {
        if let Some(done) = tasks.try_join_next() {
            done??;
            bail!("a watcher ended before it was ready");
        }
        ensure!(
            started.elapsed() < PATIENCE,
            "only {} of {watchers} watchers ready after {PATIENCE:?}",
            ready.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = rss(&followers)?;

    // Writes to the leader, sequential, each timed at its acknowledgement.
    let mut writer = Writer::connect(cluster).await?;
    for n in 0..WARMUP {
        writer.write(&format!("{tag}-warm-{n}"), n).await?;
    }
    let mut acks: HashMap<u64, Instant> = HashMap::new();
    let mut last = 0;
    for n in 0..CHANGES {
        let revision = writer.write(&format!("{tag}-{n}"), n).await?;
        acks.insert(revision, Instant::now());
        last = revision;
    }
    last_tx.send_replace(last);
    // A watcher that never sees the last change is stopped at the deadline (counted missing).
    let deadline = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(PATIENCE).await;
            stop.cancel();
        }
    });
    let mut arrivals = Vec::with_capacity(watchers);
    while let Some(done) = tasks.join_next().await {
        arrivals.push(done??);
    }
    deadline.abort();
    drop(channels);

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut early, mut seen) = (0, 0u64);
    for list in &arrivals {
        for (revision, at) in list {
            let Some(ack) = acks.get(revision) else {
                continue; // a warm-up write
            };
            seen += 1;
            if *at < *ack {
                early += 1;
            }
            let micros = at.saturating_duration_since(*ack).as_micros();
            latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
        }
    }
    let expected = CHANGES * watchers as u64;
    Ok(Row {
        kind: cluster.kind,
        watchers,
        latency,
        early,
        missing: expected.saturating_sub(seen),
        rss_per_watcher: rss_after.saturating_sub(rss_before) as f64 / watchers as f64,
    })
}

/// What a watcher needs to know besides its stream.
struct Until {
    /// Counts watchers holding their initial state.
    ready: Arc<AtomicUsize>,
    /// The last measured revision, once written.
    last: watch::Receiver<u64>,
    /// Fires at the deadline.
    stop: CancellationToken,
}

/// Arrivals seen by one watcher: (revision, when).
type Arrivals = Vec<(u64, Instant)>;

/// One Meridian watcher: a full state first, then every event, timed.
async fn watch_meridian(channel: Channel, mut until: Until) -> Result<Arrivals> {
    let mut client = RegistryClient::new(channel);
    let mut stream = client
        .watch(pb::WatchRequest {
            service: BENCH_SERVICE.to_owned(),
            ..Default::default()
        })
        .await
        .context("opening a Meridian watch")?
        .into_inner();
    let first = stream.message().await?.context("no initial state")?;
    ensure!(
        matches!(first.body, Some(pb::watch_response::Body::Snapshot(_))),
        "the first message is not a full state"
    );
    until.ready.fetch_add(1, Ordering::SeqCst);
    let mut arrivals = Arrivals::with_capacity((CHANGES + WARMUP) as usize);
    let mut highest = 0;
    loop {
        if highest >= *until.last.borrow_and_update() {
            return Ok(arrivals);
        }
        let message = tokio::select! {
            () = until.stop.cancelled() => return Ok(arrivals),
            _ = until.last.changed() => continue,
            m = stream.message() => m?,
        };
        let Some(message) = message else {
            return Ok(arrivals);
        };
        let at = Instant::now();
        if let Some(pb::watch_response::Body::Events(events)) = &message.body {
            for event in &events.events {
                arrivals.push((event.revision, at));
            }
        }
        highest = highest.max(message.revision);
    }
}

/// One etcd watcher: a prefix watch on its own stream; every event, timed.
async fn watch_etcd(channel: Channel, mut until: Until) -> Result<Arrivals> {
    let mut client = WatchClient::new(channel);
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: ETCD_PREFIX.as_bytes().to_vec(),
                range_end: prefix_end(ETCD_PREFIX),
                start_revision: 0,
            })),
        })
        .await
        .context("queueing the watch request")?;
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening an etcd watch")?
        .into_inner();
    let first = stream.message().await?.context("no answer to the watch")?;
    ensure!(first.created, "the watch was not created: {first:?}");
    until.ready.fetch_add(1, Ordering::SeqCst);
    let mut arrivals = Arrivals::with_capacity((CHANGES + WARMUP) as usize);
    let mut highest = 0;
    loop {
        if highest >= *until.last.borrow_and_update() {
            break;
        }
        let message = tokio::select! {
            () = until.stop.cancelled() => break,
            _ = until.last.changed() => continue,
            m = stream.message() => m?,
        };
        let Some(message) = message else {
            break;
        };
        let at = Instant::now();
        for event in &message.events {
            let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let revision = u64::try_from(revision).unwrap_or(0);
            arrivals.push((revision, at));
            highest = highest.max(revision);
        }
    }
    // Keep the request stream open until here: closing it would end the watch early.
    drop(requests);
    Ok(arrivals)
}

/// The end of the range holding every key with `prefix`: the prefix with its last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The writer: registrations (Meridian) or puts (etcd) sent to the leader.
enum Writer {
    Meridian(RegistryClient<Channel>),
    Etcd(KvClient<Channel>),
}

impl Writer {
    async fn connect(cluster: &Cluster) -> Result<Self> {
        let channel = cluster.nodes[cluster.leader].endpoint()?.connect().await?;
        Ok(match cluster.kind {
            Kind::Meridian => Self::Meridian(RegistryClient::new(channel)),
            Kind::Etcd => Self::Etcd(KvClient::new(channel)),
        })
    }

    /// Writes record `id`; returns the revision it committed at.
    async fn write(&mut self, id: &str, n: u64) -> Result<u64> {
        Ok(match self {
            Self::Meridian(client) => {
                let n = u32::try_from(n % 60_000)?;
                client
                    .register_instance(pb::RegisterInstanceRequest {
                        service: BENCH_SERVICE.to_owned(),
                        id: id.to_owned(),
                        address: "10.0.0.1".to_owned(),
                        port: 1024 + n,
                        attributes: HashMap::from([("version".to_owned(), "v1".to_owned())]),
                    })
                    .await?
                    .into_inner()
                    .revision
            }
            Self::Etcd(client) => {
                let header = client
                    .put(PutRequest {
                        key: format!("{ETCD_PREFIX}{id}").into_bytes(),
                        value: format!("10.0.0.1:{}", 1024 + n % 60_000).into_bytes(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .header
                    .context("a put response without a header")?;
                u64::try_from(header.revision)?
            }
        })
    }
}

/// Sum of the resident set sizes of `nodes`, in bytes (from `/proc/PID/status`).
pub(crate) fn rss(nodes: &[&ServerGuard]) -> Result<u64> {
    nodes.iter().map(|node| node.rss()).sum()
}

/// Starts a 3-node Meridian cluster (direct peer links) and creates the benchmark service.
pub(crate) async fn start_meridian(bin: &Path, data_root: &Path, pin: bool) -> Result<Cluster> {
    let listens: Vec<String> = (0..3)
        .map(|_| Ok(format!("127.0.0.1:{}", servers::free_port()?)))
        .collect::<Result<_>>()?;
    let peers: Vec<String> = listens
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{}={l}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let dir = servers::data_dir(data_root, "bench-watch-meridian-")?;
        let args = vec![
            "server".to_owned(),
            "--id".to_owned(),
            (i + 1).to_string(),
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
            "--listen".to_owned(),
            listen.clone(),
            "--dns-listen".to_owned(),
            format!("127.0.0.1:{}", servers::free_port()?),
            "--admin-listen".to_owned(),
            format!("127.0.0.1:{}", servers::free_port()?),
            "--peers".to_owned(),
            peers.join(","),
        ];
        let url = format!("http://{listen}");
        nodes.push(ServerGuard::spawn("meridian", bin, args, pin, url, dir)?);
    }
    for node in &mut nodes {
        node.wait_ready(|endpoint: Endpoint| async move {
            let status = ClusterClient::new(endpoint.connect().await?)
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            ensure!(status.leader_id != 0, "no leader yet");
            Ok(())
        })
        .await?;
    }
    let leader = ClusterClient::new(nodes[0].endpoint()?.connect().await?)
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .leader_id;
    let leader = usize::try_from(leader)?
        .checked_sub(1)
        .context("leader id 0")?;
    let mut registry = RegistryClient::new(nodes[leader].endpoint()?.connect().await?);
    registry
        .create_namespace(pb::CreateNamespaceRequest {
            name: BENCH_NAMESPACE.to_owned(),
            ..Default::default()
        })
        .await
        .context("creating the benchmark namespace")?;
    registry
        .create_service(pb::CreateServiceRequest {
            name: BENCH_SERVICE.to_owned(),
            ..Default::default()
        })
        .await
        .context("creating the benchmark service")?;
    Ok(Cluster {
        kind: Kind::Meridian,
        nodes,
        leader,
        version: servers::version(bin),
    })
}

/// Starts a 3-member etcd (fsync on, its default) and finds its leader.
pub(crate) async fn start_etcd(bin: &Path, data_root: &Path, pin: bool) -> Result<Cluster> {
    let mut ports = Vec::new();
    for _ in 0..3 {
        ports.push((servers::free_port()?, servers::free_port()?));
    }
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = servers::data_dir(data_root, "bench-watch-etcd-")?;
        let client = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let args = vec![
            "--name".to_owned(),
            format!("m{}", i + 1),
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".to_owned(),
            client.clone(),
            "--advertise-client-urls".to_owned(),
            client.clone(),
            "--listen-peer-urls".to_owned(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_owned(),
            peer,
            "--initial-cluster".to_owned(),
            initial.join(","),
            "--initial-cluster-state".to_owned(),
            "new".to_owned(),
            "--initial-cluster-token".to_owned(),
            "meridian-bench-watch".to_owned(),
        ];
        nodes.push(ServerGuard::spawn("etcd", bin, args, pin, client, dir)?);
    }
    for node in &mut nodes {
        servers::wait_etcd_ready(node).await?;
    }
    // Which member leads: each member's status names itself (header) and the leader.
    let mut leader = None;
    for (i, node) in nodes.iter().enumerate() {
        let status = MaintenanceClient::new(node.endpoint()?.connect().await?)
            .status(StatusRequest {})
            .await?
            .into_inner();
        let me = status.header.map(|h| h.member_id);
        if me == Some(status.leader) {
            leader = Some(i);
        }
    }
    Ok(Cluster {
        kind: Kind::Etcd,
        nodes,
        leader: leader.context("no etcd member says it leads")?,
        version: servers::version(bin),
    })
}

/// Prints the Markdown report.
#[allow(clippy::print_stdout)] // the report is the program's output
fn report(rows: &[Row], servers: &[String], pin: bool, machine: &str) {
    println!("## Watch: registration → watchers on the followers of a 3-node cluster\n");
    println!("- machine: {machine}");
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- pinning: {}",
        if pin {
            "all three servers of a cluster on core 0 (`taskset -c 0`); the writer and the \
             watchers (this process) on core 1. One system at a time; each cluster is killed \
             before the next starts"
        } else {
            "none (servers, writer and watchers share all cores)"
        }
    );
    println!(
        "- load: per watcher count, watchers on the two followers (alternating; one gRPC \
         stream each, {STREAMS_PER_CONN} streams per HTTP/2 connection); {WARMUP} unmeasured \
         then {CHANGES} measured sequential writes to the leader (Meridian: `RegisterInstance` \
         of a new instance of `{BENCH_SERVICE}`, watched with `Registry/Watch`; etcd: `Put` of \
         a new key under `{ETCD_PREFIX}`, watched with a prefix `Watch`); latency = arrival at \
         a watcher − acknowledgement at the writer (0 if the event came first), over every \
         arrival at every watcher"
    );
    println!(
        "- memory: growth of the two followers' RSS from before the watchers connect to once \
         all hold their initial state, per watcher"
    );
    for line in servers {
        println!("{line}");
    }
    println!(
        "\n| system | watchers | arrivals | p50 (ms) | p99 (ms) | max (ms) | before the ack | \
         missing | RSS per watcher |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let ms = |micros: u64| micros as f64 / 1000.0;
        println!(
            "| {:?} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} % | {} | {:.1} KiB |",
            row.kind,
            row.watchers,
            row.latency.len(),
            ms(row.latency.value_at_quantile(0.5)),
            ms(row.latency.value_at_quantile(0.99)),
            ms(row.latency.max()),
            100.0 * row.early as f64 / row.latency.len().max(1) as f64,
            row.missing,
            row.rss_per_watcher / 1024.0
        );
    }
    println!("\n| watchers | p99 Meridian / etcd | p50 Meridian / etcd | memory Meridian / etcd |");
    println!("|---:|---:|---:|---:|");
    for &watchers in &WATCHERS {
        let find = |kind| {
            rows.iter()
                .find(|r| r.kind == kind && r.watchers == watchers)
        };
        if let (Some(m), Some(e)) = (find(Kind::Meridian), find(Kind::Etcd)) {
            let ratio = |q: f64| {
                m.latency.value_at_quantile(q) as f64 / e.latency.value_at_quantile(q).max(1) as f64
            };
            println!(
                "| {watchers} | **{:.2}×** | {:.2}× | {:.2}× |",
                ratio(0.99),
                ratio(0.5),
                m.rss_per_watcher / e.rss_per_watcher.max(1.0)
            );
        }
    }
}
