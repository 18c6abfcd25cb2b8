//! How an upload proves it comes from an operator: the `Authorization` header of a PUT.
//!
//! ```text
//! Authorization: Tessera-Operator <operator>:<unix_ms>:<hex hmac>
//! hmac = HMAC-SHA256(operator key, "tessera-asset/1|PUT|<name>|<blake3 hex of body>|<unix_ms>")
//! ```
//!
//! The operator key is the one in the operator's credential file (`tessera ca operator NAME`);
//! the server derives it again from the cluster key. The body hash binds the MAC to the
//! content and the name to the place, and the time limits replays to
//! [`MAX_CLOCK_SKEW_MS`] either side of the server's clock. Within that window a captured
//! request can be replayed, which only writes the same content again.

use tessera_coordinator::authority::{AuthorityError, ClusterKey, OperatorCredential};

/// The authorization scheme.
pub const SCHEME: &str = "Tessera-Operator";

/// How far the request time may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// The signed bytes of an upload.
pub fn put_message(name: &str, hash_hex: &str, unix_ms: u64) -> Vec<u8> {
    format!("tessera-asset/1|PUT|{name}|{hash_hex}|{unix_ms}").into_bytes()
}

/// The `Authorization` header value for uploading content `hash_hex` as `name` at `unix_ms`.
pub fn authorization(
    credential: &OperatorCredential,
    name: &str,
    hash_hex: &str,
    unix_ms: u64,
) -> Result<String, AuthorityError> {
    let mac = credential.mac_hex(&put_message(name, hash_hex, unix_ms))?;
    Ok(format!("{SCHEME} {}:{unix_ms}:{mac}", credential.operator))
}

/// Why an upload is refused: a missing credential (401) or one that does not hold (403).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing(String),
    Bad(String),
}

/// A parsed `Authorization` header, before the MAC is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub operator: String,
    pub unix_ms: u64,
    mac_hex: String,
}

impl Claim {
    /// Parses the header value and checks the time against `now_unix_ms`. Cheap: run it
    /// before reading the body.
    pub fn parse(header: Option<&str>, now_unix_ms: u64) -> Result<Claim, Refusal> {
        let header = header.ok_or_else(|| {
            Refusal::Missing(format!(
                "uploads need an operator credential: Authorization: {SCHEME} \
                 <operator>:<unix_ms>:<hmac> (tessera ctl asset put signs for you)"
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
        // The operator name may contain ':', the time and the MAC cannot.
        let mut parts = rest.trim().rsplitn(3, ':');
        let (Some(mac_hex), Some(unix_ms), Some(operator)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Bad(format!(
                "malformed {SCHEME} credential: expected <operator>:<unix_ms>:<hmac>"
            )));
        };
        let unix_ms: u64 = unix_ms.parse().map_err(|_| {
            Refusal::Bad(format!(
                "malformed {SCHEME} credential: the time {unix_ms:?} is not unix milliseconds"
            ))
        })?;
        if operator.is_empty() {
            return Err(Refusal::Bad(format!(
                "malformed {SCHEME} credential: no operator name"
            )));
        }
        let skew = now_unix_ms.abs_diff(unix_ms);
        if skew > MAX_CLOCK_SKEW_MS {
            return Err(Refusal::Bad(format!(
                "the request was signed at {unix_ms} ms, {} s away from the server's clock \
                 (at most {} s allowed); check the clocks or sign again",
                skew / 1000,
                MAX_CLOCK_SKEW_MS / 1000
            )));
        }
        Ok(Claim {
            operator: operator.to_string(),
            unix_ms,
            mac_hex: mac_hex.to_string(),
        })
    }

    /// Checks the MAC over the upload of content `hash_hex` as `name`.
    pub fn verify(&self, key: &ClusterKey, name: &str, hash_hex: &str) -> Result<(), Refusal> {
        key.verify_operator_mac(
            &self.operator,
            &put_message(name, hash_hex, self.unix_ms),
            &self.mac_hex,
        )
        .map_err(|_| {
            Refusal::Bad(format!(
                "the credential of operator {:?} does not verify for this upload (a credential \
                 of another cluster, or a changed name or body)",
                self.operator
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn a_signed_upload_verifies_and_nothing_else_does() {
        let key = ClusterKey::from_secret(b"x");
        let header = authorization(&key.operator("ann:ops"), "a.rhai", "h1", NOW).unwrap();
        let claim = Claim::parse(Some(&header), NOW + 1000).unwrap();
        assert_eq!(claim.operator, "ann:ops");
        claim.verify(&key, "a.rhai", "h1").unwrap();
        assert!(claim.verify(&key, "b.rhai", "h1").is_err());
        assert!(claim.verify(&key, "a.rhai", "h2").is_err());
        let other = ClusterKey::from_secret(b"y");
        assert!(matches!(
            claim.verify(&other, "a.rhai", "h1"),
            Err(Refusal::Bad(_))
        ));
    }

    #[test]
    fn missing_malformed_and_stale_headers_are_refused() {
        assert!(matches!(Claim::parse(None, NOW), Err(Refusal::Missing(_))));
        assert!(matches!(
            Claim::parse(Some("Bearer abc"), NOW),
            Err(Refusal::Missing(_))
        ));
        for bad in [
            "Tessera-Operator ann",
            "Tessera-Operator ann:xyz:00",
            "Tessera-Operator :1:00",
        ] {
            assert!(
                matches!(Claim::parse(Some(bad), NOW), Err(Refusal::Bad(_))),
                "{bad}"
            );
        }
        let stale = format!("Tessera-Operator ann:{}:00", NOW - 301_000);
        let Err(Refusal::Bad(msg)) = Claim::parse(Some(&stale), NOW) else {
            panic!("stale accepted");
        };
        assert!(msg.contains("301 s"), "{msg}");
        let future = format!("Tessera-Operator ann:{}:00", NOW + 299_000);
        assert!(Claim::parse(Some(&future), NOW).is_ok());
    }
}
