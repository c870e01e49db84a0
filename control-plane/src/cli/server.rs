//! `meridian dev` and `meridian server`: run a node until SIGTERM or Ctrl-C.
//!
//! Telemetry is set up here, and only here: the client subcommands start no exporter. The
//! `--otlp-endpoint`/`--otel-service-name`/`--trace-sampling` flags override the `OTEL_*`
//! variables; the exporters are flushed and stopped after the node has stopped.

use std::path::PathBuf;

use meridian_telemetry::{Telemetry, TelemetryArgs};

use crate::node::{Node, NodeConfig};

use super::tls::TlsArgs;
use super::{DevArgs, ServerArgs, output, parse};

pub(super) async fn dev(args: DevArgs, tls: &TlsArgs) -> Result<(), String> {
    let tls = tls.node(args.listeners.require_client_cert)?;
    // The temporary directory lives (and is removed) with this function.
    let (data_dir, _temp): (PathBuf, Option<tempfile::TempDir>) = match args.data_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("meridian-dev-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary data dir: {e}"))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let config = NodeConfig {
        id: 1,
        data_dir,
        listen: args.listeners.listen,
        dns_listen: args.listeners.dns_listen,
        dns_recursor: args.listeners.dns_recursor,
        dns_max_answers: args.listeners.dns_max_answers,
        dns_allow: args.listeners.dns_allow.clone(),
        admin_listen: args.listeners.admin_listen,
        peers: vec![(1, args.listeners.listen.to_string())],
        snapshot_every: NodeConfig::DEFAULT_SNAPSHOT_EVERY,
        join: false,
        access: args.access.config(),
        tls,
    };
    run(config, &args.telemetry, true).await
}

pub(super) async fn server(args: ServerArgs, tls: &TlsArgs) -> Result<(), String> {
    let tls = tls.node(args.listeners.require_client_cert)?;
    let mut peers = parse::peers(&args.peers)?;
    if peers.is_empty() {
        peers.push((args.id, args.listeners.listen.to_string()));
    }
    let config = NodeConfig {
        id: args.id,
        data_dir: args.data_dir,
        listen: args.listeners.listen,
        dns_listen: args.listeners.dns_listen,
        dns_recursor: args.listeners.dns_recursor,
        dns_max_answers: args.listeners.dns_max_answers,
        dns_allow: args.listeners.dns_allow.clone(),
        admin_listen: args.listeners.admin_listen,
        peers,
        snapshot_every: args.snapshot_every,
        join: args.join,
        access: args.access.config(),
        tls,
    };
    run(config, &args.telemetry, false).await
}

async fn run(config: NodeConfig, flags: &TelemetryArgs, dev: bool) -> Result<(), String> {
    let telemetry = Telemetry::new(flags.config(
        super::SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        &config.instance_id(),
    ))
    .map_err(|e| format!("telemetry: {e}"))?;
    telemetry
        .install(DEFAULT_LOG_FILTER)
        .map_err(|e| format!("telemetry: {e}"))?;
    if let Some(endpoint) = &telemetry.config().otlp_endpoint {
        tracing::info!(
            %endpoint,
            service = %telemetry.config().service_name,
            "exporting traces and metrics over OTLP"
        );
    }
    let result = serve(config, &telemetry, dev).await;
    // Whatever ended the node, what it recorded last is exported (bounded by the exporter's
    // timeout) before the process exits.
    telemetry.shutdown().await;
    result
}

async fn serve(config: NodeConfig, telemetry: &Telemetry, dev: bool) -> Result<(), String> {
    let data_dir = config.data_dir.clone();
    // What a client needs to say to reach this node, for the banner.
    let client_flags = match &config.tls {
        Some(tls) => format!(
            "--addr https://{} --tls-ca {}{} ",
            config.listen,
            tls.files.ca.display(),
            if tls.require_client_cert {
                " --tls-cert CERT --tls-key KEY"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let node = Node::start_with(config, telemetry)
        .await
        .map_err(|e| e.to_string())?;
    if dev {
        output::line(&format!(
            "Meridian dev node: gRPC {scheme}://{}, DNS {}, metrics http://{}/metrics (data in {}). Try: meridian {client_flags}namespace create cafe.local",
            node.api_addr(),
            node.dns_addr(),
            node.admin_addr(),
            data_dir.display()
        ));
    }
    let stop = node.graceful_stop();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        stop.await;
    });
    node.wait().await.map_err(|e| e.to_string())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Logs to stderr; `RUST_LOG` overrides: `info`, raft-rs internals at `warn`.
const DEFAULT_LOG_FILTER: &str = "info,meridian_control_plane::raft::logger=warn";
