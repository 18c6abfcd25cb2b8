//! The cluster's certificates: the cluster CA, the trust bundle, and member identities.
//!
//! **The CA** (`tessera ca init DIR`: `ca-cert.pem`, `ca-key.pem`) stays with the operator. It
//! issues each member a certificate naming its role (`tessera ca issue --role shard --name
//! NAME --out DIR`, or `tessera ca k8s-secret` for a Kubernetes Secret per role); the roles
//! then start from a directory holding:
//!
//! | file | what |
//! |---|---|
//! | `ca-cert.pem` | the trust bundle: every CA certificate whose members this one accepts |
//! | `member-cert.pem` | this member's certificate, then its issuer's |
//! | `member-key.pem` | this member's private key (mode 0600) |
//!
//! A directory that holds the CA key instead (`tessera up`, tests, a single-machine cluster)
//! lets a member mint its own certificate at start ([`MemberIdentity::load_or_mint`]).
//!
//! **Rotation.** The trust bundle may hold several CA certificates, so a new CA can be
//! trusted before any member carries its certificates, and the old one dropped once none
//! does (docs/security.md, "Rotating the cluster CA"). A CA directory's `ca-cert.pem` is a
//! bundle too: the certificate that matches `ca-key.pem` is the one that issues.

use crate::identity::{MemberRole, Peer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The name every member certificate carries and every client checks.
pub const CLUSTER_NAME: &str = "tessera-cluster";
/// The trust bundle (and, in a CA directory, the CA's own certificate).
pub const TRUST_FILE: &str = "ca-cert.pem";
/// The CA's private key, only in the CA's directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A member's certificate chain.
pub const MEMBER_CERT_FILE: &str = "member-cert.pem";
/// A member's private key.
pub const MEMBER_KEY_FILE: &str = "member-key.pem";
/// How long an issued member certificate is valid unless told otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A member whose certificate expires within this long says so at start.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cluster CA in {dir}: {reason}")]
    Ca { dir: PathBuf, reason: String },
    #[error("member certificate in {dir}: {reason}")]
    Member { dir: PathBuf, reason: String },
    #[error("{0}")]
    Crypto(String),
}

/// The cluster certificate authority.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    key: KeyPair,
    /// Every CA this one's members trust (this one first).
    trust: Vec<CertificateDer<'static>>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Tessera cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn crypto(e: impl std::fmt::Display) -> PkiError {
    PkiError::Crypto(e.to_string())
}

impl ClusterCa {
    /// A new CA, in memory only.
    pub fn generate() -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = ca_params().self_signed(&key).map_err(crypto)?;
        let cert = cert.der().clone();
        Ok(ClusterCa {
            trust: vec![cert.clone()],
            cert,
            key,
        })
    }

    /// Creates a new CA in `dir` (`ca-cert.pem`, `ca-key.pem`), refusing to overwrite an
    /// existing one.
    pub fn create(dir: &Path) -> Result<ClusterCa, PkiError> {
        let err = |reason: String| PkiError::Ca {
            dir: dir.to_path_buf(),
            reason,
        };
        let (cert_path, key_path) = (dir.join(TRUST_FILE), dir.join(CA_KEY_FILE));
        if cert_path.exists() || key_path.exists() {
            return Err(err("a CA already exists here; not overwriting it".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let ca = ClusterCa::generate()?;
        write_private(&key_path, ca.key.serialize_pem().as_bytes())
            .map_err(|e| err(format!("{CA_KEY_FILE}: {e}")))?;
        std::fs::write(&cert_path, pem_certs(&ca.trust))
            .map_err(|e| err(format!("{TRUST_FILE}: {e}")))?;
        Ok(ca)
    }

    /// Loads the CA from `dir`: its key, and among the certificates of `ca-cert.pem` the one
    /// that matches it (the others are trusted too).
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let err = |reason: String| PkiError::Ca {
            dir: dir.to_path_buf(),
            reason,
        };
        let trust = load_trust(dir)?;
        let key_pem = std::fs::read_to_string(dir.join(CA_KEY_FILE)).map_err(|e| {
            err(format!(
                "{CA_KEY_FILE}: {e} (the CA key stays with the operator; a member needs \
                 {MEMBER_CERT_FILE} and {MEMBER_KEY_FILE} from `tessera ca issue`)"
            ))
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| err(format!("{CA_KEY_FILE}: {e}")))?;
        let cert = trust
            .iter()
            .find(|c| public_key_of(c).as_deref() == Some(rcgen::PublicKeyData::der_bytes(&key)))
            .cloned()
            .ok_or_else(|| {
                err(format!(
                    "{CA_KEY_FILE} matches none of the certificates in {TRUST_FILE}"
                ))
            })?;
        Ok(ClusterCa { cert, key, trust })
    }

    /// Loads the CA, creating it first if `dir` has none.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa, PkiError> {
        if dir.join(TRUST_FILE).exists() {
            ClusterCa::load(dir)
        } else {
            ClusterCa::create(dir)
        }
    }

    /// The CA's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Every CA certificate this CA's members trust.
    pub fn trust(&self) -> &[CertificateDer<'static>] {
        &self.trust
    }

    /// Also trusts `other`'s members (a bundle of two CAs, for rotation).
    pub fn trusting(mut self, other: &ClusterCa) -> ClusterCa {
        for cert in &other.trust {
            if !self.trust.contains(cert) {
                self.trust.push(cert.clone());
            }
        }
        self
    }

    /// Signs `message` with the CA's key (ECDSA P-256, SHA-256, ASN.1): how the first
    /// operator of a cluster is vouched for ([`crate::operators`]). Anyone with the CA
    /// certificate checks it.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use rcgen::SigningKey;
        self.key
            .sign(message)
            .map_err(|e| PkiError::Crypto(format!("signing with the CA key: {e}")))
    }

    /// A fresh member identity (key and certificate signed by this CA) for a member of
    /// `role` called `name`, valid from now for `valid_for`: the certificate's subject says
    /// both (`CN=name, OU=role`), and the servers it talks to check the role
    /// ([`crate::identity`]).
    pub fn issue(
        &self,
        role: MemberRole,
        name: &str,
        valid_for: Duration,
    ) -> Result<MemberIdentity, PkiError> {
        let now = SystemTime::now();
        // A little slack for clocks a few minutes behind the issuer's.
        self.issue_between(role, name, now - Duration::from_secs(600), now + valid_for)
    }

    /// [`ClusterCa::issue`], valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        role: MemberRole,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<MemberIdentity, PkiError> {
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string()]).map_err(crypto)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(crypto)?;
        Ok(MemberIdentity {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: self.trust.clone(),
        })
    }

    /// A member identity minted at start by a member that holds the CA key (`tessera up`, a
    /// one-machine cluster): valid for ten years, as long as the process may run.
    pub fn member(&self, role: MemberRole, name: &str) -> Result<MemberIdentity, PkiError> {
        self.issue(role, name, Duration::from_secs(10 * 365 * 24 * 3600))
    }
}

/// The trust bundle in `dir` (`ca-cert.pem`: one or more CA certificates), without any key:
/// what a server needs to check members' and the CA's signatures.
pub fn load_trust(dir: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let err = |reason: String| PkiError::Ca {
        dir: dir.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(dir.join(TRUST_FILE)).map_err(|e| {
        err(format!(
            "{TRUST_FILE}: {e} (create a CA with `tessera ca init`)"
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{TRUST_FILE} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!("{TRUST_FILE} holds no certificate")));
    }
    // A bundle put together with `cat` may name a CA twice.
    let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(certs.len());
    for cert in certs {
        if !unique.contains(&cert) {
            unique.push(cert);
        }
    }
    Ok(unique)
}

/// The certificates as PEM, one after the other.
pub fn pem_certs(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The DER SubjectPublicKeyInfo's key bits of a certificate.
fn public_key_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// When `cert` stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Checks that `cert` is a member certificate issued by one of the CAs in `trust` and valid
/// now, and returns who it names. What a server runs over a certificate that did not come
/// through a TLS handshake (a member's signature on a migration or a cordon).
pub fn verify_member(
    trust: &[CertificateDer<'static>],
    cert: &CertificateDer<'_>,
) -> Result<Peer, String> {
    let anchors = trust
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a trusted CA certificate does not parse: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        format!("the certificate is not a valid member certificate of this cluster: {e:?}")
    })?;
    Peer::from_cert(cert).ok_or_else(|| "the certificate names no known role".to_string())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

/// A member's certificate chain and key, plus the CA certificates it trusts.
pub struct MemberIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberIdentity")
            .field("peer", &self.peer())
            .field("trusted_cas", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl MemberIdentity {
    /// Loads the member identity in `dir` (`member-cert.pem`, `member-key.pem`, `ca-cert.pem`)
    /// and checks it is one of `role`, valid now, and issued by a CA it trusts.
    pub fn load(dir: &Path, role: MemberRole) -> Result<MemberIdentity, PkiError> {
        MemberIdentity::load_checked(dir, Some(role))
    }

    /// [`MemberIdentity::load`] of whatever role the certificate names: for `tessera ctl`,
    /// whose requests carry an operator's signature, so it may borrow a pod's certificate.
    pub fn load_any(dir: &Path) -> Result<MemberIdentity, PkiError> {
        MemberIdentity::load_checked(dir, None)
    }

    fn load_checked(dir: &Path, role: Option<MemberRole>) -> Result<MemberIdentity, PkiError> {
        let err = |reason: String| PkiError::Member {
            dir: dir.to_path_buf(),
            reason,
        };
        let roots = load_trust(dir)?;
        let chain_pem = std::fs::read(dir.join(MEMBER_CERT_FILE))
            .map_err(|e| err(format!("{MEMBER_CERT_FILE}: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("{MEMBER_CERT_FILE} is not PEM: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| err(format!("{MEMBER_CERT_FILE} holds no certificate")))?;
        let key = PrivateKeyDer::from_pem_file(dir.join(MEMBER_KEY_FILE))
            .map_err(|e| err(format!("{MEMBER_KEY_FILE}: {e}")))?;
        let peer = verify_member(&roots, leaf).map_err(err)?;
        match (peer.role(), role) {
            (Some(_), None) => {}
            (Some(r), Some(role)) if r == role => {}
            (Some(r), Some(role)) => {
                return Err(err(format!(
                    "it is a {r}'s certificate, and this is a {role} (issue one with \
                     `tessera ca issue --role {role}`)"
                )))
            }
            (None, _) => return Err(err("the certificate names no role".into())),
        }
        let pair = KeyPair::try_from(&key).map_err(|e| err(format!("{MEMBER_KEY_FILE}: {e}")))?;
        if public_key_of(leaf).as_deref() != Some(rcgen::PublicKeyData::der_bytes(&pair)) {
            return Err(err(format!(
                "{MEMBER_KEY_FILE} is not the key of {MEMBER_CERT_FILE}"
            )));
        }
        let identity = MemberIdentity { chain, key, roots };
        if let Some(left) = identity.expires_in() {
            if left < EXPIRY_WARNING {
                tracing::warn!(
                    dir = %dir.display(),
                    days = left.as_secs() / 86_400,
                    "the member certificate expires soon; issue a new one (`tessera ca issue`)"
                );
            }
        }
        Ok(identity)
    }

    /// The member identity in `dir` if it has one; else, if `dir` holds the CA key, one minted
    /// now for a member of `role` called `name`.
    pub fn load_or_mint(
        dir: &Path,
        role: MemberRole,
        name: &str,
    ) -> Result<MemberIdentity, PkiError> {
        if dir.join(MEMBER_CERT_FILE).exists() {
            return MemberIdentity::load(dir, role);
        }
        if dir.join(CA_KEY_FILE).exists() {
            return ClusterCa::load(dir)?.member(role, name);
        }
        Err(PkiError::Member {
            dir: dir.to_path_buf(),
            reason: format!(
                "no {MEMBER_CERT_FILE} and {MEMBER_KEY_FILE} (issue them where the CA key is \
                 kept: `tessera ca issue --role {role} --name {name} --cluster-ca CA-DIR --out \
                 {}`)",
                dir.display()
            ),
        })
    }

    /// Writes the identity into `dir`: `member-cert.pem`, `member-key.pem` (mode 0600) and
    /// the trust bundle `ca-cert.pem`. Refuses a directory holding a CA key (members are
    /// kept apart from it) or a member identity already.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let err = |reason: String| PkiError::Member {
            dir: dir.to_path_buf(),
            reason,
        };
        if dir.join(CA_KEY_FILE).exists() {
            return Err(err(format!(
                "it holds the CA key ({CA_KEY_FILE}); keep member certificates elsewhere"
            )));
        }
        if dir.join(MEMBER_CERT_FILE).exists() || dir.join(MEMBER_KEY_FILE).exists() {
            return Err(err(
                "a member identity exists here; not overwriting it".into()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let key_pem = pem_encode("PRIVATE KEY", self.key.secret_der());
        write_private(&dir.join(MEMBER_KEY_FILE), key_pem.as_bytes())
            .map_err(|e| err(format!("{MEMBER_KEY_FILE}: {e}")))?;
        std::fs::write(dir.join(MEMBER_CERT_FILE), pem_certs(&self.chain))
            .map_err(|e| err(format!("{MEMBER_CERT_FILE}: {e}")))?;
        std::fs::write(dir.join(TRUST_FILE), pem_certs(&self.roots))
            .map_err(|e| err(format!("{TRUST_FILE}: {e}")))?;
        Ok(())
    }

    /// Who this identity's certificate names.
    pub fn peer(&self) -> Option<Peer> {
        Peer::from_cert(self.chain.first()?)
    }

    /// How long until the certificate expires (zero if it has).
    pub fn expires_in(&self) -> Option<Duration> {
        let end = not_after(self.chain.first()?)?;
        Some(end.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// This member's own certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The CA certificates this member trusts.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// This member's certificate chain and key, to show as a client of another protocol (a
    /// telnet gateway to the routers).
    pub fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }

    /// Signs `message` with this member's key (ECDSA P-256, SHA-256, ASN.1); anyone who
    /// trusts its CA checks it against [`MemberIdentity::cert`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use rcgen::SigningKey;
        KeyPair::try_from(&self.key)
            .map_err(crypto)?
            .sign(message)
            .map_err(|e| PkiError::Crypto(format!("signing with the member key: {e}")))
    }

    fn root_store(&self) -> Result<Arc<rustls::RootCertStore>, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            roots.add(root.clone()).map_err(crypto)?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side of the cluster bus, speaking every cluster format up to the newest:
    /// requires a client certificate from a trusted CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, PkiError> {
        self.cluster_server_config(crate::transport::CLUSTER_FORMAT)
    }

    /// Server side of the cluster bus speaking cluster formats up to `max_format`, the
    /// newest preferred.
    pub fn cluster_server_config(&self, max_format: u16) -> Result<quinn::ServerConfig, PkiError> {
        self.server_config_alpns(crate::transport::cluster_alpns(max_format))
    }

    /// Server side of another cluster-internal protocol (such as the persistence service),
    /// with the same mutual TLS.
    pub fn server_config_for(&self, alpn: &[u8]) -> Result<quinn::ServerConfig, PkiError> {
        self.server_config_alpns(vec![alpn.to_vec()])
    }

    /// Server side offering `alpns`, the first preferred.
    fn server_config_alpns(&self, alpns: Vec<Vec<u8>>) -> Result<quinn::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.root_store()?,
            provider.clone(),
        )
        .build()
        .map_err(crypto)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(crypto)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(crypto)?;
        cfg.alpn_protocols = alpns;
        let crypto_cfg = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(crypto)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto_cfg));
        server.transport_config(Arc::new(crate::transport::transport()));
        Ok(server)
    }

    /// Client side of the cluster bus, offering every cluster format up to the newest:
    /// verifies the server against the trusted CAs, shows our own certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, PkiError> {
        self.cluster_client_config(crate::transport::CLUSTER_FORMAT)
    }

    /// Client side of the cluster bus offering cluster formats up to `max_format`.
    pub fn cluster_client_config(&self, max_format: u16) -> Result<quinn::ClientConfig, PkiError> {
        self.client_config_alpns(crate::transport::cluster_alpns(max_format))
    }

    /// Client side of another cluster-internal protocol; the server's certificate names
    /// [`CLUSTER_NAME`].
    pub fn client_config_for(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, PkiError> {
        self.client_config_alpns(vec![alpn.to_vec()])
    }

    /// Client side offering `alpns`.
    fn client_config_alpns(&self, alpns: Vec<Vec<u8>>) -> Result<quinn::ClientConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(crypto)?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(crypto)?;
        cfg.alpn_protocols = alpns;
        let crypto_cfg = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(crypto)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto_cfg));
        client.transport_config(Arc::new(crate::transport::transport()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_saved_and_loaded_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        let again = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(ca.cert, again.cert);
        assert!(
            ClusterCa::create(dir.path()).is_err(),
            "never overwrites a CA"
        );
    }

    #[test]
    fn a_member_certificate_says_its_role_and_name() {
        let ca = ClusterCa::generate().unwrap();
        for role in MemberRole::ALL {
            let identity = ca.member(role, "m-1").unwrap();
            assert_eq!(
                Peer::from_cert(identity.cert()),
                Some(Peer::Member {
                    role,
                    name: "m-1".into()
                })
            );
        }
        // Before roles: no OU. Let through as a legacy peer.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "shard old");
        let cert = params
            .signed_by(&key, &Issuer::new(ca_params(), &ca.key))
            .unwrap();
        let legacy = Peer::from_cert(cert.der()).unwrap();
        assert_eq!(legacy.role(), None);
        assert!(legacy.may_be(MemberRole::Router));
        // An unknown role is no member.
        let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "admin");
        let cert = params
            .signed_by(&key, &Issuer::new(ca_params(), &ca.key))
            .unwrap();
        assert_eq!(Peer::from_cert(cert.der()), None);
    }

    #[test]
    fn an_issued_identity_is_saved_and_loaded_for_its_role_only() {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(ca_dir.path()).unwrap();
        let member_dir = tempfile::tempdir().unwrap();
        let dir = member_dir.path().join("shard");
        let issued = ca
            .issue(MemberRole::Shard, "shard-pool", DEFAULT_VALIDITY)
            .unwrap();
        issued.save(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(MEMBER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the member key is readable by others");
        }
        assert!(!dir.join(CA_KEY_FILE).exists());
        let loaded = MemberIdentity::load(&dir, MemberRole::Shard).unwrap();
        assert_eq!(loaded.cert(), issued.cert());
        let left = loaded.expires_in().unwrap();
        assert!(
            left > DEFAULT_VALIDITY - Duration::from_secs(3600),
            "{left:?}"
        );
        // load_or_mint takes the issued certificate, never mints without the CA key.
        let again = MemberIdentity::load_or_mint(&dir, MemberRole::Shard, "x").unwrap();
        assert_eq!(again.cert(), issued.cert());
        // Another role's start-up refuses it, saying why.
        let e = MemberIdentity::load(&dir, MemberRole::Router).unwrap_err();
        assert!(e.to_string().contains("it is a shard's certificate"), "{e}");
        // A directory with neither says how to get one.
        let empty = member_dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::copy(dir.join(TRUST_FILE), empty.join(TRUST_FILE)).unwrap();
        let e = MemberIdentity::load_or_mint(&empty, MemberRole::Router, "r1").unwrap_err();
        assert!(
            e.to_string().contains("tessera ca issue --role router"),
            "{e}"
        );
        // Saving never overwrites, and never next to the CA key.
        assert!(issued.save(&dir).is_err());
        assert!(issued.save(ca_dir.path()).is_err());
    }

    #[test]
    fn a_certificate_of_a_stranger_ca_or_a_swapped_key_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let stranger = ClusterCa::generate().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // A member of another CA, with our trust bundle next to it.
        let dir = tmp.path().join("foreign");
        stranger
            .issue(MemberRole::Shard, "s", DEFAULT_VALIDITY)
            .unwrap()
            .save(&dir)
            .unwrap();
        std::fs::write(dir.join(TRUST_FILE), pem_certs(ca.trust())).unwrap();
        let e = MemberIdentity::load(&dir, MemberRole::Shard).unwrap_err();
        assert!(
            e.to_string().contains("not a valid member certificate"),
            "{e}"
        );
        // Our certificate with another member's key.
        let dir = tmp.path().join("swapped");
        ca.issue(MemberRole::Shard, "s", DEFAULT_VALIDITY)
            .unwrap()
            .save(&dir)
            .unwrap();
        let other = tmp.path().join("other");
        ca.issue(MemberRole::Shard, "t", DEFAULT_VALIDITY)
            .unwrap()
            .save(&other)
            .unwrap();
        std::fs::remove_file(dir.join(MEMBER_KEY_FILE)).unwrap();
        std::fs::copy(other.join(MEMBER_KEY_FILE), dir.join(MEMBER_KEY_FILE)).unwrap();
        let e = MemberIdentity::load(&dir, MemberRole::Shard).unwrap_err();
        assert!(e.to_string().contains("is not the key of"), "{e}");
        // An expired certificate.
        let day = Duration::from_secs(86_400);
        let expired = ca
            .issue_between(
                MemberRole::Shard,
                "s",
                SystemTime::now() - 2 * day,
                SystemTime::now() - day,
            )
            .unwrap();
        assert!(verify_member(ca.trust(), expired.cert()).is_err_and(|e| e.contains("Expired")));
    }

    #[test]
    fn a_bundle_of_two_cas_trusts_both_and_the_key_picks_the_issuer() {
        let tmp = tempfile::tempdir().unwrap();
        let (old_dir, new_dir) = (tmp.path().join("old"), tmp.path().join("new"));
        let old = ClusterCa::create(&old_dir).unwrap();
        let new = ClusterCa::create(&new_dir).unwrap();
        // The operator appends the old CA's certificate to the new CA's bundle.
        let bundle = pem_certs(&[new.cert().clone(), old.cert().clone()]);
        std::fs::write(new_dir.join(TRUST_FILE), &bundle).unwrap();
        let new = ClusterCa::load(&new_dir).unwrap();
        assert_eq!(new.trust().len(), 2);
        let issued = new
            .issue(MemberRole::Router, "r", DEFAULT_VALIDITY)
            .unwrap();
        assert_eq!(
            issued.chain_and_key().0[1],
            *new.cert(),
            "issued by the new CA"
        );
        assert!(verify_member(new.trust(), issued.cert()).is_ok());
        let by_old = old.issue(MemberRole::Shard, "s", DEFAULT_VALIDITY).unwrap();
        assert!(verify_member(new.trust(), by_old.cert()).is_ok());
        // A bundle whose certificates do not match the key is no CA.
        std::fs::write(new_dir.join(TRUST_FILE), pem_certs(&[old.cert().clone()])).unwrap();
        let e = ClusterCa::load(&new_dir).err().unwrap();
        assert!(e.to_string().contains("matches none"), "{e}");
    }
}
