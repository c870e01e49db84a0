//! [`Dialer`]: how a node reaches another member — for Raft streams, the heartbeat relay and
//! the proxy fan-out alike — in plain text or over mutual TLS.
//!
//! With TLS, a member is dialled by its identity rather than its address: the server must
//! present a certificate from the cluster's CA that names `node-N.peers.meridian` (see
//! [`meridian_tls::identity`]), and this node presents its own, the one its listener serves.
//! The address a member is reached at — an IP, a name, a test's TCP proxy — need not be in the
//! certificate, and node 2's certificate cannot answer for node 3.

use std::sync::Arc;
use std::time::Duration;

use meridian_tls::net::Connector;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// Builds channels to other members.
#[derive(Clone, Default)]
pub struct Dialer {
    /// `None`: plain text (no `--tls-*` flags).
    tls: Option<Arc<ClientConfig>>,
}

/// The settings of one kind of channel to a member.
#[derive(Debug, Clone, Copy)]
pub struct DialOptions {
    /// Bound on connecting (TCP and, with TLS, the handshake).
    pub connect_timeout: Duration,
    /// HTTP/2 PING every so often, also while idle, to notice a peer that stopped answering.
    pub keep_alive: Option<(Duration, Duration)>,
}

// === impl Dialer ===

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// Dials in plain text.
    pub fn plain() -> Self {
        Self { tls: None }
    }

    /// Dials over TLS with `config` (trusting the cluster's CA, presenting this node's
    /// certificate).
    pub fn tls(config: Arc<ClientConfig>) -> Self {
        Self { tls: Some(config) }
    }

    /// Whether channels are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A channel to member `id` at `address` (`HOST:PORT`) that connects on first use and
    /// reconnects by itself after a failure.
    pub fn lazy(
        &self,
        id: u64,
        address: &str,
        options: DialOptions,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = self.endpoint(address, options)?;
        Ok(match self.connector(id) {
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
            None => endpoint.connect_lazy(),
        })
    }

    /// A channel to member `id` at `address`, connected now.
    pub async fn connect(
        &self,
        id: u64,
        address: &str,
        options: DialOptions,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = self.endpoint(address, options)?;
        match self.connector(id) {
            Some(connector) => endpoint.connect_with_connector(connector).await,
            None => endpoint.connect().await,
        }
    }

    fn endpoint(
        &self,
        address: &str,
        options: DialOptions,
    ) -> Result<Endpoint, tonic::transport::Error> {
        // The scheme stays `http` with TLS too: the connector does the TLS (tonic refuses
        // `https` without its own TLS set-up).
        let mut endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true);
        if let Some((interval, timeout)) = options.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        Ok(endpoint)
    }

    fn connector(&self, id: u64) -> Option<Connector> {
        let config = self.tls.as_ref()?;
        let name = ServerName::try_from(meridian_tls::init::node_identity(id))
            .expect("invariant: node-N.peers.meridian is a valid DNS name");
        Some(Connector::new(Arc::clone(config)).with_server_name(name))
    }
}

// === impl DialOptions ===

impl DialOptions {
    /// A connect timeout and nothing else.
    pub fn connect_within(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            keep_alive: None,
        }
    }
}
