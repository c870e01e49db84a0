//! The processes of the proxy scenario: nginx, haproxy, `meridian dev` and `meridian-proxy`,
//! each with a generated configuration in its own temporary directory; and the control-plane
//! calls that set the scenario up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_proto::v1::routing_client::RoutingClient;
use tonic::transport::Channel;

use super::{NAMESPACE, SERVICE};
use crate::servers::{ServerGuard, free_port};

pub(super) fn start_nginx(bin: &Path, ports: [u16; 2], pin: bool) -> Result<ServerGuard> {
    let dir = tempfile::Builder::new().prefix("bench-nginx-").tempdir()?;
    let d = dir.path().display();
    let server = |port: u16, id: &str| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{\n      \
             add_header x-backend-id {id};\n      return 200 \"{id}\\n\";\n    }}\n  }}\n"
        )
    };
    // One process (no master, no workers): the same single core of work as one haproxy
    // thread, and SIGKILL leaves no orphan workers.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_rlimit_nofile 8192;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{\n  worker_connections 4096;\n}}\nhttp {{\n  \
         access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path \
         {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}{}}}\n",
        server(ports[0], "v1"),
        server(ports[1], "v2")
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf)?;
    let args = vec![
        "-p".to_owned(),
        format!("{d}"),
        "-c".to_owned(),
        path.display().to_string(),
    ];
    ServerGuard::spawn("nginx", bin, args, pin, String::new(), dir)
}

pub(super) fn start_haproxy(
    bin: &Path,
    ports: [u16; 2],
    pin: bool,
) -> Result<(ServerGuard, SocketAddr)> {
    let dir = tempfile::Builder::new()
        .prefix("bench-haproxy-")
        .tempdir()?;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let conf = format!(
        "global\n  maxconn 8192\n\ndefaults\n  mode http\n  timeout connect 5s\n  \
         timeout client 30s\n  timeout server 30s\n\nfrontend web\n  bind {listen}\n  \
         default_backend web\n\nbackend web\n  balance roundrobin\n  \
         server v1 127.0.0.1:{} weight 90\n  server v2 127.0.0.1:{} weight 10\n",
        ports[0], ports[1]
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let args = vec![
        "-f".to_owned(),
        path.display().to_string(),
        "-db".to_owned(),
    ];
    Ok((
        ServerGuard::spawn("haproxy", bin, args, pin, format!("http://{listen}"), dir)?,
        listen,
    ))
}

pub(super) fn start_meridian(bin: &Path, pin: bool) -> Result<(ServerGuard, String)> {
    let dir = tempfile::Builder::new()
        .prefix("bench-meridian-")
        .tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = vec![
        "dev".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen".to_owned(),
        listen.clone(),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
    ];
    let url = format!("http://{listen}");
    let server = ServerGuard::spawn("meridian", bin, args, pin, url.clone(), dir)?;
    Ok((server, url))
}

/// Starts `meridian-proxy` (named `name` in the report and errors) with `extra` flags, e.g.
/// the telemetry ones.
pub(super) fn start_proxy(
    bin: &Path,
    grpc: &str,
    pin: bool,
    name: &'static str,
    extra: &[String],
) -> Result<(ServerGuard, SocketAddr)> {
    let dir = tempfile::Builder::new().prefix("bench-proxy-").tempdir()?;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut args = vec![
        "--control-plane".to_owned(),
        grpc.to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
        "--admin".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
        "--default-service".to_owned(),
        SERVICE.to_owned(),
        "--subscribe".to_owned(),
        SERVICE.to_owned(),
    ];
    args.extend_from_slice(extra);
    Ok((
        ServerGuard::spawn(name, bin, args, pin, format!("http://{listen}"), dir)?,
        listen,
    ))
}

/// Connects to the control plane once it accepts writes (creating the namespace proves it).
pub(super) async fn connect(url: &str) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Channel::from_shared(url.to_owned())?.connect().await {
            let created = RegistryClient::new(channel.clone())
                .create_namespace(pb::CreateNamespaceRequest {
                    name: NAMESPACE.into(),
                    description: String::new(),
                })
                .await;
            if created.is_ok() {
                return Ok(channel);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "meridian at {url} did not accept writes within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the service and registers nginx's two blocks as instances `v1` and `v2`.
pub(super) async fn populate(channel: Channel, ports: [u16; 2]) -> Result<()> {
    let mut registry = RegistryClient::new(channel);
    registry
        .create_service(pb::CreateServiceRequest {
            name: SERVICE.into(),
            ..Default::default()
        })
        .await?;
    for (version, port) in [("v1", ports[0]), ("v2", ports[1])] {
        registry
            .register_instance(pb::RegisterInstanceRequest {
                service: SERVICE.into(),
                id: version.into(),
                address: "127.0.0.1".into(),
                port: u32::from(port),
                attributes: HashMap::from([("version".to_owned(), version.to_owned())]),
            })
            .await?;
    }
    Ok(())
}

pub(super) async fn put_split(
    routing: &mut RoutingClient<Channel>,
    v1: u32,
    v2: u32,
) -> Result<u64> {
    let target = |version: &str, weight| pb::WeightedTarget {
        subset: HashMap::from([("version".to_owned(), version.to_owned())]),
        weight,
    };
    let route = pb::Route {
        service: SERVICE.into(),
        rules: vec![pb::RouteRule {
            targets: vec![target("v1", v1), target("v2", v2)],
            ..Default::default()
        }],
        ..Default::default()
    };
    Ok(routing
        .put_route(pb::PutRouteRequest { route: Some(route) })
        .await?
        .into_inner()
        .revision)
}

pub(super) async fn wait_applied(
    discovery: &mut DiscoveryClient<Channel>,
    revision: u64,
) -> Result<()> {
    let r = discovery
        .wait_applied(pb::WaitAppliedRequest {
            service: SERVICE.into(),
            revision,
            timeout_ms: 10_000,
            local_only: false,
        })
        .await?
        .into_inner();
    ensure!(
        r.subscribed == 1 && r.applied == 1,
        "WaitApplied at revision {revision}: {r:?}"
    );
    Ok(())
}
