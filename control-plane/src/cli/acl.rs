//! `meridian acl token create|list|revoke|whoami`: ACL tokens (see docs/security.md).

use clap::{Args, Subcommand};
use meridian_proto::v1 as pb;
use meridian_proto::v1::acl_client::AclClient;
use serde_json::json;

use super::client::{Channel, status};
use super::output;

/// `meridian acl`.
#[derive(Debug, Subcommand)]
pub(super) enum AclCommand {
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `meridian acl token`.
#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token and print its secret (shown this once only).
    Create(CreateArgs),
    /// List tokens (accessors and policies; never secrets).
    List,
    /// Revoke a token by accessor: it stops working on each node as the node applies this.
    Revoke {
        /// The token's accessor (from `acl token list`).
        accessor: String,
    },
    /// Show the token this command runs with (--token or MERIDIAN_TOKEN).
    Whoami,
}

/// `acl token create`.
#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// Who or what holds the token.
    #[arg(long, default_value = "")]
    description: String,
    /// Everything: ACLs, cluster membership, every namespace.
    #[arg(long)]
    admin: bool,
    /// A grant, KIND:NAME=ACCESS, repeatable. KIND: namespace, namespace-prefix, service,
    /// service-prefix; ACCESS: subscribe, read, write. E.g. namespace:cafe.local=write,
    /// service:orders.cafe.local=subscribe, service-prefix:=read (every service).
    #[arg(long = "rule", value_name = "KIND:NAME=ACCESS", value_parser = parse_rule)]
    rules: Vec<pb::AclRule>,
}

type Outcome = Result<(), String>;

/// Runs an ACL subcommand against the server behind `channel`.
pub(super) async fn run(channel: Channel, json: bool, command: AclCommand) -> Outcome {
    let mut client = AclClient::new(channel);
    let AclCommand::Token(command) = command;
    match command {
        TokenCommand::Create(args) => {
            if !args.admin && args.rules.is_empty() {
                return Err("give --admin or at least one --rule".into());
            }
            let created = client
                .create_token(pb::CreateTokenRequest {
                    description: args.description,
                    policy: Some(pb::AclPolicy {
                        admin: args.admin,
                        rules: args.rules,
                    }),
                })
                .await
                .map_err(status)?
                .into_inner();
            let token = created.token.unwrap_or_default();
            if json {
                output::json(&json!({
                    "accessor": token.accessor,
                    "secret": created.secret,
                    "policy": policy_text(token.policy.as_ref()),
                    "revision": created.revision,
                }));
            } else {
                output::table(
                    &["ACCESSOR", "SECRET", "POLICY"],
                    &[vec![
                        token.accessor,
                        created.secret,
                        policy_text(token.policy.as_ref()),
                    ]],
                );
                output::line("The secret is shown only now: pass it as --token or MERIDIAN_TOKEN.");
            }
        }
        TokenCommand::List => {
            let listed = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_tokens(json, &listed.tokens);
        }
        TokenCommand::Revoke { accessor } => {
            let revoked = client
                .revoke_token(pb::RevokeTokenRequest { accessor })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                output::json(&json!({ "revision": revoked.revision }));
            } else {
                output::line(&format!("revoked at revision {}", revoked.revision));
            }
        }
        TokenCommand::Whoami => {
            let me = client
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_tokens(json, &me.token.into_iter().collect::<Vec<_>>());
        }
    }
    Ok(())
}

fn print_tokens(json: bool, tokens: &[pb::AclToken]) {
    if json {
        let list: Vec<_> = tokens
            .iter()
            .map(|t| {
                json!({
                    "accessor": t.accessor,
                    "description": t.description,
                    "policy": policy_text(t.policy.as_ref()),
                    "create_revision": t.create_revision,
                })
            })
            .collect();
        output::json(&json!(list));
        return;
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.accessor.clone(),
                t.description.clone(),
                policy_text(t.policy.as_ref()),
            ]
        })
        .collect();
    output::table(&["ACCESSOR", "DESCRIPTION", "POLICY"], &rows);
}

/// `admin`, or the rules as `--rule` spells them.
fn policy_text(policy: Option<&pb::AclPolicy>) -> String {
    let Some(policy) = policy else {
        return String::new();
    };
    if policy.admin {
        return "admin".into();
    }
    policy
        .rules
        .iter()
        .map(|rule| {
            let service = rule.resource == pb::AclResource::Service as i32;
            let (kind, name) = match &rule.name {
                Some(pb::acl_rule::Name::Exact(name)) => {
                    (if service { "service" } else { "namespace" }, name.as_str())
                }
                Some(pb::acl_rule::Name::Prefix(p)) => (
                    if service {
                        "service-prefix"
                    } else {
                        "namespace-prefix"
                    },
                    p.as_str(),
                ),
                None => ("?", ""),
            };
            let access = match pb::AclAccess::try_from(rule.access) {
                Ok(pb::AclAccess::Subscribe) => "subscribe",
                Ok(pb::AclAccess::Read) => "read",
                Ok(pb::AclAccess::Write) => "write",
                _ => "?",
            };
            format!("{kind}:{name}={access}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `KIND:NAME=ACCESS`.
fn parse_rule(text: &str) -> Result<pb::AclRule, String> {
    let (kind, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not KIND:NAME=ACCESS"))?;
    let (name, access) = rest
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?} is not KIND:NAME=ACCESS"))?;
    let (resource, name) = match kind {
        "namespace" => (
            pb::AclResource::Namespace,
            pb::acl_rule::Name::Exact(name.into()),
        ),
        "namespace-prefix" => (
            pb::AclResource::Namespace,
            pb::acl_rule::Name::Prefix(name.into()),
        ),
        "service" => (
            pb::AclResource::Service,
            pb::acl_rule::Name::Exact(name.into()),
        ),
        "service-prefix" => (
            pb::AclResource::Service,
            pb::acl_rule::Name::Prefix(name.into()),
        ),
        other => {
            return Err(format!(
                "{other:?} is not namespace, namespace-prefix, service or service-prefix"
            ));
        }
    };
    let access = match access {
        "subscribe" => pb::AclAccess::Subscribe,
        "read" => pb::AclAccess::Read,
        "write" => pb::AclAccess::Write,
        other => return Err(format!("{other:?} is not subscribe, read or write")),
    };
    Ok(pb::AclRule {
        resource: resource.into(),
        name: Some(name),
        access: access.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_the_same_way() {
        for text in [
            "namespace:cafe.local=write",
            "namespace-prefix:cafe=read",
            "service:orders.cafe.local=subscribe",
            "service-prefix:=read",
        ] {
            let rule = parse_rule(text).unwrap();
            let policy = pb::AclPolicy {
                admin: false,
                rules: vec![rule],
            };
            assert_eq!(policy_text(Some(&policy)), text);
        }
        for bad in [
            "cafe.local=write",
            "namespace:cafe.local",
            "pod:x=read",
            "service:x=all",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }
}
