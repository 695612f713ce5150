//! Certificates: a cluster CA, node certificates that name node ids, and the rustls
//! configurations of mutual TLS.
//!
//! A node's identity is its [`ReplicaId`] written as a DNS name in the certificate's
//! subject alternative name (and as its common name). A connecting node checks that
//! the server's certificate names the peer it dialled (rustls does, as for a host
//! name); an accepting node finds which configured peer the client's certificate
//! names, and refuses the connection if none does.

use std::path::Path;
use std::sync::Arc;

use concord::ReplicaId;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};

/// A certificate authority that signs node certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A node's certificate and key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct NodeCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl Ca {
    /// A new CA with a fresh key.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if the key or certificate cannot be generated.
    pub fn generate(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(Error::tls)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(Error::tls)?;
        Ok(Ca { issuer })
    }

    /// The CA certificate, PEM-encoded (every node trusts it).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for node `id`, for both ends of a connection.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if it cannot be generated.
    pub fn issue(&self, id: ReplicaId) -> Result<NodeCert> {
        let name = id.to_string();
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(Error::tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(Error::tls)?;
        let issuer: &Issuer<'_, KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).map_err(Error::tls)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The two TLS configurations of a node: as the server of the connections it
/// accepts and as the client of those it dials. Both require and verify the other
/// end's certificate against the cluster CA.
#[derive(Clone, Debug)]
pub struct Tls {
    /// For accepted connections.
    pub server: Arc<ServerConfig>,
    /// For dialled connections.
    pub client: Arc<ClientConfig>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls {
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

impl Tls {
    /// Builds both configurations from PEM files.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if a file is missing or malformed.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls> {
        Tls::from_pem(&read_pem(ca)?, &read_pem(cert)?, &read_pem(key)?)
    }

    /// Builds both configurations from PEM text.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if something is malformed.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.map_err(Error::tls)?).map_err(Error::tls)?;
        }
        if roots.is_empty() {
            return Err(Error::Tls {
                reason: "the CA file holds no certificate".into(),
            });
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::tls)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(Error::tls)?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(Error::tls)?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(Error::tls)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(Error::tls)?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The server name under which node `id` is dialled (its certificate must name it).
pub fn server_name(id: ReplicaId) -> ServerName<'static> {
    ServerName::try_from(id.to_string()).expect("a uuid is a valid DNS name")
}

/// Which of `candidates` the (already CA-verified) certificate `cert` names, if
/// exactly one.
pub fn identity(cert: &CertificateDer<'_>, candidates: &[ReplicaId]) -> Option<ReplicaId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut named = candidates.iter().filter(|id| {
        cert.verify_is_valid_for_subject_name(&server_name(**id))
            .is_ok()
    });
    match (named.next(), named.next()) {
        (Some(id), None) => Some(*id),
        _ => None,
    }
}

/// Writes a private key readable by its owner only (mode 0600 on Unix), also
/// when the file already exists.
pub fn write_secret(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let mut f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = opts.open(path)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    }
}

/// Writes a CA and `n` node certificates and configurations into `dir` for a local
/// cluster: `ca.pem`, `ca.key`, and per node `node-N.pem`, `node-N.key`,
/// `node-N.toml` (replication on `127.0.0.1:(base_port + N)`, HTTP on
/// `127.0.0.1:(base_port + 100 + N)`, data in `data/node-N`). Returns the
/// configuration paths.
///
/// # Errors
///
/// [`Error::Tls`] or [`Error::Io`].
pub fn generate_cluster(dir: &Path, n: usize, base_port: u16) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let ca = Ca::generate("concord cluster CA")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    write_secret(&dir.join("ca.key"), &ca.issuer.key().serialize_pem())?;
    let ids: Vec<ReplicaId> = (0..n).map(|_| ReplicaId::random()).collect();
    let port = |i: usize, off: u16| base_port.saturating_add(off).saturating_add(i as u16 + 1);
    let mut paths = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let cert = ca.issue(*id)?;
        std::fs::write(dir.join(format!("{name}.pem")), &cert.cert_pem)?;
        write_secret(&dir.join(format!("{name}.key")), &cert.key_pem)?;
        let config = crate::config::NodeConfig {
            node_id: *id,
            name: name.clone(),
            listen: ([127, 0, 0, 1], port(i, 0)).into(),
            http: ([127, 0, 0, 1], port(i, 100)).into(),
            data_dir: format!("data/{name}").into(),
            tls: crate::config::TlsConfig {
                ca: "ca.pem".into(),
                cert: format!("{name}.pem").into(),
                key: format!("{name}.key").into(),
            },
            peers: ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, pid)| crate::config::PeerConfig {
                    id: *pid,
                    name: format!("node-{}", j + 1),
                    addr: ([127, 0, 0, 1], port(j, 0)).into(),
                    http: Some(([127, 0, 0, 1], port(j, 100)).into()),
                })
                .collect(),
            ack: Default::default(),
            storage: Default::default(),
            replication: Default::default(),
            failover: Default::default(),
            alerts: Default::default(),
            log: "info".into(),
        };
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.to_toml())?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::harness::temp_dir("certs").unwrap();
        super::generate_cluster(&dir, 2, 17_000).unwrap();
        for f in ["ca.key", "node-1.key", "node-2.key"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}: {mode:o}");
        }
        // Certificates are public.
        let mode = std::fs::metadata(dir.join("ca.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_ne!(mode & 0o004, 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
