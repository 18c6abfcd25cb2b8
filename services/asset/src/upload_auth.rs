//! How an upload proves it comes from an operator: the `Authorization` header of a PUT.
//!
//! ```text
//! Authorization: Tessera-Operator <operator>:<unix_ms>:<nonce>:<hex ed25519 signature>
//! signed = tessera-request/1|asset-put|<operator>|<unix_ms>|<nonce>|<name>|<blake3 hex of body>
//! ```
//!
//! The signature is the operator's ed25519 key (the credential file of `tessera ca operator
//! NAME`) over the request ([`tessera_coordinator::operators::request_message`], kind
//! `asset-put`, body [`put_body`]); the service checks it against the operators' public keys
//! in the cluster store, with a time within [`MAX_SKEW`] of its clock and a nonce never used
//! before ([`tessera_coordinator::operators::Operators::check`]), so a captured request cannot
//! be replayed, and a revoked operator is refused at once. The body hash binds the signature
//! to the content and the name to the place.

pub use tessera_coordinator::operators::MAX_SKEW;
use tessera_coordinator::operators::{OperatorKey, OperatorSig, Operators};

/// The authorization scheme.
pub const SCHEME: &str = "Tessera-Operator";

/// The request kind an upload is signed as.
pub const KIND: &str = "asset-put";

/// The canonical body of an upload of content `hash_hex` as `name`.
pub fn put_body(name: &str, hash_hex: &str) -> Vec<u8> {
    format!("{name}|{hash_hex}").into_bytes()
}

/// The `Authorization` header value for uploading content `hash_hex` as `name`, now.
pub fn authorization(key: &OperatorKey, name: &str, hash_hex: &str) -> String {
    header(&key.sign_request(KIND, &put_body(name, hash_hex)))
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
                "uploads need an operator credential's signature: Authorization: {SCHEME} \
                 <operator>:<unix_ms>:<nonce>:<signature> (tessera ctl asset put signs for you)"
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

    /// Checks the signature over the upload of content `hash_hex` as `name`, the operator's
    /// standing, and that the request was not used before (using it up).
    pub async fn verify(
        &self,
        operators: &Operators,
        name: &str,
        hash_hex: &str,
    ) -> Result<(), Refusal> {
        match operators
            .check(KIND, &put_body(name, hash_hex), Some(&self.sig))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_refusal() => Err(Refusal::Bad(format!(
                "the upload's signature by operator {:?} does not hold: {e}",
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

        let value = authorization(&ann, "a.rhai", "h1");
        let claim = Claim::parse(Some(&value), now_unix_ms()).unwrap();
        assert_eq!(claim.sig.operator, "ann");
        assert!(claim.verify(&operators, "b.rhai", "h1").await.is_err());
        assert!(claim.verify(&operators, "a.rhai", "h2").await.is_err());
        claim.verify(&operators, "a.rhai", "h1").await.unwrap();
        let Err(Refusal::Bad(msg)) = claim.verify(&operators, "a.rhai", "h1").await else {
            panic!("a replay was accepted");
        };
        assert!(msg.contains("already used"), "{msg}");
        // A key the cluster does not know.
        let stranger = OperatorKey::generate("ann").unwrap();
        let value = authorization(&stranger, "a.rhai", "h1");
        let claim = Claim::parse(Some(&value), now_unix_ms()).unwrap();
        assert!(matches!(
            claim.verify(&operators, "a.rhai", "h1").await,
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
