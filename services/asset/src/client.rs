//! A blocking client of the asset service, for `tessera ctl`, shards and tools.

use crate::{hash_hex, is_hash_hex, upload_auth, AssetError, Manifest, MAX_ASSET_BYTES};
use serde::Deserialize;
use std::time::Duration;
use tessera_coordinator::operators::OperatorKey;

/// How long to wait for a connection, and then for the answer to start.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long one whole call may take (an 8 MiB upload over a slow link).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest body read from the service: an asset, or a generous manifest.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// The answer to a manifest poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestFetch {
    /// The manifest still has the ETag the caller sent.
    NotModified,
    /// A new manifest; send `etag` with the next poll.
    Fresh { manifest: Manifest, etag: String },
}

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PutResult {
    pub name: String,
    /// blake3 of the content, hex.
    pub hash: String,
    pub size: u64,
    /// False when the name already had this content (HTTP 200 instead of 201).
    #[serde(skip)]
    pub changed: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A blocking HTTP client of one asset service, such as `http://assets:7400`.
#[derive(Clone, Debug)]
pub struct AssetClient {
    base: String,
    agent: ureq::Agent,
}

impl AssetClient {
    pub fn new(base_url: &str) -> AssetClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_resolve(Some(TIMEOUT))
            .timeout_connect(Some(TIMEOUT))
            .timeout_recv_response(Some(TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            .build()
            .into();
        AssetClient {
            base: base_url.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// The current manifest, or [`ManifestFetch::NotModified`] if it still has the ETag
    /// `if_none_match` (from an earlier [`ManifestFetch::Fresh`]).
    pub fn manifest(&self, if_none_match: Option<&str>) -> Result<ManifestFetch, AssetError> {
        let url = format!("{}/v1/manifest", self.base);
        let mut request = self.agent.get(&url);
        if let Some(etag) = if_none_match {
            request = request.header("If-None-Match", etag);
        }
        let response = request.call().map_err(|e| unreachable(&url, e))?;
        if response.status() == 304 {
            return Ok(ManifestFetch::NotModified);
        }
        let (etag, body) = success(&url, response)?;
        let etag = etag.ok_or_else(|| invalid(&url, "the manifest has no ETag"))?;
        let manifest = serde_json::from_slice(&body)
            .map_err(|e| invalid(&url, &format!("the manifest is not valid JSON: {e}")))?;
        Ok(ManifestFetch::Fresh { manifest, etag })
    }

    /// The content with blake3 hash `hash`, checked against it.
    pub fn blob(&self, hash: &str) -> Result<Vec<u8>, AssetError> {
        let hash = hash.to_ascii_lowercase();
        let url = format!("{}/v1/blobs/{hash}", self.base);
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let (_, body) = success(&url, response)?;
        verify(&url, &hash, body)
    }

    /// The current content of asset `name`, checked against the hash the service names in
    /// its ETag.
    pub fn get(&self, name: &str) -> Result<Vec<u8>, AssetError> {
        let url = format!("{}/v1/assets/{}", self.base, encode_path(name));
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let (etag, body) = success(&url, response)?;
        let hash = etag
            .map(|e| e.trim_matches('"').to_string())
            .filter(|h| is_hash_hex(h))
            .ok_or_else(|| invalid(&url, "the answer has no content hash (ETag)"))?;
        verify(&url, &hash, body)
    }

    /// Uploads `bytes` as asset `name`, signed with operator key `credential`.
    pub fn put(
        &self,
        name: &str,
        bytes: &[u8],
        credential: &OperatorKey,
    ) -> Result<PutResult, AssetError> {
        if bytes.len() > MAX_ASSET_BYTES {
            return Err(AssetError::TooLarge {
                size: bytes.len(),
                max: MAX_ASSET_BYTES,
            });
        }
        let url = format!("{}/v1/assets/{}", self.base, encode_path(name));
        let hash = hash_hex(bytes);
        let authorization = upload_auth::authorization(credential, name, &hash);
        let response = self
            .agent
            .put(&url)
            .header("Authorization", &authorization)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(|e| unreachable(&url, e))?;
        let changed = response.status() == 201;
        let (_, body) = success(&url, response)?;
        let mut result: PutResult = serde_json::from_slice(&body)
            .map_err(|e| invalid(&url, &format!("the upload answer is not valid JSON: {e}")))?;
        result.changed = changed;
        if result.hash != hash {
            return Err(AssetError::HashMismatch {
                url,
                expected: hash,
                actual: result.hash,
            });
        }
        Ok(result)
    }
}

fn unreachable(url: &str, err: ureq::Error) -> AssetError {
    AssetError::Unreachable {
        url: url.to_string(),
        reason: err.to_string(),
    }
}

fn invalid(url: &str, reason: &str) -> AssetError {
    AssetError::InvalidResponse {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// The ETag and body of a 2xx answer; any other answer becomes the matching error, with the
/// service's message.
fn success(
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<(Option<String>, Vec<u8>), AssetError> {
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| unreachable(url, e))?;
    if (200..300).contains(&status) {
        return Ok((etag, body));
    }
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
    let url = url.to_string();
    Err(match status {
        404 => AssetError::NotFound { url, message },
        401 | 403 => AssetError::Denied {
            url,
            status,
            message,
        },
        _ => AssetError::Rejected {
            url,
            status,
            message,
        },
    })
}

/// Returns `body` if its blake3 hash is `expected`.
pub(crate) fn verify(url: &str, expected: &str, body: Vec<u8>) -> Result<Vec<u8>, AssetError> {
    let actual = hash_hex(&body);
    if actual != expected {
        return Err(AssetError::HashMismatch {
            url: url.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(body)
}

/// Percent-encodes a name for a URL path. Valid names need no encoding; invalid ones are sent
/// as they are so that the service explains what is wrong with them.
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'/' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_refuses_other_content() {
        let good = hash_hex(b"hello");
        assert_eq!(verify("u", &good, b"hello".to_vec()).unwrap(), b"hello");
        let err = verify("http://x/v1/blobs/h", &good, b"hellO".to_vec()).unwrap_err();
        assert!(matches!(err, AssetError::HashMismatch { .. }));
        assert!(err.to_string().contains("http://x/v1/blobs/h"), "{err}");
    }

    #[test]
    fn names_are_encoded_for_paths() {
        assert_eq!(encode_path("scripts/a-b_c.rhai"), "scripts/a-b_c.rhai");
        assert_eq!(encode_path("a b%"), "a%20b%25");
    }
}
