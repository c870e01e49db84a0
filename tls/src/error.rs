//! [`TlsError`]: why certificates could not be loaded, generated or turned into a config.

use std::path::PathBuf;

/// Why TLS could not be set up. Every variant names the file it is about, so an operator
/// knows which flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate (or only damaged ones).
    #[error("{path}: no PEM certificate in it ({reason})")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said, or "empty".
        reason: String,
    },
    /// A PEM file holds no private key.
    #[error("{path}: no PEM private key in it ({reason})")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key does not belong to the certificate, or is of a kind we cannot use.
    #[error("{key} does not fit {cert}: {reason}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The CA file's certificates cannot be trusted as roots.
    #[error("{path}: not usable as a certificate authority: {reason}")]
    BadAuthority {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Generating a key or certificate failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// A name given for a certificate is not a DNS name or IP address.
    #[error("{name:?} is not a DNS name or IP address a certificate can be valid for")]
    BadName {
        /// The name.
        name: String,
    },
}
