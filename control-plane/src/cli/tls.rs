//! TLS on the command line: `--tls-ca`, `--tls-cert` and `--tls-key` (for a node, its listener
//! and peer links; for a client command, its connection), and `meridian tls init`, a
//! development CA and certificates in one command.

use std::path::PathBuf;

use clap::Args;
use meridian_tls::init::{InitOptions, init};
use serde_json::json;

use super::output;

/// `--tls-ca`, `--tls-cert`, `--tls-key`: global, so they read the same on every subcommand.
#[derive(Debug, Args)]
pub(super) struct TlsArgs {
    /// The CA certificate (PEM) that servers' certificates — and on a node, peers' and
    /// clients' — must chain to. With it, client commands connect over TLS.
    #[arg(long, global = true, env = "MERIDIAN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This side's certificate chain (PEM): a node's (dev, server), or a client's when the
    /// cluster runs with --require-client-cert.
    #[arg(long, global = true, env = "MERIDIAN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "MERIDIAN_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

// === impl TlsArgs ===

impl TlsArgs {
    /// For a client command: `None` is plain text.
    pub(super) fn client(&self) -> Result<Option<meridian_tls::ClientTls>, String> {
        meridian_tls::config::client_from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }

    /// For a node: all three flags or none; `--require-client-cert` needs them.
    pub(super) fn node(
        &self,
        require_client_cert: bool,
    ) -> Result<Option<crate::node::NodeTls>, String> {
        let files = meridian_tls::config::files_from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?;
        match files {
            Some(files) => Ok(Some(crate::node::NodeTls {
                files,
                require_client_cert,
            })),
            None if require_client_cert => Err(
                "--require-client-cert needs TLS: give --tls-ca, --tls-cert and --tls-key".into(),
            ),
            None => Ok(None),
        }
    }
}

/// `tls init`.
#[derive(Debug, Args)]
pub(super) struct TlsInitArgs {
    /// Where the files go (created if missing; files already there are kept).
    #[arg(long, default_value = "meridian-tls")]
    dir: PathBuf,
    /// Node ids to issue certificates for: a count (3 = nodes 1-3) or a list (1,2,5).
    #[arg(long, default_value = "1", value_parser = parse_nodes)]
    nodes: NodeIds,
    /// Extra DNS names or IP addresses the node certificates are valid for (repeatable).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Client identities to issue (repeatable; default: admin and proxy).
    #[arg(long = "client")]
    clients: Vec<String>,
}

/// Node ids, as `--nodes` parses them.
#[derive(Debug, Clone)]
pub(super) struct NodeIds(Vec<u64>);

fn parse_nodes(text: &str) -> Result<NodeIds, String> {
    if !text.contains(',')
        && let Ok(count) = text.parse::<u64>()
    {
        if count == 0 || count > 100 {
            return Err(format!("{count} nodes: give 1 to 100"));
        }
        return Ok(NodeIds((1..=count).collect()));
    }
    text.split(',')
        .map(|id| match id.trim().parse::<u64>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(format!("{id:?} is not a node id (1 or more)")),
        })
        .collect::<Result<_, _>>()
        .map(NodeIds)
}

/// Writes the CA and certificates, then says what was written and how to use it.
pub(super) fn run(json: bool, args: TlsInitArgs) -> Result<(), String> {
    let clients = if args.clients.is_empty() {
        vec!["admin".to_owned(), "proxy".to_owned()]
    } else {
        args.clients
    };
    let options = InitOptions {
        nodes: args.nodes.0.clone(),
        names: args.names,
        clients,
    };
    let issued = init(&args.dir, &options).map_err(|e| e.to_string())?;
    if json {
        let files: Vec<_> = issued
            .iter()
            .map(|i| json!({ "path": i.path, "created": i.created }))
            .collect();
        output::json(&json!({ "dir": args.dir, "files": files }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = issued
        .iter()
        .map(|i| {
            vec![
                i.path.display().to_string(),
                if i.created { "created" } else { "kept" }.to_owned(),
            ]
        })
        .collect();
    output::table(&["FILE", ""], &rows);
    let dir = args.dir.display();
    let first = args.nodes.0.first().copied().unwrap_or(1);
    output::line(&format!(
        "\nnode {first}: meridian server --id {first} --tls-cert {dir}/node-{first}.pem \
         --tls-key {dir}/node-{first}-key.pem --tls-ca {dir}/ca.pem ...\n\
         clients: --addr https://HOST:7400 --tls-ca {dir}/ca.pem \
         [--tls-cert {dir}/admin.pem --tls-key {dir}/admin-key.pem]"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_and_counts_parse() {
        assert_eq!(parse_nodes("3").unwrap().0, vec![1, 2, 3]);
        assert_eq!(parse_nodes("1,2,5").unwrap().0, vec![1, 2, 5]);
        assert!(parse_nodes("0").is_err());
        assert!(parse_nodes("1,x").is_err());
    }
}
