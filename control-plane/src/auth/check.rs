//! [`Authorizer`]: from a call's `authorization` metadata to what the caller may do.

use std::sync::Arc;

use http::HeaderMap;
use tonic::Status;

use crate::registry::{Access, Registry, ServiceName, Token};

use super::secret::hash_secret;

/// Whether ACLs are enforced on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorizer {
    enabled: bool,
}

/// Who made a call.
#[derive(Debug, Clone)]
pub enum Caller {
    /// ACLs are off: everyone may do everything.
    Anyone,
    /// The holder of this token.
    Token(Arc<Token>),
}

// === impl Authorizer ===

impl Authorizer {
    /// Enforcing when `enabled`, letting everything through otherwise.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Whether ACLs are enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller of a call with these `headers` (gRPC metadata), by the tokens in
    /// `registry`.
    pub fn caller(&self, registry: &Registry, headers: &HeaderMap) -> Result<Caller, Status> {
        if !self.enabled {
            return Ok(Caller::Anyone);
        }
        let secret = bearer(headers).ok_or_else(unauthenticated)?;
        registry
            .acl()
            .by_secret_hash(&hash_secret(secret))
            .map(|token| Caller::Token(Arc::clone(token)))
            .ok_or_else(unauthenticated)
    }
}

/// The secret of `authorization: Bearer SECRET` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn unauthenticated() -> Status {
    Status::unauthenticated("a valid token is required")
}

/// PERMISSION_DENIED, saying nothing of what was asked for.
pub fn denied() -> Status {
    Status::permission_denied("the token does not allow this")
}

// === impl Caller ===

impl Caller {
    /// Whether `access` on `service` is allowed (for filtering lists).
    pub fn allows_service(&self, service: &ServiceName, access: Access) -> bool {
        match self {
            Self::Anyone => true,
            Self::Token(token) => token.policy.allows_service(service, access),
        }
    }

    /// `access` on `service`, or PERMISSION_DENIED.
    pub fn require_service(&self, service: &ServiceName, access: Access) -> Result<(), Status> {
        if self.allows_service(service, access) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// `access` on the namespace itself, or PERMISSION_DENIED.
    pub fn require_namespace(&self, namespace: &str, access: Access) -> Result<(), Status> {
        match self {
            Self::Anyone => Ok(()),
            Self::Token(token) if token.policy.allows_namespace(namespace, access) => Ok(()),
            Self::Token(_) => Err(denied()),
        }
    }

    /// Admin rights, or PERMISSION_DENIED.
    pub fn require_admin(&self) -> Result<(), Status> {
        match self {
            Self::Anyone => Ok(()),
            Self::Token(token) if token.policy.admin => Ok(()),
            Self::Token(_) => Err(denied()),
        }
    }

    /// Whether a list entry in `namespace` may be shown at all (lists are filtered, not
    /// refused).
    pub fn sees_namespace(&self, namespace: &str, access: Access) -> bool {
        match self {
            Self::Anyone => true,
            Self::Token(token) => token.policy.sees_namespace(namespace, access),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::auth::NewToken;
    use crate::registry::{Command, NameMatch, Policy, Resource, Rule, TokenSpec};

    fn with(secret: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(secret) = secret {
            headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        }
        headers
    }

    #[test]
    fn tokens_are_checked_against_the_registry() {
        let mut registry = Registry::new();
        let cafe_writer = NewToken::generate().unwrap();
        let spec = TokenSpec {
            accessor: cafe_writer.accessor.clone(),
            secret_hash: cafe_writer.secret_hash.clone(),
            description: "cafe".into(),
            policy: Policy {
                admin: false,
                rules: vec![Rule {
                    resource: Resource::Namespace,
                    name: NameMatch::Exact("cafe.local".into()),
                    access: Access::Write,
                }],
            },
        };
        registry.apply(1, &Command::CreateToken(spec)).unwrap();
        let acl = Authorizer::new(true);
        let orders = ServiceName::parse("s", "orders.cafe.local").unwrap();
        let bank = ServiceName::parse("s", "payments.bank.local").unwrap();

        let caller = acl
            .caller(&registry, &with(Some(&cafe_writer.secret)))
            .unwrap();
        caller.require_service(&orders, Access::Write).unwrap();
        let err = caller.require_service(&bank, Access::Read).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(!err.message().contains("bank"), "no detail leaks: {err:?}");
        assert_eq!(
            caller.require_admin().unwrap_err().code(),
            Code::PermissionDenied
        );

        for metadata in [with(None), with(Some("not-a-token")), with(Some(""))] {
            let err = acl.caller(&registry, &metadata).unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
        }
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            acl.caller(&registry, &basic).unwrap_err().code(),
            Code::Unauthenticated
        );

        // Off: anyone may do anything, whatever they send.
        let open = Authorizer::new(false)
            .caller(&registry, &with(None))
            .unwrap();
        open.require_admin().unwrap();
    }
}
