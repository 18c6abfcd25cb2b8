//! A blocking client of the asset service, for `tessera ctl`, shards and tools.

use crate::scripts::{ScriptSource, ScriptsView, WorldVersion};
use crate::upload_auth::SignedRequest;
use crate::{
    hash_hex, is_hash_hex, upload_auth, AssetError, AssetRecord, HistoryEntry, Manifest,
    MAX_ASSET_BYTES, SOURCE_HEADER,
};
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

/// A named asset's running content and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetContent {
    pub bytes: Vec<u8>,
    /// blake3 of the bytes, hex.
    pub hash: String,
    /// An upload, or a script of the world folder that no upload overrides.
    pub source: ScriptSource,
}

/// A name's versions (`GET /v1/history/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HistoryView {
    pub name: String,
    /// Which version runs: the current upload, the world folder's, or none (removed).
    pub in_effect: Option<ScriptSource>,
    /// The current upload.
    pub current: Option<AssetRecord>,
    /// The world folder's version, for a script of the world.
    pub world: Option<WorldVersion>,
    /// What a rollback without a hash goes back to.
    pub previous: Option<String>,
    /// Every change, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// What a removal did.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RemoveResult {
    pub name: String,
    /// The hash of the upload that was in effect.
    pub removed: String,
    /// What runs now: the world folder's version of a script, if it has one.
    pub in_effect: Option<WorldVersion>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct RollbackAnswer {
    name: String,
    hash: String,
    size: u64,
    changed: bool,
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
        Ok(self.get_running(name)?.bytes)
    }

    /// The running content of asset `name` (for a script: its current upload, else the world
    /// folder's file), checked against its hash, and where it comes from.
    pub fn get_running(&self, name: &str) -> Result<AssetContent, AssetError> {
        let url = format!("{}/v1/assets/{}", self.base, encode_path(name));
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let source = match response
            .headers()
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("world") => ScriptSource::World,
            _ => ScriptSource::Upload,
        };
        let (etag, body) = success(&url, response)?;
        let hash = etag
            .map(|e| e.trim_matches('"').to_string())
            .filter(|h| is_hash_hex(h))
            .ok_or_else(|| invalid(&url, "the answer has no content hash (ETag)"))?;
        let bytes = verify(&url, &hash, body)?;
        Ok(AssetContent {
            bytes,
            hash,
            source,
        })
    }

    /// Every script the world runs or an operator uploaded, and which version is in effect.
    pub fn scripts(&self) -> Result<ScriptsView, AssetError> {
        self.get_json(&format!("{}/v1/scripts", self.base))
    }

    /// The versions of asset `name`.
    pub fn history(&self, name: &str) -> Result<HistoryView, AssetError> {
        self.get_json(&format!("{}/v1/history/{}", self.base, encode_path(name)))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AssetError> {
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| unreachable(url, e))?;
        let (_, body) = success(url, response)?;
        serde_json::from_slice(&body)
            .map_err(|e| invalid(url, &format!("the answer is not the expected JSON: {e}")))
    }

    /// Makes version `hash` of asset `name` current again, signed with operator key
    /// `credential`; `changed` is false when it already was.
    pub fn rollback(
        &self,
        name: &str,
        hash: &str,
        credential: &OperatorKey,
    ) -> Result<PutResult, AssetError> {
        let url = format!(
            "{}/v1/rollback/{}?hash={}",
            self.base,
            encode_path(name),
            encode_path(hash)
        );
        let authorization =
            upload_auth::authorization(credential, &SignedRequest::Rollback { name, hash });
        let response = self
            .agent
            .post(&url)
            .header("Authorization", &authorization)
            .send_empty()
            .map_err(|e| unreachable(&url, e))?;
        let (_, body) = success(&url, response)?;
        let answer: RollbackAnswer = serde_json::from_slice(&body)
            .map_err(|e| invalid(&url, &format!("the rollback answer is not valid JSON: {e}")))?;
        Ok(PutResult {
            name: answer.name,
            hash: answer.hash,
            size: answer.size,
            changed: answer.changed,
        })
    }

    /// Removes asset `name`'s upload (a script's world folder version runs again), signed
    /// with operator key `credential`.
    pub fn remove(&self, name: &str, credential: &OperatorKey) -> Result<RemoveResult, AssetError> {
        let url = format!("{}/v1/assets/{}", self.base, encode_path(name));
        let authorization = upload_auth::authorization(credential, &SignedRequest::Remove { name });
        let response = self
            .agent
            .delete(&url)
            .header("Authorization", &authorization)
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let (_, body) = success(&url, response)?;
        serde_json::from_slice(&body)
            .map_err(|e| invalid(&url, &format!("the removal answer is not valid JSON: {e}")))
    }

    /// Uploads `bytes` as asset `name`, signed with operator key `credential`.
    pub fn put(
        &self,
        name: &str,
        bytes: &[u8],
        credential: &OperatorKey,
    ) -> Result<PutResult, AssetError> {
        self.upload(name, bytes, credential, false)
    }

    /// Uploads `bytes` as asset `name`, forced: a script no NPC of the world runs is accepted
    /// (it is still compiled).
    pub fn put_forced(
        &self,
        name: &str,
        bytes: &[u8],
        credential: &OperatorKey,
    ) -> Result<PutResult, AssetError> {
        self.upload(name, bytes, credential, true)
    }

    fn upload(
        &self,
        name: &str,
        bytes: &[u8],
        credential: &OperatorKey,
        force: bool,
    ) -> Result<PutResult, AssetError> {
        if bytes.len() > MAX_ASSET_BYTES {
            return Err(AssetError::TooLarge {
                size: bytes.len(),
                max: MAX_ASSET_BYTES,
            });
        }
        let mut url = format!("{}/v1/assets/{}", self.base, encode_path(name));
        if force {
            url.push_str("?force=true");
        }
        let hash = hash_hex(bytes);
        let authorization = upload_auth::authorization(
            credential,
            &SignedRequest::Put {
                name,
                hash: &hash,
                force,
            },
        );
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
    let (message, code) = serde_json::from_slice::<ErrorBody>(&body)
        .map(|e| (e.error, e.code))
        .unwrap_or_else(|_| (String::from_utf8_lossy(&body).trim().to_string(), None));
    let url = url.to_string();
    if let Some(code) = code {
        return Err(AssetError::ScriptRefused {
            url,
            status,
            code,
            message,
        });
    }
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
