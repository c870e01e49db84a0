//! TLS over TCP for tonic: [`incoming`], the accepted and handshaken connections of a
//! listener, and [`Connector`], which dials and handshakes for a `Channel`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tonic::transport::Uri;

/// How long a client may take to finish its handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection accepted by [`incoming`].
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The connections of `listener` once their TLS handshakes finish, for tonic's
/// `serve_with_incoming`. Each handshake runs in its own task, so a slow or silent client
/// holds up nobody else; failed handshakes are logged at debug level and dropped. Ends when
/// `shutdown` fires.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<ServerStream>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials TCP and completes a TLS handshake, checking the server's certificate against the
/// host of the URI (a DNS name or an IP address). For `Endpoint::connect_with_connector`;
/// the endpoint's URI keeps the `http` scheme (tonic refuses `https` without its own TLS
/// set-up), the TLS is this connector's.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    /// The name the server's certificate must carry, when not the URI's host.
    server_name: Option<ServerName<'static>>,
}

// === impl Connector ===

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector using `config`.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            tls: TlsConnector::from(config),
            server_name: None,
        }
    }

    /// Expects the server's certificate to carry `name` whatever host the URI names: how a
    /// node dials another by its identity (`node-N.peers.meridian`), so the address it
    /// reaches the peer at (an IP, a load balancer, a test's TCP proxy) need not be in the
    /// certificate, and a certificate of node 2 cannot answer for node 3.
    #[must_use]
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    /// Dials `addr` and handshakes, expecting a certificate valid for `name`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        name: ServerName<'static>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        self.tls.connect(name, tcp).await
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let invalid = |why: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {why}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            // `[::1]` in a URI is `::1` as a name.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = match &connector.server_name {
                Some(name) => name.clone(),
                None => ServerName::try_from(bare.to_owned())
                    .map_err(|_| invalid("host is not a DNS name or IP address"))?,
            };
            let addr = tokio::net::lookup_host((bare, port))
                .await?
                .next()
                .ok_or_else(|| invalid("host does not resolve"))?;
            connector.connect(addr, name).await.map(TokioIo::new)
        })
    }
}

/// The URI to give tonic for a user's `url` (`--addr`, `--control-plane`) when TLS, if any, is
/// done by a [`Connector`]: `https://` becomes `http://` (tonic refuses `https` without its own
/// TLS set-up; the connector still checks the certificate against the URI's host). `None`
/// for an `https://` URL without TLS, which cannot be honoured.
pub fn tonic_uri(url: &str, tls: bool) -> Option<String> {
    match (tls, url.strip_prefix("https://")) {
        (true, Some(rest)) => Some(format!("http://{rest}")),
        (false, Some(_)) => None,
        (_, None) => Some(url.to_owned()),
    }
}

/// Connects `endpoint` now: over TLS with `tls` (through a [`Connector`]), in plain text
/// without.
pub async fn connect(
    endpoint: tonic::transport::Endpoint,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match tls {
        Some(config) => {
            endpoint
                .connect_with_connector(Connector::new(Arc::clone(config)))
                .await
        }
        None => endpoint.connect().await,
    }
}
