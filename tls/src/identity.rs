//! Who is on the other end of a mutually authenticated connection: a peer's certificate
//! (already verified against the CA by the handshake) checked for the identity name that
//! `meridian tls init` puts in node and client certificates.
//!
//! The handshake proves "a certificate from our CA"; this proves "the certificate of node 3",
//! so node 2's key cannot speak Raft as node 3, and a client or proxy certificate — from the
//! same CA — cannot speak Raft at all.

use rustls_pki_types::{CertificateDer, DnsName, ServerName};

use crate::init::{client_identity, node_identity};

/// Whether `cert` (the leaf a peer presented) names node `id`.
pub fn is_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    names(cert, &node_identity(id))
}

/// The node `cert` (the leaf a peer presented) is the certificate of: `Some(N)` when it names
/// exactly one `node-N.peers.meridian`. Read once per connection, before any Raft message is
/// decoded, so a client's certificate from the same CA never reaches the Raft decoder.
pub fn node_id(cert: &CertificateDer<'_>) -> Option<u64> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = parsed.valid_dns_names().filter_map(|name| {
        let name = name.to_ascii_lowercase();
        let digits = name
            .strip_prefix("node-")?
            .strip_suffix(".peers.meridian")?;
        // Canonical digits only: `node-01` is not node 1.
        let id: u64 = digits.parse().ok()?;
        (id.to_string() == digits && id > 0).then_some(id)
    });
    let id = ids.next()?;
    if ids.any(|other| other != id) {
        return None;
    }
    // The names were only listed; the check that counts is webpki's own.
    is_node(cert, id).then_some(id)
}

/// Whether `cert` names client `name` (e.g. `proxy`).
pub fn is_client(cert: &CertificateDer<'_>, name: &str) -> bool {
    names(cert, &client_identity(name))
}

fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(dns) = DnsName::try_from(name.to_owned()) else {
        return false;
    };
    parsed
        .verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
        .is_ok()
}
