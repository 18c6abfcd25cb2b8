//! The one error type of this crate.

/// Everything a storage call can fail with.
///
/// Only [`StoreError::Conflict`] is retryable; [`crate::Database::transact`] retries it by itself,
/// so callers normally see it only as [`StoreError::RetriesExhausted`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key is longer than [`crate::MAX_KEY_BYTES`]. Shorten the key (hash long names).
    #[error("key is {len} bytes, more than the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },

    /// A value is longer than [`crate::MAX_VALUE_BYTES`]. Use [`crate::set_chunked`].
    #[error("value is {len} bytes, more than the limit of {max} bytes; store it with set_chunked")]
    ValueTooLarge { len: usize, max: usize },

    /// The writes of one transaction add up to more than [`crate::MAX_TRANSACTION_BYTES`].
    /// Split the work over several transactions.
    #[error(
        "transaction writes {len} bytes, more than the limit of {max} bytes; \
         split the work over several transactions"
    )]
    TransactionTooLarge { len: usize, max: usize },

    /// The key lies in the reserved system key space (it starts with byte 0xFF), which
    /// FoundationDB keeps for itself. Range ends up to and including `b"\xff"` are allowed.
    #[error("key starts with 0xFF, which is reserved for the storage system")]
    ReservedKey,

    /// Another transaction changed what this one read. Retryable: `transact` runs the closure
    /// again.
    #[error("transaction conflicted with another transaction; retry it")]
    Conflict,

    /// `transact` gave up after this many conflicting attempts.
    #[error("transaction still conflicted after {attempts} attempts; the key is too contended")]
    RetriesExhausted { attempts: u32 },

    /// Stored bytes do not have the expected shape (for example a chunked value whose chunks are
    /// missing).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// The storage engine failed (I/O, a corrupt file, a file already open elsewhere). The string
    /// says what was being done and why it failed.
    #[error("storage backend failed: {0}")]
    Backend(String),

    /// The persistence service could not be reached or did not answer. Not retried by
    /// `transact`: the caller decides whether to wait (a commit whose answer was lost may or may
    /// not have been applied; the message says so).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether running the transaction again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict)
    }

    /// Whether this error is one of the size or key-space limits (a bug in the caller, never
    /// fixed by retrying).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            StoreError::KeyTooLarge { .. }
                | StoreError::ValueTooLarge { .. }
                | StoreError::TransactionTooLarge { .. }
                | StoreError::ReservedKey
        )
    }

    pub(crate) fn backend(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        StoreError::Backend(format!("{context}: {err}"))
    }
}
