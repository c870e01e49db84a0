//! ACL tokens and rate limits against a real node: who may do what, revocation, and
//! RESOURCE_EXHAUSTED past a caller's rate.

use std::time::Duration;

use meridian_control_plane::auth::AccessConfig;
use meridian_proto::v1 as pb;
use meridian_proto::v1::acl_client::AclClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_tests::{TestNode, wait_for, with_token};
use tonic::Code;

const ROOT: &str = "root-secret-for-the-acl-test";
const PATIENCE: Duration = Duration::from_secs(20);

fn rule(resource: pb::AclResource, exact: &str, access: pb::AclAccess) -> pb::AclRule {
    pb::AclRule {
        resource: resource.into(),
        name: Some(pb::acl_rule::Name::Exact(exact.into())),
        access: access.into(),
    }
}

async fn create_token(node: &TestNode, rules: Vec<pb::AclRule>) -> (String, String) {
    let created = AclClient::new(node.channel().await)
        .create_token(with_token(
            pb::CreateTokenRequest {
                description: "test".into(),
                policy: Some(pb::AclPolicy {
                    admin: false,
                    rules,
                }),
            },
            Some(ROOT),
        ))
        .await
        .expect("admin creates a token")
        .into_inner();
    (created.token.expect("token").accessor, created.secret)
}

async fn namespace(node: &TestNode, name: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    RegistryClient::new(node.channel().await)
        .create_namespace(with_token(
            pb::CreateNamespaceRequest {
                name: name.into(),
                description: String::new(),
            },
            token,
        ))
        .await
        .map(drop)
}

async fn service(node: &TestNode, name: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    RegistryClient::new(node.channel().await)
        .create_service(with_token(
            pb::CreateServiceRequest {
                name: name.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(drop)
}

async fn register(
    node: &TestNode,
    service: &str,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    RegistryClient::new(node.channel().await)
        .register_instance(with_token(
            pb::RegisterInstanceRequest {
                service: service.into(),
                id: "i-1".into(),
                address: "127.0.0.1".into(),
                port: 8080,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(drop)
}

async fn discover(
    node: &TestNode,
    service: &str,
    token: Option<&str>,
) -> Result<usize, tonic::Status> {
    RegistryClient::new(node.channel().await)
        .discover_instances(with_token(
            pb::DiscoverInstancesRequest {
                service: service.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().instances.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_read_write_and_manage() {
    let node = TestNode::start_with_access(AccessConfig {
        acl_enabled: true,
        bootstrap_token: Some(ROOT.into()),
        ..AccessConfig::default()
    })
    .await;
    for ns in ["cafe.local", "bank.local"] {
        namespace(&node, ns, Some(ROOT)).await.unwrap();
        service(&node, &format!("orders.{ns}"), Some(ROOT))
            .await
            .unwrap();
    }

    // No token, or a wrong one: UNAUTHENTICATED, saying nothing more.
    for token in [None, Some("not-a-token")] {
        let err = register(&node, "orders.cafe.local", token)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(!err.message().contains("cafe"), "{err:?}");
    }

    // A read-only token reads, and cannot register.
    let (_, reader) = create_token(
        &node,
        vec![rule(
            pb::AclResource::Namespace,
            "cafe.local",
            pb::AclAccess::Read,
        )],
    )
    .await;
    assert_eq!(
        discover(&node, "orders.cafe.local", Some(&reader))
            .await
            .unwrap(),
        0
    );
    let err = register(&node, "orders.cafe.local", Some(&reader))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A writer scoped to cafe.local cannot touch bank.local, or see it.
    let (writer_accessor, writer) = create_token(
        &node,
        vec![rule(
            pb::AclResource::Namespace,
            "cafe.local",
            pb::AclAccess::Write,
        )],
    )
    .await;
    register(&node, "orders.cafe.local", Some(&writer))
        .await
        .unwrap();
    for err in [
        register(&node, "orders.bank.local", Some(&writer))
            .await
            .unwrap_err(),
        discover(&node, "orders.bank.local", Some(&writer))
            .await
            .unwrap_err(),
        service(&node, "payments.bank.local", Some(&writer))
            .await
            .unwrap_err(),
        namespace(&node, "shop.local", Some(&writer))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(!err.message().contains("bank"), "no detail leaks: {err:?}");
    }
    let listed = RegistryClient::new(node.channel().await)
        .list_namespaces(with_token(
            pb::ListNamespacesRequest::default(),
            Some(&writer),
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["cafe.local"],
        "lists show only what the token may read"
    );

    // Only admins manage tokens; WhoAmI names the caller.
    let mut acl = AclClient::new(node.channel().await);
    let err = acl
        .list_tokens(with_token(pb::ListTokensRequest {}, Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let me = acl
        .who_am_i(with_token(pb::WhoAmIRequest {}, Some(&writer)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.token.unwrap().accessor, writer_accessor);
    let all = acl
        .list_tokens(with_token(pb::ListTokensRequest {}, Some(ROOT)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.tokens.len(), 3, "bootstrap, reader, writer");
    // A bad policy names its field.
    let err = acl
        .create_token(with_token(
            pb::CreateTokenRequest {
                description: String::new(),
                policy: Some(pb::AclPolicy {
                    admin: false,
                    rules: vec![pb::AclRule {
                        resource: pb::AclResource::Service.into(),
                        name: Some(pb::acl_rule::Name::Exact("no-namespace".into())),
                        access: pb::AclAccess::Read.into(),
                    }],
                }),
            },
            Some(ROOT),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("policy.rules[0].name"), "{err:?}");

    // Revoked: the writer's secret stops working.
    acl.revoke_token(with_token(
        pb::RevokeTokenRequest {
            accessor: writer_accessor,
        },
        Some(ROOT),
    ))
    .await
    .unwrap();
    let err = wait_for("the revoked token to be refused", PATIENCE, || async {
        register(&node, "orders.cafe.local", Some(&writer))
            .await
            .err()
    })
    .await;
    assert_eq!(err.code(), Code::Unauthenticated);

    // Health checks need no token (load balancers probe without one).
    let health = tonic_health::pb::health_client::HealthClient::new(node.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_gets_resource_exhausted_then_recovers() {
    let node = TestNode::start_with_access(AccessConfig {
        rate_limit: Some(20.0),
        ..AccessConfig::default()
    })
    .await;
    let mut registry = RegistryClient::new(node.channel().await);
    // A burst of 40 is allowed; far more at once is not.
    let mut exhausted = 0;
    for _ in 0..200 {
        match registry
            .list_namespaces(pb::ListNamespacesRequest::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(exhausted > 0, "200 calls at once never hit a rate of 20/s");
    wait_for("the bucket to refill", PATIENCE, || {
        let mut registry = registry.clone();
        async move {
            registry
                .list_namespaces(pb::ListNamespacesRequest::default())
                .await
                .ok()
        }
    })
    .await;
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_full_of_instances_refuses_new_ones_but_not_updates() {
    let node = TestNode::start_with_access(AccessConfig {
        max_instances_per_service: Some(2),
        ..AccessConfig::default()
    })
    .await;
    let mut registry = node.cafe(&["orders"]).await;
    let register = |id: &str| pb::RegisterInstanceRequest {
        service: "orders.cafe.local".into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port: 8080,
        ..Default::default()
    };
    registry.register_instance(register("i-1")).await.unwrap();
    registry.register_instance(register("i-2")).await.unwrap();
    let err = registry
        .register_instance(register("i-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("orders.cafe.local"), "{err:?}");
    assert!(
        err.message().contains("--max-instances-per-service 2"),
        "{err:?}"
    );
    // Re-registering (an update) is not a new instance.
    registry.register_instance(register("i-1")).await.unwrap();
    registry
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "orders.cafe.local".into(),
            id: "i-2".into(),
        })
        .await
        .unwrap();
    registry.register_instance(register("i-3")).await.unwrap();
    node.stop().await.unwrap();
}
