//! `meridian proxies`: the proxies connected to the cluster and the config version each runs.

use super::client::Channel;
use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use serde_json::{Value, json};

use super::client::status;
use super::output;

/// Lists every node's proxies (or only those of the node at --addr with `local_only`).
pub(super) async fn run(channel: Channel, json: bool, local_only: bool) -> Result<(), String> {
    let r = DiscoveryClient::new(channel)
        .list_proxies(pb::ListProxiesRequest { local_only })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        output::json(&json!({
            "proxies": r.proxies.iter().map(proxy_json).collect::<Vec<_>>(),
            "unreachable_nodes": r.unreachable_nodes,
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .proxies
        .iter()
        .map(|p| {
            vec![
                p.proxy_id.clone(),
                if p.service_name.is_empty() {
                    "-".into()
                } else {
                    p.service_name.clone()
                },
                p.node_id.to_string(),
                p.services.join(","),
                format!("{}/{}", p.acked_version, p.sent_version),
                if p.rejected_version == 0 {
                    "-".into()
                } else {
                    format!("{}: {}", p.rejected_version, p.rejected_error)
                },
            ]
        })
        .collect();
    output::table(
        &[
            "PROXY",
            "SERVICE",
            "NODE",
            "SUBSCRIBED",
            "ACKED/SENT",
            "REJECTED",
        ],
        &rows,
    );
    if !r.unreachable_nodes.is_empty() {
        let ids: Vec<String> = r.unreachable_nodes.iter().map(u64::to_string).collect();
        output::line(&format!(
            "nodes {} did not answer; their proxies are missing",
            ids.join(", ")
        ));
    }
    Ok(())
}

/// One proxy as JSON (also used by `route set --wait --json`).
pub(super) fn proxy_json(p: &pb::ProxyStatus) -> Value {
    json!({
        "proxy_id": p.proxy_id, "service_name": p.service_name, "build": p.build,
        "node_id": p.node_id, "remote_address": p.remote_address,
        "connected_at_unix_ms": p.connected_at_unix_ms, "services": p.services,
        "sent_version": p.sent_version, "acked_version": p.acked_version,
        "rejected_version": p.rejected_version, "rejected_error": p.rejected_error,
    })
}
