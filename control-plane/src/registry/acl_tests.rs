//! ACL tokens through the state machine, and policy checks.

use super::acl::{Access, NameMatch, Policy, Resource, Rule, TokenSpec};
use super::{Command, Outcome, Registry, RegistryError, ServiceName};

fn hex(byte: u8, len: usize) -> String {
    format!("{byte:02x}").repeat(len / 2)
}

fn spec(n: u8, policy: Policy) -> TokenSpec {
    TokenSpec {
        accessor: hex(n, 32),
        secret_hash: hex(n.wrapping_add(100), 64),
        description: format!("token {n}"),
        policy,
    }
}

fn admin() -> Policy {
    Policy {
        admin: true,
        rules: vec![],
    }
}

fn rule(resource: Resource, name: NameMatch, access: Access) -> Rule {
    Rule {
        resource,
        name,
        access,
    }
}

fn service(full: &str) -> ServiceName {
    ServiceName::parse("name", full).unwrap()
}

#[test]
fn bootstrap_once_then_create_and_revoke() {
    let mut registry = Registry::new();
    // The bootstrap token must be an admin.
    let err = registry
        .apply(1, &Command::AclBootstrap(spec(1, Policy::default())))
        .unwrap_err();
    assert!(err.to_string().contains("token.policy.admin"), "{err}");

    let Outcome::Token(root) = registry
        .apply(2, &Command::AclBootstrap(spec(1, admin())))
        .unwrap()
    else {
        panic!("not a token");
    };
    assert_eq!(root.create_revision, 2);
    assert_eq!(registry.revision(), 2);
    let err = registry
        .apply(3, &Command::AclBootstrap(spec(2, admin())))
        .unwrap_err();
    assert!(matches!(err, RegistryError::FailedPrecondition(_)), "{err}");

    let reader = Policy {
        admin: false,
        rules: vec![rule(
            Resource::Namespace,
            NameMatch::Exact("cafe.local".into()),
            Access::Read,
        )],
    };
    registry
        .apply(4, &Command::CreateToken(spec(3, reader.clone())))
        .unwrap();
    let found = registry.acl().by_secret_hash(&hex(103, 64)).unwrap();
    assert_eq!(found.policy, reader);
    // The same accessor (or secret) twice is refused.
    let err = registry
        .apply(5, &Command::CreateToken(spec(3, reader)))
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyExists { .. }), "{err}");

    registry
        .apply(
            6,
            &Command::RevokeToken {
                accessor: hex(3, 32),
            },
        )
        .unwrap();
    assert!(registry.acl().by_secret_hash(&hex(103, 64)).is_none());
    let err = registry
        .apply(
            7,
            &Command::RevokeToken {
                accessor: hex(3, 32),
            },
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");

    // Tokens survive a snapshot; a snapshot from before ACLs existed restores with none.
    let restored = Registry::restore(&registry.snapshot()).unwrap();
    assert_eq!(restored, registry);
    assert!(!restored.acl().is_empty());
    let old = br#"{"revision":9,"namespaces":{}}"#;
    assert!(Registry::restore(old).unwrap().acl().is_empty());
}

#[test]
fn bad_tokens_name_the_field() {
    let mut registry = Registry::new();
    let cases: Vec<(TokenSpec, &str)> = vec![
        (
            TokenSpec {
                accessor: "XYZ".into(),
                ..spec(1, admin())
            },
            "token.accessor",
        ),
        (
            TokenSpec {
                secret_hash: hex(1, 62),
                ..spec(1, admin())
            },
            "token.secret_hash",
        ),
        (
            spec(
                1,
                Policy {
                    admin: false,
                    rules: vec![
                        rule(
                            Resource::Namespace,
                            NameMatch::Prefix(String::new()),
                            Access::Read,
                        ),
                        rule(
                            Resource::Service,
                            NameMatch::Exact("orders".into()),
                            Access::Read,
                        ),
                    ],
                },
            ),
            "token.policy.rules[1].name",
        ),
        (
            spec(
                1,
                Policy {
                    admin: false,
                    rules: vec![rule(
                        Resource::Service,
                        NameMatch::Prefix("Orders*".into()),
                        Access::Read,
                    )],
                },
            ),
            "token.policy.rules[0].prefix",
        ),
    ];
    for (i, (bad, field)) in cases.into_iter().enumerate() {
        let err = registry
            .apply(1 + i as u64, &Command::CreateToken(bad))
            .unwrap_err();
        assert!(err.to_string().starts_with(field), "{field}: {err}");
    }
    assert!(registry.acl().is_empty());
    assert_eq!(registry.revision(), 0, "refused commands change nothing");
}

#[test]
fn policies_grant_by_namespace_service_and_prefix() {
    let orders = service("orders.cafe.local");
    let payments = service("payments.bank.local");
    let policy = Policy {
        admin: false,
        rules: vec![
            rule(
                Resource::Namespace,
                NameMatch::Exact("cafe.local".into()),
                Access::Write,
            ),
            rule(
                Resource::Service,
                NameMatch::Exact("payments.bank.local".into()),
                Access::Read,
            ),
        ],
    };
    assert!(policy.allows_service(&orders, Access::Write));
    assert!(policy.allows_namespace("cafe.local", Access::Write));
    assert!(policy.allows_service(&payments, Access::Read));
    assert!(policy.allows_service(&payments, Access::Subscribe));
    assert!(!policy.allows_service(&payments, Access::Write));
    assert!(!policy.allows_namespace("bank.local", Access::Read));
    assert!(policy.sees_namespace("bank.local", Access::Read));
    assert!(!policy.sees_namespace("shop.local", Access::Read));
    assert!(!policy.allows_service(&service("orders.cafe.localx"), Access::Read));

    // Prefixes reach across the service/namespace boundary, like Consul's.
    let prefix = |p: &str| Policy {
        admin: false,
        rules: vec![rule(
            Resource::Service,
            NameMatch::Prefix(p.into()),
            Access::Subscribe,
        )],
    };
    assert!(prefix("orders").allows_service(&orders, Access::Subscribe));
    assert!(prefix("orders.caf").allows_service(&orders, Access::Subscribe));
    assert!(prefix("orders.cafe.local").allows_service(&orders, Access::Subscribe));
    assert!(prefix("").allows_service(&payments, Access::Subscribe));
    assert!(!prefix("orders.b").allows_service(&orders, Access::Subscribe));
    assert!(!prefix("ordersx").allows_service(&orders, Access::Subscribe));
    assert!(
        !prefix("orders").allows_service(&orders, Access::Read),
        "subscribe < read"
    );
    let ns_prefix = Policy {
        admin: false,
        rules: vec![rule(
            Resource::Namespace,
            NameMatch::Prefix("cafe.".into()),
            Access::Read,
        )],
    };
    assert!(ns_prefix.allows_service(&orders, Access::Read));
    assert!(!ns_prefix.allows_service(&payments, Access::Read));

    assert!(admin().allows_service(&payments, Access::Write));
    assert!(admin().allows_namespace("anything.local", Access::Write));
    assert!(!Policy::default().allows_service(&orders, Access::Subscribe));
}
