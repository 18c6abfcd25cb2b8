//! Operators are ed25519 key pairs, and the server that acts checks their signatures.
//!
//! **Keys.** An operator holds an [`OperatorKey`] (a credential file, mode 0600, written by
//! `tessera ca operator NAME` or `tessera ctl operator keygen NAME`); nothing else can derive
//! it. Its public half lives in an [`OperatorRecord`] under `<prefix>/operators/<name>` in the
//! cluster store (or, for `tessera up` without etcd, as `<name>.json` in the CA directory's
//! `operators/`; [`RecordSource`]).
//!
//! **Who may add an operator.** A record carries the signature of whoever added it: the
//! cluster CA (`added_by = "ca"`, ECDSA with the CA's key; that is how the first operator is
//! bootstrapped, on the machine that keeps the CA key) or an operator valid at the time of the
//! check (`operator:<name>`, ed25519). A record is valid only if that signature verifies and
//! its signer is valid in turn (at most [`MAX_CHAIN`] links), so a member that can write to
//! the store cannot make itself an operator. Revoking an operator marks its record revoked; the
//! operators it added lose their voucher too, until another operator adds them again.
//!
//! **Requests.** A privileged request carries an [`OperatorSig`]: the operator's name, the
//! time, a random nonce and an ed25519 signature over `tessera-request/1|<kind>|<operator>|
//! <unix ms>|<nonce>|<body>`, where `kind` names the request (`role`, `restore`, ...) and
//! `body` is its canonical bytes. The server that acts calls [`Operators::check`]: the
//! operator's record is read at that moment (so a revocation takes effect on the next
//! request), the time must be within [`MAX_SKEW`] of the server's clock, and the nonce must be
//! new: it is recorded in the cluster store (`<prefix>/nonces/<operator>/<nonce>`, created
//! only if absent, on a lease that outlives the skew window), so a replay is refused by every
//! replica, not just the one that saw the request first.

use crate::store::{ClusterStore, Expect, StoreError};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far a request's time may be from the checking server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Longest chain of operators vouching for each other, up to the CA.
pub const MAX_CHAIN: usize = 16;
/// Where operator records live, under the cluster prefix.
pub const OPERATORS_DIR: &str = "operators/";
/// Where used nonces live (briefly), under the cluster prefix.
pub const NONCES_DIR: &str = "nonces/";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("not signed by an operator (this request needs `--credential FILE`)")]
    Unsigned,
    #[error("there is no operator called {0:?}")]
    Unknown(String),
    #[error("operator {0:?} has been revoked")]
    Revoked(String),
    #[error("the record of operator {name:?} is not valid: {reason}")]
    BadRecord { name: String, reason: String },
    #[error("the signature of operator {0:?} does not verify")]
    BadSignature(String),
    #[error("the request was signed {skew_secs} s away from this server's clock (at most {} s allowed; check the clocks)", MAX_SKEW.as_secs())]
    Stale { skew_secs: u64 },
    #[error("this request was already used (a replay)")]
    Replayed,
    #[error("operator credential {path}: {reason}")]
    Credential { path: PathBuf, reason: String },
    #[error("operator names are 1 to 64 letters, digits, '-', '_' and '.'")]
    BadName,
    #[error("cannot read the operators: {0}")]
    Store(#[from] StoreError),
    #[error("operator records in {dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
}

impl OperatorError {
    /// Whether the request itself was refused (as opposed to the server being unable to
    /// decide, a [`OperatorError::Store`] outage).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, OperatorError::Store(_) | OperatorError::Dir { .. })
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bytes as lowercase hex (keys, signatures, nonces; shared with `authority.rs`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex, `None` for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks an operator name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), OperatorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(OperatorError::BadName)
    }
}

// ------------------------------------------------------------------ requests

/// An operator's signature on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSig {
    pub operator: String,
    pub unix_ms: u64,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// ed25519 over [`request_message`], hex.
    pub signature: String,
}

/// The bytes an operator signs for a request of `kind` with canonical `body`.
pub fn request_message(
    kind: &str,
    body: &[u8],
    operator: &str,
    unix_ms: u64,
    nonce: &str,
) -> Vec<u8> {
    let mut m = format!("tessera-request/1|{kind}|{operator}|{unix_ms}|{nonce}|").into_bytes();
    m.extend_from_slice(body);
    m
}

// --------------------------------------------------------------------- keys

/// An operator's private key: the credential file.
#[derive(Clone)]
pub struct OperatorKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey")
            .field("name", &self.name)
            .field("public_key", &self.public_hex())
            .finish_non_exhaustive()
    }
}

/// The credential file's JSON.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    operator: String,
    /// `ed25519`.
    algorithm: String,
    /// The 32-byte secret key, hex.
    secret_key: String,
}

impl OperatorKey {
    /// A new random key for operator `name`.
    pub fn generate(name: &str) -> Result<OperatorKey, OperatorError> {
        check_name(name)?;
        Ok(OperatorKey {
            name: name.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key, hex (what `ctl operator add --public-key` takes).
    pub fn public_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// Signs a request of `kind` with canonical `body`, now, with a fresh nonce.
    pub fn sign_request(&self, kind: &str, body: &[u8]) -> OperatorSig {
        self.sign_request_at(kind, body, now_unix_ms())
    }

    /// [`OperatorKey::sign_request`] at a given time (tests of stale requests).
    pub fn sign_request_at(&self, kind: &str, body: &[u8], unix_ms: u64) -> OperatorSig {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let nonce = hex(&nonce);
        let message = request_message(kind, body, &self.name, unix_ms, &nonce);
        OperatorSig {
            operator: self.name.clone(),
            unix_ms,
            nonce,
            signature: hex(&self.key.sign(&message).to_bytes()),
        }
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs arbitrary canonical bytes (records, migrations), hex.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        hex(&self.key.sign(message).to_bytes())
    }

    /// Loads a credential file.
    pub fn load(path: &Path) -> Result<OperatorKey, OperatorError> {
        let err = |reason: String| OperatorError::Credential {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
            err(format!(
                "not an operator credential ({e}); credentials from before operator key pairs \
                 must be replaced: `tessera ca operator NAME` (docs/security.md)"
            ))
        })?;
        if file.algorithm != "ed25519" {
            return Err(err(format!("unknown algorithm {:?}", file.algorithm)));
        }
        check_name(&file.operator).map_err(|e| err(e.to_string()))?;
        let secret: [u8; 32] = unhex(&file.secret_key)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("the secret key is not 64 hex digits".into()))?;
        Ok(OperatorKey {
            name: file.operator,
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// Writes the credential file (mode 0600), refusing to overwrite one.
    pub fn save(&self, path: &Path) -> Result<(), OperatorError> {
        use std::io::Write;
        let err = |reason: String| OperatorError::Credential {
            path: path.to_path_buf(),
            reason,
        };
        let file = KeyFile {
            operator: self.name.clone(),
            algorithm: "ed25519".into(),
            secret_key: hex(self.key.as_bytes()),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| err(e.to_string()))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(&json).map_err(|e| err(e.to_string()))
    }
}

// ------------------------------------------------------------------ records

/// An operator's public key and who vouched for it (JSON in the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub name: String,
    /// ed25519 public key, hex.
    pub public_key: String,
    pub added_unix_ms: u64,
    /// `ca` or `operator:<name>`.
    pub added_by: String,
    /// The voucher's signature over [`OperatorRecord::add_message`], hex.
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// Who revoked an operator, when, and their signature over
/// [`OperatorRecord::revoke_message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub unix_ms: u64,
    pub by: String,
    pub signature: String,
}

/// Who signs a record: the CA, or an operator.
pub enum Voucher<'a> {
    Ca(&'a crate::pki::ClusterCa),
    Operator(&'a OperatorKey),
}

impl Voucher<'_> {
    fn by(&self) -> String {
        match self {
            Voucher::Ca(_) => "ca".into(),
            Voucher::Operator(k) => format!("operator:{}", k.name),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<String, OperatorError> {
        match self {
            Voucher::Ca(ca) => {
                ca.sign(message)
                    .map(|s| hex(&s))
                    .map_err(|e| OperatorError::Credential {
                        path: PathBuf::from("ca-key.pem"),
                        reason: e.to_string(),
                    })
            }
            Voucher::Operator(k) => Ok(k.sign_bytes(message)),
        }
    }
}

impl OperatorRecord {
    /// A record for `name` with `public_key` (hex), vouched for by `by`.
    pub fn new(
        name: &str,
        public_key: &str,
        by: &Voucher<'_>,
    ) -> Result<OperatorRecord, OperatorError> {
        check_name(name)?;
        let key: [u8; 32] = unhex(public_key)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| OperatorError::BadRecord {
                name: name.into(),
                reason: "the public key is not 64 hex digits".into(),
            })?;
        VerifyingKey::from_bytes(&key).map_err(|e| OperatorError::BadRecord {
            name: name.into(),
            reason: format!("not an ed25519 public key: {e}"),
        })?;
        let mut record = OperatorRecord {
            name: name.to_string(),
            public_key: public_key.to_lowercase(),
            added_unix_ms: now_unix_ms(),
            added_by: by.by(),
            signature: String::new(),
            revoked: None,
        };
        record.signature = by.sign(&record.add_message())?;
        Ok(record)
    }

    /// Marks the record revoked, signed by `by`.
    pub fn revoke(&mut self, by: &Voucher<'_>) -> Result<(), OperatorError> {
        let unix_ms = now_unix_ms();
        let who = by.by();
        let signature = by.sign(&self.revoke_message(unix_ms, &who))?;
        self.revoked = Some(Revocation {
            unix_ms,
            by: who,
            signature,
        });
        Ok(())
    }

    pub fn add_message(&self) -> Vec<u8> {
        format!(
            "tessera-operator/1|add|{}|{}|{}|{}",
            self.name, self.public_key, self.added_unix_ms, self.added_by
        )
        .into_bytes()
    }

    pub fn revoke_message(&self, unix_ms: u64, by: &str) -> Vec<u8> {
        format!(
            "tessera-operator/1|revoke|{}|{}|{unix_ms}|{by}",
            self.name, self.public_key
        )
        .into_bytes()
    }

    fn verifying_key(&self) -> Result<VerifyingKey, OperatorError> {
        let bad = |reason: &str| OperatorError::BadRecord {
            name: self.name.clone(),
            reason: reason.into(),
        };
        let bytes: [u8; 32] = unhex(&self.public_key)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the public key is not 64 hex digits"))?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not an ed25519 public key"))
    }
}

fn verify_ed25519(key: &VerifyingKey, message: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = unhex(sig_hex).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    key.verify(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// Whether `sig_hex` is a signature over `message` by one of the CAs `trusted`.
fn verify_by_ca(trusted: &[CertificateDer<'static>], message: &[u8], sig_hex: &str) -> bool {
    let Some(sig) = unhex(sig_hex) else {
        return false;
    };
    let algorithms: [&dyn rustls::pki_types::SignatureVerificationAlgorithm; 3] = [
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
        webpki::ring::ED25519,
    ];
    trusted.iter().any(|der| {
        webpki::EndEntityCert::try_from(der).is_ok_and(|cert| {
            algorithms
                .iter()
                .any(|alg| cert.verify_signature(*alg, message, &sig).is_ok())
        })
    })
}

// ------------------------------------------------------------------ sources

/// Where operator records are kept.
#[derive(Clone)]
pub enum RecordSource {
    /// `<prefix>operators/<name>` in the cluster store.
    Store {
        store: Arc<dyn ClusterStore>,
        prefix: String,
    },
    /// `<dir>/<name>.json` (`tessera up` without etcd: the CA directory's `operators/`).
    Dir(PathBuf),
}

impl std::fmt::Debug for RecordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordSource::Store { prefix, .. } => {
                write!(f, "cluster store {prefix}{OPERATORS_DIR}")
            }
            RecordSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl RecordSource {
    pub async fn get(&self, name: &str) -> Result<Option<OperatorRecord>, OperatorError> {
        if check_name(name).is_err() {
            return Ok(None);
        }
        let bytes = match self {
            RecordSource::Store { store, prefix } => store
                .get(&format!("{prefix}{OPERATORS_DIR}{name}"))
                .await?
                .map(|kv| kv.value),
            RecordSource::Dir(dir) => match std::fs::read(dir.join(format!("{name}.json"))) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(OperatorError::Dir {
                        dir: dir.clone(),
                        reason: e.to_string(),
                    })
                }
            },
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record: OperatorRecord =
            serde_json::from_slice(&bytes).map_err(|e| OperatorError::BadRecord {
                name: name.into(),
                reason: e.to_string(),
            })?;
        if record.name != name {
            return Err(OperatorError::BadRecord {
                name: name.into(),
                reason: format!("it names {:?}", record.name),
            });
        }
        Ok(Some(record))
    }

    /// Writes a record (replacing one of the same name).
    pub async fn put(&self, record: &OperatorRecord) -> Result<(), OperatorError> {
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        match self {
            RecordSource::Store { store, prefix } => {
                store
                    .put(
                        &format!("{prefix}{OPERATORS_DIR}{}", record.name),
                        json,
                        None,
                    )
                    .await?;
            }
            RecordSource::Dir(dir) => {
                let err = |e: std::io::Error| OperatorError::Dir {
                    dir: dir.clone(),
                    reason: e.to_string(),
                };
                std::fs::create_dir_all(dir).map_err(err)?;
                let tmp = dir.join(format!(".{}.json.tmp", record.name));
                std::fs::write(&tmp, &json).map_err(err)?;
                std::fs::rename(&tmp, dir.join(format!("{}.json", record.name))).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Every record, by name (unreadable ones as errors).
    pub async fn list(&self) -> Result<Vec<Result<OperatorRecord, OperatorError>>, OperatorError> {
        let names: Vec<String> = match self {
            RecordSource::Store { store, prefix } => {
                let dir = format!("{prefix}{OPERATORS_DIR}");
                store
                    .list(&dir)
                    .await?
                    .into_iter()
                    .filter_map(|kv| kv.key.strip_prefix(&dir).map(str::to_string))
                    .collect()
            }
            RecordSource::Dir(dir) => match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .filter(|n| !n.starts_with('.'))
                            .map(str::to_string)
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(OperatorError::Dir {
                        dir: dir.clone(),
                        reason: e.to_string(),
                    })
                }
            },
        };
        let mut names = names;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match self.get(&name).await {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }
}

// ----------------------------------------------------------------- checking

/// Where used nonces are remembered.
#[derive(Clone)]
enum Nonces {
    Store {
        store: Arc<dyn ClusterStore>,
        prefix: String,
    },
    /// One process (`tessera up` without etcd): nonce → when it may be forgotten (unix ms).
    Memory(Arc<Mutex<HashMap<String, u64>>>),
}

/// Checks operator signatures for the server that acts on them.
#[derive(Clone)]
pub struct Operators {
    records: RecordSource,
    /// The cluster CAs whose signature makes a first operator (more than one while the CA
    /// rotates).
    trusted: Arc<Vec<CertificateDer<'static>>>,
    nonces: Nonces,
}

impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operators")
            .field("records", &self.records)
            .field("trusted_cas", &self.trusted.len())
            .finish()
    }
}

impl Operators {
    /// Operators kept in the cluster store under `prefix`; nonces there too.
    pub fn in_store(
        store: Arc<dyn ClusterStore>,
        prefix: &str,
        trusted: Vec<CertificateDer<'static>>,
    ) -> Operators {
        Operators {
            records: RecordSource::Store {
                store: store.clone(),
                prefix: prefix.to_string(),
            },
            trusted: Arc::new(trusted),
            nonces: Nonces::Store {
                store,
                prefix: prefix.to_string(),
            },
        }
    }

    /// Operators kept as files in `dir`, nonces in this process (one process only).
    pub fn in_dir(dir: PathBuf, trusted: Vec<CertificateDer<'static>>) -> Operators {
        Operators {
            records: RecordSource::Dir(dir),
            trusted: Arc::new(trusted),
            nonces: Nonces::Memory(Arc::new(Mutex::new(HashMap::new()))),
        }
    }

    pub fn records(&self) -> &RecordSource {
        &self.records
    }

    /// The public key of operator `name` if its record is valid and not revoked, and every
    /// voucher up to a trusted CA is too.
    pub async fn valid_key(&self, name: &str) -> Result<VerifyingKey, OperatorError> {
        let mut chain: Vec<String> = Vec::new();
        let mut current = name.to_string();
        let mut keys: Vec<(OperatorRecord, VerifyingKey)> = Vec::new();
        loop {
            if chain.len() >= MAX_CHAIN || chain.contains(&current) {
                return Err(OperatorError::BadRecord {
                    name: name.into(),
                    reason: format!("its vouchers go round in a circle or too far: {chain:?}"),
                });
            }
            chain.push(current.clone());
            let record = self.records.get(&current).await?.ok_or_else(|| {
                if current == name {
                    OperatorError::Unknown(name.into())
                } else {
                    OperatorError::BadRecord {
                        name: name.into(),
                        reason: format!("it was added by {current:?}, who is no operator"),
                    }
                }
            })?;
            if record.revoked.is_some() {
                return Err(if current == name {
                    OperatorError::Revoked(name.into())
                } else {
                    OperatorError::BadRecord {
                        name: name.into(),
                        reason: format!("it was added by {current:?}, who has been revoked"),
                    }
                });
            }
            let key = record.verifying_key()?;
            let next = if record.added_by == "ca" {
                if !verify_by_ca(&self.trusted, &record.add_message(), &record.signature) {
                    return Err(OperatorError::BadRecord {
                        name: name.into(),
                        reason: format!("the CA's signature on {current:?} does not verify"),
                    });
                }
                None
            } else if let Some(voucher) = record.added_by.strip_prefix("operator:") {
                Some(voucher.to_string())
            } else {
                return Err(OperatorError::BadRecord {
                    name: name.into(),
                    reason: format!("unknown voucher {:?}", record.added_by),
                });
            };
            keys.push((record, key));
            match next {
                None => break,
                Some(v) => current = v,
            }
        }
        // Each record's signature by the next one's key (the last was checked by the CA).
        for pair in keys.windows(2) {
            let ((record, _), (_, voucher_key)) = (&pair[0], &pair[1]);
            if !verify_ed25519(voucher_key, &record.add_message(), &record.signature) {
                return Err(OperatorError::BadRecord {
                    name: name.into(),
                    reason: format!(
                        "the signature of {} on {:?} does not verify",
                        record.added_by, record.name
                    ),
                });
            }
        }
        Ok(keys[0].1)
    }

    /// Checks a fresh request: `sig` is operator `sig.operator`'s (valid, not revoked) over
    /// `kind` and `body`, made within [`MAX_SKEW`] of now, with a nonce never seen before
    /// (which this call uses up). Returns the operator's name.
    pub async fn check(
        &self,
        kind: &str,
        body: &[u8],
        sig: Option<&OperatorSig>,
    ) -> Result<String, OperatorError> {
        let sig = sig.ok_or(OperatorError::Unsigned)?;
        let now = now_unix_ms();
        let skew = now.abs_diff(sig.unix_ms);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(OperatorError::Stale {
                skew_secs: skew / 1000,
            });
        }
        self.check_signature(kind, body, sig).await?;
        self.use_nonce(&sig.operator, &sig.nonce, now).await?;
        Ok(sig.operator.clone())
    }

    /// Checks only the signature and the operator's standing, not time or nonce: for requests
    /// whose replay is refused otherwise (a migration names the epoch it moves to).
    pub async fn check_signature(
        &self,
        kind: &str,
        body: &[u8],
        sig: &OperatorSig,
    ) -> Result<(), OperatorError> {
        if unhex(&sig.nonce).is_none_or(|n| n.len() != 16) {
            return Err(OperatorError::BadSignature(sig.operator.clone()));
        }
        let key = self.valid_key(&sig.operator).await?;
        let message = request_message(kind, body, &sig.operator, sig.unix_ms, &sig.nonce);
        if verify_ed25519(&key, &message, &sig.signature) {
            Ok(())
        } else {
            Err(OperatorError::BadSignature(sig.operator.clone()))
        }
    }

    async fn use_nonce(&self, operator: &str, nonce: &str, now: u64) -> Result<(), OperatorError> {
        let keep = 2 * MAX_SKEW + Duration::from_secs(10);
        match &self.nonces {
            Nonces::Store { store, prefix } => {
                let key = format!("{prefix}{NONCES_DIR}{operator}/{nonce}");
                let lease = store.grant_lease(keep).await?;
                let put = store
                    .compare_and_put(
                        &key,
                        Expect::Absent,
                        now.to_string().into_bytes(),
                        Some(lease),
                    )
                    .await?;
                if put.is_none() {
                    let _ = store.revoke(lease).await;
                    return Err(OperatorError::Replayed);
                }
                Ok(())
            }
            Nonces::Memory(seen) => {
                let mut seen = seen.lock();
                seen.retain(|_, until| *until > now);
                let key = format!("{operator}/{nonce}");
                if seen.contains_key(&key) {
                    return Err(OperatorError::Replayed);
                }
                seen.insert(key, now + keep.as_millis() as u64);
                Ok(())
            }
        }
    }
}

/// How often an [`OperatorCache`] reads the operators again: a revoked operator's migrations
/// are refused within about this long.
pub const OPERATOR_REFRESH: Duration = Duration::from_secs(1);

/// The valid operators' keys, read again every [`OPERATOR_REFRESH`]: for checks that cannot
/// wait on the store (a migration request seen in a watch). Clones share it.
#[derive(Clone, Default)]
pub struct OperatorCache {
    keys: Arc<parking_lot::RwLock<HashMap<String, VerifyingKey>>>,
    /// Where the keys come from, for [`OperatorCache::verify_now`].
    source: Option<Operators>,
}

impl std::fmt::Debug for OperatorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.keys.read().keys().cloned().collect();
        names.sort();
        f.debug_struct("OperatorCache")
            .field("operators", &names)
            .finish()
    }
}

impl OperatorCache {
    /// Reads the operators now, then again every [`OPERATOR_REFRESH`] in a task that ends
    /// when the last clone is dropped. A failed read keeps the last good view (and logs).
    pub async fn follow(operators: Operators) -> OperatorCache {
        let cache = OperatorCache {
            keys: Arc::default(),
            source: Some(operators.clone()),
        };
        cache.refresh(&operators).await;
        let weak = Arc::downgrade(&cache.keys);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OPERATOR_REFRESH).await;
                let Some(keys) = weak.upgrade() else { return };
                OperatorCache { keys, source: None }
                    .refresh(&operators)
                    .await;
            }
        });
        cache
    }

    /// A fixed set of keys (tests).
    pub fn fixed(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> OperatorCache {
        OperatorCache {
            keys: Arc::new(parking_lot::RwLock::new(keys.into_iter().collect())),
            source: None,
        }
    }

    async fn refresh(&self, operators: &Operators) {
        let records = match operators.records().list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the operators; keeping the last view");
                return;
            }
        };
        let mut keys = HashMap::new();
        for record in records.into_iter().flatten() {
            if let Ok(key) = operators.valid_key(&record.name).await {
                keys.insert(record.name, key);
            }
        }
        *self.keys.write() = keys;
    }

    /// Whether `sig_hex` is valid operator `name`'s ed25519 signature over `message`, by the
    /// keys as last read.
    pub fn verify(&self, name: &str, message: &[u8], sig_hex: &str) -> bool {
        let key = self.keys.read().get(name).copied();
        key.is_some_and(|k| verify_ed25519(&k, message, sig_hex))
    }

    /// [`OperatorCache::verify`], reading the operator from the store when the cached view
    /// says no (an operator added a moment ago) and updating the view with what it read.
    pub async fn verify_now(&self, name: &str, message: &[u8], sig_hex: &str) -> bool {
        if self.verify(name, message, sig_hex) {
            return true;
        }
        let Some(source) = &self.source else {
            return false;
        };
        match source.valid_key(name).await {
            Ok(key) => {
                self.keys.write().insert(name.to_string(), key);
                verify_ed25519(&key, message, sig_hex)
            }
            Err(e) => {
                if e.is_refusal() {
                    self.keys.write().remove(name);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;
    use crate::store::MemStore;

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: ClusterCa,
        ops: Operators,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let ops = Operators::in_store(store, "/t/", vec![ca.cert().clone()]);
        Fixture { _dir: dir, ca, ops }
    }

    async fn add(f: &Fixture, key: &OperatorKey, by: &Voucher<'_>) {
        let record = OperatorRecord::new(key.name(), &key.public_hex(), by).unwrap();
        f.ops.records().put(&record).await.unwrap();
    }

    #[tokio::test]
    async fn a_ca_vouched_operator_signs_and_the_server_checks() {
        let f = fixture();
        let alice = OperatorKey::generate("alice").unwrap();
        add(&f, &alice, &Voucher::Ca(&f.ca)).await;
        let sig = alice.sign_request("role", b"bob|operator");
        assert_eq!(
            f.ops
                .check("role", b"bob|operator", Some(&sig))
                .await
                .unwrap(),
            "alice"
        );
        // Another kind or body does not verify with that signature.
        let again = alice.sign_request("role", b"bob|operator");
        let err = f
            .ops
            .check("restore", b"bob|operator", Some(&again))
            .await
            .unwrap_err();
        assert!(matches!(err, OperatorError::BadSignature(_)), "{err}");
        let err = f
            .ops
            .check("role", b"eve|operator", Some(&again))
            .await
            .unwrap_err();
        assert!(matches!(err, OperatorError::BadSignature(_)), "{err}");
        // Unsigned.
        let err = f.ops.check("role", b"x", None).await.unwrap_err();
        assert!(matches!(err, OperatorError::Unsigned));
    }

    #[tokio::test]
    async fn replays_and_stale_requests_are_refused() {
        let f = fixture();
        let alice = OperatorKey::generate("alice").unwrap();
        add(&f, &alice, &Voucher::Ca(&f.ca)).await;
        let sig = alice.sign_request("restore", b"file");
        f.ops.check("restore", b"file", Some(&sig)).await.unwrap();
        let err = f
            .ops
            .check("restore", b"file", Some(&sig))
            .await
            .unwrap_err();
        assert!(matches!(err, OperatorError::Replayed), "{err}");
        // A second server sharing the store refuses it too.
        let other = f.ops.clone();
        assert!(matches!(
            other.check("restore", b"file", Some(&sig)).await,
            Err(OperatorError::Replayed)
        ));
        let old = alice.sign_request_at("restore", b"file", now_unix_ms() - 120_000);
        let err = f
            .ops
            .check("restore", b"file", Some(&old))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OperatorError::Stale { skew_secs: 120 }),
            "{err}"
        );
        let future = alice.sign_request_at("restore", b"file", now_unix_ms() + 120_000);
        assert!(f
            .ops
            .check("restore", b"file", Some(&future))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn strangers_and_forged_records_are_no_operators() {
        let f = fixture();
        let mallory = OperatorKey::generate("mallory").unwrap();
        let sig = mallory.sign_request("role", b"x");
        assert!(matches!(
            f.ops.check("role", b"x", Some(&sig)).await,
            Err(OperatorError::Unknown(_))
        ));
        // A member with write access to the store adds a record of its own: the signature is
        // not the CA's (another CA's here), nor any operator's.
        let dir = tempfile::tempdir().unwrap();
        let other_ca = ClusterCa::create(dir.path()).unwrap();
        add(&f, &mallory, &Voucher::Ca(&other_ca)).await;
        let sig = mallory.sign_request("role", b"x");
        let err = f.ops.check("role", b"x", Some(&sig)).await.unwrap_err();
        assert!(matches!(err, OperatorError::BadRecord { .. }), "{err}");
        // Vouching for itself does not help.
        add(&f, &mallory, &Voucher::Operator(&mallory)).await;
        let sig = mallory.sign_request("role", b"x");
        assert!(f.ops.check("role", b"x", Some(&sig)).await.is_err());
        // Nor does swapping a valid record's key for its own.
        let alice = OperatorKey::generate("alice").unwrap();
        add(&f, &alice, &Voucher::Ca(&f.ca)).await;
        let mut record = f.ops.records().get("alice").await.unwrap().unwrap();
        record.public_key = mallory.public_hex();
        f.ops.records().put(&record).await.unwrap();
        let forged = OperatorKey {
            name: "alice".into(),
            key: mallory.key.clone(),
        };
        let sig = forged.sign_request("role", b"x");
        assert!(f.ops.check("role", b"x", Some(&sig)).await.is_err());
    }

    #[tokio::test]
    async fn operators_add_operators_and_revocation_cascades() {
        let f = fixture();
        let alice = OperatorKey::generate("alice").unwrap();
        let bob = OperatorKey::generate("bob").unwrap();
        add(&f, &alice, &Voucher::Ca(&f.ca)).await;
        add(&f, &bob, &Voucher::Operator(&alice)).await;
        let sig = bob.sign_request("move", b"1");
        assert_eq!(f.ops.check("move", b"1", Some(&sig)).await.unwrap(), "bob");

        let mut record = f.ops.records().get("alice").await.unwrap().unwrap();
        record.revoke(&Voucher::Operator(&bob)).unwrap();
        f.ops.records().put(&record).await.unwrap();
        let sig = alice.sign_request("move", b"1");
        assert!(matches!(
            f.ops.check("move", b"1", Some(&sig)).await,
            Err(OperatorError::Revoked(_))
        ));
        // Bob was vouched for by Alice only.
        let sig = bob.sign_request("move", b"1");
        let err = f.ops.check("move", b"1", Some(&sig)).await.unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }

    #[tokio::test]
    async fn keys_round_trip_through_their_file_and_records_through_a_dir() {
        let dir = tempfile::tempdir().unwrap();
        let key = OperatorKey::generate("ann").unwrap();
        let path = dir.path().join("ann.json");
        key.save(&path).unwrap();
        assert!(key.save(&path).is_err(), "overwrote a credential");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = OperatorKey::load(&path).unwrap();
        assert_eq!(loaded.public_hex(), key.public_hex());
        assert!(!format!("{loaded:?}").contains(&hex(key.key.as_bytes())));
        std::fs::write(
            dir.path().join("old.json"),
            br#"{"operator":"x","key":"00"}"#,
        )
        .unwrap();
        let err = OperatorKey::load(&dir.path().join("old.json")).unwrap_err();
        assert!(err.to_string().contains("must be replaced"), "{err}");

        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let ops = Operators::in_dir(dir.path().join("ops"), vec![ca.cert().clone()]);
        let record = OperatorRecord::new("ann", &key.public_hex(), &Voucher::Ca(&ca)).unwrap();
        ops.records().put(&record).await.unwrap();
        let sig = key.sign_request("role", b"x");
        ops.check("role", b"x", Some(&sig)).await.unwrap();
        assert!(matches!(
            ops.check("role", b"x", Some(&sig)).await,
            Err(OperatorError::Replayed)
        ));
        let listed = ops.records().list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].as_ref().unwrap().name, "ann");
        assert!(check_name("../x").is_err());
        assert!(ops.records().get("../x").await.unwrap().is_none());
    }
}
