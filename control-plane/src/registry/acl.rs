//! Access control: tokens, the policies they carry, and the replicated table of them.
//!
//! A token is known by two strings. Its *accessor* is a public id (listing, revoking, logs);
//! its *secret* is what a client sends. Only a SHA-256 of the secret is replicated and
//! stored — hashing happens at the API edge, so a secret never enters the Raft log, a
//! snapshot or a data dir. Secrets are 32 random bytes, so a fast hash is enough: there is
//! nothing to brute-force.
//!
//! A policy is `admin` (everything, including ACLs and cluster membership) or a list of
//! rules, each granting an [`Access`] level on namespaces or services matched by exact name
//! or by prefix (Consul's model). A namespace rule covers every service in the namespaces it
//! matches. Levels are ordered: `subscribe` (a proxy's Discovery stream) < `read` (discover,
//! watch, DNS-like lookups, routes) < `write` (register, deregister, health, routes,
//! services; creating and deleting the namespace itself for a namespace rule).

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::error::Kind;
use super::names::{self, MAX_NAME, ServiceName};

/// At most this many rules in one policy.
pub const MAX_RULES: usize = 100;

/// What a rule allows, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Follow services over the Discovery stream (what a proxy needs).
    Subscribe,
    /// Everything `Subscribe` allows, and reading: discover, watch, get and list.
    Read,
    /// Everything `Read` allows, and changing: register, deregister, health, routes,
    /// creating and deleting services (and, on a namespace rule, the namespace).
    Write,
}

/// What a rule's name is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Namespace names; a match covers the namespace's services too.
    Namespace,
    /// Full service names (`orders.cafe.local`).
    Service,
}

/// How a rule's name matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameMatch {
    /// This name only.
    Exact(String),
    /// Every name that starts with this text (the empty prefix matches every name).
    Prefix(String),
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// What the name is matched against.
    pub resource: Resource,
    /// The name or prefix.
    pub name: NameMatch,
    /// What is allowed there.
    pub access: Access,
}

/// What a token may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Everything, including ACL management and cluster membership.
    pub admin: bool,
    /// Grants on namespaces and services.
    pub rules: Vec<Rule>,
}

/// A token as the API creates it (the accessor and secret are drawn at the API edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// Public id: 32 lowercase hex digits.
    pub accessor: String,
    /// SHA-256 of the secret: 64 lowercase hex digits.
    pub secret_hash: String,
    /// Free text (who or what holds it).
    pub description: String,
    /// What it may do.
    pub policy: Policy,
}

/// A token in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public id.
    pub accessor: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// Free text.
    pub description: String,
    /// What it may do.
    pub policy: Policy,
    /// The revision that created it.
    pub create_revision: u64,
}

/// Every token, by accessor and by secret hash. Ordered maps, so snapshots stay
/// byte-identical across replicas; persistent ones, so publishing the registry after each
/// batch copies no token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    tokens: OrdMap<String, Arc<Token>>,
    /// Secret hash → accessor.
    by_secret: OrdMap<String, String>,
}

// === impl Rule ===

impl Rule {
    fn covers_namespace(&self, namespace: &str) -> bool {
        self.resource == Resource::Namespace && self.name.matches(namespace)
    }

    fn covers_service(&self, service: &ServiceName) -> bool {
        match self.resource {
            Resource::Namespace => self.name.matches(&service.namespace),
            Resource::Service => match &self.name {
                NameMatch::Exact(name) => name
                    .strip_prefix(service.service.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|namespace| namespace == service.namespace),
                NameMatch::Prefix(prefix) => full_name_starts_with(service, prefix),
            },
        }
    }

    fn validate(&self, field: &str) -> Result<(), RegistryError> {
        match (&self.name, self.resource) {
            (NameMatch::Exact(name), Resource::Namespace) => {
                names::validate_domain(&format!("{field}.name"), name)
            }
            (NameMatch::Exact(name), Resource::Service) => {
                ServiceName::parse(&format!("{field}.name"), name).map(drop)
            }
            (NameMatch::Prefix(prefix), _) => validate_prefix(&format!("{field}.prefix"), prefix),
        }
    }
}

/// Whether `service.namespace` starts with `prefix`, without building the full name.
fn full_name_starts_with(service: &ServiceName, prefix: &str) -> bool {
    match prefix.strip_prefix(service.service.as_str()) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|rest| service.namespace.starts_with(rest)),
        None => service.service.starts_with(prefix),
    }
}

/// A prefix is a part of a name: bounded, and only the characters names may hold.
fn validate_prefix(field: &str, prefix: &str) -> Result<(), RegistryError> {
    if prefix.len() > MAX_NAME {
        return Err(RegistryError::invalid(
            field,
            format!("longer than {MAX_NAME} bytes"),
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(RegistryError::invalid(
            field,
            format!("{prefix:?} contains {c:?}; only a-z, 0-9, '-' and '.' are allowed"),
        ));
    }
    Ok(())
}

// === impl NameMatch ===

impl NameMatch {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

// === impl Policy ===

impl Policy {
    /// Whether this policy allows `access` on `service`.
    pub fn allows_service(&self, service: &ServiceName, access: Access) -> bool {
        self.admin
            || self
                .rules
                .iter()
                .any(|rule| rule.access >= access && rule.covers_service(service))
    }

    /// Whether this policy allows `access` on the namespace itself (only namespace rules
    /// grant that: a rule on one service says nothing about its neighbours).
    pub fn allows_namespace(&self, namespace: &str, access: Access) -> bool {
        self.admin
            || self
                .rules
                .iter()
                .any(|rule| rule.access >= access && rule.covers_namespace(namespace))
    }

    /// Whether anything at all in `namespace` is visible: a namespace rule on it, or a
    /// service rule that could match a service in it (for filtering lists).
    pub fn sees_namespace(&self, namespace: &str, access: Access) -> bool {
        self.allows_namespace(namespace, access)
            || self.rules.iter().any(|rule| {
                rule.access >= access
                    && rule.resource == Resource::Service
                    && match &rule.name {
                        NameMatch::Exact(name) => {
                            name.split_once('.').is_some_and(|(_, ns)| ns == namespace)
                        }
                        // `orders.ca` may match `orders.cafe.local`: a prefix can reach into
                        // any namespace, so it makes every namespace visible as a list entry.
                        NameMatch::Prefix(_) => true,
                    }
            })
    }

    /// Checks every rule; errors name the field, e.g. `policy.rules[2].name`.
    pub fn validate(&self, field: &str) -> Result<(), RegistryError> {
        if self.rules.len() > MAX_RULES {
            return Err(RegistryError::invalid(
                format!("{field}.rules"),
                format!("{} rules; at most {MAX_RULES}", self.rules.len()),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("{field}.rules[{i}]"))?;
        }
        Ok(())
    }
}

// === impl TokenSpec ===

impl TokenSpec {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), RegistryError> {
        validate_hex("token.accessor", &self.accessor, 32)?;
        validate_hex("token.secret_hash", &self.secret_hash, 64)?;
        names::validate_description("token.description", &self.description)?;
        self.policy.validate("token.policy")
    }
}

fn validate_hex(field: &str, text: &str, len: usize) -> Result<(), RegistryError> {
    if text.len() != len || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(RegistryError::invalid(
            field,
            format!("must be {len} lowercase hex digits"),
        ));
    }
    Ok(())
}

// === impl Acl ===

impl Acl {
    /// Whether no token exists (a cluster not yet bootstrapped).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose secret hashes to `secret_hash`.
    pub fn by_secret_hash(&self, secret_hash: &str) -> Option<&Arc<Token>> {
        self.tokens.get(self.by_secret.get(secret_hash)?)
    }

    /// The token with this accessor.
    pub fn by_accessor(&self, accessor: &str) -> Option<&Arc<Token>> {
        self.tokens.get(accessor)
    }

    /// Every token, by accessor.
    pub fn tokens(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.values()
    }

    /// The first token: only while there is none (a second bootstrap is refused, so a
    /// leaked bootstrap secret cannot mint a new admin once the cluster is set up).
    pub(crate) fn bootstrap(
        &mut self,
        index: u64,
        spec: &TokenSpec,
    ) -> Result<Arc<Token>, RegistryError> {
        if !self.is_empty() {
            return Err(RegistryError::FailedPrecondition(
                "ACLs are bootstrapped already".into(),
            ));
        }
        if !spec.policy.admin {
            return Err(RegistryError::invalid(
                "token.policy.admin",
                "the bootstrap token must be an admin token",
            ));
        }
        self.create(index, spec)
    }

    /// Adds a token.
    pub(crate) fn create(
        &mut self,
        index: u64,
        spec: &TokenSpec,
    ) -> Result<Arc<Token>, RegistryError> {
        if self.tokens.contains_key(&spec.accessor)
            || self.by_secret.contains_key(&spec.secret_hash)
        {
            return Err(RegistryError::AlreadyExists {
                kind: Kind::Token,
                name: spec.accessor.clone(),
            });
        }
        let token = Arc::new(Token {
            accessor: spec.accessor.clone(),
            secret_hash: spec.secret_hash.clone(),
            description: spec.description.clone(),
            policy: spec.policy.clone(),
            create_revision: index,
        });
        self.by_secret
            .insert(spec.secret_hash.clone(), spec.accessor.clone());
        self.tokens
            .insert(spec.accessor.clone(), Arc::clone(&token));
        Ok(token)
    }

    /// Removes a token: its secret stops working on each node as it applies this.
    pub(crate) fn revoke(&mut self, accessor: &str) -> Result<Arc<Token>, RegistryError> {
        let token = self
            .tokens
            .remove(accessor)
            .ok_or_else(|| RegistryError::NotFound {
                kind: Kind::Token,
                name: accessor.to_owned(),
            })?;
        self.by_secret.remove(&token.secret_hash);
        Ok(token)
    }
}
