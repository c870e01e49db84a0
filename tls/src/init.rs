//! `meridian tls init`: a development certificate authority and the certificates a small
//! cluster needs, so trying TLS takes one command.
//!
//! Files written into the directory (keys readable by their owner only):
//! - `ca.pem`, `ca-key.pem`: the authority (10 years);
//! - `node-N.pem`, `node-N-key.pem`: node N, for its listeners and as a client of its peers
//!   (server and client authentication), valid for `localhost`, `127.0.0.1`, `::1`, the extra
//!   names given, and `node-N.peers.meridian` — the name a peer's certificate is checked
//!   against when it sends Raft traffic as node N;
//! - `NAME.pem`, `NAME-key.pem` for each client identity (`admin`, `proxy` by default): client
//!   authentication only, valid for `NAME.clients.meridian`.
//!
//! Running it again keeps what exists and adds what is missing (more nodes, say), signing with
//! the authority already there: certificates issued earlier stay valid.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::TlsError;
use crate::files::read;

/// The authority's distinguished name (the same on every run, so a reloaded key can sign).
const CA_NAME: &str = "Meridian development CA";

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Node ids to issue certificates for.
    pub nodes: Vec<u64>,
    /// Extra DNS names or IP addresses the nodes' certificates are valid for.
    pub names: Vec<String>,
    /// Client identities (e.g. `admin`, `proxy`).
    pub clients: Vec<String>,
}

/// A file `init` wrote or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate file.
    pub path: PathBuf,
    /// `false` when it existed already and was kept.
    pub created: bool,
}

/// The name node `id`'s certificate carries as its identity.
pub fn node_identity(id: u64) -> String {
    format!("node-{id}.peers.meridian")
}

/// The name client `name`'s certificate carries as its identity.
pub fn client_identity(name: &str) -> String {
    format!("{name}.clients.meridian")
}

/// Creates (or completes) a development CA and certificates in `dir`.
pub fn init(dir: &Path, options: &InitOptions) -> Result<Vec<Issued>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let (ca_created, issuer) = authority(dir)?;
    let mut issued = vec![Issued {
        path: dir.join("ca.pem"),
        created: ca_created,
    }];
    for &id in &options.nodes {
        let mut names = vec![
            node_identity(id),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(options.names.iter().cloned());
        let leaf = Leaf {
            file: format!("node-{id}"),
            common_name: format!("meridian node {id}"),
            names,
            usages: &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        issued.push(leaf.issue(dir, &issuer)?);
    }
    for client in &options.clients {
        let leaf = Leaf {
            file: client.clone(),
            common_name: format!("meridian client {client}"),
            names: vec![client_identity(client)],
            usages: &[ExtendedKeyUsagePurpose::ClientAuth],
        };
        issued.push(leaf.issue(dir, &issuer)?);
    }
    Ok(issued)
}

/// The authority in `dir`: loaded when its key exists, created otherwise.
fn authority(dir: &Path) -> Result<(bool, Issuer<'static, KeyPair>), TlsError> {
    let generate = |source| TlsError::Generate {
        what: "the CA".into(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if key_path.exists() && cert_path.exists() {
        let pem = read(&key_path)?;
        let text = String::from_utf8_lossy(&pem);
        let key = KeyPair::from_pem(&text).map_err(|e| TlsError::NoPrivateKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        return Ok((false, Issuer::new(params, key)));
    }
    let key = KeyPair::generate().map_err(generate)?;
    set_validity(&mut params, 10);
    let cert = params.self_signed(&key).map_err(generate)?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((true, Issuer::new(params, key)))
}

/// One end-entity certificate to issue.
struct Leaf {
    file: String,
    common_name: String,
    names: Vec<String>,
    usages: &'static [ExtendedKeyUsagePurpose],
}

impl Leaf {
    fn issue(self, dir: &Path, issuer: &Issuer<'_, KeyPair>) -> Result<Issued, TlsError> {
        let cert_path = dir.join(format!("{}.pem", self.file));
        let key_path = dir.join(format!("{}-key.pem", self.file));
        if cert_path.exists() && key_path.exists() {
            return Ok(Issued {
                path: cert_path,
                created: false,
            });
        }
        let mut names = self.names;
        names.dedup();
        for name in &names {
            // rcgen takes any IA5 string as a DNS name; a certificate for a name no client can
            // ask for is a mistake to report now.
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(TlsError::BadName { name: name.clone() });
            }
        }
        let generate = |source| TlsError::Generate {
            what: self.file.clone(),
            source,
        };
        let mut params = CertificateParams::new(names).map_err(generate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = self.usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 2);
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, issuer).map_err(generate)?;
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok(Issued {
            path: cert_path,
            created: true,
        })
    }
}

/// Valid from the start of this year (clocks a little behind still accept it) for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let year = 1970 + (days as f64 / 365.2425) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// Writes `text` to `path`; keys get mode 0600.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)
}
