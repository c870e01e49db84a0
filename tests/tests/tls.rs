//! A node run with `--require-client-cert`: clients and proxies need a certificate from the
//! cluster's CA; with one, the API and a proxy's discovery stream work over TLS.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;

use meridian_proto::v1 as pb;
use meridian_proto::v1::discovery_client::DiscoveryClient;
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_proxy::ProxyConfig;
use meridian_tests::backend::Backend;
use meridian_tests::mesh::{Call, MeshClient, PATIENCE, SERVICE, TestProxy};
use meridian_tests::{TestNode, wait_for};
use meridian_tls::ClientTls;
use meridian_tls::init::{InitOptions, init};
use tonic::transport::Endpoint;

/// A CA with node 1's certificate and clients `admin` and `proxy`.
fn authority() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init(
        dir.path(),
        &InitOptions {
            nodes: vec![1],
            names: Vec::new(),
            clients: vec!["admin".into(), "proxy".into()],
        },
    )
    .unwrap();
    dir
}

/// A client trusting `trust`'s CA, presenting `identity` from `dir` when given.
fn client(trust: &Path, dir: &Path, identity: Option<&str>) -> ClientTls {
    let cert = identity.map(|name| {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    });
    meridian_tls::config::client(
        &trust.join("ca.pem"),
        cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .unwrap()
}

/// Lists namespaces on `node` as `tls` presents itself.
async fn list_namespaces(node: &TestNode, tls: &ClientTls) -> Result<usize, tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{}", node.addr())).unwrap();
    let channel = meridian_tls::net::connect(endpoint, Some(&tls.config))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let listed = RegistryClient::new(channel)
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await?;
    Ok(listed.into_inner().namespaces.len())
}

/// A call the node never answered: the TLS handshake failed (TLS 1.3 clients learn it when
/// they first read, so the call breaks as the connection closes: which code that surfaces as
/// depends on when the close is noticed).
#[track_caller]
fn assert_turned_away(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
}

/// A proxy of `node` subscribed to [`SERVICE`], presenting `tls` to the control plane.
async fn proxy(node: &TestNode, id: &str, tls: ClientTls) -> (TestProxy, MeshClient) {
    let mut config = ProxyConfig::new(vec![node.url()]);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin = ([127, 0, 0, 1], 0).into();
    config.proxy_id = Some(id.to_owned());
    config.subscribe = vec![SERVICE.to_owned()];
    config.control_plane_tls = Some(tls);
    let proxy = TestProxy::start(config).await;
    let admin = MeshClient::new(proxy.admin_addr());
    (proxy, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_proxies_need_a_certificate_when_required() {
    let ca = authority();
    let other = authority();
    let (ours, theirs) = (ca.path(), other.path());
    let node = TestNode::start_with_tls(ours, true).await;
    let mut registry = node.cafe(&["orders"]).await;

    // Only a certificate from the node's CA gets an answer.
    assert_eq!(
        list_namespaces(&node, &client(ours, ours, Some("admin")))
            .await
            .unwrap(),
        1
    );
    let refused = list_namespaces(&node, &client(ours, ours, None))
        .await
        .unwrap_err();
    assert_turned_away(&refused);
    let refused = list_namespaces(&node, &client(ours, theirs, Some("admin")))
        .await
        .unwrap_err();
    assert_turned_away(&refused);

    // A proxy with the CA's `proxy` certificate routes to a registered backend.
    let backend = Backend::start("v1-0").await;
    registry
        .register_instance(pb::RegisterInstanceRequest {
            service: SERVICE.to_owned(),
            id: "v1-0".into(),
            address: backend.addr().ip().to_string(),
            port: u32::from(backend.addr().port()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (good, _) = proxy(&node, "good-proxy", client(ours, ours, Some("proxy"))).await;
    let traffic = MeshClient::new(good.listen_addr());
    let reply = wait_for(
        "the proxy with a certificate to route",
        PATIENCE,
        || async {
            traffic
                .send(&Call::get("/"))
                .await
                .ok()
                .filter(|r| r.status.is_success())
        },
    )
    .await;
    assert_eq!(reply.backend.as_deref(), Some("v1-0"));

    // A proxy without a certificate is turned away: it reports the failure and stays out.
    let (bad, bad_admin) = proxy(&node, "bad-proxy", client(ours, ours, None)).await;
    let config = wait_for(
        "the proxy without a certificate to fail",
        PATIENCE,
        || async {
            let reply = bad_admin
                .send(&Call::get("/config").host("admin"))
                .await
                .ok()?;
            let config: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
            config["last_error"].is_string().then_some(config)
        },
    )
    .await;
    assert_eq!(config["connected"], false, "{config}");
    let ready = bad_admin
        .send(&Call::get("/ready").host("admin"))
        .await
        .unwrap();
    assert!(!ready.status.is_success(), "{ready:?}");
    let proxies = DiscoveryClient::new(node.channel().await)
        .list_proxies(pb::ListProxiesRequest { local_only: true })
        .await
        .unwrap()
        .into_inner()
        .proxies;
    let ids: Vec<&str> = proxies.iter().map(|p| p.proxy_id.as_str()).collect();
    assert_eq!(ids, ["good-proxy"]);
    drop((good, bad));
}
