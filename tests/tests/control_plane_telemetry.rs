//! The control plane's telemetry against real nodes: spans per gRPC call continuing the
//! caller's `traceparent` (with `raft.propose` and `raft.apply` children, and across a relay
//! to the leader), metrics over OTLP to the in-process collector, and the admin port's
//! `/metrics`, `/ready` and `/health`.
//!
//! Spans go through the process's one global `tracing` subscriber, installed once by
//! `setup::shared` and exporting to one collector; each test tells its spans apart by a trace
//! id of its own. Metrics come from a `Telemetry` per node (its own meter and resource), so
//! counts are per test. The exporters and the collector live on a runtime of their own that
//! outlives every test's runtime.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "control_plane_telemetry/setup.rs"]
mod setup;

use std::net::SocketAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use meridian_control_plane::node::{Node, NodeConfig};
use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::mesh::prometheus::Sample;
use meridian_tests::otlp::{ReceivedSpan, attribute, hex, int_attribute};
use meridian_tests::{TestNode, free_loopback_addr, wait_for};
use opentelemetry_proto::tonic::metrics::v1::metric;
use setup::{
    CLIENT, PATIENCE, SERVER, StopOnDrop, caller, dns_exchange, get, named, node_telemetry,
    register_request, scrape, shared, spans_of, traced, unique, value,
};
use tonic::Code;
use tonic::transport::Channel;

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_call_continues_the_callers_trace_through_propose_and_apply() {
    shared();
    let node = TestNode::start().await;
    let mut registry = node.cafe(&["orders"]).await;
    let (trace, caller_span, traceparent) = caller();
    registry
        .register_instance(traced(
            register_request("orders.cafe.local", "i-1"),
            &traceparent,
        ))
        .await
        .unwrap();

    let spans = spans_of(&trace, |s| {
        !named(s, "meridian.v1.Registry/RegisterInstance").is_empty()
            && !named(s, "raft.propose").is_empty()
            && !named(s, "raft.apply").is_empty()
    })
    .await;
    let server = named(&spans, "meridian.v1.Registry/RegisterInstance")[0];
    assert_eq!(hex(&server.span.parent_span_id), caller_span);
    assert_eq!(server.span.kind, SERVER);
    let attributes = &server.span.attributes;
    assert_eq!(attribute(attributes, "rpc.system"), Some("grpc"));
    assert_eq!(
        attribute(attributes, "rpc.service"),
        Some("meridian.v1.Registry")
    );
    assert_eq!(
        attribute(attributes, "rpc.method"),
        Some("RegisterInstance")
    );
    assert_eq!(int_attribute(attributes, "rpc.grpc.status_code"), Some(0));
    assert_eq!(
        attribute(&server.resource, "service.name"),
        Some("meridian-control-plane")
    );

    let propose = named(&spans, "raft.propose")[0];
    assert_eq!(propose.span.parent_span_id, server.span.span_id);
    let index = int_attribute(&propose.span.attributes, "raft.index")
        .unwrap_or_else(|| panic!("raft.index in {:?}", propose.span.attributes));
    assert!(index > 0);
    assert!(int_attribute(&propose.span.attributes, "raft.term").is_some_and(|t| t >= 1));

    let apply = named(&spans, "raft.apply")[0];
    assert_eq!(apply.span.parent_span_id, propose.span.span_id);
    let first = int_attribute(&apply.span.attributes, "raft.index.first").unwrap();
    let last = int_attribute(&apply.span.attributes, "raft.index.last").unwrap();
    assert!(
        (first..=last).contains(&index),
        "{first}..={last} holds {index}"
    );
    assert!(apply.span.start_time_unix_nano >= propose.span.start_time_unix_nano);
    assert!(apply.span.end_time_unix_nano <= propose.span.end_time_unix_nano);

    // A refused call: its span carries the code and an error status.
    let (trace, _, traceparent) = caller();
    let refused = registry
        .register_instance(traced(
            register_request("orders.cafe.local", "Not A Label"),
            &traceparent,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let spans = spans_of(&trace, |s| !s.is_empty()).await;
    let server = named(&spans, "meridian.v1.Registry/RegisterInstance")[0];
    assert_eq!(
        int_attribute(&server.span.attributes, "rpc.grpc.status_code"),
        Some(3)
    );
    assert_eq!(server.span.status.as_ref().map(|s| s.code), Some(2)); // ERROR
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_relayed_by_a_follower_is_one_trace_across_both_nodes() {
    shared();
    let dir = tempfile::tempdir().unwrap();
    let listens: Vec<(u64, SocketAddr)> = (1..=3).map(|id| (id, free_loopback_addr())).collect();
    let peers: Vec<(u64, String)> = listens.iter().map(|(i, a)| (*i, a.to_string())).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes = Vec::new();
    for (id, listen) in &listens {
        let config = NodeConfig {
            id: *id,
            data_dir: dir.path().join(format!("node-{id}")),
            listen: *listen,
            dns_listen: any,
            dns_recursor: None,
            dns_max_answers: 8,
            dns_allow: None,
            admin_listen: any,
            peers: peers.clone(),
            snapshot_every: NodeConfig::DEFAULT_SNAPSHOT_EVERY,
            join: false,
            access: Default::default(),
            tls: None,
        };
        nodes.push(Node::start(config).await.unwrap());
    }
    let shutdowns: Vec<_> = nodes.iter().map(Node::shutdown_token).collect();
    let _stop = StopOnDrop(shutdowns.clone());
    let channel = |addr: SocketAddr| {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let leader = wait_for("a leader", PATIENCE, || {
        let mut cluster = ClusterClient::new(channel(listens[0].1));
        async move {
            let status = cluster.status(pb::StatusRequest {}).await.ok()?;
            let leader = status.get_ref().leader_id;
            (leader != 0).then_some(leader)
        }
    })
    .await;
    let follower = listens.iter().find(|(id, _)| *id != leader).unwrap().1;
    let leader_addr = listens.iter().find(|(id, _)| *id == leader).unwrap().1;

    let mut registry = RegistryClient::new(channel(leader_addr));
    meridian_tests::create_ttl_service(&mut registry, "orders.cafe.local", 60_000, None).await;
    registry
        .register_instance(register_request("orders.cafe.local", "i-1"))
        .await
        .unwrap();

    let (trace, caller_span, traceparent) = caller();
    let mut at_follower = RegistryClient::new(channel(follower));
    at_follower
        .heartbeat(traced(
            pb::HeartbeatRequest {
                service: "orders.cafe.local".into(),
                id: "i-1".into(),
            },
            &traceparent,
        ))
        .await
        .unwrap();

    // Follower: server span (the caller's child) → relay (client span) → the leader's server
    // span, whose parent is the relay: one trace across two nodes. (A leader that has just
    // been elected may answer a first relay UNAVAILABLE; the relay asks again.)
    let answered = |spans: &[ReceivedSpan], relay: &ReceivedSpan| {
        spans.iter().any(|s| {
            s.span.kind == SERVER
                && s.span.parent_span_id == relay.span.span_id
                && int_attribute(&s.span.attributes, "rpc.grpc.status_code") == Some(0)
        })
    };
    let spans = spans_of(&trace, |s| {
        s.iter()
            .any(|relay| relay.span.kind == CLIENT && answered(s, relay))
    })
    .await;
    let heartbeats = named(&spans, "meridian.v1.Registry/Heartbeat");
    let at_follower = heartbeats
        .iter()
        .find(|s| s.span.kind == SERVER && hex(&s.span.parent_span_id) == caller_span)
        .expect("the follower's server span, child of the caller");
    assert_eq!(
        int_attribute(&at_follower.span.attributes, "rpc.grpc.status_code"),
        Some(0)
    );
    let relay = heartbeats
        .iter()
        .find(|s| s.span.kind == CLIENT && answered(&spans, s))
        .expect("a relay the leader answered");
    assert_eq!(relay.span.parent_span_id, at_follower.span.span_id);
    assert_eq!(
        attribute(&relay.span.attributes, "server.address"),
        Some(leader_addr.to_string().as_str())
    );

    for token in &shutdowns {
        token.cancel();
    }
    for node in nodes {
        node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_raft_metrics_reach_the_collector_and_the_admin_port() {
    let shared = shared();
    let instance = unique("metrics");
    let telemetry = node_telemetry(&instance, Some(shared.collector.endpoint()));
    let node = TestNode::start_with(&telemetry).await;
    let mut registry = node.cafe(&["orders"]).await;
    for id in ["i-1", "i-2"] {
        registry
            .register_instance(register_request("orders.cafe.local", id))
            .await
            .unwrap();
    }
    let refused = registry
        .register_instance(register_request("orders.cafe.local", "Not A Label"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let missing = registry
        .get_namespace(pb::GetNamespaceRequest {
            name: "nowhere.local".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let samples = scrape(node.admin_addr()).await;
    let requests = |method: &str, code: &str| {
        value(
            &samples,
            "meridian_api_requests_total",
            &[
                ("rpc_service", "meridian.v1.Registry"),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
            ],
        )
    };
    assert_eq!(requests("RegisterInstance", "0"), Some(2.0));
    assert_eq!(requests("RegisterInstance", "3"), Some(1.0));
    assert_eq!(requests("CreateNamespace", "0"), Some(1.0));
    assert_eq!(requests("GetNamespace", "5"), Some(1.0));
    // The latency histogram, with its buckets, per method and code.
    let register_ok = [
        ("rpc_method", "RegisterInstance"),
        ("rpc_grpc_status_code", "0"),
    ];
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "rpc_server_call_duration_seconds_bucket"
                && register_ok.iter().all(|(k, v)| s.label(k) == Some(v))
        })
        .collect();
    assert!(buckets.len() > 5, "buckets: {buckets:?}");
    assert_eq!(buckets.last().unwrap().label("le"), Some("+Inf"));
    assert_eq!(buckets.last().unwrap().value, 2.0);
    assert_eq!(
        value(
            &samples,
            "rpc_server_call_duration_seconds_count",
            &register_ok
        ),
        Some(2.0)
    );
    // Raft: one node that leads; 1 namespace + 1 service + 2 instances proposed.
    assert!(value(&samples, "meridian_raft_term", &[]).unwrap() >= 1.0);
    assert_eq!(value(&samples, "meridian_raft_is_leader", &[]), Some(1.0));
    assert_eq!(
        value(&samples, "meridian_raft_leader_changes_total", &[]),
        Some(1.0)
    );
    let commit = value(&samples, "meridian_raft_commit_index", &[]).unwrap();
    assert!(commit >= 4.0, "commit index {commit}");
    assert_eq!(
        value(&samples, "meridian_raft_applied_index", &[]),
        Some(commit)
    );
    assert_eq!(
        value(
            &samples,
            "meridian_raft_proposal_duration_seconds_count",
            &[]
        ),
        Some(4.0)
    );
    assert_eq!(value(&samples, "meridian_watch_watchers", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "meridian_discovery_proxies", &[]),
        Some(0.0)
    );

    // The same instruments over OTLP, under this node's resource.
    let ours = |name: &str| {
        shared.collector.metrics().into_iter().rev().find(|m| {
            m.metric.name == name
                && attribute(&m.resource, "service.instance.id") == Some(instance.as_str())
        })
    };
    let requests = wait_for("meridian.api.requests over OTLP", PATIENCE, || {
        let found = ours("meridian.api.requests").filter(|m| {
            let Some(metric::Data::Sum(sum)) = &m.metric.data else {
                return false;
            };
            sum.data_points.iter().any(|p| {
                attribute(&p.attributes, "rpc.method") == Some("RegisterInstance")
                    && int_attribute(&p.attributes, "rpc.grpc.status_code") == Some(3)
            })
        });
        async move { found }
    })
    .await;
    let Some(metric::Data::Sum(sum)) = requests.metric.data else {
        unreachable!()
    };
    assert!(sum.is_monotonic);
    let ok_registers = sum
        .data_points
        .iter()
        .find(|p| {
            attribute(&p.attributes, "rpc.method") == Some("RegisterInstance")
                && int_attribute(&p.attributes, "rpc.grpc.status_code") == Some(0)
        })
        .expect("RegisterInstance OK over OTLP");
    assert_eq!(
        ok_registers.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(2))
    );
    for name in [
        "meridian.raft.term",
        "meridian.raft.commit_index",
        "meridian.raft.proposal.duration",
        "rpc.server.call.duration",
    ] {
        wait_for(&format!("{name} over OTLP"), PATIENCE, || {
            let found = ours(name);
            async move { found }
        })
        .await;
    }
    node.stop().await.unwrap();
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_are_counted_by_type_and_response_code() {
    let telemetry = node_telemetry(&unique("dns"), None);
    let node = TestNode::start_with(&telemetry).await;
    let mut registry = node.cafe(&["orders"]).await;
    registry
        .register_instance(register_request("orders.cafe.local", "i-1"))
        .await
        .unwrap();
    for _ in 0..3 {
        let rcode = dns_exchange(node.dns_addr(), "orders.cafe.local.", RecordType::A).await;
        assert_eq!(rcode, ResponseCode::NoError);
    }
    let rcode = dns_exchange(node.dns_addr(), "nope.cafe.local.", RecordType::A).await;
    assert_eq!(rcode, ResponseCode::NXDomain);
    let rcode = dns_exchange(node.dns_addr(), "_orders._tcp.cafe.local.", RecordType::SRV).await;
    assert_eq!(rcode, ResponseCode::NoError);
    let rcode = dns_exchange(node.dns_addr(), "example.com.", RecordType::AAAA).await;
    assert_eq!(rcode, ResponseCode::Refused);

    let samples = scrape(node.admin_addr()).await;
    let queries = |qtype: &str, rcode: &str| {
        value(
            &samples,
            "meridian_dns_queries_total",
            &[("dns_question_type", qtype), ("dns_response_code", rcode)],
        )
    };
    assert_eq!(queries("A", "NOERROR"), Some(3.0));
    assert_eq!(queries("A", "NXDOMAIN"), Some(1.0));
    assert_eq!(queries("SRV", "NOERROR"), Some(1.0));
    assert_eq!(queries("AAAA", "REFUSED"), Some(1.0));
    assert_eq!(queries("AAAA", "NOERROR"), None);
    node.stop().await.unwrap();
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_answers_ready_health_and_404() {
    let node = TestNode::start().await;
    let admin = node.admin_addr();
    assert_eq!(get(admin, "/health").await, (200, "ok\n".to_owned()));
    // A leader is known and everything committed is applied (TestNode waited for a leader).
    wait_for("/ready 200", PATIENCE, || async move {
        let (status, _) = get(admin, "/ready").await;
        (status == 200).then_some(())
    })
    .await;
    let (status, body) = get(admin, "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    // Without a telemetry of its own the node still renders its metrics.
    let samples = scrape(admin).await;
    assert!(value(&samples, "meridian_raft_term", &[]).is_some());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_a_node_exports_nothing_and_still_serves() {
    let shared = shared();
    let instance = unique("quiet");
    let telemetry = node_telemetry(&instance, None);
    assert!(telemetry.tracer().is_none());
    let node = TestNode::start_with(&telemetry).await;
    let mut registry = node.cafe(&["orders"]).await;
    registry
        .register_instance(register_request("orders.cafe.local", "i-1"))
        .await
        .unwrap();
    telemetry.flush().await;
    let samples = scrape(node.admin_addr()).await;
    assert!(
        value(
            &samples,
            "meridian_api_requests_total",
            &[("rpc_method", "RegisterInstance")]
        )
        .is_some()
    );
    // Metrics from a node that exports do arrive within a few intervals; this one's never do.
    let exporting = unique("loud");
    let loud = node_telemetry(&exporting, Some(shared.collector.endpoint()));
    let other = TestNode::start_with(&loud).await;
    wait_for("the exporting node's metrics", PATIENCE, || {
        let found = shared
            .collector
            .metrics()
            .into_iter()
            .any(|m| attribute(&m.resource, "service.instance.id") == Some(exporting.as_str()));
        async move { found.then_some(()) }
    })
    .await;
    assert!(
        !shared
            .collector
            .metrics()
            .iter()
            .any(|m| attribute(&m.resource, "service.instance.id") == Some(instance.as_str())),
        "a node without an endpoint exported metrics"
    );
    other.stop().await.unwrap();
    node.stop().await.unwrap();
    loud.shutdown().await;
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_does_not_stop_the_node() {
    // A port nobody listens on.
    let dead = format!("http://{}", free_loopback_addr());
    let telemetry = node_telemetry(&unique("dead"), Some(dead));
    let node = TestNode::start_with(&telemetry).await;
    let mut registry = node.cafe(&["orders"]).await;
    for i in 0..50 {
        registry
            .register_instance(register_request("orders.cafe.local", &format!("i-{i}")))
            .await
            .unwrap();
    }
    // Exports fail in the background; flushing and the admin port still answer.
    telemetry.flush().await;
    let samples = scrape(node.admin_addr()).await;
    assert_eq!(
        value(
            &samples,
            "meridian_api_requests_total",
            &[
                ("rpc_method", "RegisterInstance"),
                ("rpc_grpc_status_code", "0")
            ]
        ),
        Some(50.0)
    );
    assert_eq!(get(node.admin_addr(), "/ready").await.0, 200);
    node.stop().await.unwrap();
    telemetry.shutdown().await;
}
