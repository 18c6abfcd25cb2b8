//! Who may move cells: every migration request carries an [`Authority`], a MAC over the request
//! by an operator or a cluster member, and nothing moves without a valid one.
//!
//! **Keys.** Operators sign with their ed25519 key ([`crate::operators`]); the servers check
//! against the operators' public keys in the cluster store ([`OperatorCache`], read again every
//! second, so a revoked operator's requests stop within about a second). Members (the
//! rebalancing coordinator, a draining shard) sign with the *cluster key*, an HMAC-SHA256 key
//! derived from the cluster CA's private key (`ca-key.pem`), which every member holds today to
//! mint its certificate (docs/security.md: member identities replace it).
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
use crate::operators::{hex, unhex, OperatorCache, OperatorKey};
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
    #[error("not signed (a migration needs an operator credential or a cluster member's key)")]
    Unsigned,
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("unknown kind of signer {0:?}")]
    UnknownSigner(String),
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
    key: SignerKey,
}

#[derive(Clone)]
enum SignerKey {
    Member(hmac::Key),
    Operator(OperatorKey),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("by", &self.by).finish()
    }
}

impl Signer {
    /// Signs as operator `key`.
    pub fn operator(key: OperatorKey) -> Signer {
        Signer {
            by: format!("operator:{}", key.name()),
            key: SignerKey::Operator(key),
        }
    }

    pub fn by(&self) -> &str {
        &self.by
    }

    pub fn sign(&self, prefix: &str, cell: RegionId, m: &Migration) -> Authority {
        self.sign_bytes(&message(prefix, cell, m, &self.by))
    }

    /// Signs any request's canonical bytes, which must name their protocol
    /// and include [`Signer::by`] (so a signature made for one kind of request
    /// cannot be replayed as another, or as another signer's).
    pub fn sign_bytes(&self, message: &[u8]) -> Authority {
        let mac = match &self.key {
            SignerKey::Member(key) => hex(hmac::sign(key, message).as_ref()),
            SignerKey::Operator(key) => key.sign_bytes(message),
        };
        Authority {
            by: self.by.clone(),
            mac,
        }
    }
}

/// What checks a request's authority: the cluster key for members, the operators' public keys
/// for operators.
#[derive(Clone)]
pub struct ClusterKey {
    raw: [u8; 32],
    operators: OperatorCache,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("operators", &self.operators)
            .finish_non_exhaustive()
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

    /// Derives the key from any secret bytes (no operators until
    /// [`ClusterKey::with_operators`]).
    pub fn from_secret(secret: &[u8]) -> ClusterKey {
        let salt = hmac::Key::new(hmac::HMAC_SHA256, b"tessera cluster key v1");
        let tag = hmac::sign(&salt, secret);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(tag.as_ref());
        ClusterKey {
            raw,
            operators: OperatorCache::default(),
        }
    }

    /// Checks operators' signatures against `operators`.
    pub fn with_operators(mut self, operators: OperatorCache) -> ClusterKey {
        self.operators = operators;
        self
    }

    /// A signer for a cluster member (`shard:<id>`, `coordinator:<id>`).
    pub fn member(&self, by: String) -> Signer {
        Signer {
            by,
            key: SignerKey::Member(hmac::Key::new(hmac::HMAC_SHA256, &self.raw)),
        }
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

    /// [`ClusterKey::verify`], reading an operator the cached view does not know from the
    /// store (for checks that may wait: the coordinator's).
    pub async fn verify_now(
        &self,
        prefix: &str,
        cell: RegionId,
        m: &Migration,
    ) -> Result<(), AuthorityError> {
        let auth = m.authority.as_ref().ok_or(AuthorityError::Unsigned)?;
        self.verify_bytes_now(auth, &message(prefix, cell, m, &auth.by))
            .await
    }

    /// [`ClusterKey::verify_bytes`], reading an operator the cached view does not know from
    /// the store.
    pub async fn verify_bytes_now(
        &self,
        auth: &Authority,
        message: &[u8],
    ) -> Result<(), AuthorityError> {
        if let Some(name) = auth.by.strip_prefix("operator:") {
            if self.operators.verify_now(name, message, &auth.mac).await {
                return Ok(());
            }
            return Err(AuthorityError::BadSignature(auth.by.clone()));
        }
        self.verify_bytes(auth, message)
    }

    /// Checks `auth` over a request's canonical bytes (made with
    /// `auth.by` in them, as [`Signer::sign_bytes`] requires).
    pub fn verify_bytes(&self, auth: &Authority, message: &[u8]) -> Result<(), AuthorityError> {
        let bad = || AuthorityError::BadSignature(auth.by.clone());
        if let Some(name) = auth.by.strip_prefix("operator:") {
            if self.operators.verify(name, message, &auth.mac) {
                return Ok(());
            }
            return Err(bad());
        }
        if !(auth.by.starts_with("shard:") || auth.by.starts_with("coordinator:")) {
            return Err(AuthorityError::UnknownSigner(auth.by.clone()));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.raw);
        let tag = unhex(&auth.mac).ok_or_else(bad)?;
        hmac::verify(&key, message, &tag).map_err(|_| bad())
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

    fn cluster_with(operators: &[&OperatorKey]) -> ClusterKey {
        ClusterKey::from_secret(b"ca key").with_operators(OperatorCache::fixed(
            operators
                .iter()
                .map(|k| (k.name().to_string(), k.verifying_key())),
        ))
    }

    #[test]
    fn operators_and_members_sign_and_the_cluster_verifies() {
        let alice = OperatorKey::generate("alice").unwrap();
        let key = cluster_with(&[&alice]);
        for signer in [
            Signer::operator(alice.clone()),
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
        let alice_key = OperatorKey::generate("alice").unwrap();
        let key = cluster_with(&[&alice_key]);
        let alice = Signer::operator(alice_key);
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
        // An operator the cluster does not know (or no longer knows) is a stranger.
        let stranger = Signer::operator(OperatorKey::generate("alice").unwrap());
        let mut foreign = request();
        foreign.authority = Some(stranger.sign("/t/", CELL, &foreign));
        assert!(key.verify("/t/", CELL, &foreign).is_err());
        let mut unknown = request();
        unknown.authority = Some(
            Signer::operator(OperatorKey::generate("zed").unwrap()).sign("/t/", CELL, &unknown),
        );
        assert!(key.verify("/t/", CELL, &unknown).is_err());
        // Another cluster's members are strangers too.
        let other = ClusterKey::from_secret(b"another CA");
        let mut member = request();
        member.authority = Some(
            other
                .member("shard:shard-1".into())
                .sign("/t/", CELL, &member),
        );
        assert!(key.verify("/t/", CELL, &member).is_err());
        let mut junk = request();
        junk.authority = Some(Authority {
            by: "operator:alice".into(),
            mac: "zz".into(),
        });
        assert!(key.verify("/t/", CELL, &junk).is_err());
    }
}
