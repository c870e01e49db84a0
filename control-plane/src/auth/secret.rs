//! Token secrets: drawn from the OS's CSPRNG, stored only as SHA-256.

use std::fmt::Write as _;

use ring::rand::{SecureRandom as _, SystemRandom};

/// A token's public accessor and its secret, freshly drawn, with the secret's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// 16 random bytes as 32 hex digits.
    pub accessor: String,
    /// 32 random bytes as 64 hex digits: what the client sends.
    pub secret: String,
    /// [`hash_secret`] of the secret: what the registry keeps.
    pub secret_hash: String,
}

/// Why no secret could be drawn (the OS refused randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

// === impl NewToken ===

impl NewToken {
    /// Draws an accessor and a secret.
    pub fn generate() -> Result<Self, RandomError> {
        let rng = SystemRandom::new();
        let mut accessor = [0u8; 16];
        let mut secret = [0u8; 32];
        rng.fill(&mut accessor).map_err(|_| RandomError)?;
        rng.fill(&mut secret).map_err(|_| RandomError)?;
        let secret = hex(&secret);
        Ok(Self {
            accessor: hex(&accessor),
            secret_hash: hash_secret(&secret),
            secret,
        })
    }
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        f.debug_struct("NewToken")
            .field("accessor", &self.accessor)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a secret as 64 lowercase hex digits. Secrets are 256 random bits, so a fast
/// hash suffices: there is no dictionary to try.
pub fn hash_secret(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hashes_are_sha256() {
        let a = NewToken::generate().unwrap();
        let b = NewToken::generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.accessor, b.accessor);
        assert_eq!(
            (a.accessor.len(), a.secret.len(), a.secret_hash.len()),
            (32, 64, 64)
        );
        assert_eq!(a.secret_hash, hash_secret(&a.secret));
        // The FIPS 180-2 test vector.
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}
