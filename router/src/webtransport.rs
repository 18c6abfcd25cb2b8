//! Browser players on the router's QUIC port: WebTransport over HTTP/3
//! (ALPN `h3`) beside the native `tessera/1` (docs/client.md, "The web
//! client"). A browser's session carries the same client protocol as a
//! native connection (a control stream the client opens first, datagrams
//! for inputs and snapshots); `quic.rs` serves both.
//!
//! The certificate a browser is shown is chosen by ALPN:
//! - with `--web-cert`/`--web-key`, a certificate from a CA browsers trust
//!   (production: the page connects by name, nothing else is needed);
//! - without, a **development certificate**: a fresh ECDSA P-256 key
//!   certified for [`DEV_CERT_VALIDITY`] (browsers take a certificate by its
//!   SHA-256 hash, `serverCertificateHashes`, only when it is ECDSA and valid
//!   for under 14 days). It is made again every [`DEV_CERT_RENEWAL`], and the
//!   page learns the current hash from `/tessera.json` before it connects.
//!
//! Native clients offer `tessera/1` and are always shown the router's own
//! certificate (the one they pin).

use parking_lot::RwLock;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::RouterError;

/// The ALPN of WebTransport's HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";
/// The path a browser opens its WebTransport session on.
pub const PATH: &str = "/tessera";
/// How long a development certificate is valid (browsers refuse a hashed
/// certificate valid for 14 days or more).
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600);
/// How often a development certificate is made again.
pub const DEV_CERT_RENEWAL: Duration = Duration::from_secs(24 * 3600);
/// A development certificate's start lies this far back, for clocks that
/// run a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// What browsers are shown, and what the page is told about it.
#[derive(Debug)]
pub struct WebCert {
    current: RwLock<Current>,
    /// A development certificate (renewed, published by hash).
    development: bool,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate (DER), for `serverCertificateHashes`.
    sha256: [u8; 32],
}

impl WebCert {
    /// A new development certificate.
    pub fn development() -> Result<WebCert, RouterError> {
        Ok(WebCert {
            current: RwLock::new(make_development(SystemTime::now())?),
            development: true,
        })
    }

    /// The PEM certificate chain `cert` and PEM private key `key`, from a
    /// CA browsers trust.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<WebCert, RouterError> {
        let (chain, key) = crate::tls::read_pem(cert, key, "web")?;
        Ok(WebCert {
            current: RwLock::new(certified(chain, key)?),
            development: false,
        })
    }

    /// Whether this is a development certificate, which the page must be
    /// told the hash of.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The hashes a page passes as `serverCertificateHashes`: the current
    /// development certificate's, or none for a CA-issued one.
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        if self.development {
            vec![self.current.read().sha256]
        } else {
            Vec::new()
        }
    }

    /// Makes a new development certificate (for a router that runs longer
    /// than one is valid). A CA-issued certificate is left as it is.
    pub fn renew(&self) -> Result<(), RouterError> {
        if self.development {
            *self.current.write() = make_development(SystemTime::now())?;
        }
        Ok(())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().key.clone()
    }
}

/// Renews `cert` every [`DEV_CERT_RENEWAL`] while the router runs.
pub async fn renew_every_day(cert: Arc<WebCert>) {
    if !cert.is_development() {
        return;
    }
    loop {
        tokio::time::sleep(DEV_CERT_RENEWAL).await;
        match cert.renew() {
            Ok(()) => tracing::info!("renewed the development WebTransport certificate"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the development WebTransport certificate")
            }
        }
    }
}

fn make_development(now: SystemTime) -> Result<Current, RouterError> {
    let fail = |e: rcgen::Error| {
        RouterError::Tls(format!("cannot make a development web certificate: {e}"))
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "tessera".to_string(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
    params.not_before = time::OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = time::OffsetDateTime::from(now + DEV_CERT_VALIDITY - CLOCK_SKEW);
    let cert = params.self_signed(&key).map_err(fail)?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    certified(vec![cert.der().clone()], der)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Current, RouterError> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| RouterError::Tls(format!("bad web certificate key: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, chain[0].as_ref());
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Ok(Current {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        sha256,
    })
}

/// Chooses the certificate by what the client offers: `h3` alone (a
/// browser) gets the web certificate, everything else the router's own.
#[derive(Debug)]
pub struct ByAlpn {
    pub native: Arc<CertifiedKey>,
    pub web: Option<Arc<WebCert>>,
}

impl ByAlpn {
    /// The router's own certificate `cert` and its key.
    pub fn new(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        web: Option<Arc<WebCert>>,
    ) -> Result<ByAlpn, RouterError> {
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| RouterError::Tls(format!("bad certificate or key: {e}")))?;
        Ok(ByAlpn {
            native: Arc::new(CertifiedKey::new(vec![cert], signing)),
            web,
        })
    }
}

impl ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let browser = hello.alpn().is_some_and(|mut offered| {
            let mut h3 = false;
            for p in offered.by_ref() {
                if p == tessera_proto::ALPN {
                    return false;
                }
                h3 |= p == ALPN_H3;
            }
            h3
        });
        match (&self.web, browser) {
            (Some(web), true) => Some(web.key()),
            _ => Some(self.native.clone()),
        }
    }
}

/// Base64 (standard, padded) of a certificate hash, as the page wants it.
pub fn hash_base64(hash: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn a_development_certificate_is_ecdsa_and_valid_for_under_14_days() {
        let now = SystemTime::now();
        let current = make_development(now).expect("certificate");
        let der = current.key.cert[0].as_ref();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).expect("x509");
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!(span < 14 * 24 * 3600, "valid for {span} s");
        assert!(validity.is_valid(), "valid now");
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        assert_eq!(current.sha256.as_slice(), digest.as_ref());
    }

    #[test]
    fn renewing_changes_the_published_hash() {
        let web = WebCert::development().expect("certificate");
        let before = web.hashes();
        web.renew().expect("renewed");
        assert_eq!(before.len(), 1);
        assert_ne!(before, web.hashes());
    }
}
