//! `meridian dev` and `meridian server`: run a node until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use crate::node::{Node, NodeConfig};

use super::{DevArgs, ServerArgs, output, parse};

pub(super) async fn dev(args: DevArgs) -> Result<(), String> {
    init_tracing();
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
        admin_listen: args.listeners.admin_listen,
        peers: vec![(1, args.listeners.listen.to_string())],
        snapshot_every: NodeConfig::DEFAULT_SNAPSHOT_EVERY,
        join: false,
    };
    run(config, true).await
}

pub(super) async fn server(args: ServerArgs) -> Result<(), String> {
    init_tracing();
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
        admin_listen: args.listeners.admin_listen,
        peers,
        snapshot_every: args.snapshot_every,
        join: args.join,
    };
    run(config, false).await
}

async fn run(config: NodeConfig, dev: bool) -> Result<(), String> {
    let data_dir = config.data_dir.clone();
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    if dev {
        output::line(&format!(
            "Meridian dev node: gRPC http://{} (data in {}). Try: meridian namespace create cafe.local",
            node.api_addr(),
            data_dir.display()
        ));
    }
    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
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

/// Logs to stderr; `RUST_LOG` filters (default `info`, raft-rs internals at `warn`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,meridian_control_plane::raft::logger=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
