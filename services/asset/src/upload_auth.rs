//! How a change of the assets proves it comes from an operator: the `Authorization` header of
//! a PUT (upload), a POST to `/v1/rollback/<name>` or a DELETE (removal).
//!
//! ```text
//! Authorization: Tessera-Operator <operator>:<unix_ms>:<nonce>:<hex ed25519 signature>
//! signed = tessera-request/1|<kind>|<operator>|<unix_ms>|<nonce>|<body>
//!
//! kind            body
//! asset-put       <name>|<blake3 hex of the content>          (an upload)
//! asset-put       <name>|<blake3 hex of the content>|force    (an upload with ?force=true)
//! asset-rollback  <name>|<blake3 hex of the version>
//! asset-rm        <name>
//! ```
//!
//! The signature is the operator's ed25519 key (the credential file of `tessera ca operator
//! NAME`) over the request ([`tessera_coordinator::operators::request_message`], with the kind
//! and body of a [`SignedRequest`]); the service checks it against the operators' public keys
//! in the cluster store, with a time within [`MAX_SKEW`] of its clock and a nonce never used
//! before ([`tessera_coordinator::operators::Operators::check`]), so a captured request cannot
//! be replayed, and a revoked operator is refused at once. The body binds the signature to the
//! content, the place and, for an upload, whether it was forced: a signature of a plain upload
//! does not hold for the same upload with `?force=true`.

pub use tessera_coordinator::operators::MAX_SKEW;
use tessera_coordinator::operators::{OperatorKey, OperatorSig, Operators};

/// The authorization scheme.
pub const SCHEME: &str = "Tessera-Operator";

/// The request kind an upload is signed as.
pub const KIND: &str = "asset-put";
/// The request kind a rollback is signed as.
pub const ROLLBACK_KIND: &str = "asset-rollback";
/// The request kind a removal is signed as.
pub const REMOVE_KIND: &str = "asset-rm";

/// A change of the assets, as an operator signs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedRequest<'a> {
    /// Upload content `hash` as `name`; `force` lets a script no NPC runs through.
    Put {
        name: &'a str,
        hash: &'a str,
        force: bool,
    },
    /// Make version `hash` of `name` current again.
    Rollback { name: &'a str, hash: &'a str },
    /// Remove `name` (a script's world folder version runs again).
    Remove { name: &'a str },
}

impl SignedRequest<'_> {
    /// The request kind it is signed as.
    pub fn kind(&self) -> &'static str {
        match self {
            SignedRequest::Put { .. } => KIND,
            SignedRequest::Rollback { .. } => ROLLBACK_KIND,
            SignedRequest::Remove { .. } => REMOVE_KIND,
        }
    }

    /// The canonical body it is signed with.
    pub fn body(&self) -> Vec<u8> {
        match self {
            SignedRequest::Put { name, hash, force } => put_body(name, hash, *force),
            SignedRequest::Rollback { name, hash } => format!("{name}|{hash}").into_bytes(),
            SignedRequest::Remove { name } => name.as_bytes().to_vec(),
        }
    }

    /// The name it changes.
    pub fn name(&self) -> &str {
        match self {
            SignedRequest::Put { name, .. }
            | SignedRequest::Rollback { name, .. }
            | SignedRequest::Remove { name } => name,
        }
    }
}

/// The canonical body of an upload of content `hash_hex` as `name` (forced or not).
pub fn put_body(name: &str, hash_hex: &str, force: bool) -> Vec<u8> {
    if force {
        format!("{name}|{hash_hex}|force").into_bytes()
    } else {
        format!("{name}|{hash_hex}").into_bytes()
    }
}

/// The `Authorization` header value for `request`, signed now.
pub fn authorization(key: &OperatorKey, request: &SignedRequest<'_>) -> String {
    header(&key.sign_request(request.kind(), &request.body()))
}

/// The header value carrying `sig`.
pub fn header(sig: &OperatorSig) -> String {
    format!(
        "{SCHEME} {}:{}:{}:{}",
        sig.operator, sig.unix_ms, sig.nonce, sig.signature
    )
}

/// Why an upload is refused: a missing credential (401) or one that does not hold (403), or
/// the service cannot decide now (503: the cluster store is down).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing(String),
    Bad(String),
    Unavailable(String),
}

/// A parsed `Authorization` header, before the signature is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub sig: OperatorSig,
}

impl Claim {
    /// Parses the header value and checks the time against `now_unix_ms`. Cheap: run it
    /// before reading the body.
    pub fn parse(header: Option<&str>, now_unix_ms: u64) -> Result<Claim, Refusal> {
        let header = header.ok_or_else(|| {
            Refusal::Missing(format!(
                "changing assets needs an operator credential's signature: Authorization: \
                 {SCHEME} <operator>:<unix_ms>:<nonce>:<signature> (tessera ctl asset \
                 put|rollback|rm --credential FILE signs for you)"
            ))
        })?;
        let rest = header
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| {
                Refusal::Missing(format!(
                    "the Authorization header is not of the {SCHEME} scheme"
                ))
            })?;
        let malformed = || {
            Refusal::Bad(format!(
                "malformed {SCHEME} credential: expected <operator>:<unix_ms>:<nonce>:<signature>"
            ))
        };
        let mut parts = rest.trim().split(':');
        let (Some(operator), Some(unix_ms), Some(nonce), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        if operator.is_empty() || nonce.is_empty() || signature.is_empty() {
            return Err(malformed());
        }
        let unix_ms: u64 = unix_ms.parse().map_err(|_| {
            Refusal::Bad(format!(
                "malformed {SCHEME} credential: the time {unix_ms:?} is not unix milliseconds"
            ))
        })?;
        let skew = now_unix_ms.abs_diff(unix_ms);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Bad(format!(
                "the request was signed at {unix_ms} ms, {} s away from the server's clock \
                 (at most {} s allowed); check the clocks or sign again",
                skew / 1000,
                MAX_SKEW.as_secs()
            )));
        }
        Ok(Claim {
            sig: OperatorSig {
                operator: operator.to_string(),
                unix_ms,
                nonce: nonce.to_string(),
                signature: signature.to_string(),
            },
        })
    }

    /// Checks the signature over `request`, the operator's standing, and that the request
    /// was not used before (using it up).
    pub async fn verify(
        &self,
        operators: &Operators,
        request: &SignedRequest<'_>,
    ) -> Result<(), Refusal> {
        let what = match request {
            SignedRequest::Put { .. } => "upload",
            SignedRequest::Rollback { .. } => "rollback",
            SignedRequest::Remove { .. } => "removal",
        };
        match operators
            .check(request.kind(), &request.body(), Some(&self.sig))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_refusal() => Err(Refusal::Bad(format!(
                "the {what}'s signature by operator {:?} does not hold: {e}",
                self.sig.operator
            ))),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_coordinator::operators::{now_unix_ms, OperatorRecord, Voucher};
    use tessera_coordinator::pki::ClusterCa;
    use tessera_coordinator::{ClusterStore, MemStore};

    #[tokio::test]
    async fn a_signed_upload_verifies_once_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(store, "/t/", vec![ca.cert().clone()]);
        let ann = OperatorKey::generate("ann").unwrap();
        let record = OperatorRecord::new("ann", &ann.public_hex(), &Voucher::Ca(&ca)).unwrap();
        operators.records().put(&record).await.unwrap();

        let put = |name, hash, force| SignedRequest::Put { name, hash, force };
        let value = authorization(&ann, &put("a.rhai", "h1", false));
        let claim = Claim::parse(Some(&value), now_unix_ms()).unwrap();
        assert_eq!(claim.sig.operator, "ann");
        assert!(claim
            .verify(&operators, &put("b.rhai", "h1", false))
            .await
            .is_err());
        assert!(claim
            .verify(&operators, &put("a.rhai", "h2", false))
            .await
            .is_err());
        // The force flag is signed: a plain upload's signature does not force.
        assert!(claim
            .verify(&operators, &put("a.rhai", "h1", true))
            .await
            .is_err());
        // Nor is it a rollback or a removal of the same name.
        let rollback = SignedRequest::Rollback {
            name: "a.rhai",
            hash: "h1",
        };
        assert!(claim.verify(&operators, &rollback).await.is_err());
        let remove = SignedRequest::Remove { name: "a.rhai" };
        assert!(claim.verify(&operators, &remove).await.is_err());
        claim
            .verify(&operators, &put("a.rhai", "h1", false))
            .await
            .unwrap();
        let Err(Refusal::Bad(msg)) = claim.verify(&operators, &put("a.rhai", "h1", false)).await
        else {
            panic!("a replay was accepted");
        };
        assert!(msg.contains("already used"), "{msg}");
        for request in [put("a.rhai", "h1", true), rollback, remove] {
            let claim = Claim::parse(Some(&authorization(&ann, &request)), now_unix_ms()).unwrap();
            claim.verify(&operators, &request).await.unwrap();
            assert!(
                claim.verify(&operators, &request).await.is_err(),
                "{request:?} replayed"
            );
        }
        // A key the cluster does not know.
        let stranger = OperatorKey::generate("ann").unwrap();
        let value = authorization(&stranger, &put("a.rhai", "h1", false));
        let claim = Claim::parse(Some(&value), now_unix_ms()).unwrap();
        assert!(matches!(
            claim.verify(&operators, &put("a.rhai", "h1", false)).await,
            Err(Refusal::Bad(_))
        ));
    }

    #[test]
    fn missing_malformed_and_stale_headers_are_refused() {
        const NOW: u64 = 1_700_000_000_000;
        assert!(matches!(Claim::parse(None, NOW), Err(Refusal::Missing(_))));
        assert!(matches!(
            Claim::parse(Some("Bearer abc"), NOW),
            Err(Refusal::Missing(_))
        ));
        for bad in [
            "Tessera-Operator ann",
            "Tessera-Operator ann:xyz:00:00",
            "Tessera-Operator :1:00:00",
            "Tessera-Operator ann:1:00",
            "Tessera-Operator ann:1:00:00:00",
        ] {
            assert!(
                matches!(Claim::parse(Some(bad), NOW), Err(Refusal::Bad(_))),
                "{bad}"
            );
        }
        let stale = format!("Tessera-Operator ann:{}:00:00", NOW - 61_000);
        let Err(Refusal::Bad(msg)) = Claim::parse(Some(&stale), NOW) else {
            panic!("stale accepted");
        };
        assert!(msg.contains("61 s"), "{msg}");
        let future = format!("Tessera-Operator ann:{}:00:00", NOW + 59_000);
        assert!(Claim::parse(Some(&future), NOW).is_ok());
    }
}
