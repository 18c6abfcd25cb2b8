//! Who may move cells: every migration request carries an [`Authority`], a signature over
//! the request by an operator or a cluster member, and nothing moves without a valid one.
//!
//! **Keys.** Operators sign with their ed25519 key ([`crate::operators`]); the servers check
//! against the operators' public keys in the cluster store ([`OperatorCache`], read again every
//! second, so a revoked operator's requests stop within about a second). Members (the
//! rebalancing coordinator, a draining shard) sign with their member certificate's key
//! ([`crate::pki`], ECDSA P-256) and put the certificate in the [`Authority`]; a checker
//! accepts it if a CA of its trust bundle issued it, it is valid now, and it names the role
//! the signer claims (`coordinator:` needs a coordinator's certificate, `shard:` a shard's).
//! No key is derived from the CA's, so a member holding only its own certificate can sign only
//! as its own role.
//!
//! **What is signed.** The key prefix, the cell, source, target, new epoch, request time and the
//! signer's name. The epoch makes a replayed request useless: it names an epoch that is no
//! longer the next one.
//!
//! **Who checks.** The source shard ships a cell only for a request that verifies, and the
//! leading coordinator deletes requests that do not, with a log line; `tessera ctl` then says
//! the cluster refused the move.

use crate::identity::MemberRole;
use crate::migration::Migration;
use crate::operators::{hex, unhex, OperatorCache, OperatorKey};
use crate::pki::MemberIdentity;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tessera_proto::RegionId;

/// Who asked for a migration, and the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// `operator:<name>`, `shard:<id>` or `coordinator:<id>`.
    pub by: String,
    /// The signature over the request, hex: ed25519 for operators, ECDSA P-256 (ASN.1) for
    /// members.
    pub mac: String,
    /// A member's certificate (DER, base64), which the signature is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("not signed (a migration needs an operator credential or a cluster member's key)")]
    Unsigned,
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("{by}: {reason}")]
    BadCertificate { by: String, reason: String },
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
    /// A member's certificate key.
    Member(Arc<MemberIdentity>),
    Operator(Box<OperatorKey>),
    /// Signs nothing: for a cluster that checks nothing (one process, no trust bundle).
    Unchecked,
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
            key: SignerKey::Operator(Box::new(key)),
        }
    }

    /// Signs as member `by` (`shard:<id>`, `coordinator:<id>`) with `identity`'s key.
    pub fn member(identity: Arc<MemberIdentity>, by: String) -> Signer {
        Signer {
            by,
            key: SignerKey::Member(identity),
        }
    }

    /// Makes requests that only a cluster checking nothing accepts (a coordinator without a
    /// [`ClusterTrust`], in one process).
    pub fn unchecked(by: String) -> Signer {
        Signer {
            by,
            key: SignerKey::Unchecked,
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
        let (mac, cert) = match &self.key {
            SignerKey::Member(identity) => {
                let mac = identity.sign(message).map(|s| hex(&s)).unwrap_or_else(|e| {
                    // Not expected (ring's signing fails only without randomness); the
                    // request then fails its check, with this line to say why.
                    tracing::error!(by = %self.by, error = %e, "cannot sign a request");
                    String::new()
                });
                let cert = base64::engine::general_purpose::STANDARD.encode(identity.cert());
                (mac, Some(cert))
            }
            SignerKey::Operator(key) => (key.sign_bytes(message), None),
            SignerKey::Unchecked => (String::new(), None),
        };
        Authority {
            by: self.by.clone(),
            mac,
            cert,
        }
    }
}

/// What checks a request's authority: the cluster's trust bundle for members, the operators'
/// public keys for operators; and, for a member, its own identity to sign with.
#[derive(Clone)]
pub struct ClusterTrust {
    cas: Arc<Vec<CertificateDer<'static>>>,
    operators: OperatorCache,
    identity: Option<Arc<MemberIdentity>>,
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTrust")
            .field("trusted_cas", &self.cas.len())
            .field("operators", &self.operators)
            .field("identity", &self.identity)
            .finish()
    }
}

impl ClusterTrust {
    /// Trusts members whose certificates a CA of `cas` issued (no operators until
    /// [`ClusterTrust::with_operators`]).
    pub fn new(cas: Vec<CertificateDer<'static>>) -> ClusterTrust {
        ClusterTrust {
            cas: Arc::new(cas),
            operators: OperatorCache::default(),
            identity: None,
        }
    }

    /// Checks operators' signatures against `operators`.
    pub fn with_operators(mut self, operators: OperatorCache) -> ClusterTrust {
        self.operators = operators;
        self
    }

    /// Signs this member's own requests ([`ClusterTrust::member`]) with `identity`.
    pub fn with_identity(mut self, identity: Arc<MemberIdentity>) -> ClusterTrust {
        self.identity = Some(identity);
        self
    }

    /// The identity given to [`ClusterTrust::with_identity`].
    pub fn identity(&self) -> Option<&Arc<MemberIdentity>> {
        self.identity.as_ref()
    }

    /// A signer for this cluster member (`shard:<id>`, `coordinator:<id>`), with the identity
    /// given to [`ClusterTrust::with_identity`] (without one, its requests are refused as
    /// unsigned).
    pub fn member(&self, by: String) -> Signer {
        match &self.identity {
            Some(identity) => Signer::member(identity.clone(), by),
            None => Signer::unchecked(by),
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

    /// [`ClusterTrust::verify`], reading an operator the cached view does not know from the
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

    /// [`ClusterTrust::verify_bytes`], reading an operator the cached view does not know from
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
        let role = if auth.by.starts_with("shard:") {
            MemberRole::Shard
        } else if auth.by.starts_with("coordinator:") {
            MemberRole::Coordinator
        } else {
            return Err(AuthorityError::UnknownSigner(auth.by.clone()));
        };
        let bad_cert = |reason: String| AuthorityError::BadCertificate {
            by: auth.by.clone(),
            reason,
        };
        let der = auth
            .cert
            .as_deref()
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .ok_or_else(|| bad_cert("no member certificate with the signature".into()))?;
        let cert = CertificateDer::from(der);
        let peer = crate::pki::verify_member(&self.cas, &cert).map_err(bad_cert)?;
        if peer.role() != Some(role) {
            return Err(bad_cert(format!(
                "signed as a {role} with the certificate of a {}",
                peer.role()
                    .map_or("member without a role", MemberRole::as_str)
            )));
        }
        let sig = unhex(&auth.mac).ok_or_else(bad)?;
        let ee = webpki::EndEntityCert::try_from(&cert).map_err(|_| bad())?;
        ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, &sig)
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::MigrationState;
    use crate::pki::ClusterCa;
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

    fn cluster_with(ca: &ClusterCa, operators: &[&OperatorKey]) -> ClusterTrust {
        ClusterTrust::new(ca.trust().to_vec()).with_operators(OperatorCache::fixed(
            operators
                .iter()
                .map(|k| (k.name().to_string(), k.verifying_key())),
        ))
    }

    fn member_of(ca: &ClusterCa, role: MemberRole, by: &str) -> Signer {
        Signer::member(Arc::new(ca.member(role, "m").unwrap()), by.into())
    }

    #[test]
    fn operators_and_members_sign_and_the_cluster_verifies() {
        let ca = ClusterCa::generate().unwrap();
        let alice = OperatorKey::generate("alice").unwrap();
        let key = cluster_with(&ca, &[&alice]);
        for signer in [
            Signer::operator(alice.clone()),
            member_of(&ca, MemberRole::Shard, "shard:shard-1"),
            member_of(&ca, MemberRole::Coordinator, "coordinator:c"),
            key.clone()
                .with_identity(Arc::new(ca.member(MemberRole::Shard, "s").unwrap()))
                .member("shard:s".into()),
        ] {
            let mut m = request();
            m.authority = Some(signer.sign("/t/", CELL, &m));
            key.verify("/t/", CELL, &m)
                .unwrap_or_else(|e| panic!("{}: {e}", signer.by()));
        }
    }

    /// A member signs only as its own role, with a certificate of this cluster: what keeps a
    /// compromised router (which holds a member certificate) from moving cells.
    #[test]
    fn a_member_signs_only_as_its_role_with_a_certificate_of_this_cluster() {
        let ca = ClusterCa::generate().unwrap();
        let key = cluster_with(&ca, &[]);
        let refused = |signer: Signer, why: &str| {
            let mut m = request();
            m.authority = Some(signer.sign("/t/", CELL, &m));
            let e = key.verify("/t/", CELL, &m).unwrap_err();
            assert!(e.to_string().contains(why), "{}: {e}", signer.by());
            m
        };
        // A router's (or a shard's) certificate claiming to be a shard (or a coordinator).
        refused(
            member_of(&ca, MemberRole::Router, "shard:s1"),
            "signed as a shard with the certificate of a router",
        );
        refused(
            member_of(&ca, MemberRole::Shard, "coordinator:c"),
            "signed as a coordinator with the certificate of a shard",
        );
        // Another cluster's member.
        let other = ClusterCa::generate().unwrap();
        refused(
            member_of(&other, MemberRole::Shard, "shard:s1"),
            "not a valid member certificate",
        );
        // Nothing signs for a cluster that checks.
        refused(
            Signer::unchecked("coordinator:c".into()),
            "no member certificate",
        );
        // A real shard's signature with another shard's certificate put next to it.
        let mut m = request();
        m.authority = Some(member_of(&ca, MemberRole::Shard, "shard:s1").sign("/t/", CELL, &m));
        let theirs = member_of(&ca, MemberRole::Shard, "shard:s2").sign("/t/", CELL, &m);
        m.authority.as_mut().unwrap().cert = theirs.cert;
        assert!(matches!(
            key.verify("/t/", CELL, &m),
            Err(AuthorityError::BadSignature(_))
        ));
        // An expired certificate.
        let (now, day) = (
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(86_400),
        );
        let expired = ca
            .issue_between(MemberRole::Shard, "old", now - 2 * day, now - day)
            .unwrap();
        refused(
            Signer::member(Arc::new(expired), "shard:s1".into()),
            "Expired",
        );
    }

    #[test]
    fn forged_changed_or_foreign_requests_fail() {
        let ca = ClusterCa::generate().unwrap();
        let alice_key = OperatorKey::generate("alice").unwrap();
        let key = cluster_with(&ca, &[&alice_key]);
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
        let other = ClusterCa::generate().unwrap();
        let mut member = request();
        member.authority =
            Some(member_of(&other, MemberRole::Shard, "shard:shard-1").sign("/t/", CELL, &member));
        assert!(key.verify("/t/", CELL, &member).is_err());
        let mut junk = request();
        junk.authority = Some(Authority {
            by: "operator:alice".into(),
            mac: "zz".into(),
            cert: None,
        });
        assert!(key.verify("/t/", CELL, &junk).is_err());
    }
}
