//! The router's TLS identity for QUIC: a self-signed certificate generated
//! on first start and kept in the data dir, so clients can pin it; or one
//! given with `--quic-cert` and `--quic-key` (every router of a cluster
//! serves the same, so clients and telnet gateways pin one file).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::RouterError;

pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate is, in DER (what clients pin).
    pub cert_path: PathBuf,
}

/// Loads the certificate `cert` and its key `key`, each DER or PEM (a
/// certificate chain's first one is served).
pub fn load(cert: &Path, key: &Path) -> Result<Identity, RouterError> {
    use rustls::pki_types::pem::PemObject;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| RouterError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let (cert_bytes, key_bytes) = (read(cert)?, read(key)?);
    let bad = |p: &Path, e: &dyn std::fmt::Display| {
        RouterError::Tls(format!("{} is not a certificate or key: {e}", p.display()))
    };
    let der = if cert_bytes.starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(&cert_bytes).map_err(|e| bad(cert, &e))?
    } else {
        CertificateDer::from(cert_bytes)
    };
    let private = if key_bytes.starts_with(b"-----BEGIN") {
        PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| bad(key, &e))?
    } else {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_bytes))
    };
    Ok(Identity {
        cert: der,
        key: private,
        cert_path: cert.to_path_buf(),
    })
}

/// Loads `dir/quic-cert.der` and `dir/quic-key.der`, creating them (and a
/// PEM copy of the certificate) if missing.
/// Snapshot datagrams a connection may have queued (bytes): about half a
/// second of a busy view.
pub const DATAGRAM_SEND_BUFFER: usize = 16 * 1024;
/// Unacknowledged control-stream bytes a connection may have in flight.
pub const SEND_WINDOW: u64 = 256 * 1024;

pub fn load_or_create(dir: &Path) -> Result<Identity, RouterError> {
    let cert_path = dir.join("quic-cert.der");
    let key_path = dir.join("quic-key.der");
    let io = |what: &str, p: &Path, e: std::io::Error| {
        RouterError::Tls(format!("{what} {}: {e}", p.display()))
    };
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let names = vec!["localhost".to_string(), "tessera".to_string()];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| RouterError::Tls(format!("cannot generate certificate: {e}")))?;
        write_private(&key_path, &ck.signing_key.serialize_der())
            .map_err(|e| io("cannot write", &key_path, e))?;
        std::fs::write(&cert_path, ck.cert.der().as_ref())
            .map_err(|e| io("cannot write", &cert_path, e))?;
        let pem_path = dir.join("quic-cert.pem");
        std::fs::write(&pem_path, ck.cert.pem()).map_err(|e| io("cannot write", &pem_path, e))?;
        tracing::info!(cert = %cert_path.display(), "generated a self-signed QUIC certificate");
    }
    let cert = std::fs::read(&cert_path).map_err(|e| io("cannot read", &cert_path, e))?;
    let key = std::fs::read(&key_path).map_err(|e| io("cannot read", &key_path, e))?;
    Ok(Identity {
        cert: CertificateDer::from(cert),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        cert_path,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

/// A QUIC server configuration with the `tessera/1` ALPN, and with `web`
/// WebTransport's `h3` too (browsers are shown that certificate:
/// `webtransport.rs`). Players show no certificate; with `relay_cas`, a
/// client may show one from those CAs (a telnet gateway, a cluster member),
/// which rustls verifies before the connection is up, so a connection that
/// has a peer certificate is a member's.
pub fn server_config(
    id: &Identity,
    relay_cas: &[CertificateDer<'static>],
    web: Option<Arc<crate::webtransport::WebCert>>,
) -> Result<quinn::ServerConfig, RouterError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RouterError::Tls(e.to_string()))?;
    let builder = if relay_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in relay_cas {
            roots
                .add(ca.clone())
                .map_err(|e| RouterError::Tls(format!("bad cluster CA certificate: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| RouterError::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let browsers = web.is_some();
    let resolver = crate::webtransport::ByAlpn::new(id.cert.clone(), id.key.clone_key(), web)?;
    let mut tls = builder.with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![tessera_proto::ALPN.to_vec()];
    if browsers {
        tls.alpn_protocols
            .push(crate::webtransport::ALPN_H3.to_vec());
    }
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| RouterError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            std::time::Duration::from_secs(30)
                .try_into()
                .expect("30 s is a valid idle timeout"),
        ))
        .keep_alive_interval(Some(std::time::Duration::from_secs(5)))
        // HTTP/3 under WebTransport: the browser opens its control and
        // QPACK streams (native clients open none).
        .max_concurrent_uni_streams(4u32.into())
        .max_concurrent_bidi_streams(4u32.into())
        // Bounds on what one connection can make the router hold. Quinn's
        // defaults (about 1 MB of queued datagrams, 10 MB of unacknowledged
        // stream data) suit bulk transfer; a player needs a few snapshots
        // (~1 KB each, stale after 100 ms; quinn drops the oldest when the
        // buffer is full) and a few control frames (at most 16 KB each).
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .datagram_receive_buffer_size(Some(64 * 1024))
        .send_window(SEND_WINDOW)
        .stream_receive_window((64u32 * 1024).into())
        .receive_window((128u32 * 1024).into());
    cfg.transport_config(std::sync::Arc::new(transport));
    Ok(cfg)
}

/// The TLS acceptor of the telnet-over-TLS port: the given PEM certificate
/// chain and key, or else the router's own self-signed identity.
pub fn telnet_acceptor(
    own: &Identity,
    files: Option<&(PathBuf, PathBuf)>,
) -> Result<tokio_rustls::TlsAcceptor, RouterError> {
    match files {
        Some((cert, key)) => telnet_acceptor_from_pem(cert, key),
        None => acceptor(vec![own.cert.clone()], own.key.clone_key()),
    }
}

/// A telnet-over-TLS acceptor serving the PEM certificate chain in `cert`
/// and the PEM private key in `key` (the router's, or a telnet gateway's).
pub fn telnet_acceptor_from_pem(
    cert: &Path,
    key: &Path,
) -> Result<tokio_rustls::TlsAcceptor, RouterError> {
    let (chain, key) = read_pem(cert, key, "telnet TLS")?;
    acceptor(chain, key)
}

/// The PEM certificate chain in `cert` (at least one) and the PEM private
/// key in `key`; errors name the files as `what`'s.
pub fn read_pem(
    cert: &Path,
    key: &Path,
    what: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RouterError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |file: &str, p: &Path, e: rustls::pki_types::pem::Error| {
        RouterError::Tls(format!(
            "cannot read the {what} {file} {}: {e}",
            p.display()
        ))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("certificate", cert, e))?;
    if chain.is_empty() {
        return Err(RouterError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e))?;
    Ok((chain, key))
}

fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<tokio_rustls::TlsAcceptor, RouterError> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RouterError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| RouterError::Tls(format!("telnet TLS certificate and key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
