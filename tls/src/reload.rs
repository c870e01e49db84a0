//! [`ReloadingKey`]: a certificate and key read from files, read again when the files change,
//! so certificates rotate without a restart.
//!
//! Handshakes read the current key from behind a lock (an `Arc` clone); a watcher task looks
//! at both files' modification times and sizes every few seconds and swaps in the new pair
//! once both parse and belong together. A half-written or mismatched pair (the key replaced
//! before the certificate, say) is logged and the previous pair stays in use until the files
//! agree again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::error::TlsError;
use crate::files::load_certified_key;

/// How often the files are looked at by default.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A certificate and key that follow their files.
#[derive(Debug)]
pub struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files looked like when `current` was read.
    seen: Mutex<Stamp>,
}

/// Modification time and length of the certificate and key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp([(Option<SystemTime>, u64); 2]);

// === impl ReloadingKey ===

impl ReloadingKey {
    /// Reads `cert` and `key` now (an error names the file at fault).
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let seen = Stamp::of(cert, key);
        let pair = load_certified_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        })
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the files again if they changed since last read. `Ok(true)` when a new pair is in
    /// use; on error the previous pair stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = Stamp::of(&self.cert, &self.key);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == now {
            return Ok(false);
        }
        let pair = load_certified_key(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        *seen = now;
        Ok(true)
    }

    /// Looks at the files every `every` until `shutdown`, swapping in new pairs as they appear.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The error of a pair that stays bad is logged once, not every tick.
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(error = %text, "TLS certificate not reloaded; the previous one stays in use");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl Stamp ===

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Self {
        let one = |path: &Path| match std::fs::metadata(path) {
            Ok(meta) => (meta.modified().ok(), meta.len()),
            Err(_) => (None, 0),
        };
        Self([one(cert), one(key)])
    }
}
