//! The FoundationDB backend (cargo feature `fdb`): each attempt is one FoundationDB
//! transaction.
//!
//! FoundationDB already has the semantics the API promises (ordered byte keys, serialisable
//! optimistic transactions, read-your-writes, the same size limits), so the adapter is thin:
//! reads and writes go straight to a `foundationdb::Transaction`, and an attempt commits it.
//! FoundationDB's own retry loop (`on_error`) is not used: errors that it would retry become
//! [`StoreError::Conflict`] and [`crate::Database::transact`] retries them with its own bound
//! and backoff, so every backend retries the same way.
//!
//! **Blocking.** The [`Transaction`] trait is synchronous, so each read blocks on its
//! FoundationDB future with `futures::executor::block_on`. That is fine here: the futures are
//! completed by FoundationDB's network thread (booted once per process, see [`network`]), not
//! by the thread that waits, so parking the caller cannot deadlock; and `transact` is a blocking
//! call on every backend already (async callers run it in `spawn_blocking`). The reads of one
//! attempt run one after another, as the closure issues them.
//!
//! **Unknown commit results.** FoundationDB reports `commit_unknown_result` (1021) when it
//! cannot tell whether a commit was applied. FoundationDB's own retry loop retries it, which may
//! apply a transaction twice; here it is `StoreError::Unavailable` saying the outcome is
//! unknown, as on the persistence service's client, so every backend behaves alike and
//! `transact` never applies a blind increment twice. The caller decides whether to retry.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foundationdb::options::{DatabaseOption, StreamingMode};
use foundationdb::{FdbError, KeySelector, RangeOption};
use futures::executor::block_on;

use crate::{Backend, Database, KeyValue, StoreError, Transaction};

/// How long one attempt may take before FoundationDB gives up on it (and `transact` returns
/// [`StoreError::Unavailable`]). FoundationDB's transactions cannot outlive 5 s anyway; without
/// a timeout, an unreachable cluster would make every call wait forever.
const ATTEMPT_TIMEOUT_MS: i32 = 10_000;

/// FoundationDB error codes that [`map_error`] names (the rest it leaves to FoundationDB's
/// own `retryable` predicate). See <https://apple.github.io/foundationdb/api-error-codes.html>.
mod code {
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const FUTURE_VERSION: i32 = 1009;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    pub const PROCESS_BEHIND: i32 = 1037;
}

/// Booting FoundationDB's network thread, once per process.
pub(crate) mod network {
    use std::sync::OnceLock;
    use std::thread::JoinHandle;

    use foundationdb::api::{FdbApiBuilder, NetworkStop};
    use parking_lot::Mutex;

    use crate::StoreError;

    /// The running network, taken and stopped by [`stop_at_exit`].
    static RUNNING: Mutex<Option<(NetworkStop, JoinHandle<()>)>> = Mutex::new(None);
    /// The outcome of the one boot attempt; FoundationDB cannot be set up twice in a process,
    /// so a failed boot is remembered and reported to every later caller.
    static BOOTED: OnceLock<Result<(), String>> = OnceLock::new();

    /// Selects the API version (710, the `fdb-7_1` feature: any libfdb_c from 7.1 on) and starts
    /// the network thread, the first time it is called; later calls return the first outcome.
    pub(crate) fn ensure_started() -> Result<(), StoreError> {
        BOOTED
            .get_or_init(boot)
            .clone()
            .map_err(|e| StoreError::Backend(format!("starting the FoundationDB client: {e}")))
    }

    fn boot() -> Result<(), String> {
        let builder = FdbApiBuilder::default().build().map_err(|e| {
            format!(
                "selecting API version {}: {e} (libfdb_c too old, or another library in this \
                 process already selected a version)",
                FdbApiBuilder::default().runtime_version()
            )
        })?;
        let (runner, wait) = builder
            .build()
            .map_err(|e| format!("setting up the network: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("fdb-network".into())
            .spawn(move || {
                // SAFETY: `stop_at_exit` (registered below, before anything can use the
                // network) calls `NetworkStop::stop` and joins this thread when the process
                // exits normally; an abnormal exit (abort, a signal) is allowed by the crate.
                if let Err(e) = unsafe { runner.run() } {
                    tracing::error!(error = %e, "the FoundationDB network thread stopped");
                }
            })
            .map_err(|e| format!("spawning the network thread: {e}"))?;
        let stop = wait.wait();
        *RUNNING.lock() = Some((stop, thread));
        // SAFETY: `stop_at_exit` is an `extern "C" fn()` that does not unwind.
        if unsafe { libc::atexit(stop_at_exit) } != 0 {
            // Without the handler the network would not be stopped before exit; stop it now
            // rather than run in a state the client library forbids.
            stop_at_exit();
            return Err("registering the exit handler failed".into());
        }
        tracing::debug!("FoundationDB network thread started");
        Ok(())
    }

    /// Stops the network and waits for its thread, as libfdb_c requires before the process
    /// exits. Registered with `atexit`, so it runs before the C++ static destructors of
    /// libfdb_c (registered earlier, hence run later).
    extern "C" fn stop_at_exit() {
        let running = RUNNING.lock().take();
        if let Some((stop, thread)) = running {
            if let Err(e) = stop.stop() {
                eprintln!("stopping the FoundationDB network failed: {e}");
                return;
            }
            if thread.join().is_err() {
                eprintln!("the FoundationDB network thread panicked");
            }
        }
    }
}

impl Database {
    /// Opens the FoundationDB cluster named by `cluster_file`, or by FoundationDB's default
    /// (`FDB_CLUSTER_FILE`, then `/etc/foundationdb/fdb.cluster`) when `None`.
    ///
    /// The first call in a process starts FoundationDB's network thread; it stops when the
    /// process exits. Opening does not contact the cluster: an unreachable cluster shows up as
    /// [`StoreError::Unavailable`] from the first transaction, after about 10 s.
    pub fn open_fdb(cluster_file: Option<&Path>) -> Result<Database, StoreError> {
        Ok(Database::new(Arc::new(FdbBackend::open(cluster_file)?)))
    }
}

pub(crate) struct FdbBackend {
    db: std::sync::Arc<foundationdb::Database>,
    cluster_file: Option<PathBuf>,
}

impl FdbBackend {
    fn open(cluster_file: Option<&Path>) -> Result<FdbBackend, StoreError> {
        let path = match cluster_file {
            Some(path) => {
                if !path.is_file() {
                    return Err(StoreError::Backend(format!(
                        "FoundationDB cluster file {} does not exist or is not a file",
                        path.display()
                    )));
                }
                // The client takes a C string; refuse what it would panic on.
                let text = path.to_str().filter(|p| CString::new(*p).is_ok());
                Some(text.ok_or_else(|| {
                    StoreError::Backend(format!(
                        "FoundationDB cluster file path {} is not valid UTF-8 without NUL bytes",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        network::ensure_started()?;
        let shown = describe_cluster_file(cluster_file);
        let db = foundationdb::Database::new(path)
            .map_err(|e| fdb_failure(&format!("opening FoundationDB ({shown})"), e))?;
        db.set_option(DatabaseOption::TransactionTimeout(ATTEMPT_TIMEOUT_MS))
            .map_err(|e| fdb_failure("setting the FoundationDB transaction timeout", e))?;
        tracing::debug!(cluster = %shown, "opened FoundationDB");
        Ok(FdbBackend {
            db: std::sync::Arc::new(db),
            cluster_file: cluster_file.map(Path::to_path_buf),
        })
    }
}

fn describe_cluster_file(cluster_file: Option<&Path>) -> String {
    match cluster_file {
        Some(path) => format!("cluster file {}", path.display()),
        None => "default cluster file".to_string(),
    }
}

impl Backend for FdbBackend {
    fn attempt(
        &self,
        body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| map_error("beginning a FoundationDB transaction", e))?;
        // On error the transaction is dropped uncommitted: nothing it wrote becomes visible.
        body(&mut FdbTransaction { trx: &trx })?;
        block_on(trx.commit())
            .map(|_committed| ())
            .map_err(|e| map_error("committing a FoundationDB transaction", *e))
    }

    fn describe(&self) -> String {
        format!(
            "FoundationDB ({})",
            describe_cluster_file(self.cluster_file.as_deref())
        )
    }

    fn snapshot(&self) -> Result<std::sync::Arc<dyn crate::Snapshot>, StoreError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| map_error("beginning a FoundationDB transaction", e))?;
        let version = block_on(trx.get_read_version())
            .map_err(|e| map_error("reading FoundationDB's read version", e))?;
        Ok(std::sync::Arc::new(FdbSnapshot {
            db: self.db.clone(),
            version,
        }))
    }
}

/// Reads at one FoundationDB read version. FoundationDB keeps old versions for about 5 s;
/// reads after that fail (`transaction_too_old`), so a backup of a large store through it
/// must finish within that window.
struct FdbSnapshot {
    db: std::sync::Arc<foundationdb::Database>,
    version: i64,
}

impl crate::Snapshot for FdbSnapshot {
    fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| map_error("beginning a FoundationDB transaction", e))?;
        trx.set_read_version(self.version);
        FdbTransaction { trx: &trx }
            .get_range(begin, end, limit)
            .map_err(|e| match e {
                StoreError::Backend(msg) if msg.contains("too old") || msg.contains("1007") => {
                    StoreError::Backend(format!(
                        "the snapshot is older than FoundationDB keeps versions (about 5 s): \
                         the backup took too long ({msg})"
                    ))
                }
                other => other,
            })
    }
}

/// The [`Transaction`] adapter over one FoundationDB transaction. All reads are serialisable
/// (not snapshot reads), so they take part in conflict checking.
struct FdbTransaction<'a> {
    trx: &'a foundationdb::Transaction,
}

impl Transaction for FdbTransaction<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let found = block_on(self.trx.get(key, false))
            .map_err(|e| map_error("reading a key from FoundationDB", e))?;
        Ok(found.map(|value| value.to_vec()))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.trx.set(key, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.trx.clear(key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        // FoundationDB fails the commit on an inverted range; the API says it does nothing.
        if begin < end {
            self.trx.clear_range(begin, end);
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let mut page = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(begin),
            end: KeySelector::first_greater_or_equal(end),
            limit: (limit > 0).then_some(limit),
            mode: StreamingMode::Iterator,
            ..RangeOption::default()
        });
        let mut entries = Vec::new();
        // FoundationDB answers a range in pages (`more` says another follows); read them all.
        let mut iteration = 1;
        while let Some(option) = page {
            let values = block_on(self.trx.get_range(&option, iteration, false))
                .map_err(|e| map_error("reading a key range from FoundationDB", e))?;
            entries.extend(
                values
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            page = option.next_range(&values);
            iteration += 1;
        }
        if limit > 0 {
            entries.truncate(limit);
        }
        Ok(entries)
    }
}

/// Maps a FoundationDB error to the API's: what a retry can fix is a [`StoreError::Conflict`]
/// (so `transact` runs the closure again), a timeout is [`StoreError::Unavailable`], anything
/// else a [`StoreError::Backend`] naming the code.
fn map_error(context: &str, err: FdbError) -> StoreError {
    classify(context, err.code(), err.is_retryable(), err.message())
}

/// The decision of [`map_error`], on plain values so it can be tested without libfdb_c.
fn classify(context: &str, code: i32, retryable: bool, message: &str) -> StoreError {
    match code {
        code::COMMIT_UNKNOWN_RESULT => StoreError::Unavailable(format!(
            "{context}: FoundationDB cannot tell whether the commit was applied (error {code}: \
             {message}); it may or may not have been"
        )),
        code::TRANSACTION_TIMED_OUT => StoreError::Unavailable(format!(
            "{context}: FoundationDB did not finish the transaction within {} s (error \
             {code}, {message}); is the cluster up and reachable? A commit may or may not have \
             been applied",
            ATTEMPT_TIMEOUT_MS / 1000
        )),
        code::NOT_COMMITTED
        | code::TRANSACTION_TOO_OLD
        | code::FUTURE_VERSION
        | code::PROCESS_BEHIND => StoreError::Conflict,
        _ if retryable => StoreError::Conflict,
        _ => StoreError::Backend(format!("{context}: FoundationDB error {code}: {message}")),
    }
}

/// A failure outside a transaction (opening the database, setting options): never retried.
fn fdb_failure(context: &str, err: FdbError) -> StoreError {
    StoreError::Backend(format!(
        "{context}: FoundationDB error {}: {}",
        err.code(),
        err.message()
    ))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::conformance;

    /// Why the tests against a live FoundationDB are ignored by default.
    const NEEDS_FDB: &str = "needs a FoundationDB cluster: set FDB_CLUSTER_FILE and run with \
                             --ignored (it clears keys under (\"conformance\", ...) there)";

    /// The cluster to test against, from `FDB_CLUSTER_FILE` (the tests that call it are
    /// ignored unless asked for, so a missing one is an error, not a silent pass).
    fn cluster() -> PathBuf {
        match std::env::var_os("FDB_CLUSTER_FILE") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => panic!("{NEEDS_FDB}"),
        }
    }

    #[test]
    fn retryable_errors_are_conflicts() {
        assert!(matches!(
            classify("c", 1021, true, "commit_unknown_result"),
            StoreError::Unavailable(_)
        ));
        for code in [1007, 1009, 1020, 1037] {
            assert!(
                matches!(classify("c", code, false, "m"), StoreError::Conflict),
                "{code}"
            );
        }
        // Anything FoundationDB's predicate calls retryable, too.
        assert!(matches!(
            classify("c", 1213, true, "tag throttled"),
            StoreError::Conflict
        ));
    }

    #[test]
    fn other_errors_say_what_failed() {
        let err = classify("committing", 2101, false, "transaction_too_large").to_string();
        assert!(err.contains("committing"), "{err}");
        assert!(err.contains("2101"), "{err}");
        assert!(err.contains("transaction_too_large"), "{err}");
        assert!(matches!(
            classify("reading", 1031, true, "transaction_timed_out"),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn missing_cluster_file_is_a_clear_error() {
        let err = Database::open_fdb(Some(Path::new("/nonexistent/fdb.cluster")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/fdb.cluster"), "{err}");
    }

    #[test]
    #[ignore = "needs a FoundationDB cluster: set FDB_CLUSTER_FILE and run with --ignored"]
    fn conformance_suite() {
        let path = cluster();
        conformance::run_all(&|| Database::open_fdb(Some(&path)).unwrap());
    }

    #[test]
    #[ignore = "needs a FoundationDB cluster: set FDB_CLUSTER_FILE and run with --ignored"]
    fn random_operations_match_a_btreemap() {
        let path = cluster();
        let db = Database::open_fdb(Some(&path)).unwrap();
        conformance::random_operations_match_a_btreemap(&db, 64);
    }
}
