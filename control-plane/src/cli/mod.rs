//! The `meridian` command line: `dev` and `server` run a node; every other subcommand is a
//! gRPC client of one.
//!
//! Client commands find the server through `--addr` or `MERIDIAN_ADDR` (default
//! `http://127.0.0.1:7400`), print tables for people and `--json` for scripts, and exit
//! non-zero with a one-line reason on error.

mod acl;
mod client;
mod exec;
mod output;
mod parse;
mod proxies;
mod route;
mod route_file;
mod server;
mod tls;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meridian_telemetry::TelemetryArgs;

/// The default `service.name` of the control plane's telemetry.
pub(crate) const SERVICE_NAME: &str = "meridian-control-plane";

/// Meridian: a service registry and service-mesh control plane.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about, propagate_version = true)]
pub struct Cli {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_ADDR",
        default_value = "http://127.0.0.1:7400"
    )]
    addr: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The ACL token secret to call with (when the cluster runs with --acl-enabled).
    #[arg(long, global = true, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-node development server (temporary data dir unless --data-dir).
    Dev(DevArgs),
    /// Run a server node.
    Server(ServerArgs),
    /// Manage namespaces (DNS domains such as cafe.local).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Manage services (orders.cafe.local).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Register, deregister and inspect instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Find the instances of a service.
    Discover(DiscoverArgs),
    /// Print changes as they happen: a service, a namespace (--namespace) or everything.
    Watch(WatchArgs),
    /// Set, show and delete routes: how a service's traffic splits across subsets.
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// The proxies connected to the cluster, and the config version each runs.
    Proxies {
        /// Only the proxies of the node at --addr.
        #[arg(long)]
        local_only: bool,
    },
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a program and keep it registered while it lives (deregistered when it exits).
    Exec(ExecArgs),
    /// ACL tokens: create, list, revoke, whoami.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// TLS: a development CA and certificates (`tls init`).
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Create a CA and node and client certificates in a directory (keeps what exists).
    Init(tls::TlsInitArgs),
}

/// Where a node listens: shared by `dev` and `server`.
#[derive(Debug, Args)]
struct Listeners {
    /// gRPC listener.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// DNS listener, UDP and TCP (`dig @127.0.0.1 -p 8600 orders.cafe.local`).
    #[arg(long, default_value = "127.0.0.1:8600")]
    dns_listen: SocketAddr,
    /// Forward DNS names outside every namespace to this resolver (IP:PORT); default: refuse.
    #[arg(long)]
    dns_recursor: Option<SocketAddr>,
    /// At most this many records per DNS answer (1-256).
    #[arg(long, default_value_t = crate::dns::DEFAULT_MAX_ANSWERS)]
    dns_max_answers: usize,
    /// Answer DNS only from these networks, REFUSED to others (like BIND's allow-query),
    /// e.g. 127.0.0.0/8,10.0.0.0/8,::1/128. Default: everyone.
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    dns_allow: Option<crate::dns::AllowList>,
    /// Admin HTTP listener: /metrics (Prometheus text), /ready, /health.
    #[arg(long, default_value = "127.0.0.1:7401")]
    admin_listen: SocketAddr,
    /// Refuse clients and proxies without a certificate from --tls-ca (needs the --tls-*
    /// flags; peers always need one).
    #[arg(long)]
    require_client_cert: bool,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Keep data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    listeners: Listeners,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// `--acl-enabled`, `--acl-bootstrap-token`, `--rate-limit` and the other limits (dev and
/// server).
#[derive(Debug, Args)]
struct AccessArgs {
    /// Require a token on every call (see docs/security.md).
    #[arg(long)]
    acl_enabled: bool,
    /// The first admin token's secret, installed once for the whole cluster (give every node
    /// the same one). Prefer the variable: command lines are visible to other users.
    #[arg(
        long,
        env = "MERIDIAN_ACL_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        requires = "acl_enabled"
    )]
    acl_bootstrap_token: Option<String>,
    /// At most this many calls per second per caller (token, or client address without
    /// ACLs), with bursts of twice that; beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, value_parser = parse_rate)]
    rate_limit: Option<f64>,
    /// Refuse registrations beyond this many instances in one service (RESOURCE_EXHAUSTED);
    /// default: no limit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_instances_per_service: Option<u32>,
    /// At most this many watch and discovery streams open at once per caller (token, or
    /// client address without ACLs); further ones get RESOURCE_EXHAUSTED. Default: no limit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_watchers_per_client: Option<u32>,
    /// HTTP/2 streams (calls in flight, watches) one gRPC connection may hold at once;
    /// further ones wait on the client until one ends.
    #[arg(
        long,
        default_value_t = crate::auth::DEFAULT_MAX_CONCURRENT_STREAMS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_concurrent_streams: u32,
}

impl AccessArgs {
    fn config(&self) -> crate::auth::AccessConfig {
        crate::auth::AccessConfig {
            acl_enabled: self.acl_enabled,
            bootstrap_token: self.acl_bootstrap_token.clone(),
            rate_limit: self.rate_limit,
            max_instances_per_service: self.max_instances_per_service.map(|n| n as usize),
            max_watchers_per_client: self.max_watchers_per_client.map(|n| n as usize),
            max_concurrent_streams: Some(self.max_concurrent_streams),
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of calls per second"
        )),
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// This node's id (≥ 1).
    #[arg(long)]
    id: u64,
    /// Where the Raft log and snapshots live.
    #[arg(long)]
    data_dir: PathBuf,
    #[command(flatten)]
    listeners: Listeners,
    /// The cluster as ID=ADDR,... (this node included). Default: this node alone. Used to
    /// bootstrap an empty data dir; a restarted node keeps its membership from disk.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Compact the Raft log after at least this many applied entries, once they also add up
    /// to the size of the last snapshot.
    #[arg(long, default_value_t = crate::node::NodeConfig::DEFAULT_SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Join a running cluster (after `meridian cluster add-node ID ADDR` on it) instead of
    /// bootstrapping one; --peers then lists the current members and this node.
    #[arg(long)]
    join: bool,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// Create a namespace.
    Create {
        /// A DNS domain, e.g. cafe.local.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one namespace.
    Get {
        /// The namespace.
        name: String,
    },
    /// List namespaces.
    List,
    /// Delete an empty namespace.
    Delete {
        /// The namespace.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Create a service.
    Create(ServiceCreateArgs),
    /// Show one service.
    Get {
        /// SERVICE.NAMESPACE, e.g. orders.cafe.local.
        name: String,
    },
    /// List services (of one namespace, or all).
    List {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Delete a service.
    Delete {
        /// SERVICE.NAMESPACE.
        name: String,
        /// Also deregister its instances.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct ServiceCreateArgs {
    /// SERVICE.NAMESPACE, e.g. orders.cafe.local.
    name: String,
    /// TTL of DNS answers, e.g. 5s.
    #[arg(long, value_parser = parse::duration)]
    dns_ttl: Option<std::time::Duration>,
    /// Health check: http:/PATH, tcp, grpc, grpc:SERVICE or ttl:DURATION.
    #[arg(long)]
    check: Option<String>,
    /// Between two active checks, e.g. 10s.
    #[arg(long, value_parser = parse::duration)]
    check_interval: Option<std::time::Duration>,
    /// Per check attempt, e.g. 2s.
    #[arg(long, value_parser = parse::duration)]
    check_timeout: Option<std::time::Duration>,
    /// Deregister instances unhealthy for this long, e.g. 10m.
    #[arg(long, value_parser = parse::duration)]
    deregister_after: Option<std::time::Duration>,
    /// Free text.
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(Debug, Subcommand)]
enum InstanceCommand {
    /// Register (or replace) an instance.
    Register {
        /// SERVICE.NAMESPACE.
        service: String,
        /// Instance id, a DNS label (i-1).
        id: String,
        /// IPv4 or IPv6 address.
        #[arg(long)]
        address: String,
        /// Port, 1-65535.
        #[arg(long)]
        port: u32,
        /// Attribute KEY=VALUE (repeatable); `version` selects subsets.
        #[arg(long = "attr", value_parser = parse::key_value)]
        attributes: Vec<(String, String)>,
    },
    /// Deregister an instance.
    Deregister {
        /// SERVICE.NAMESPACE.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Set an instance's health (custom health).
    SetHealth {
        /// SERVICE.NAMESPACE.
        service: String,
        /// Instance id.
        id: String,
        /// The new status.
        #[arg(value_enum)]
        health: HealthArg,
    },
    /// Show one instance.
    Get {
        /// SERVICE.NAMESPACE.
        service: String,
        /// Instance id.
        id: String,
    },
    /// List every instance of a service, whatever its health.
    List {
        /// SERVICE.NAMESPACE.
        service: String,
    },
    /// Say an instance is alive (services with a TTL check).
    Heartbeat {
        /// SERVICE.NAMESPACE.
        service: String,
        /// Instance id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// SERVICE.NAMESPACE; omit it (and --namespace) to watch everything.
    service: Option<String>,
    /// Watch every service of this namespace instead.
    #[arg(long, conflicts_with = "service")]
    namespace: Option<String>,
    /// Resume after this revision instead of starting from a full state.
    #[arg(long, default_value_t = 0)]
    from: u64,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// SERVICE.NAMESPACE to register the program in.
    #[arg(long)]
    service: String,
    /// Instance id, a DNS label (i-1).
    #[arg(long)]
    id: String,
    /// The program's port: it is registered once this port accepts TCP connections.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The address to register (and to probe the port on).
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Attribute KEY=VALUE (repeatable); `version` selects subsets.
    #[arg(long = "attr", value_parser = parse::key_value)]
    attributes: Vec<(String, String)>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct DiscoverArgs {
    /// SERVICE.NAMESPACE.
    service: String,
    /// Only instances with attribute KEY=VALUE (repeatable; all must match).
    #[arg(long = "attr", value_parser = parse::key_value)]
    attributes: Vec<(String, String)>,
    /// Prefer instances with KEY=VALUE, if any match (repeatable).
    #[arg(long = "prefer", value_parser = parse::key_value)]
    optional: Vec<(String, String)>,
    /// Which instances by health.
    #[arg(long, value_enum, default_value_t = HealthFilterArg::Healthy)]
    health: HealthFilterArg,
    /// At most this many instances (1-1000).
    #[arg(long, default_value_t = 100)]
    max_results: u32,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Stale)]
    consistency: ConsistencyArg,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Members, leader, term and Raft indexes of the node at --addr.
    Status,
    /// Add a node: start it with `meridian server --join ...` while this waits; it joins as a
    /// learner, catches up, then becomes a voter.
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its gRPC address (HOST:PORT) as the other members reach it.
        address: String,
        /// How long to wait for it to catch up.
        #[arg(long, value_parser = parse::duration, default_value = "60s")]
        timeout: std::time::Duration,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The new leader's id.
        id: u64,
    },
    /// Snapshot the registry on the node at --addr and compact its log.
    Snapshot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HealthFilterArg {
    Healthy,
    Unhealthy,
    All,
    HealthyOrElseAll,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HealthArg {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    Stale,
    Linearizable,
}

/// Parses the command line and runs it. Errors are printed as one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return output::fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => server::dev(args, &cli.tls).await,
            Command::Server(args) => server::server(args, &cli.tls).await,
            // Exits with the program's code, so it reports its own failures.
            Command::Tls(TlsCommand::Init(args)) => tls::run(cli.json, args),
            command => {
                let target = client::Target {
                    addr: cli.addr,
                    bearer: client::Bearer::new(cli.token.as_deref())?,
                    tls: cli.tls.client()?,
                };
                match command {
                    // Exits with the program's code, so it reports its own failures.
                    Command::Exec(args) => return Ok(exec::run(&target, args).await),
                    command => client::run(target, cli.json, command).await,
                }
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    result.unwrap_or_else(|e| output::fail(&e))
}
