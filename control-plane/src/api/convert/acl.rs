//! ACL tokens and policies: protobuf ↔ registry.

use meridian_proto::v1 as pb;

use super::Result;
use crate::registry::{Access, NameMatch, Policy, RegistryError, Resource, Rule, Token};

/// A policy from the API; errors name the field under `field` (e.g. `policy.rules[1].access`).
pub(crate) fn policy(field: &str, policy: Option<pb::AclPolicy>) -> Result<Policy> {
    let policy = policy.ok_or_else(|| RegistryError::invalid(field, "is required"))?;
    let rules = policy
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, rule)| self::rule(&format!("{field}.rules[{i}]"), rule))
        .collect::<Result<Vec<_>>>()?;
    let policy = Policy {
        admin: policy.admin,
        rules,
    };
    policy.validate(field)?;
    Ok(policy)
}

fn rule(field: &str, rule: pb::AclRule) -> Result<Rule> {
    let resource = match pb::AclResource::try_from(rule.resource) {
        Ok(pb::AclResource::Namespace) => Resource::Namespace,
        Ok(pb::AclResource::Service) => Resource::Service,
        _ => {
            return Err(RegistryError::invalid(
                format!("{field}.resource"),
                format!("{} is not NAMESPACE or SERVICE", rule.resource),
            ));
        }
    };
    let access = match pb::AclAccess::try_from(rule.access) {
        Ok(pb::AclAccess::Subscribe) => Access::Subscribe,
        Ok(pb::AclAccess::Read) => Access::Read,
        Ok(pb::AclAccess::Write) => Access::Write,
        _ => {
            return Err(RegistryError::invalid(
                format!("{field}.access"),
                format!("{} is not SUBSCRIBE, READ or WRITE", rule.access),
            ));
        }
    };
    let name = match rule.name {
        Some(pb::acl_rule::Name::Exact(name)) => NameMatch::Exact(super::canonical(&name)),
        Some(pb::acl_rule::Name::Prefix(prefix)) => NameMatch::Prefix(prefix.to_ascii_lowercase()),
        None => {
            return Err(RegistryError::invalid(
                format!("{field}.name"),
                "exact or prefix is required",
            ));
        }
    };
    Ok(Rule {
        resource,
        name,
        access,
    })
}

/// A token for the API (never its secret or its hash).
pub(crate) fn token_pb(token: &Token) -> pb::AclToken {
    pb::AclToken {
        accessor: token.accessor.clone(),
        description: token.description.clone(),
        policy: Some(policy_pb(&token.policy)),
        create_revision: token.create_revision,
    }
}

fn policy_pb(policy: &Policy) -> pb::AclPolicy {
    pb::AclPolicy {
        admin: policy.admin,
        rules: policy
            .rules
            .iter()
            .map(|rule| pb::AclRule {
                resource: match rule.resource {
                    Resource::Namespace => pb::AclResource::Namespace,
                    Resource::Service => pb::AclResource::Service,
                }
                .into(),
                name: Some(match &rule.name {
                    NameMatch::Exact(name) => pb::acl_rule::Name::Exact(name.clone()),
                    NameMatch::Prefix(prefix) => pb::acl_rule::Name::Prefix(prefix.clone()),
                }),
                access: match rule.access {
                    Access::Subscribe => pb::AclAccess::Subscribe,
                    Access::Read => pb::AclAccess::Read,
                    Access::Write => pb::AclAccess::Write,
                }
                .into(),
            })
            .collect(),
    }
}
