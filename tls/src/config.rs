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
    let provider = provider();
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let (mut config, key) = match identity {
        Some((cert, key)) => {
            let key = Arc::new(ReloadingKey::load(cert, key, provider)?);
            let config = builder.with_client_cert_resolver(Arc::clone(&key) as _);
            (config, Some(key))
        }
        None => (builder.with_no_client_auth(), None),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientTls {
        config: Arc::new(config),
        key,
    })
}
