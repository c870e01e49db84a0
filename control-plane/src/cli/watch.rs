//! `meridian watch`: prints a watch stream as it comes, one line per change (or per full
//! state), or one JSON object per line with `--json`.

use super::client::Channel;
use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use pb::watch_response::Body;
use serde_json::json;

use super::client::{attributes_of, endpoint_of, health_word, instance_json, status};
use super::{WatchArgs, output};

pub(super) async fn watch(
    mut client: RegistryClient<Channel>,
    json: bool,
    args: WatchArgs,
) -> Result<(), String> {
    let mut stream = client
        .watch(pb::WatchRequest {
            service: args.service.unwrap_or_default(),
            namespace: args.namespace.unwrap_or_default(),
            start_revision: args.from,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut last = args.from;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(format!(
                    "the server ended the stream; resume with --from {last}"
                ));
            }
            Err(e) => return Err(format!("{}; resume with --from {last}", status(e))),
        };
        print(json, &message);
        last = message.revision;
    }
}

fn print(json: bool, message: &pb::WatchResponse) {
    let revision = message.revision;
    match &message.body {
        Some(Body::Snapshot(s)) => {
            let reason = pb::SnapshotReason::try_from(s.reason)
                .unwrap_or(pb::SnapshotReason::Unspecified)
                .as_str_name()
                .trim_start_matches("SNAPSHOT_REASON_")
                .to_ascii_lowercase();
            if json {
                output::json(&json!({
                    "revision": revision, "type": "snapshot", "reason": reason,
                    "complete": s.complete,
                    "services": s.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    "instances": s.instances.iter().map(instance_json).collect::<Vec<_>>(),
                }));
                return;
            }
            output::line(&format!(
                "revision {revision}: full state ({reason}): {} service(s), {} instance(s){}",
                s.services.len(),
                s.instances.len(),
                if s.complete { "" } else { ", more follows" }
            ));
            for i in &s.instances {
                output::line(&format!("  {}", describe(i)));
            }
        }
        Some(Body::Events(e)) => {
            for event in &e.events {
                let kind = pb::WatchEventType::try_from(event.r#type)
                    .unwrap_or(pb::WatchEventType::Unspecified)
                    .as_str_name()
                    .trim_start_matches("WATCH_EVENT_TYPE_")
                    .to_ascii_lowercase();
                if json {
                    // Every line names its service, whether it is about the service or one
                    // of its instances.
                    let service = event
                        .service
                        .as_ref()
                        .map(|s| &s.name)
                        .or(event.instance.as_ref().map(|i| &i.service));
                    output::json(&json!({
                        "revision": event.revision, "type": kind,
                        "service": service,
                        "instance": event.instance.as_ref().map(instance_json),
                    }));
                    continue;
                }
                let what = match (&event.instance, &event.service) {
                    (Some(i), _) => describe(i),
                    (None, Some(s)) => s.name.clone(),
                    (None, None) => String::new(),
                };
                output::line(&format!(
                    "revision {}: {} {what}",
                    event.revision,
                    kind.replace('_', " ")
                ));
            }
        }
        None => {}
    }
}

/// `i-1.orders.cafe.local 127.0.0.1:8081 healthy version=v1`
fn describe(i: &pb::Instance) -> String {
    format!(
        "{}.{} {} {} {}",
        i.id,
        i.service,
        endpoint_of(i),
        health_word(i.health),
        attributes_of(i)
    )
    .trim_end()
    .to_owned()
}
