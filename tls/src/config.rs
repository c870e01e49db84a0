//! rustls server and client configurations from [`TlsFiles`], with the ring provider chosen
//! explicitly (never the process default) and ALPN `h2` for gRPC.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::error::TlsError;
use crate::files::{TlsFiles, load_roots};
use crate::reload::ReloadingKey;

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present a certificate from the CA (nodes do, for Raft traffic; what a
    /// connection presented is checked per call); clients without one are let in.
    Optional,
    /// Every client must present a certificate from the CA (`--require-client-cert`).
    Required,
}

/// A TLS server's configuration and the key it serves, which follows its files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// For `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    /// The served certificate; run [`ReloadingKey::watch`] to follow rotations.
    pub key: Arc<ReloadingKey>,
}

/// A TLS client's configuration and its own certificate, which follows its files.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// For `tokio_rustls::TlsConnector`.
    pub config: Arc<ClientConfig>,
    /// The certificate presented to servers, if any; run [`ReloadingKey::watch`] on it.
    pub key: Option<Arc<ReloadingKey>>,
}

/// The crypto Meridian uses: ring, with rustls's default suites.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server presenting `files.cert`, trusting client certificates from `files.ca`.
pub fn server(files: &TlsFiles, client_auth: ClientAuth) -> Result<ServerTls, TlsError> {
    let provider = provider();
    let key = Arc::new(ReloadingKey::load(
        &files.cert,
        &files.key,
        Arc::clone(&provider),
    )?);
    let roots = load_roots(&files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
    let verifier = match client_auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    }
    .build()
    .map_err(|e| TlsError::BadAuthority {
        path: files.ca.clone(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(&key) as _);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        key,
    })
}

/// A client trusting servers whose certificates chain to `ca`, presenting `identity`
/// (certificate and key files) when given.
pub fn client(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<ClientTls, TlsError> {
    let key = identity
        .map(|(cert, key)| ReloadingKey::load(cert, key, provider()).map(Arc::new))
        .transpose()?;
    client_presenting(ca, key)
}

/// A client trusting servers whose certificates chain to `ca`, presenting `key` when given:
/// a node dials its peers with the same certificate its listener serves, so one watcher
/// rotates both.
pub fn client_presenting(
    ca: &std::path::Path,
    key: Option<Arc<ReloadingKey>>,
) -> Result<ClientTls, TlsError> {
    let provider = provider();
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &key {
        Some(key) => builder.with_client_cert_resolver(Arc::clone(key) as _),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientTls {
        config: Arc::new(config),
        key,
    })
}

/// The client side of the `--tls-ca`, `--tls-cert` and `--tls-key` flags, as the CLI and the
/// proxy take them: no CA means plain text; a certificate needs its key (and the other way
/// round) and a CA. Errors name the flag.
pub fn client_from_flags(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<ClientTls>, String> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key (its private key)".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert (its certificate)".into()),
    };
    match ca {
        Some(ca) => client(ca, identity).map(Some).map_err(|e| e.to_string()),
        None if identity.is_some() => Err(
            "--tls-cert and --tls-key need --tls-ca (the CA that signed the server's certificate)"
                .into(),
        ),
        None => Ok(None),
    }
}

/// The server side of the same flags, as a node takes them: all three or none. Errors name
/// the missing flag.
pub fn files_from_flags(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<TlsFiles>, String> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        })),
        _ => {
            let missing: Vec<&str> = [(ca, "--tls-ca"), (cert, "--tls-cert"), (key, "--tls-key")]
                .into_iter()
                .filter_map(|(given, flag)| given.is_none().then_some(flag))
                .collect();
            Err(format!(
                "--tls-ca, --tls-cert and --tls-key go together: {} missing",
                missing.join(" and ")
            ))
        }
    }
}
