//! The load generator: `clients` tasks, each looping sequential unary writes, sharing a fixed
//! number of HTTP/2 connections, until the request budget or the time limit runs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use meridian_proto::v1::RegisterInstanceRequest;
use meridian_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};

use crate::etcdserverpb::PutRequest;
use crate::etcdserverpb::kv_client::KvClient;
use crate::servers::BENCH_SERVICE;

/// Size of an etcd value; a Meridian registration carries about as many bytes (id, address,
/// port, a `version` attribute and a `payload` attribute of [`MERIDIAN_PAYLOAD`] bytes).
pub(crate) const ETCD_VALUE_BYTES: usize = 256;
/// Size of the `payload` attribute of a Meridian instance (attribute values are bounded to 256).
pub(crate) const MERIDIAN_PAYLOAD: usize = 200;

/// Which system a client writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Meridian,
    Etcd,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Meridian => "Meridian",
            Self::Etcd => "etcd",
        }
    }
}

/// One client's connection to the system under test.
#[derive(Clone)]
enum Writer {
    Meridian(RegistryClient<Channel>),
    Etcd(KvClient<Channel>),
}

impl Writer {
    /// Writes record number `n`, with id `id`: a registration or a put of about 256 bytes.
    /// A Meridian record goes to service `n % services` ([`service_name`]), or to
    /// [`BENCH_SERVICE`] when `services` is 0.
    async fn write(
        &mut self,
        id: String,
        n: u64,
        payload: &str,
        services: u64,
    ) -> Result<(), tonic::Status> {
        match self {
            Self::Meridian(client) => {
                let attributes = HashMap::from([
                    ("version".to_owned(), "v1".to_owned()),
                    ("payload".to_owned(), payload[..MERIDIAN_PAYLOAD].to_owned()),
                ]);
                client
                    .register_instance(RegisterInstanceRequest {
                        service: match n.checked_rem(services) {
                            Some(k) => service_name(k),
                            None => BENCH_SERVICE.to_owned(),
                        },
                        id,
                        address: address(n),
                        port: 8080,
                        attributes,
                    })
                    .await?;
            }
            Self::Etcd(client) => {
                client
                    .put(PutRequest {
                        key: format!("/bench/{id}").into_bytes(),
                        value: payload.as_bytes()[..ETCD_VALUE_BYTES].to_vec(),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// The name of spread service number `k` (see [`Load::services`]), in the bench namespace.
pub(crate) fn service_name(k: u64) -> String {
    format!("s{k}.{}", crate::servers::BENCH_NAMESPACE)
}

/// A distinct, valid IPv4 address per record: 10.a.b.c with c in 1..=250.
fn address(n: u64) -> String {
    let c = n % 250 + 1;
    let b = (n / 250) % 256;
    let a = (n / (250 * 256)) % 256;
    format!("10.{a}.{b}.{c}")
}

/// What one load run measured.
pub(crate) struct RunResult {
    /// Successful writes.
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// From the first request sent to the last answer received.
    pub(crate) elapsed: Duration,
    /// Latency of successful writes, in microseconds.
    pub(crate) latency: Histogram<u64>,
}

impl RunResult {
    pub(crate) fn writes_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `q` (0..=1), in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The fixed shape of one load run.
pub(crate) struct Load {
    pub(crate) clients: usize,
    pub(crate) conns: usize,
    pub(crate) requests: u64,
    pub(crate) max_time: Duration,
    /// Prefix of every record id of this run, so runs never overwrite each other's records.
    pub(crate) tag: String,
    /// Meridian only: spread registrations round-robin over this many services (named by
    /// [`service_name`], created beforehand by the caller); 0 = all into [`BENCH_SERVICE`].
    pub(crate) services: u64,
}

/// Runs `load` against `system` at `endpoint` and returns what it measured.
pub(crate) async fn run(system: System, endpoint: &Endpoint, load: &Load) -> Result<RunResult> {
    let mut channels = Vec::with_capacity(load.conns);
    for _ in 0..load.conns.max(1) {
        channels.push(endpoint.connect().await.context("connecting")?);
    }
    let payload: Arc<str> = "x".repeat(ETCD_VALUE_BYTES.max(MERIDIAN_PAYLOAD)).into();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_time;

    let mut tasks = Vec::with_capacity(load.clients);
    for client in 0..load.clients {
        let channel = channels[client % channels.len()].clone();
        let mut writer = match system {
            System::Meridian => Writer::Meridian(RegistryClient::new(channel)),
            System::Etcd => Writer::Etcd(KvClient::new(channel)),
        };
        let (payload, next, requests) = (payload.clone(), next.clone(), load.requests);
        let (tag, services) = (load.tag.clone(), load.services);
        tasks.push(tokio::spawn(async move {
            let mut result = RunResult {
                ok: 0,
                errors: 0,
                first_error: None,
                elapsed: Duration::ZERO,
                latency: new_histogram()?,
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests || Instant::now() >= deadline {
                    break;
                }
                let id = format!("{tag}-{client}-{n}");
                let sent = Instant::now();
                match writer.write(id, n, &payload, services).await {
                    Ok(()) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        result.latency.saturating_record(micros.max(1));
                        result.ok += 1;
                    }
                    Err(status) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
            anyhow::Ok(result)
        }));
    }

    let mut total = RunResult {
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
    };
    for task in tasks {
        let r = task.await.context("client task panicked")??;
        total.ok += r.ok;
        total.errors += r.errors;
        total.first_error = total.first_error.or(r.first_error);
        total
            .latency
            .add(&r.latency)
            .context("merging histograms")?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// A histogram of microseconds from 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a histogram")
}
