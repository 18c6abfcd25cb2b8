//! The one error type of this crate.

use tessera_coordinator::authority::AuthorityError;
use tessera_persistence::StoreError;

/// Everything the asset store, server and client can fail with. Client errors name the URL
/// they were fetching and, for refusals, carry the server's own explanation.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The name breaks the naming rules ([`crate::AssetName::parse`]).
    #[error("invalid asset name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// A rollback named content the name's history does not hold.
    #[error(
        "{name} has no version {hash} in its history (tessera ctl asset history {name} lists them)"
    )]
    NoSuchVersion { name: String, hash: String },

    /// The service refused a script: its name or content would not run on the shards, or no
    /// NPC runs it. `code` is the error body's kind (`script-name`, `unknown-script`,
    /// `script-compile`, ...); the message says what to do.
    #[error("refused: {message}")]
    ScriptRefused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },

    /// The content is larger than the service accepts.
    #[error("the asset is {size} bytes, more than the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },

    /// The store failed; [`StoreError::Unavailable`] means the persistence service is down.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The service could not be reached or the connection broke (wrong URL, service down,
    /// timeout).
    #[error("cannot reach the asset service at {url}: {reason}")]
    Unreachable { url: String, reason: String },

    /// There is no such asset or blob.
    #[error("{url}: not found: {message}")]
    NotFound { url: String, message: String },

    /// The service refused the credential (401: none sent; 403: wrong cluster, wrong
    /// operator key, or a clock more than 5 minutes off).
    #[error("{url}: the asset service refused the credential (HTTP {status}): {message}")]
    Denied {
        url: String,
        status: u16,
        message: String,
    },

    /// Any other error answer from the service, with its message.
    #[error("{url}: the asset service answered HTTP {status}: {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },

    /// The bytes received do not have the hash they were fetched by: a broken proxy, a corrupt
    /// store or a man in the middle. Do not use them.
    #[error("{url}: content hash mismatch: expected blake3 {expected}, received {actual}")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    /// The service answered something this client does not understand.
    #[error("{url}: unexpected answer from the asset service: {reason}")]
    InvalidResponse { url: String, reason: String },

    /// The operator credential cannot sign.
    #[error(transparent)]
    Credential(#[from] AuthorityError),
}
