//! The client subcommands: one gRPC call each, printed as a table or as JSON.

use std::collections::HashMap;

use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_client::ClusterClient;
use meridian_proto::v1::registry_client::RegistryClient;
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use super::{
    ClusterCommand, Command, ConsistencyArg, DiscoverArgs, HealthArg, HealthFilterArg,
    InstanceCommand, NamespaceCommand, ServiceCommand, ServiceCreateArgs, output, parse,
};

type Outcome = Result<(), String>;

/// A connection to a node, every call carrying the token given (`--token`/`MERIDIAN_TOKEN`).
pub(super) type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer SECRET` to every call (nothing without a token).
#[derive(Clone)]
pub(super) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

impl Bearer {
    /// From the `--token` flag; refuses a token that cannot be a header value.
    pub(super) fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .filter(|t| !t.is_empty())
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "--token: not a printable ASCII token".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

/// The node a client command talks to, and how: `--addr`, `--token`, and TLS when `--tls-ca`
/// is given (presenting `--tls-cert` when given too).
#[derive(Clone)]
pub(super) struct Target {
    pub(super) addr: String,
    pub(super) bearer: Bearer,
    pub(super) tls: Option<meridian_tls::ClientTls>,
}

// === impl Target ===

impl Target {
    /// The same credentials, at another node (`HOST:PORT`, as members list themselves).
    fn member(&self, address: &str) -> Self {
        Self {
            addr: format!("http://{address}"),
            ..self.clone()
        }
    }

    /// Connects now.
    pub(super) async fn connect(&self) -> Result<Channel, String> {
        let addr = &self.addr;
        let uri = meridian_tls::net::tonic_uri(addr, self.tls.is_some()).ok_or_else(|| {
            format!(
                "--addr {addr}: https needs --tls-ca (the CA that signed the server's certificate)"
            )
        })?;
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("--addr: {addr:?} is not a URL ({e})"))?
            .connect_timeout(std::time::Duration::from_secs(3));
        let tls = self.tls.as_ref().map(|tls| &tls.config);
        let channel = meridian_tls::net::connect(endpoint, tls)
            .await
            .map_err(|e| format!("cannot reach meridian at {addr}: {}", root_cause(&e)))?;
        Ok(InterceptedService::new(channel, self.bearer.clone()))
    }

    /// `error` with a hint when it looks like a TLS mismatch: the transport broke before any
    /// answer, which is what a plain-text client gets from a TLS node, and what a client
    /// without a certificate gets from a node that requires one.
    pub(super) fn explain(&self, error: String) -> String {
        let broke = [
            "transport error",
            "operation was canceled",
            "connection reset",
            // A plain-text HTTP/2 client reads a TLS server's alert as a malformed frame.
            "h2 protocol error",
        ]
        .iter()
        .any(|m| error.contains(m));
        match &self.tls {
            _ if !broke => error,
            None => {
                format!("{error} (if the node runs with TLS, give --tls-ca and an https:// --addr)")
            }
            Some(tls) if tls.key.is_none() => format!(
                "{error} (if the node runs with --require-client-cert, give --tls-cert and --tls-key)"
            ),
            Some(_) => error,
        }
    }
}

pub(super) async fn run(target: Target, json: bool, command: Command) -> Outcome {
    let result = run_command(&target, json, command).await;
    result.map_err(|e| target.explain(e))
}

async fn run_command(target: &Target, json: bool, command: Command) -> Outcome {
    let channel = target.connect().await?;
    let registry = RegistryClient::new(channel.clone());
    match command {
        Command::Namespace(c) => namespace(registry, json, c).await,
        Command::Service(c) => service(registry, json, c).await,
        Command::Instance(c) => instance(registry, json, c).await,
        Command::Discover(args) => discover(registry, json, args).await,
        Command::Watch(args) => super::watch::watch(registry, json, args).await,
        Command::Route(c) => super::route::run(channel, json, c).await,
        Command::Proxies { local_only } => super::proxies::run(channel, json, local_only).await,
        Command::Cluster(ClusterCommand::Status) => {
            cluster_status(ClusterClient::new(channel), json).await
        }
        Command::Cluster(c) => cluster_change(ClusterClient::new(channel), target, json, c).await,
        Command::Acl(c) => super::acl::run(channel, json, c).await,
        Command::Tls(_) => Err("not a client command".into()),
        Command::Dev(_) | Command::Server(_) | Command::Exec(_) => {
            Err("not a client command".into())
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One line: the gRPC code in words, then the server's message (which names the field).
pub(super) fn status(s: tonic::Status) -> String {
    let code = format!("{:?}", s.code());
    let words: String = code
        .chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                vec![' ', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    format!("{}: {}", words.trim(), s.message())
}

async fn namespace(
    mut client: RegistryClient<Channel>,
    json: bool,
    command: NamespaceCommand,
) -> Outcome {
    match command {
        NamespaceCommand::Create { name, description } => {
            let r = client
                .create_namespace(pb::CreateNamespaceRequest { name, description })
                .await
                .map_err(status)?
                .into_inner();
            let ns = r.namespace.unwrap_or_default();
            print_written(
                json,
                &format!("namespace {} created", ns.name),
                r.revision,
                namespace_json(&ns),
            );
        }
        NamespaceCommand::Get { name } => {
            let r = client
                .get_namespace(pb::GetNamespaceRequest {
                    name,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            print_namespaces(json, &[r.namespace.unwrap_or_default()], r.revision);
        }
        NamespaceCommand::List => {
            let r = client
                .list_namespaces(pb::ListNamespacesRequest::default())
                .await
                .map_err(status)?
                .into_inner();
            print_namespaces(json, &r.namespaces, r.revision);
        }
        NamespaceCommand::Delete { name } => {
            let r = client
                .delete_namespace(pb::DeleteNamespaceRequest { name: name.clone() })
                .await
                .map_err(status)?
                .into_inner();
            print_written(
                json,
                &format!("namespace {name} deleted"),
                r.revision,
                json!({"name": name}),
            );
        }
    }
    Ok(())
}

async fn service(
    mut client: RegistryClient<Channel>,
    json: bool,
    command: ServiceCommand,
) -> Outcome {
    match command {
        ServiceCommand::Create(args) => {
            let request = create_service_request(args)?;
            let r = client
                .create_service(request)
                .await
                .map_err(status)?
                .into_inner();
            let s = r.service.unwrap_or_default();
            print_written(
                json,
                &format!("service {} created", s.name),
                r.revision,
                service_json(&s),
            );
        }
        ServiceCommand::Get { name } => {
            let r = client
                .get_service(pb::GetServiceRequest {
                    name,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            print_services(json, &[r.service.unwrap_or_default()], r.revision);
        }
        ServiceCommand::List { namespace } => {
            let r = client
                .list_services(pb::ListServicesRequest {
                    namespace: namespace.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            print_services(json, &r.services, r.revision);
        }
        ServiceCommand::Delete { name, force } => {
            let r = client
                .delete_service(pb::DeleteServiceRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_written(
                json,
                &format!("service {name} deleted"),
                r.revision,
                json!({"name": name}),
            );
        }
    }
    Ok(())
}

fn create_service_request(args: ServiceCreateArgs) -> Result<pb::CreateServiceRequest, String> {
    let dns_ttl_seconds = match args.dns_ttl {
        Some(d) if d.as_secs() == 0 || d.subsec_millis() != 0 => {
            return Err(format!(
                "--dns-ttl: {d:?} is not a whole number of seconds ≥ 1"
            ));
        }
        Some(d) => u32::try_from(d.as_secs()).map_err(|_| "--dns-ttl: too long".to_owned())?,
        None => 0,
    };
    let health_check = match args.check {
        None => {
            if args.check_interval.is_some()
                || args.check_timeout.is_some()
                || args.deregister_after.is_some()
            {
                return Err(
                    "--check-interval, --check-timeout and --deregister-after need --check".into(),
                );
            }
            None
        }
        Some(spec) => Some(pb::HealthCheck {
            kind: Some(parse::check(&spec)?),
            interval_ms: args
                .check_interval
                .map(|d| parse::millis("--check-interval", d))
                .transpose()?
                .unwrap_or(0),
            timeout_ms: args
                .check_timeout
                .map(|d| parse::millis("--check-timeout", d))
                .transpose()?
                .unwrap_or(0),
            deregister_after_ms: args
                .deregister_after
                .map(|d| parse::millis("--deregister-after", d))
                .transpose()?
                .unwrap_or(0),
            ..Default::default()
        }),
    };
    Ok(pb::CreateServiceRequest {
        name: args.name,
        description: args.description,
        dns_ttl_seconds,
        health_check,
    })
}

async fn instance(
    mut client: RegistryClient<Channel>,
    json: bool,
    command: InstanceCommand,
) -> Outcome {
    match command {
        InstanceCommand::Register {
            service,
            id,
            address,
            port,
            attributes,
        } => {
            let r = client
                .register_instance(pb::RegisterInstanceRequest {
                    service,
                    id,
                    address,
                    port,
                    attributes: attributes.into_iter().collect::<HashMap<_, _>>(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let i = r.instance.unwrap_or_default();
            let verb = if r.replaced { "replaced" } else { "registered" };
            print_written(
                json,
                &format!("instance {}.{} {verb}", i.id, i.service),
                r.revision,
                instance_json(&i),
            );
        }
        InstanceCommand::Deregister { service, id } => {
            let r = client
                .deregister_instance(pb::DeregisterInstanceRequest {
                    service: service.clone(),
                    id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_written(
                json,
                &format!("instance {id}.{service} deregistered"),
                r.revision,
                json!({"service": service, "id": id}),
            );
        }
        InstanceCommand::SetHealth {
            service,
            id,
            health,
        } => {
            let health = match health {
                HealthArg::Healthy => pb::HealthStatus::Healthy,
                HealthArg::Unhealthy => pb::HealthStatus::Unhealthy,
                HealthArg::Unknown => pb::HealthStatus::Unknown,
            };
            let r = client
                .update_instance_health(pb::UpdateInstanceHealthRequest {
                    service,
                    id,
                    health: health as i32,
                })
                .await
                .map_err(status)?
                .into_inner();
            let i = r.instance.unwrap_or_default();
            print_written(
                json,
                &format!(
                    "instance {}.{} is {}",
                    i.id,
                    i.service,
                    health_word(i.health)
                ),
                r.revision,
                instance_json(&i),
            );
        }
        InstanceCommand::Get { service, id } => {
            let r = client
                .get_instance(pb::GetInstanceRequest {
                    service,
                    id,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            print_instances(json, &[r.instance.unwrap_or_default()], r.revision);
        }
        InstanceCommand::List { service } => {
            let r = client
                .list_instances(pb::ListInstancesRequest {
                    service,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            print_instances(json, &r.instances, r.revision);
        }
        InstanceCommand::Heartbeat { service, id } => {
            let r = client
                .heartbeat(pb::HeartbeatRequest {
                    service: service.clone(),
                    id: id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                output::json(&json!({
                    "service": service, "id": id, "ttl_ms": r.ttl_ms,
                    "health": health_word(r.health), "revision": r.revision,
                }));
            } else {
                output::line(&format!(
                    "heartbeat of {id}.{service} accepted: {} (ttl {} ms, revision {})",
                    health_word(r.health),
                    r.ttl_ms,
                    r.revision
                ));
            }
        }
    }
    Ok(())
}

async fn discover(mut client: RegistryClient<Channel>, json: bool, args: DiscoverArgs) -> Outcome {
    let health_filter = match args.health {
        HealthFilterArg::Healthy => pb::HealthFilter::Healthy,
        HealthFilterArg::Unhealthy => pb::HealthFilter::Unhealthy,
        HealthFilterArg::All => pb::HealthFilter::All,
        HealthFilterArg::HealthyOrElseAll => pb::HealthFilter::HealthyOrElseAll,
    };
    let consistency = match args.consistency {
        ConsistencyArg::Stale => pb::Consistency::Stale,
        ConsistencyArg::Linearizable => pb::Consistency::Linearizable,
    };
    let r = client
        .discover_instances(pb::DiscoverInstancesRequest {
            service: args.service,
            query_parameters: args.attributes.into_iter().collect(),
            optional_parameters: args.optional.into_iter().collect(),
            health_filter: health_filter as i32,
            max_results: args.max_results,
            consistency: consistency as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    print_instances(json, &r.instances, r.revision);
    Ok(())
}

async fn cluster_status(mut client: ClusterClient<Channel>, json: bool) -> Outcome {
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let role = pb::Role::try_from(s.role).unwrap_or(pb::Role::Unspecified);
    let role = role
        .as_str_name()
        .trim_start_matches("ROLE_")
        .to_ascii_lowercase();
    if json {
        output::json(&json!({
            "node_id": s.node_id,
            "role": role,
            "leader_id": s.leader_id,
            "term": s.term,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "snapshot_index": s.snapshot_index,
            "last_index": s.last_index,
            "revision": s.revision,
            "members": s.members.iter().map(|m| json!({
                "id": m.id, "address": m.address, "voter": m.voter, "match_index": m.match_index,
                "role": member_role(m, s.leader_id),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    output::line(&format!(
        "node {} is {role}; leader {}; term {}; commit {}; applied {}; snapshot {}; revision {}",
        s.node_id,
        s.leader_id,
        s.term,
        s.commit_index,
        s.applied_index,
        s.snapshot_index,
        s.revision
    ));
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.address.clone(),
                if m.voter { "voter" } else { "learner" }.into(),
                member_role(m, s.leader_id).into(),
                m.match_index.to_string(),
            ]
        })
        .collect();
    output::table(&["ID", "ADDRESS", "KIND", "ROLE", "MATCH"], &rows);
    Ok(())
}

/// Membership changes go to the leader: on "not the leader", retry once at the leader's
/// address (members' addresses are their gRPC listeners).
async fn cluster_change(
    mut client: ClusterClient<Channel>,
    target: &Target,
    json: bool,
    command: ClusterCommand,
) -> Outcome {
    let result = match cluster_call(&mut client, &command).await {
        Err(s) if s.code() == tonic::Code::Unavailable => match leader_hint(&s) {
            Some(leader) => {
                let members = client
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(status)?
                    .into_inner()
                    .members;
                let address = members
                    .iter()
                    .find(|m| m.id == leader)
                    .map(|m| m.address.clone())
                    .ok_or_else(|| {
                        format!("the leader is node {leader}, whose address is unknown")
                    })?;
                let channel = target.member(&address).connect().await?;
                cluster_call(&mut ClusterClient::new(channel), &command).await
            }
            None => Err(s),
        },
        other => other,
    };
    let (what, value) = result.map_err(status)?;
    if json {
        output::json(&value);
    } else {
        output::line(&what);
    }
    Ok(())
}

fn leader_hint(s: &tonic::Status) -> Option<u64> {
    s.metadata()
        .get("meridian-leader-id")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn cluster_call(
    client: &mut ClusterClient<Channel>,
    command: &ClusterCommand,
) -> Result<(String, Value), tonic::Status> {
    Ok(match command {
        ClusterCommand::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            (
                format!("leader {}", s.leader_id),
                json!({"leader_id": s.leader_id}),
            )
        }
        ClusterCommand::AddNode {
            id,
            address,
            timeout,
        } => {
            let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            let request = pb::AddNodeRequest {
                id: *id,
                address: address.clone(),
                timeout_ms,
            };
            let r = client.add_node(request).await?.into_inner();
            (
                format!("node {id} added as a voter (index {})", r.index),
                json!({"id": id, "index": r.index}),
            )
        }
        ClusterCommand::RemoveNode { id } => {
            let r = client
                .remove_node(pb::RemoveNodeRequest { id: *id })
                .await?
                .into_inner();
            (
                format!("node {id} removed (index {})", r.index),
                json!({"id": id, "index": r.index}),
            )
        }
        ClusterCommand::TransferLeader { id } => {
            let request = pb::TransferLeaderRequest { id: *id };
            let r = client.transfer_leader(request).await?.into_inner();
            (
                format!("node {} leads (term {})", r.leader_id, r.term),
                json!({"leader_id": r.leader_id, "term": r.term}),
            )
        }
        ClusterCommand::Snapshot => {
            let r = client.snapshot(pb::SnapshotRequest {}).await?.into_inner();
            (
                format!("snapshot taken at index {}", r.snapshot_index),
                json!({"snapshot_index": r.snapshot_index}),
            )
        }
    })
}

/// `127.0.0.1:8081`, or `[::1]:8081`.
pub(super) fn endpoint_of(i: &pb::Instance) -> String {
    match i.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => format!("[{}]:{}", i.address, i.port),
        _ => format!("{}:{}", i.address, i.port),
    }
}

/// `k=v` pairs, sorted, comma-separated.
pub(super) fn attributes_of(i: &pb::Instance) -> String {
    let mut attrs: Vec<String> = i
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    attrs.sort();
    attrs.join(",")
}

/// A member's role as the answering node sees it.
fn member_role(m: &pb::Member, leader_id: u64) -> &'static str {
    match (m.id == leader_id, m.voter) {
        (true, _) => "leader",
        (false, true) => "follower",
        (false, false) => "learner",
    }
}

// --- printing ---

fn print_written(json: bool, what: &str, revision: u64, object: Value) {
    if json {
        output::json(&json!({"revision": revision, "result": object}));
    } else {
        output::line(&format!("{what} (revision {revision})"));
    }
}

fn print_namespaces(json: bool, list: &[pb::Namespace], revision: u64) {
    if json {
        output::json(
            &json!({"revision": revision, "namespaces": list.iter().map(namespace_json).collect::<Vec<_>>()}),
        );
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.service_count.to_string(),
                n.mod_revision.to_string(),
                n.description.clone(),
            ]
        })
        .collect();
    output::table(&["NAMESPACE", "SERVICES", "REVISION", "DESCRIPTION"], &rows);
}

fn print_services(json: bool, list: &[pb::Service], revision: u64) {
    if json {
        output::json(
            &json!({"revision": revision, "services": list.iter().map(service_json).collect::<Vec<_>>()}),
        );
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.instance_count.to_string(),
                format!("{}s", s.dns_ttl_seconds),
                check_word(s.health_check.as_ref()),
                s.mod_revision.to_string(),
            ]
        })
        .collect();
    output::table(
        &["SERVICE", "INSTANCES", "DNS TTL", "CHECK", "REVISION"],
        &rows,
    );
}

fn print_instances(json: bool, list: &[pb::Instance], revision: u64) {
    if json {
        output::json(
            &json!({"revision": revision, "instances": list.iter().map(instance_json).collect::<Vec<_>>()}),
        );
        return;
    }
    // People read tables: sort by id (the server's random order is for load spreading).
    let mut sorted: Vec<&pb::Instance> = list.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|i| {
            vec![
                i.id.clone(),
                endpoint_of(i),
                health_word(i.health).into(),
                attributes_of(i),
            ]
        })
        .collect();
    output::table(&["ID", "ADDRESS", "HEALTH", "ATTRIBUTES"], &rows);
}

pub(super) fn health_word(h: i32) -> &'static str {
    match pb::HealthStatus::try_from(h) {
        Ok(pb::HealthStatus::Healthy) => "healthy",
        Ok(pb::HealthStatus::Unhealthy) => "unhealthy",
        Ok(pb::HealthStatus::Unknown) => "unknown",
        _ => "unspecified",
    }
}

fn check_word(c: Option<&pb::HealthCheck>) -> String {
    use pb::health_check::Kind;
    match c.and_then(|c| c.kind.as_ref()) {
        None => "none".into(),
        Some(Kind::Ttl(t)) => format!("ttl:{}ms", t.ttl_ms),
        Some(Kind::Http(h)) => format!("http:{}", h.path),
        Some(Kind::Tcp(_)) => "tcp".into(),
        Some(Kind::Grpc(g)) if g.service.is_empty() => "grpc".into(),
        Some(Kind::Grpc(g)) => format!("grpc:{}", g.service),
    }
}

fn namespace_json(n: &pb::Namespace) -> Value {
    json!({
        "name": n.name, "description": n.description, "service_count": n.service_count,
        "create_revision": n.create_revision, "mod_revision": n.mod_revision,
    })
}

fn service_json(s: &pb::Service) -> Value {
    json!({
        "name": s.name, "namespace": s.namespace, "description": s.description,
        "dns_ttl_seconds": s.dns_ttl_seconds, "health_check": check_word(s.health_check.as_ref()),
        "instance_count": s.instance_count,
        "create_revision": s.create_revision, "mod_revision": s.mod_revision,
    })
}

pub(super) fn instance_json(i: &pb::Instance) -> Value {
    json!({
        "service": i.service, "id": i.id, "address": i.address, "port": i.port,
        "attributes": i.attributes, "health": health_word(i.health),
        "create_revision": i.create_revision, "mod_revision": i.mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_target() -> Target {
        Target {
            addr: "http://127.0.0.1:1".into(),
            bearer: Bearer::new(None).expect("no token is valid"),
            tls: None,
        }
    }

    #[test]
    fn a_broken_plain_text_connection_gets_the_tls_hint() {
        let target = plain_target();
        for error in [
            "cannot reach meridian at http://127.0.0.1:1: transport error",
            "status: Unknown, message: \"h2 protocol error: http2 error\"",
            "connection reset by peer",
        ] {
            let explained = target.explain(error.to_owned());
            assert!(
                explained.starts_with(error) && explained.contains("give --tls-ca"),
                "{explained}"
            );
        }
    }

    #[test]
    fn an_answer_from_the_node_is_left_as_it_is() {
        let error = "status: NotFound, message: \"service orders.cafe.local\"";
        assert_eq!(plain_target().explain(error.to_owned()), error);
    }
}
