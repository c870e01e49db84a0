//! `--acl-bootstrap-token`: the first admin token, installed once for the whole cluster.
//!
//! Every node started with the flag proposes the same token (its accessor is derived from the
//! secret) until the registry holds a token; the state machine accepts the first proposal and
//! refuses the rest, so several nodes racing after a fresh start install exactly one. Once any
//! token exists — later restarts, or a cluster bootstrapped long ago — nothing is proposed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registry::{Command, Policy, RegistryError, TokenSpec};
use crate::replica::{Replica, ReplicaError};

use super::secret::hash_secret;

/// Between two attempts while no leader takes the write.
const RETRY: Duration = Duration::from_millis(500);

/// The bootstrap token for `secret`: admin, same accessor on every node.
pub fn bootstrap_spec(secret: &str) -> TokenSpec {
    let secret_hash = hash_secret(secret);
    TokenSpec {
        // A hash of the hash: public, stable, and says nothing usable about the secret.
        accessor: hash_secret(&secret_hash)[..32].to_owned(),
        secret_hash,
        description: "bootstrap token (--acl-bootstrap-token)".into(),
        policy: Policy {
            admin: true,
            rules: Vec::new(),
        },
    }
}

/// Proposes the bootstrap token until the registry holds a token, or `shutdown`.
pub async fn run(replica: Replica, secret: String, shutdown: CancellationToken) {
    let spec = bootstrap_spec(&secret);
    drop(secret);
    let mut views = replica.subscribe();
    loop {
        if !views.borrow_and_update().registry.acl().is_empty() {
            return;
        }
        let attempt = replica.write(Command::AclBootstrap(spec.clone()));
        let done = tokio::select! {
            () = shutdown.cancelled() => return,
            result = attempt => match result {
                Ok(_) => {
                    tracing::info!(accessor = %spec.accessor, "ACL bootstrap token installed");
                    true
                }
                // Another node's proposal won: the cluster is bootstrapped.
                Err(ReplicaError::Registry(RegistryError::FailedPrecondition(_))) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "ACL bootstrap not written yet; retrying");
                    false
                }
            },
        };
        if done {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Outcome, Registry};

    #[test]
    fn every_node_proposes_the_same_valid_admin_token_and_only_one_lands() {
        let a = bootstrap_spec("s3cret-from-the-operator");
        assert_eq!(a, bootstrap_spec("s3cret-from-the-operator"));
        assert_ne!(a.accessor, bootstrap_spec("another").accessor);
        a.validate().unwrap();
        assert!(a.policy.admin);
        assert!(!a.accessor.contains("s3cret") && !a.secret_hash.contains("s3cret"));

        let mut registry = Registry::new();
        let Outcome::Token(token) = registry
            .apply(1, &Command::AclBootstrap(a.clone()))
            .unwrap()
        else {
            panic!("not a token");
        };
        assert_eq!(token.accessor, a.accessor);
        // A second node's identical proposal is refused, not duplicated.
        let err = registry.apply(2, &Command::AclBootstrap(a)).unwrap_err();
        assert!(matches!(err, RegistryError::FailedPrecondition(_)), "{err}");
        assert_eq!(registry.acl().tokens().count(), 1);
    }
}
