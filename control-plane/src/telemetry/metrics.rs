//! [`NodeMetrics`]: the control plane's OpenTelemetry instruments, exported over OTLP and
//! rendered on the admin port's `/metrics` from the same meter.
//!
//! Recorded as things happen: API calls (by the gRPC layer, `grpc.rs`) and proposal
//! latency (by the replica). Observed at collection time, from state that exists anyway:
//! Raft progress (atomics the driver stores once per loop turn), the watch and proxy
//! counts, and the DNS server's per-responder counters (`dns/metrics.rs`) — so the hot
//! paths pay nothing for these. Every name, type and attribute is listed in
//! docs/observability.md.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableCounter, ObservableGauge};

use crate::discovery::DiscoveryHandle;
use crate::dns::DnsMetrics;
use crate::replica::Replica;
use crate::watch::WatchHandle;

/// Bucket bounds of the latency histograms, in seconds: 0.5 ms to 10 s (a commit takes about
/// a millisecond on a local disk; the write timeout is 10 s).
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The instruments recorded on the request paths. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// `meridian.api.requests`: finished gRPC calls.
    pub(crate) api_requests: Counter<u64>,
    /// `rpc.server.call.duration`: gRPC call latency (for a stream: its lifetime).
    pub(crate) api_duration: Histogram<f64>,
    /// `meridian.raft.proposal.duration`: from proposing a write to its being applied here.
    pub(crate) proposal_duration: Histogram<f64>,
}

/// The observable instruments; their callbacks run at each collection while this lives.
#[derive(Debug)]
pub struct Observers {
    _gauges: Vec<ObservableGauge<u64>>,
    _counters: Vec<ObservableCounter<u64>>,
}

// === impl NodeMetrics ===

impl NodeMetrics {
    /// The request-path instruments, made from `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            api_requests: meter
                .u64_counter("meridian.api.requests")
                .with_description("gRPC calls served, by service, method and status code")
                .build(),
            api_duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("Duration of gRPC calls served (of a stream: its lifetime)")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            proposal_duration: meter
                .f64_histogram("meridian.raft.proposal.duration")
                .with_unit("s")
                .with_description("From proposing a write to Raft until it is applied on this node")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
        }
    }

    /// Instruments that no one records: for nodes started without telemetry, and tests.
    pub fn disabled() -> Self {
        Self::new(&opentelemetry::global::meter_provider().meter("meridian-disabled"))
    }
}

// === impl Observers ===

impl Observers {
    /// Registers the gauges and counters read from the node's rooms at collection time.
    pub fn register(
        meter: &Meter,
        replica: &Replica,
        watch: &WatchHandle,
        discovery: &DiscoveryHandle,
        dns: &DnsMetrics,
    ) -> Self {
        let raft_gauge =
            |name: &'static str,
             description: &'static str,
             read: fn(&crate::raft::ProgressSnapshot) -> u64| {
                let raft = replica.raft().clone();
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(move |observer| observer.observe(read(&raft.progress()), &[]))
                    .build()
            };
        let mut gauges = vec![
            raft_gauge("meridian.raft.term", "Current Raft term", |p| p.term),
            raft_gauge(
                "meridian.raft.is_leader",
                "1 while this node is the Raft leader, else 0",
                |p| u64::from(p.leading),
            ),
            raft_gauge(
                "meridian.raft.commit_index",
                "Highest Raft log index known committed",
                |p| p.commit_index,
            ),
            raft_gauge(
                "meridian.raft.applied_index",
                "Highest Raft log index applied to the registry on this node",
                |p| p.applied_index,
            ),
        ];
        let watch = watch.clone();
        gauges.push(
            meter
                .u64_observable_gauge("meridian.watch.watchers")
                .with_description("Open Watch streams on this node")
                .with_callback(move |observer| observer.observe(watch.watchers() as u64, &[]))
                .build(),
        );
        let discovery = discovery.clone();
        gauges.push(
            meter
                .u64_observable_gauge("meridian.discovery.proxies")
                .with_description("Proxies streaming their configuration from this node")
                .with_callback(move |observer| {
                    observer.observe(discovery.proxies().len() as u64, &[]);
                })
                .build(),
        );

        let raft = replica.raft().clone();
        let refused = dns.clone();
        let dns = dns.clone();
        let counters = vec![
            meter
                .u64_observable_counter("meridian.raft.leader_changes")
                .with_description("Times this node saw a new Raft leader since it started")
                .with_callback(move |observer| {
                    observer.observe(raft.progress().leader_changes, &[]);
                })
                .build(),
            meter
                .u64_observable_counter("meridian.dns.queries")
                .with_description("DNS queries answered, by question type and response code")
                .with_callback(move |observer| {
                    dns.for_each(|qtype, rcode, count| {
                        observer.observe(
                            count,
                            &[
                                KeyValue::new("dns.question.type", qtype),
                                KeyValue::new("dns.response.code", rcode),
                            ],
                        );
                    });
                })
                .build(),
            meter
                .u64_observable_counter("meridian.dns.refused_by_acl")
                .with_description(
                    "DNS queries refused because they came from outside every --dns-allow network",
                )
                .with_callback(move |observer| {
                    observer.observe(refused.refused_by_acl(), &[]);
                })
                .build(),
        ];
        Self {
            _gauges: gauges,
            _counters: counters,
        }
    }
}
