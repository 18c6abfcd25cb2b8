//! etcd over TLS: the files a client shows etcd (the CA that signed etcd's
//! certificate, this client's certificate and key), read and checked before
//! any connection, and a diagnosis of a connection that failed, which says
//! which side refused whom instead of passing on gRPC's transport dump.

use super::EtcdConnectError;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a client reaches etcd over TLS: PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate (or several) that signed etcd's server
    /// certificate; only certificates it signed are accepted.
    pub ca: PathBuf,
    /// The certificate this client shows. An etcd started with
    /// `--client-cert-auth` accepts only clients whose certificate its
    /// `--trusted-ca-file` signed; `None` shows no certificate.
    pub client: Option<ClientCert>,
}

/// A client certificate (chain) and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdTls {
    /// TLS checked against `ca`, showing the client certificate `cert`
    /// with its key `key`.
    pub fn new(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> EtcdTls {
        EtcdTls {
            ca: ca.into(),
            client: Some(ClientCert {
                cert: cert.into(),
                key: key.into(),
            }),
        }
    }
}

/// [`EtcdTls`] with its files read and checked. Holds a private key: no
/// `Debug`.
pub(crate) struct LoadedTls {
    ca_path: PathBuf,
    ca_pem: Vec<u8>,
    client: Option<LoadedClient>,
    config: Arc<ClientConfig>,
}

struct LoadedClient {
    cert_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The certificate's Common Name: the etcd user when etcd's auth is on.
    user: Option<String>,
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> EtcdConnectError {
    EtcdConnectError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdConnectError> {
    std::fs::read(path).map_err(|e| file_error(what, path, e))
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, EtcdConnectError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A TLS client configuration like the one the etcd client builds (ring,
/// TLS 1.2 and 1.3), for the diagnosis.
fn config_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
}

/// Offers HTTP/2 by ALPN, as gRPC does: etcd serves gRPC over TLS only
/// to clients that offer it.
fn speaking_h2(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

impl LoadedTls {
    /// Reads and checks every file: each must exist, hold what it should,
    /// and the key must belong to the certificate. Errors name the file.
    pub(crate) fn load(tls: &EtcdTls) -> Result<LoadedTls, EtcdConnectError> {
        const CA: &str = "the etcd CA certificate";
        const CERT: &str = "the etcd client certificate";
        const KEY: &str = "the etcd client key";
        let ca_pem = read(CA, &tls.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in certificates(CA, &tls.ca, &ca_pem)? {
            roots.add(cert).map_err(|e| {
                file_error(CA, &tls.ca, format!("not a usable CA certificate: {e}"))
            })?;
        }
        let builder = config_builder().with_root_certificates(roots);
        let (config, client) = match &tls.client {
            None => (builder.with_no_client_auth(), None),
            Some(c) => {
                let cert_pem = read(CERT, &c.cert)?;
                let key_pem = read(KEY, &c.key)?;
                let chain = certificates(CERT, &c.cert, &cert_pem)?;
                let user = common_name(&chain[0]);
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| file_error(KEY, &c.key, format!("not a PEM private key: {e}")))?;
                let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                    let reason = match e {
                        rustls::Error::InconsistentKeys(_) => {
                            format!("does not belong to the certificate {}", c.cert.display())
                        }
                        e => format!("cannot be used with {}: {e}", c.cert.display()),
                    };
                    file_error(KEY, &c.key, reason)
                })?;
                let client = LoadedClient {
                    cert_path: c.cert.clone(),
                    user,
                    cert_pem,
                    key_pem,
                };
                (config, Some(client))
            }
        };
        Ok(LoadedTls {
            ca_path: tls.ca.clone(),
            ca_pem,
            client,
            config: speaking_h2(config),
        })
    }

    /// The Common Name of the client certificate, which etcd's auth takes
    /// for the user name.
    pub(crate) fn user(&self) -> Option<&str> {
        self.client.as_ref()?.user.as_deref()
    }

    /// The etcd client's TLS options from the same files.
    pub(crate) fn options(&self) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        match &self.client {
            Some(c) => options.identity(etcd_client::Identity::from_pem(&c.cert_pem, &c.key_pem)),
            None => options,
        }
    }
}

/// The first Common Name in a certificate's subject.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What one endpoint showed when dialled directly.
#[derive(Debug)]
enum Probe {
    /// It answered (HTTP/2 over the expected transport): whatever failed,
    /// it was not the connection.
    Answered,
    /// No TCP connection.
    Tcp(String),
    /// The TLS handshake, or the first read after it, failed.
    Tls(rustls::Error),
    /// A plain (http://) client reached a server that speaks TLS.
    ServesTls,
    /// A TLS client reached a server that speaks plain HTTP/2.
    ServesPlain,
    /// Something else: closed, reset, silent.
    Other(String),
}

/// The client preface of HTTP/2 and an empty SETTINGS frame: a gRPC server
/// answers with its own SETTINGS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Why the endpoints do not answer, as far as dialling each one directly
/// can tell: a TCP error ("Connection refused"), or what went wrong in
/// TLS. `None` when every endpoint answers (the failure was elsewhere).
/// The second value is true when a TLS problem was found.
pub(crate) async fn diagnose(
    endpoints: &[String],
    tls: Option<&LoadedTls>,
    timeout: Duration,
) -> Option<(String, bool)> {
    let mut reasons = Vec::new();
    let mut tls_problem = false;
    for endpoint in endpoints {
        let (authority, host) = authority_and_host(endpoint);
        let reason = match probe(authority, host, tls, timeout).await {
            Probe::Answered => continue,
            Probe::Tcp(reason) | Probe::Other(reason) => reason,
            probe => {
                tls_problem = true;
                explain(&probe, host, tls)
            }
        };
        reasons.push(if endpoints.len() == 1 {
            reason
        } else {
            format!("{endpoint}: {reason}")
        });
    }
    (!reasons.is_empty()).then(|| (reasons.join("; "), tls_problem))
}

/// `host:port` and the host (brackets removed) of an endpoint URL.
fn authority_and_host(endpoint: &str) -> (&str, &str) {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (authority, host)
}

async fn probe(authority: &str, host: &str, tls: Option<&LoadedTls>, timeout: Duration) -> Probe {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Probe::Tcp(e.to_string()),
        Err(_) => return Probe::Tcp(format!("no TCP connection within {timeout:?}")),
    };
    match tls {
        Some(tls) => match tls_probe(tcp, host, tls.config.clone(), timeout).await {
            // Closed, silent or garbled under TLS: maybe it does not speak
            // TLS.
            probe @ (Probe::Other(_) | Probe::Tls(rustls::Error::InvalidMessage(_))) => {
                match plain_probe(authority, timeout).await {
                    Probe::Answered => Probe::ServesPlain,
                    _ => probe,
                }
            }
            probe => probe,
        },
        None => match answers_h2(tcp, timeout).await {
            Ok(()) => Probe::Answered,
            Err(why) => {
                let why = why.to_string();
                // Does it speak TLS? Any certificate it shows proves it (an
                // empty trust store rejects every one).
                let Ok(tcp) = tokio::net::TcpStream::connect(authority).await else {
                    return Probe::Other(why);
                };
                let config = speaking_h2(
                    config_builder()
                        .with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth(),
                );
                match tls_probe(tcp, host, config, timeout).await {
                    Probe::Tls(rustls::Error::InvalidCertificate(_)) => Probe::ServesTls,
                    _ => Probe::Other(why),
                }
            }
        },
    }
}

async fn plain_probe(authority: &str, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(tcp)) => match answers_h2(tcp, timeout).await {
            Ok(()) => Probe::Answered,
            Err(why) => Probe::Other(why.to_string()),
        },
        Ok(Err(e)) => Probe::Tcp(e.to_string()),
        Err(_) => Probe::Tcp(format!("no TCP connection within {timeout:?}")),
    }
}

/// Sends the HTTP/2 preface and reads the server's first frame, which
/// must be its SETTINGS.
async fn answers_h2<S>(mut stream: S, timeout: Duration) -> Result<(), std::io::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::io::{Error, ErrorKind};
    let exchange = async {
        stream.write_all(H2_PREFACE).await?;
        stream.flush().await?;
        let mut frame = [0u8; 9];
        stream.read_exact(&mut frame).await?;
        Ok::<[u8; 9], Error>(frame)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(frame)) if frame[3] == 0x04 => Ok(()),
        Ok(Ok(_)) => Err(Error::new(
            ErrorKind::InvalidData,
            "etcd answered, but not in HTTP/2",
        )),
        Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => Err(Error::new(
            ErrorKind::UnexpectedEof,
            "etcd closed the connection",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::new(
            ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// A TLS handshake, then the HTTP/2 preface: a server that refuses the
/// client's certificate says so in an alert, which TLS 1.3 delivers only
/// after the client's side of the handshake is done.
async fn tls_probe(
    tcp: tokio::net::TcpStream,
    host: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Probe {
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Probe::Other(format!("{host} is not a valid TLS server name"));
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tls_failure(e),
        Err(_) => return Probe::Other(format!("no TLS handshake within {timeout:?}")),
    };
    match answers_h2(stream, timeout).await {
        Ok(()) => Probe::Answered,
        Err(e) => tls_failure(e),
    }
}

/// tokio-rustls reports TLS errors as an `io::Error` wrapping the rustls
/// error (which `source()` skips: look inside).
fn tls_failure(e: std::io::Error) -> Probe {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Probe::Tls(tls.clone()),
        None => Probe::Other(e.to_string()),
    }
}

/// A probe's finding in words an operator can act on.
fn explain(probe: &Probe, host: &str, tls: Option<&LoadedTls>) -> String {
    let ca = tls.map_or(String::new(), |t| t.ca_path.display().to_string());
    let client_cert = tls
        .and_then(|t| t.client.as_ref())
        .map(|c| c.cert_path.display());
    match probe {
        Probe::ServesTls => "etcd serves TLS here: reach it with an https:// endpoint, the CA \
                             that signed its certificate and a client certificate"
            .into(),
        Probe::ServesPlain => "etcd does not serve TLS here (it answers plain HTTP/2): use an \
                               http:// endpoint, or start etcd with --cert-file and --key-file"
            .into(),
        Probe::Tls(rustls::Error::InvalidCertificate(e)) => match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("etcd's certificate is not signed by the CA in {ca}")
            }
            CertificateError::NotValidForName => {
                format!("etcd's certificate is not valid for {host} (not among its names)")
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "etcd's certificate is not valid for {host}: it names {}",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "etcd's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "etcd's certificate is not valid yet (are the clocks right?)".into()
            }
            other => format!("etcd's certificate was rejected: {other:?}"),
        },
        Probe::Tls(rustls::Error::AlertReceived(alert)) => match (alert, client_cert) {
            (
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::HandshakeFailure,
                None,
            ) => "etcd wants a client certificate, and none was given".into(),
            (
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied,
                Some(cert),
            ) => format!(
                "etcd refused our client certificate {cert} (TLS alert {alert:?}): etcd accepts \
                 only certificates its --trusted-ca-file signed"
            ),
            (alert, _) => format!("etcd ended the TLS handshake: {alert:?}"),
        },
        Probe::Tls(e) => format!("TLS with etcd failed: {e}"),
        Probe::Answered => "etcd answers".into(),
        Probe::Tcp(why) | Probe::Other(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parts() {
        assert_eq!(
            authority_and_host("https://127.0.0.1:2379"),
            ("127.0.0.1:2379", "127.0.0.1")
        );
        assert_eq!(
            authority_and_host("https://etcd.tessera.svc:2379/"),
            ("etcd.tessera.svc:2379", "etcd.tessera.svc")
        );
        assert_eq!(
            authority_and_host("https://[::1]:2379"),
            ("[::1]:2379", "::1")
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let tls = EtcdTls::new(
            "/nonexistent/ca.pem",
            "/nonexistent/c.pem",
            "/nonexistent/k.pem",
        );
        let err = LoadedTls::load(&tls)
            .err()
            .expect("no such file")
            .to_string();
        assert!(
            err.starts_with("cannot use the etcd CA certificate /nonexistent/ca.pem: "),
            "{err}"
        );
    }

    /// A TLS client at a plain-HTTP/2 server (an etcd without
    /// `--cert-file`) is told so. The stand-in answers the HTTP/2 preface
    /// with SETTINGS and hangs up on anything else.
    #[tokio::test]
    async fn tls_to_a_plain_server_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let tls = LoadedTls::load(&EtcdTls {
            ca: dir.path().join("ca.pem"),
            client: None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut start = [0u8; 5];
                if conn.read_exact(&mut start).await.is_ok() && &start == b"PRI *" {
                    let _ = conn.write_all(b"\0\0\0\x04\0\0\0\0\0").await;
                }
            }
        });
        let (reason, tls_problem) = diagnose(
            &[format!("https://{addr}")],
            Some(&tls),
            Duration::from_secs(2),
        )
        .await
        .expect("a problem found");
        assert!(tls_problem, "{reason}");
        assert!(
            reason.starts_with("etcd does not serve TLS here"),
            "{reason}"
        );
        // A plain client finds it answering: nothing to diagnose.
        assert!(
            diagnose(&[format!("http://{addr}")], None, Duration::from_secs(2))
                .await
                .is_none()
        );
    }

    #[test]
    fn refusals_are_explained() {
        let none = explain(
            &Probe::Tls(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired,
            )),
            "h",
            None,
        );
        assert_eq!(none, "etcd wants a client certificate, and none was given");
        let untrusted = explain(
            &Probe::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            "h",
            None,
        );
        assert!(untrusted.starts_with("etcd's certificate is not signed by the CA"));
    }
}
