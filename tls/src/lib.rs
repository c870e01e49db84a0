//! TLS for Meridian's listeners and clients, on rustls with the ring provider.
//!
//! # Layout
//! - [`files`]: [`TlsFiles`] (`--tls-cert`, `--tls-key`, `--tls-ca`) and PEM loading with
//!   errors that name the file;
//! - [`reload`]: [`ReloadingKey`], a certificate and key that follow their files (rotation
//!   without restart);
//! - [`config`]: rustls server and client configurations (client certificates optional or
//!   required, ALPN `h2`);
//! - [`net`]: TLS connections for tonic — [`net::incoming`] for a server, [`net::Connector`]
//!   for a `Channel`;
//! - [`identity`]: which node or client a verified peer certificate names;
//! - [`init`]: `meridian tls init`, a development CA and node and client certificates.
//!
//! Depends on no other Meridian crate: the control plane and the proxy both use it.

pub mod config;
pub mod error;
pub mod files;
pub mod identity;
pub mod init;
pub mod net;
pub mod reload;

pub use config::{ClientAuth, ClientTls, ServerTls};
pub use error::TlsError;
pub use files::TlsFiles;
pub use reload::ReloadingKey;

#[cfg(test)]
mod tests;
