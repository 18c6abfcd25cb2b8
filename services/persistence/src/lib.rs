//! Tessera's storage API, shaped like FoundationDB.
//!
//! Every durable thing in Tessera (accounts, inventories, cell checkpoints) goes through this
//! crate. The API is FoundationDB's, cut down to what we use:
//!
//! - **Ordered byte keys.** Keys and values are bytes; keys sort bytewise, and
//!   [`Transaction::get_range`] reads them in that order. [`key`] builds composite keys whose
//!   order is the order of their parts (FoundationDB's tuple encoding for byte strings), and
//!   [`prefix_range`] turns a prefix into a range.
//! - **Transactions with automatic retry.** [`Database::transact`] runs a closure against a
//!   [`Transaction`] and commits it if the closure returns `Ok`. A [`StoreError::Conflict`]
//!   runs the closure again (bounded, with backoff); any other error aborts, and nothing the
//!   failed attempt wrote is visible. The closure may therefore run more than once: it must
//!   not have side effects outside the transaction.
//! - **FoundationDB's limits, on every backend.** Keys up to [`MAX_KEY_BYTES`], values up to
//!   [`MAX_VALUE_BYTES`], and up to [`MAX_TRANSACTION_BYTES`] written per transaction; keys
//!   starting with 0xFF are reserved. The limits are checked in this crate, above the backend,
//!   so code that works on redb works on FoundationDB later. A write that breaks a limit
//!   returns its error and also stops the commit, even if the closure ignores the error.
//!   Values too big for one key go through [`set_chunked`] / [`get_chunked`].
//!
//! Backends implement [`Backend`]: run one attempt of a transaction, nothing more. There are
//! three:
//!
//! - redb ([`Database::open_redb`]), an embedded single-file store with a single writer:
//!   attempts run one at a time inside a redb write transaction, so they never conflict, and a
//!   long transaction delays all others. Keep transactions short and do heavy work (such as
//!   password hashing) outside them.
//! - the persistence service over QUIC ([`remote::RemoteBackend`]).
//! - FoundationDB (`Database::open_fdb`, behind the cargo feature `fdb`, which needs libclang
//!   to build and libfdb_c to link): each attempt is one FoundationDB transaction, and
//!   FoundationDB's retryable errors become [`StoreError::Conflict`].
//!
//! The `conformance` module (feature `conformance`, always on in this crate's tests) is the
//! contract: every backend must pass it.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use tessera_persistence::{key, Database};
//!
//! let db = Database::open_redb(&dir.path().join("store.redb"))?;
//! let counter = key(&[b"example", b"visits"]);
//! let visits = db.transact(|tx| {
//!     let now = match tx.get(&counter)? {
//!         Some(bytes) => u64::from_be_bytes(bytes.try_into().unwrap_or_default()) + 1,
//!         None => 1,
//!     };
//!     tx.set(&counter, &now.to_be_bytes())?;
//!     Ok(now)
//! })?;
//! assert_eq!(visits, 1);
//! # Ok::<(), tessera_persistence::StoreError>(())
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod backup;
mod chunked;
mod error;
#[cfg(feature = "fdb")]
mod fdb_backend;
mod keys;
mod limits;
mod redb_backend;
pub mod remote;
pub mod spaces;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use chunked::{
    clear_chunked, get_chunked, get_chunked_header, get_chunks, set_chunked, ChunkLayout,
    ChunkedHeader, CHUNK_KEY_OVERHEAD,
};
pub use error::StoreError;
pub use keys::{key, parse_key, prefix_range};

/// Longest key, in bytes (FoundationDB's limit).
pub const MAX_KEY_BYTES: usize = 10_000;
/// Longest value, in bytes (FoundationDB's limit). Larger values: [`set_chunked`].
pub const MAX_VALUE_BYTES: usize = 100_000;
/// Most bytes one transaction may write: the keys and values it sets, plus the keys it clears
/// and both ends of the ranges it clears (FoundationDB's limit).
pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;

/// One entry of a range read: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// How often [`Database::transact`] runs a closure that keeps conflicting before giving up.
pub const MAX_ATTEMPTS: u32 = 50;

/// One attempt of a transaction, as seen by the closure passed to [`Database::transact`].
///
/// Reads see the transaction's own earlier writes. Nothing is visible to other transactions
/// until the closure returns `Ok` and the commit succeeds.
pub trait Transaction {
    /// The value at `key`, if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets `key` to `value`, replacing any earlier value.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Removes `key`; removing a missing key is not an error.
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError>;

    /// Removes every key in `[begin, end)`; an empty or inverted range does nothing.
    ///
    /// Like FoundationDB's, this call reports no error itself: a broken limit or a backend
    /// failure makes the commit fail instead.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);

    /// Up to `limit` key-value pairs with `begin <= key < end`, in ascending key order.
    /// A `limit` of 0 means no limit (as in FoundationDB).
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
}

/// A storage engine. Implementations only store bytes: limits and retries live in
/// [`Database`].
pub trait Backend: Send + Sync {
    /// Runs one attempt of a transaction: begin, call `body` once, and commit if it returns
    /// `Ok`. If `body` or the commit fails, nothing it wrote may become visible. Return
    /// [`StoreError::Conflict`] when the commit lost against a concurrent transaction, so the
    /// caller can retry.
    fn attempt(
        &self,
        body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// A short description for logs, such as `redb at /var/lib/tessera/store.redb`.
    fn describe(&self) -> String;

    /// A consistent read-only view of the whole store as it is now, which later commits do
    /// not change (a backup reads one in pages).
    fn snapshot(&self) -> Result<Arc<dyn Snapshot>, StoreError>;
}

/// The store at one moment ([`Database::snapshot`]): every read sees exactly the commits made
/// before it was taken. redb keeps one as long as it is held; FoundationDB for about 5 s
/// (its MVCC window), after which reads fail with a clear error.
pub trait Snapshot: Send + Sync {
    /// Up to `limit` key-value pairs with `begin <= key < end`, in ascending key order (0: no
    /// limit).
    fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
}

/// A handle to a store. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct Database {
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend.describe())
            .finish()
    }
}

impl Database {
    /// Wraps any backend.
    pub fn new(backend: Arc<dyn Backend>) -> Database {
        Database { backend }
    }

    /// Opens the redb file at `path`, creating it and its parent directories if missing.
    ///
    /// A file can be open only once at a time; clone the `Database` to share it.
    pub fn open_redb(path: &Path) -> Result<Database, StoreError> {
        Ok(Database::new(Arc::new(redb_backend::RedbBackend::open(
            path,
        )?)))
    }

    /// Runs `f` in a transaction and commits it.
    ///
    /// On [`StoreError::Conflict`] (from the backend or from `f`) the transaction is run again,
    /// up to [`MAX_ATTEMPTS`] times with a short randomised backoff, then
    /// [`StoreError::RetriesExhausted`] is returned. Any other error is returned at once and
    /// nothing the attempt wrote is visible. `f` may run several times, so it must not change
    /// anything outside the transaction.
    ///
    /// Do not call `transact` (or the one-key helpers) from inside `f`: the redb backend runs
    /// one transaction at a time, so a nested call waits for the outer one forever. On redb,
    /// `f` also holds up every other transaction while it runs; keep it short.
    pub fn transact<T>(
        &self,
        mut f: impl FnMut(&mut dyn Transaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let mut output = None;
            let result = self.backend.attempt(&mut |raw| {
                let mut tx = limits::Limited::new(raw);
                let value = f(&mut tx)?;
                tx.finish()?;
                output = Some(value);
                Ok(())
            });
            match result {
                Ok(()) => {
                    return output.ok_or_else(|| {
                        StoreError::Backend(format!(
                            "backend {} committed without running the transaction",
                            self.backend.describe()
                        ))
                    })
                }
                Err(err) if err.is_retryable() => {
                    tracing::debug!(attempt, "transaction conflicted; retrying");
                    if attempt < MAX_ATTEMPTS {
                        std::thread::sleep(backoff(attempt));
                    }
                }
                Err(err) => return Err(err),
            }
        }
        tracing::warn!(
            attempts = MAX_ATTEMPTS,
            "transaction gave up after repeated conflicts"
        );
        Err(StoreError::RetriesExhausted {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Reads one key in its own transaction.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.transact(|tx| tx.get(key))
    }

    /// Sets one key in its own transaction.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| tx.set(key, value))
    }

    /// Clears one key in its own transaction.
    pub fn clear(&self, key: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| tx.clear(key))
    }

    /// Reads a range in its own transaction; see [`Transaction::get_range`].
    pub fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.transact(|tx| tx.get_range(begin, end, limit))
    }

    /// A consistent view of the store as it is now ([`Snapshot`]).
    pub fn snapshot(&self) -> Result<Arc<dyn Snapshot>, StoreError> {
        self.backend.snapshot()
    }

    /// What this database stores into, for logs.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }
}

/// Exponential backoff from 1 ms up to 100 ms, with jitter so that conflicting writers spread
/// out.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = (1_000u64 << attempt.min(7)).min(100_000);
    // RandomState is seeded randomly per instance: enough jitter without a rand dependency.
    let noise = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_micros(ceiling_us / 2 + noise % (ceiling_us / 2 + 1))
}
