//! Real handshakes over loopback between the configs this crate builds.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::TlsError;
use crate::config::{self, ClientAuth};
use crate::files::{TlsFiles, load_certificates};
use crate::init::{InitOptions, init};
use crate::net::{Connector, incoming};

fn options(nodes: &[u64]) -> InitOptions {
    InitOptions {
        nodes: nodes.to_vec(),
        names: vec![],
        clients: vec!["admin".into()],
    }
}

fn node_files(dir: &Path, id: u64) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}-key.pem")),
        ca: dir.join("ca.pem"),
    }
}

/// Serves one echo connection per accept; returns its address.
async fn echo_server(server: &config::ServerTls, stop: CancellationToken) -> std::net::SocketAddr {
    use tokio_stream::StreamExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut conns = incoming(listener, Arc::clone(&server.config), stop);
    tokio::spawn(async move {
        while let Some(Ok(mut conn)) = conns.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if conn.read_exact(&mut buf).await.is_ok() {
                    let _ = conn.write_all(&buf).await;
                }
            });
        }
    });
    addr
}

/// Handshakes and echoes 4 bytes; `Ok` carries the server's leaf certificate.
async fn round_trip(
    addr: std::net::SocketAddr,
    client: &config::ClientTls,
) -> std::io::Result<CertificateDer<'static>> {
    let connector = Connector::new(Arc::clone(&client.config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = connector.connect(addr, name).await?;
    conn.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    // A server refusing the client's certificate says so after the handshake, on read.
    conn.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    let (_, session) = conn.get_ref();
    Ok(session.peer_certificates().unwrap()[0].clone())
}

#[tokio::test]
async fn init_issues_a_ca_and_keeps_what_exists_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = init(dir.path(), &options(&[1, 2])).unwrap();
    assert!(first.iter().all(|i| i.created), "{first:?}");
    assert_eq!(first.len(), 4, "ca, node-1, node-2, admin");
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();

    let second = init(dir.path(), &options(&[1, 2, 3])).unwrap();
    let created: Vec<_> = second
        .iter()
        .filter(|i| i.created)
        .map(|i| i.path.clone())
        .collect();
    assert_eq!(created, vec![dir.path().join("node-3.pem")]);
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("node-3-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Node 3, issued by the reloaded CA, is trusted like node 1.
    let stop = CancellationToken::new();
    let client = config::client(&dir.path().join("ca.pem"), None).unwrap();
    for id in [1, 3] {
        let server = config::server(&node_files(dir.path(), id), ClientAuth::Optional).unwrap();
        let addr = echo_server(&server, stop.clone()).await;
        round_trip(addr, &client).await.unwrap();
    }
    stop.cancel();
}

#[tokio::test]
async fn required_client_certificates_must_come_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1])).unwrap();
    let other = tempfile::tempdir().unwrap();
    init(other.path(), &options(&[1])).unwrap();
    let ca = dir.path().join("ca.pem");
    let stop = CancellationToken::new();

    let required = config::server(&node_files(dir.path(), 1), ClientAuth::Required).unwrap();
    let addr = echo_server(&required, stop.clone()).await;
    let admin = (
        dir.path().join("admin.pem"),
        dir.path().join("admin-key.pem"),
    );
    let with_cert = config::client(&ca, Some((&admin.0, &admin.1))).unwrap();
    round_trip(addr, &with_cert).await.unwrap();

    let without = config::client(&ca, None).unwrap();
    round_trip(addr, &without).await.unwrap_err();

    // A certificate from another CA, presented by a client that trusts our server.
    let stranger = (
        other.path().join("node-1.pem"),
        other.path().join("node-1-key.pem"),
    );
    let stranger = config::client(&ca, Some((&stranger.0, &stranger.1))).unwrap();
    round_trip(addr, &stranger).await.unwrap_err();

    // And a client that trusts only the other CA refuses our server.
    let wrong_roots = config::client(&other.path().join("ca.pem"), None).unwrap();
    round_trip(addr, &wrong_roots).await.unwrap_err();

    // Optional: no certificate is fine, a stranger's is still refused.
    let optional = config::server(&node_files(dir.path(), 1), ClientAuth::Optional).unwrap();
    let addr = echo_server(&optional, stop.clone()).await;
    round_trip(addr, &without).await.unwrap();
    round_trip(addr, &stranger).await.unwrap_err();
    stop.cancel();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1])).unwrap();
    let files = node_files(dir.path(), 1);
    let server = config::server(&files, ClientAuth::Optional).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(Arc::clone(&server.key).watch(std::time::Duration::from_millis(50), stop.clone()));
    let addr = echo_server(&server, stop.clone()).await;
    let client = config::client(&files.ca, None).unwrap();
    let before = round_trip(addr, &client).await.unwrap();

    // A new certificate for node 1 from the same CA, written over the old files.
    let next = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.path().join(f), next.path().join(f)).unwrap();
    }
    init(next.path(), &options(&[1])).unwrap();
    let rotated = load_certificates(&next.path().join("node-1.pem")).unwrap()[0].clone();
    assert_ne!(rotated, before);
    // Key first, then certificate: in between the pair does not match and the old one stays.
    std::fs::copy(next.path().join("node-1-key.pem"), &files.key).unwrap();
    round_trip(addr, &client).await.unwrap();
    std::fs::copy(next.path().join("node-1.pem"), &files.cert).unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        // A fresh client each time: a resumed session would report the certificate of the
        // session it resumes.
        let client = config::client(&files.ca, None).unwrap();
        let served = round_trip(addr, &client).await.unwrap();
        if served == rotated {
            break;
        }
        assert_eq!(served, before, "neither the old nor the new certificate");
        assert!(
            std::time::Instant::now() < deadline,
            "rotation not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
}

#[test]
fn https_urls_reach_tonic_as_http_only_with_tls() {
    use crate::net::tonic_uri;
    assert_eq!(
        tonic_uri("https://a:1", true).as_deref(),
        Some("http://a:1")
    );
    assert_eq!(tonic_uri("http://a:1", true).as_deref(), Some("http://a:1"));
    assert_eq!(
        tonic_uri("http://a:1", false).as_deref(),
        Some("http://a:1")
    );
    assert_eq!(tonic_uri("https://a:1", false), None);
}

#[test]
fn flags_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1])).unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("admin.pem"),
        dir.path().join("admin-key.pem"),
    );
    let (ca, cert, key) = (ca.as_path(), cert.as_path(), key.as_path());
    // Client side: no CA is plain text; an identity needs both halves and a CA.
    assert!(
        config::client_from_flags(None, None, None)
            .unwrap()
            .is_none()
    );
    let tls = config::client_from_flags(Some(ca), None, None)
        .unwrap()
        .unwrap();
    assert!(tls.key.is_none());
    let tls = config::client_from_flags(Some(ca), Some(cert), Some(key))
        .unwrap()
        .unwrap();
    assert!(tls.key.is_some());
    let err = config::client_from_flags(Some(ca), Some(cert), None).unwrap_err();
    assert!(err.contains("--tls-key"), "{err}");
    let err = config::client_from_flags(Some(ca), None, Some(key)).unwrap_err();
    assert!(err.contains("--tls-cert"), "{err}");
    let err = config::client_from_flags(None, Some(cert), Some(key)).unwrap_err();
    assert!(err.contains("--tls-ca"), "{err}");
    let err =
        config::client_from_flags(Some(cert.with_file_name("nope.pem").as_path()), None, None)
            .unwrap_err();
    assert!(err.contains("nope.pem"), "{err}");
    // Node side: all three or none.
    assert!(
        config::files_from_flags(None, None, None)
            .unwrap()
            .is_none()
    );
    let files = config::files_from_flags(Some(ca), Some(cert), Some(key))
        .unwrap()
        .unwrap();
    assert_eq!(files.ca, ca);
    let err = config::files_from_flags(Some(ca), None, None).unwrap_err();
    assert!(err.contains("--tls-cert and --tls-key missing"), "{err}");
    let err = config::files_from_flags(None, Some(cert), Some(key)).unwrap_err();
    assert!(err.contains("--tls-ca missing"), "{err}");
}

#[test]
fn bad_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1, 2])).unwrap();
    let missing = dir.path().join("nope.pem");
    let files = TlsFiles {
        cert: missing.clone(),
        ..node_files(dir.path(), 1)
    };
    let err = config::server(&files, ClientAuth::Optional).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let err = config::client(&garbage, None).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    // Node 2's key with node 1's certificate.
    let files = TlsFiles {
        key: dir.path().join("node-2-key.pem"),
        ..node_files(dir.path(), 1)
    };
    let err = config::server(&files, ClientAuth::Optional).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("node-2-key.pem"), "{err}");

    let err = init(
        dir.path(),
        &InitOptions {
            nodes: vec![9],
            names: vec!["bad name!".into()],
            clients: vec![],
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad name!"), "{err}");
}

#[tokio::test]
async fn grpc_over_the_incoming_stream_and_the_connector() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1])).unwrap();
    let server = config::server(&node_files(dir.path(), 1), ClientAuth::Required).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                incoming(listener, Arc::clone(&server.config), stop.clone()),
                stop.clone().cancelled_owned(),
            ),
    );
    let admin = (
        dir.path().join("admin.pem"),
        dir.path().join("admin-key.pem"),
    );
    let client = config::client(&dir.path().join("ca.pem"), Some((&admin.0, &admin.1))).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(Connector::new(Arc::clone(&client.config)))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[test]
fn certificates_name_their_node_or_client_and_nothing_else() {
    use crate::identity::{is_client, is_node, node_id};
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &options(&[1, 2, 12])).unwrap();
    let leaf = |file: &str| load_certificates(&dir.path().join(file)).unwrap()[0].clone();
    let (one, admin) = (leaf("node-1.pem"), leaf("admin.pem"));
    assert_eq!(node_id(&one), Some(1));
    assert_eq!(node_id(&leaf("node-12.pem")), Some(12));
    assert_eq!(node_id(&admin), None);
    assert_eq!(node_id(&CertificateDer::from(vec![1, 2, 3])), None);
    assert!(is_node(&one, 1));
    assert!(!is_node(&one, 2));
    assert!(!is_node(&admin, 1));
    assert!(is_client(&admin, "admin"));
    assert!(!is_client(&one, "admin"));
    assert!(
        !is_node(&CertificateDer::from(vec![1, 2, 3]), 1),
        "garbage names nobody"
    );
}
