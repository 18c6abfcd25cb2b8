//! Session tokens: signed claims that any holder of the verifying key can check offline.
//!
//! Format (printable ASCII, no new dependencies):
//!
//! ```text
//! t1.<hex of the claims as compact JSON>.<hex of the ed25519 signature>
//! ```
//!
//! The signature covers `tessera-session-token-v1\0` followed by the claims' JSON bytes; the
//! prefix keeps these signatures from being valid for anything else the key might sign.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::AuthError;

const PREFIX: &str = "t1.";
const DOMAIN: &[u8] = b"tessera-session-token-v1\0";
/// Longer input is rejected before decoding anything.
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a session token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "id")]
    pub account_id: u64,
    #[serde(rename = "n")]
    pub name: String,
    /// The token is valid while the Unix time is below this.
    #[serde(rename = "exp")]
    pub expires_unix: u64,
    /// What the holder may do.
    #[serde(rename = "r", default)]
    pub role: Role,
    /// This session's id (random, hex): logging out revokes it.
    #[serde(rename = "sid", default)]
    pub session: String,
}

/// What an account may do. Operators may also mute and kick players in chat and grant roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Player,
    Operator,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Player => "player",
            Role::Operator => "operator",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "player" => Ok(Role::Player),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role {other:?}: use player or operator")),
        }
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + payload.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(payload);
    message
}

pub(crate) fn issue(key: &SigningKey, claims: &Claims) -> String {
    // Serialising a struct of integers and a string cannot fail.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signature = key.sign(&signed_message(&payload));
    format!(
        "{PREFIX}{}.{}",
        hex_encode(&payload),
        hex_encode(&signature.to_bytes())
    )
}

/// Checks a token's signature against `key` and its expiry against `now_unix`, without an
/// [`crate::Auth`]: routers and shards call this with the published verifying key.
pub fn verify_token_with(
    key: &VerifyingKey,
    token: &str,
    now_unix: u64,
) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TokenInvalid);
    }
    let (payload_hex, signature_hex) = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .ok_or(AuthError::TokenInvalid)?;
    let payload = hex_decode(payload_hex).ok_or(AuthError::TokenInvalid)?;
    let signature: [u8; 64] = hex_decode(signature_hex)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(AuthError::TokenInvalid)?;
    key.verify_strict(
        &signed_message(&payload),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| AuthError::TokenInvalid)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::TokenInvalid)?;
    if now_unix >= claims.expires_unix {
        return Err(AuthError::TokenExpired);
    }
    Ok(claims)
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Lowercase or uppercase hex; `None` for anything else.
pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn claims() -> Claims {
        Claims {
            account_id: 42,
            name: "Bob".into(),
            expires_unix: 1_000,
            role: Role::Player,
            session: "00ff".into(),
        }
    }

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&bytes)), Some(bytes));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("AbCd"), Some(vec![0xab, 0xcd]));
    }

    #[test]
    fn round_trip_and_expiry_boundary() {
        let token = issue(&key(), &claims());
        assert!(token.starts_with("t1."));
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        let vk = key().verifying_key();
        assert_eq!(verify_token_with(&vk, &token, 999).unwrap(), claims());
        assert!(matches!(
            verify_token_with(&vk, &token, 1_000),
            Err(AuthError::TokenExpired)
        ));
    }

    #[test]
    fn garbage_is_invalid() {
        let vk = key().verifying_key();
        let token = issue(&key(), &claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let cases = [
            String::new(),
            "t1.".into(),
            "t1..".into(),
            token.replacen("t1.", "t2.", 1),
            format!("{head}."),
            format!("{head}.{}", &sig[2..]),
            format!("{token}00"),
            "x".repeat(MAX_TOKEN_LEN + 1),
            issue(&SigningKey::from_bytes(&[8; 32]), &claims()),
        ];
        for case in cases {
            assert!(
                matches!(
                    verify_token_with(&vk, &case, 0),
                    Err(AuthError::TokenInvalid)
                ),
                "{case:?}"
            );
        }
    }
}
