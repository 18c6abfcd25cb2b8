//! Who may move cells: every migration request carries an [`Authority`], a MAC over the request
//! by an operator or a cluster member, and nothing moves without a valid one.
//!
//! **Keys.** The *cluster key* is derived from the cluster CA's private key (`ca-key.pem`),
//! which every member already holds to mint its certificate. An operator's key is derived from
//! the cluster key and the operator's name (`tessera ca operator NAME` writes it to a
//! credential file): an operator can sign requests, but cannot derive the cluster key or
//! another operator's key; members can check any operator's signature by deriving the key again.
//! All MACs are HMAC-SHA256.
//!
//! **What is signed.** The key prefix, the cell, source, target, new epoch, request time and the
//! signer's name. The epoch makes a replayed request useless: it names an epoch that is no
//! longer the next one.
//!
//! **Who checks.** The source shard ships a cell only for a request that verifies, and the
//! leading coordinator deletes requests that do not, with a log line; `tessera ctl` then says
//! the cluster refused the move. This guards the operator interface; it does not replace
//! access control on etcd itself, whose writers could edit the cell map directly (give etcd
//! client certificates in production, docs/operations.md).

use crate::migration::Migration;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tessera_proto::RegionId;

/// Who asked for a migration, and the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// `operator:<name>`, `shard:<id>` or `coordinator:<id>`.
    pub by: String,
    /// HMAC-SHA256 of the request, hex.
    pub mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("cannot read the cluster key from {path}: {reason}")]
    ClusterKey { path: PathBuf, reason: String },
    #[error("operator credential {path}: {reason}")]
    Credential { path: PathBuf, reason: String },
    #[error("not signed (a migration needs an operator credential or a cluster member's key)")]
    Unsigned,
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("unknown kind of signer {0:?}")]
    UnknownSigner(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The canonical bytes of a request.
/// A whole cell's region prints as the cell (`3,-1`), so requests for
/// whole cells sign the same bytes as before regions existed.
fn message(prefix: &str, cell: RegionId, m: &Migration, by: &str) -> Vec<u8> {
    format!(
        "tessera-migration/1|{prefix}|{cell}|{}|{}|{}|{}|{by}",
        m.from, m.to, m.epoch.0, m.requested_unix_ms
    )
    .into_bytes()
}

/// Signs requests as one operator or member.
#[derive(Clone)]
pub struct Signer {
    by: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("by", &self.by).finish()
    }
}

impl Signer {
    pub fn by(&self) -> &str {
        &self.by
    }

    pub fn sign(&self, prefix: &str, cell: RegionId, m: &Migration) -> Authority {
        self.sign_bytes(&message(prefix, cell, m, &self.by))
    }

    /// Signs any request's canonical bytes, which must name their protocol
    /// and include [`Signer::by`] (so a MAC made for one kind of request
    /// cannot be replayed as another, or as another signer's).
    pub fn sign_bytes(&self, message: &[u8]) -> Authority {
        let tag = hmac::sign(&self.key, message);
        Authority {
            by: self.by.clone(),
            mac: hex(tag.as_ref()),
        }
    }
}

/// The cluster key: signs as a member, and checks anyone's signature.
#[derive(Clone)]
pub struct ClusterKey {
    raw: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the key from the CA directory's `ca-key.pem`.
    pub fn from_ca_dir(dir: &Path) -> Result<ClusterKey, AuthorityError> {
        let path = dir.join("ca-key.pem");
        let pem = std::fs::read(&path).map_err(|e| AuthorityError::ClusterKey {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(ClusterKey::from_secret(&pem))
    }

    /// Derives the key from any secret bytes.
    pub fn from_secret(secret: &[u8]) -> ClusterKey {
        let salt = hmac::Key::new(hmac::HMAC_SHA256, b"tessera cluster key v1");
        let tag = hmac::sign(&salt, secret);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(tag.as_ref());
        ClusterKey { raw }
    }

    fn operator_raw(&self, name: &str) -> [u8; 32] {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.raw),
            format!("operator:{name}").as_bytes(),
        );
        let mut raw = [0u8; 32];
        raw.copy_from_slice(tag.as_ref());
        raw
    }

    /// A signer for a cluster member (`shard:<id>`, `coordinator:<id>`).
    pub fn member(&self, by: String) -> Signer {
        Signer {
            by,
            key: hmac::Key::new(hmac::HMAC_SHA256, &self.raw),
        }
    }

    /// The credential of operator `name`.
    pub fn operator(&self, name: &str) -> OperatorCredential {
        OperatorCredential {
            operator: name.to_string(),
            key: hex(&self.operator_raw(name)),
        }
    }

    /// Checks `mac_hex`, an HMAC-SHA256 of `message` by operator `operator` (as made by
    /// [`OperatorCredential::mac_hex`]), in constant time. For protocols other than migrations
    /// (such as asset uploads); the message must name its protocol so that a MAC made for one
    /// cannot be replayed to another.
    pub fn verify_operator_mac(
        &self,
        operator: &str,
        message: &[u8],
        mac_hex: &str,
    ) -> Result<(), AuthorityError> {
        let by = format!("operator:{operator}");
        let tag = unhex(mac_hex).ok_or_else(|| AuthorityError::BadSignature(by.clone()))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.operator_raw(operator));
        hmac::verify(&key, message, &tag).map_err(|_| AuthorityError::BadSignature(by))
    }

    /// Checks a request's authority.
    pub fn verify(
        &self,
        prefix: &str,
        cell: RegionId,
        m: &Migration,
    ) -> Result<(), AuthorityError> {
        let auth = m.authority.as_ref().ok_or(AuthorityError::Unsigned)?;
        self.verify_bytes(auth, &message(prefix, cell, m, &auth.by))
    }

    /// Checks `auth` over a request's canonical bytes (made with
    /// `auth.by` in them, as [`Signer::sign_bytes`] requires).
    pub fn verify_bytes(&self, auth: &Authority, message: &[u8]) -> Result<(), AuthorityError> {
        let key = if let Some(name) = auth.by.strip_prefix("operator:") {
            hmac::Key::new(hmac::HMAC_SHA256, &self.operator_raw(name))
        } else if auth.by.starts_with("shard:") || auth.by.starts_with("coordinator:") {
            hmac::Key::new(hmac::HMAC_SHA256, &self.raw)
        } else {
            return Err(AuthorityError::UnknownSigner(auth.by.clone()));
        };
        let tag = unhex(&auth.mac).ok_or_else(|| AuthorityError::BadSignature(auth.by.clone()))?;
        hmac::verify(&key, message, &tag).map_err(|_| AuthorityError::BadSignature(auth.by.clone()))
    }
}

/// An operator's credential file (`tessera ca operator NAME`), JSON, readable by its owner only.
#[derive(Clone, Serialize, Deserialize)]
pub struct OperatorCredential {
    pub operator: String,
    /// The operator's HMAC key, hex.
    key: String,
}

impl std::fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCredential")
            .field("operator", &self.operator)
            .finish()
    }
}

impl OperatorCredential {
    /// Whether `other` is this same credential (same operator, same key).
    pub fn matches(&self, other: &OperatorCredential) -> bool {
        // Without an early exit on the first differing byte.
        let (a, b) = (self.key.as_bytes(), other.key.as_bytes());
        self.operator == other.operator
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn signer(&self) -> Result<Signer, AuthorityError> {
        let raw = self.raw_key()?;
        Ok(Signer {
            by: format!("operator:{}", self.operator),
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
        })
    }

    /// HMAC-SHA256 of `message` with this operator's key, hex; the cluster checks it with
    /// [`ClusterKey::verify_operator_mac`].
    pub fn mac_hex(&self, message: &[u8]) -> Result<String, AuthorityError> {
        let raw = self.raw_key()?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &raw);
        Ok(hex(hmac::sign(&key, message).as_ref()))
    }

    fn raw_key(&self) -> Result<Vec<u8>, AuthorityError> {
        unhex(&self.key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| AuthorityError::Credential {
                path: PathBuf::new(),
                reason: "the key is not 64 hex digits".into(),
            })
    }

    pub fn load(path: &Path) -> Result<OperatorCredential, AuthorityError> {
        let err = |reason: String| AuthorityError::Credential {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let cred: OperatorCredential = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("not an operator credential: {e}")))?;
        cred.signer().map_err(|e| err(e.to_string()))?;
        Ok(cred)
    }

    /// Writes the credential (mode 0600), refusing to overwrite a file.
    pub fn save(&self, path: &Path) -> Result<(), AuthorityError> {
        use std::io::Write;
        let err = |reason: String| AuthorityError::Credential {
            path: path.to_path_buf(),
            reason,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        f.write_all(&json).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::MigrationState;
    use tessera_proto::{Epoch, ShardId};

    fn request() -> Migration {
        Migration {
            from: ShardId::new("shard-1"),
            to: ShardId::new("shard-2"),
            epoch: Epoch(4),
            state: MigrationState::Requested,
            requested_unix_ms: 1_700_000_000_000,
            authority: None,
            cancelled_unix_ms: None,
        }
    }

    const CELL: RegionId = RegionId::cell(tessera_proto::CellId::new(-1, 0));

    #[test]
    fn operators_and_members_sign_and_the_cluster_verifies() {
        let key = ClusterKey::from_secret(b"ca key");
        for signer in [
            key.operator("alice").signer().unwrap(),
            key.member("shard:shard-1".into()),
            key.member("coordinator:c".into()),
        ] {
            let mut m = request();
            m.authority = Some(signer.sign("/t/", CELL, &m));
            key.verify("/t/", CELL, &m)
                .unwrap_or_else(|e| panic!("{}: {e}", signer.by()));
        }
    }

    #[test]
    fn forged_changed_or_foreign_requests_fail() {
        let key = ClusterKey::from_secret(b"ca key");
        let alice = key.operator("alice").signer().unwrap();
        let mut m = request();
        assert!(matches!(
            key.verify("/t/", CELL, &m),
            Err(AuthorityError::Unsigned)
        ));
        m.authority = Some(alice.sign("/t/", CELL, &m));
        // A changed target, epoch, cell or prefix breaks the signature.
        let mut changed = m.clone();
        changed.to = ShardId::new("shard-3");
        assert!(key.verify("/t/", CELL, &changed).is_err());
        let mut replayed = m.clone();
        replayed.epoch = Epoch(5);
        assert!(key.verify("/t/", CELL, &replayed).is_err());
        assert!(key
            .verify("/t/", RegionId::cell(tessera_proto::CellId::new(0, 0)), &m)
            .is_err());
        assert!(key.verify("/other/", CELL, &m).is_err());
        // Alice cannot pass as bob, nor as a member.
        let mut as_bob = m.clone();
        as_bob.authority.as_mut().unwrap().by = "operator:bob".into();
        assert!(key.verify("/t/", CELL, &as_bob).is_err());
        let mut as_member = m.clone();
        as_member.authority.as_mut().unwrap().by = "shard:shard-1".into();
        assert!(key.verify("/t/", CELL, &as_member).is_err());
        // Another cluster's operator is a stranger.
        let other = ClusterKey::from_secret(b"another CA").operator("alice");
        let mut foreign = request();
        foreign.authority = Some(other.signer().unwrap().sign("/t/", CELL, &foreign));
        assert!(key.verify("/t/", CELL, &foreign).is_err());
        let mut junk = request();
        junk.authority = Some(Authority {
            by: "operator:alice".into(),
            mac: "zz".into(),
        });
        assert!(key.verify("/t/", CELL, &junk).is_err());
    }

    #[test]
    fn operator_macs_verify_only_for_that_operator_key_and_message() {
        let key = ClusterKey::from_secret(b"x");
        let ann = key.operator("ann");
        let msg = b"tessera-asset/1|PUT|scripts/a.rhai|abc|1";
        let mac = ann.mac_hex(msg).unwrap();
        assert_eq!(mac.len(), 64);
        key.verify_operator_mac("ann", msg, &mac).unwrap();
        // Another operator's name, another cluster, a changed message or junk: refused.
        assert!(key.verify_operator_mac("bob", msg, &mac).is_err());
        let other = ClusterKey::from_secret(b"y");
        assert!(other.verify_operator_mac("ann", msg, &mac).is_err());
        let foreign = other.operator("ann").mac_hex(msg).unwrap();
        assert!(key.verify_operator_mac("ann", msg, &foreign).is_err());
        assert!(key
            .verify_operator_mac("ann", b"tessera-asset/1|PUT|scripts/b.rhai|abc|1", &mac)
            .is_err());
        assert!(key.verify_operator_mac("ann", msg, "zz").is_err());
        assert!(key.verify_operator_mac("ann", msg, &mac[..62]).is_err());
        let err = key.verify_operator_mac("bob", msg, &mac).unwrap_err();
        assert!(err.to_string().contains("operator:bob"), "{err}");
    }

    #[test]
    fn credentials_round_trip_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.credential");
        let key = ClusterKey::from_secret(b"ca key");
        key.operator("alice").save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "credential readable by others");
        }
        assert!(key.operator("alice").save(&path).is_err(), "overwrote");
        let loaded = OperatorCredential::load(&path).unwrap();
        let mut m = request();
        m.authority = Some(loaded.signer().unwrap().sign("/t/", CELL, &m));
        key.verify("/t/", CELL, &m).unwrap();
        std::fs::write(dir.path().join("junk"), b"{}").unwrap();
        let err = OperatorCredential::load(&dir.path().join("junk"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an operator credential"), "{err}");
    }
}
