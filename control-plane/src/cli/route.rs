//! `meridian route set|get|list|delete`: a service's route, from flags (`--split v1=90,v2=10`)
//! or a JSON file (`--file route.json`), and `--wait` until every proxy that follows the
//! service runs it.

use std::time::{Duration, Instant};

use super::client::Channel;
use clap::{Args, Subcommand, ValueEnum};
use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::routing_client::RoutingClient;
use serde_json::json;

use super::client::status;
use super::route_file::{self, RouteFile};
use super::{output, parse};

/// The route subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum RouteCommand {
    /// Create or replace a service's route: a split (--split) or a whole route (--file).
    Set(Box<SetArgs>),
    /// Show a service's route (--json prints it in the form --file reads).
    Get {
        /// SERVICE.NAMESPACE.
        name: String,
    },
    /// List routes (of one namespace, or all).
    List {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Remove a service's route: its traffic goes back to all healthy instances.
    Delete {
        /// SERVICE.NAMESPACE.
        name: String,
    },
}

/// `route set`.
#[derive(Debug, Args)]
pub(super) struct SetArgs {
    /// SERVICE.NAMESPACE, e.g. orders.cafe.local.
    name: String,
    /// Weighted subsets, VALUE=WEIGHT,... over the subset key (e.g. v1=90,v2=10).
    #[arg(long, value_delimiter = ',', value_parser = parse::key_value, required_unless_present = "file")]
    split: Vec<(String, String)>,
    /// The instance attribute that --split values select on.
    #[arg(long, default_value = "version")]
    subset_key: String,
    /// A whole route in JSON (see docs/routing.md); the other route flags then do not apply.
    #[arg(long, conflicts_with_all = ["split", "timeout", "retries", "per_try_timeout", "retry_on", "retry_non_idempotent", "lb", "hash_header"])]
    file: Option<std::path::PathBuf>,
    /// Whole-request timeout, all tries included (e.g. 5s; default 15s).
    #[arg(long, value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// Retries after the first try (0-10).
    #[arg(long)]
    retries: Option<u32>,
    /// Each try's own timeout (e.g. 500ms).
    #[arg(long, value_parser = parse::duration, requires = "retries")]
    per_try_timeout: Option<Duration>,
    /// Failures retried: connect-failure, reset, gateway-error, server-error, per-try-timeout
    /// (comma-separated; default connect-failure,reset,gateway-error).
    #[arg(long, value_delimiter = ',', requires = "retries")]
    retry_on: Vec<String>,
    /// Retry POST, PATCH and other non-idempotent requests too.
    #[arg(long, requires = "retries")]
    retry_non_idempotent: bool,
    /// Load balancing inside a subset.
    #[arg(long, value_enum)]
    lb: Option<LbArg>,
    /// With --lb ring-hash: hash this request header instead of the client IP.
    #[arg(long)]
    hash_header: Option<String>,
    /// Wait until every proxy that follows the service has applied the route.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (at most 5m).
    #[arg(long, value_parser = parse::duration, default_value = "10s", requires = "wait")]
    wait_timeout: Duration,
}

/// Load-balancing policies, as the flag spells them.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum LbArg {
    /// Power of two choices over a latency EWMA (the default).
    P2c,
    /// Round robin.
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Consistent hashing on the client IP or --hash-header (sticky).
    RingHash,
}

type Outcome = Result<(), String>;

/// Runs a route subcommand against the server behind `channel`.
pub(super) async fn run(channel: Channel, json: bool, command: RouteCommand) -> Outcome {
    let mut routing = RoutingClient::new(channel.clone());
    match command {
        RouteCommand::Set(args) => set(routing, DiscoveryClient::new(channel), json, *args).await,
        RouteCommand::Get { name } => {
            let r = routing
                .get_route(pb::GetRouteRequest {
                    service: name,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let route = r.route.unwrap_or_default();
            if json {
                output::json(
                    &json!({"revision": r.revision, "route": RouteFile::from_pb(&route).to_json()}),
                );
            } else {
                print_route(&route);
            }
            Ok(())
        }
        RouteCommand::List { namespace } => {
            let r = routing
                .list_routes(pb::ListRoutesRequest {
                    namespace: namespace.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let routes: Vec<_> = r
                    .routes
                    .iter()
                    .map(|route| RouteFile::from_pb(route).to_json())
                    .collect();
                output::json(&json!({"revision": r.revision, "routes": routes}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .routes
                .iter()
                .map(|route| {
                    vec![
                        route.service.clone(),
                        route.rules.len().to_string(),
                        route.rules.last().map(targets_of).unwrap_or_default(),
                        lb_of(route),
                        route.mod_revision.to_string(),
                    ]
                })
                .collect();
            output::table(
                &["SERVICE", "RULES", "DEFAULT SPLIT", "LB", "REVISION"],
                &rows,
            );
            Ok(())
        }
        RouteCommand::Delete { name } => {
            let r = routing
                .delete_route(pb::DeleteRouteRequest {
                    service: name.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                output::json(&json!({"revision": r.revision, "service": name}));
            } else {
                output::line(&format!(
                    "route of {name} deleted (revision {})",
                    r.revision
                ));
            }
            Ok(())
        }
    }
}

async fn set(
    mut routing: RoutingClient<Channel>,
    mut discovery: DiscoveryClient<Channel>,
    json: bool,
    args: SetArgs,
) -> Outcome {
    let route = route_of(&args)?;
    let wait_ms = parse::millis("--wait-timeout", args.wait_timeout)?;
    let started = Instant::now();
    let put = routing
        .put_route(pb::PutRouteRequest { route: Some(route) })
        .await
        .map_err(status)?
        .into_inner();
    let service = put
        .route
        .as_ref()
        .map_or(args.name.clone(), |r| r.service.clone());
    if !args.wait {
        if json {
            let route = RouteFile::from_pb(&put.route.unwrap_or_default()).to_json();
            output::json(&json!({"revision": put.revision, "route": route}));
        } else {
            output::line(&format!(
                "route of {service} set (revision {})",
                put.revision
            ));
        }
        return Ok(());
    }
    let w = discovery
        .wait_applied(pb::WaitAppliedRequest {
            service: service.clone(),
            revision: put.revision,
            timeout_ms: wait_ms,
            local_only: false,
        })
        .await
        .map_err(|s| {
            format!(
                "route of {service} set (revision {}), but waiting for the proxies failed: {}",
                put.revision,
                status(s)
            )
        })?
        .into_inner();
    let elapsed = started.elapsed().as_millis();
    let summary = format!(
        "applied by {}/{} proxies in {elapsed} ms",
        w.applied, w.subscribed
    );
    if json {
        let proxy = |p: &pb::ProxyStatus| super::proxies::proxy_json(p);
        output::json(&json!({
            "revision": put.revision,
            "service": service,
            "subscribed": w.subscribed,
            "applied": w.applied,
            "elapsed_ms": elapsed,
            "rejected": w.rejected.iter().map(proxy).collect::<Vec<_>>(),
            "pending": w.pending.iter().map(proxy).collect::<Vec<_>>(),
            "unreachable_nodes": w.unreachable_nodes,
        }));
    } else {
        output::line(&format!(
            "route of {service} set (revision {}); {summary}",
            put.revision
        ));
    }
    let mut problems = Vec::new();
    if !w.rejected.is_empty() {
        let who: Vec<String> = w
            .rejected
            .iter()
            .map(|p| {
                format!(
                    "{} on node {} ({})",
                    p.proxy_id, p.node_id, p.rejected_error
                )
            })
            .collect();
        problems.push(format!("rejected by {}", who.join(", ")));
    }
    if !w.pending.is_empty() {
        let who: Vec<String> = w
            .pending
            .iter()
            .map(|p| format!("{} on node {}", p.proxy_id, p.node_id))
            .collect();
        problems.push(format!(
            "still pending after {} ms: {}",
            wait_ms,
            who.join(", ")
        ));
    }
    if !w.unreachable_nodes.is_empty() {
        let ids: Vec<String> = w.unreachable_nodes.iter().map(u64::to_string).collect();
        problems.push(format!(
            "nodes {} did not answer (their proxies are not counted)",
            ids.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "route of {service} not applied everywhere: {}",
            problems.join("; ")
        ))
    }
}

/// The route the flags (or the file) describe.
fn route_of(args: &SetArgs) -> Result<pb::Route, String> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--file: cannot read {}: {e}", path.display()))?;
        return RouteFile::parse(&text)
            .and_then(|f| f.into_route(&args.name))
            .map_err(|e| format!("--file {}: {e}", path.display()));
    }
    let targets = args
        .split
        .iter()
        .map(|(value, weight)| {
            let weight = weight.parse().map_err(|_| {
                format!("--split: {weight:?} (for {value}) is not a weight 0-10000")
            })?;
            Ok(pb::WeightedTarget {
                subset: [(args.subset_key.clone(), value.clone())].into(),
                weight,
            })
        })
        .collect::<Result<_, String>>()?;
    let retry = match args.retries {
        None => None,
        Some(attempts) => Some(pb::RetryPolicy {
            attempts,
            per_try_timeout_ms: args
                .per_try_timeout
                .map(|d| parse::millis("--per-try-timeout", d))
                .transpose()?
                .unwrap_or(0),
            retry_on: args
                .retry_on
                .iter()
                .map(|w| route_file::retry_on(w).map_err(|e| format!("--retry-on: {e}")))
                .collect::<Result<_, _>>()?,
            retry_non_idempotent: args.retry_non_idempotent,
        }),
    };
    let load_balancer = match (args.lb, &args.hash_header) {
        (None, None) => None,
        (lb, header) => Some(pb::LoadBalancer {
            policy: match lb {
                None | Some(LbArg::P2c) => pb::LoadBalancerPolicy::P2cEwma,
                Some(LbArg::RoundRobin) => pb::LoadBalancerPolicy::RoundRobin,
                Some(LbArg::LeastRequest) => pb::LoadBalancerPolicy::LeastRequest,
                Some(LbArg::RingHash) => pb::LoadBalancerPolicy::RingHash,
            } as i32,
            hash_header: header.clone().unwrap_or_default(),
        }),
    };
    Ok(pb::Route {
        service: args.name.clone(),
        rules: vec![pb::RouteRule {
            targets,
            timeout_ms: args
                .timeout
                .map(|d| parse::millis("--timeout", d))
                .transpose()?
                .unwrap_or(0),
            retry,
            ..Default::default()
        }],
        load_balancer,
        ..Default::default()
    })
}

fn print_route(route: &pb::Route) {
    output::line(&format!(
        "route of {} (revision {}); load balancer {}",
        route.service,
        route.mod_revision,
        lb_of(route)
    ));
    let rows: Vec<Vec<String>> = route
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            vec![
                if rule.name.is_empty() {
                    i.to_string()
                } else {
                    format!("{i} {}", rule.name)
                },
                match_of(rule.r#match.as_ref()),
                targets_of(rule),
                format!("{}ms", rule.timeout_ms),
                rule.retry
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |r| format!("{}x", r.attempts)),
            ]
        })
        .collect();
    output::table(&["RULE", "MATCH", "TARGETS", "TIMEOUT", "RETRIES"], &rows);
}

/// `version=v1 90, version=v2 10`.
fn targets_of(rule: &pb::RouteRule) -> String {
    rule.targets
        .iter()
        .map(|t| {
            let mut subset: Vec<String> =
                t.subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
            subset.sort();
            format!("{} {}", subset.join(","), t.weight)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn match_of(m: Option<&pb::RouteMatch>) -> String {
    let Some(m) = m else {
        return "*".into();
    };
    let mut parts = Vec::new();
    if !m.method.is_empty() {
        parts.push(m.method.clone());
    }
    if !m.path_prefix.is_empty() {
        parts.push(format!("{}*", m.path_prefix));
    }
    if !m.path_exact.is_empty() {
        parts.push(m.path_exact.clone());
    }
    for h in &m.headers {
        use pb::header_match::Value;
        parts.push(match &h.value {
            Some(Value::Exact(v)) => format!("{}={v}", h.name),
            Some(Value::Prefix(v)) => format!("{}={v}*", h.name),
            _ => format!("{} present", h.name),
        });
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" ")
    }
}

fn lb_of(route: &pb::Route) -> String {
    let lb = route.load_balancer.clone().unwrap_or_default();
    let word = route_file::POLICIES
        .iter()
        .find(|(_, p)| *p as i32 == lb.policy)
        .map_or("p2c", |(w, _)| *w);
    if lb.hash_header.is_empty() {
        word.to_owned()
    } else {
        format!("{word} on {}", lb.hash_header)
    }
}
