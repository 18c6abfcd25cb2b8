//! The embedded backend: one redb file, one table of byte keys and values.
//!
//! redb allows one write transaction at a time, so every attempt simply runs inside a redb
//! write transaction: writes go straight into it (reads see them), an error aborts it, and
//! conflicts cannot happen. Crash safety (atomic, durable commits) comes from redb.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Backend, KeyValue, StoreError, Transaction};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tessera_kv");

pub(crate) struct RedbBackend {
    db: redb::Database,
    path: PathBuf,
}

impl RedbBackend {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::backend(format!("creating directory {}", parent.display()), e)
            })?;
        }
        let db = redb::Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "opening {shown}: the file is already open (by another process, or by another \
                 Database in this one; share one Database by cloning it)"
            )),
            other => StoreError::backend(format!("opening redb file {shown}"), other),
        })?;
        // Create the table now, so a broken file is reported at open and not at first use.
        let init = db
            .begin_write()
            .map_err(|e| StoreError::backend(format!("initialising {shown}"), e))?;
        init.open_table(TABLE)
            .map_err(|e| StoreError::backend(format!("creating the table in {shown}"), e))?;
        init.commit()
            .map_err(|e| StoreError::backend(format!("initialising {shown}"), e))?;
        tracing::debug!(path = %shown, "opened redb store");
        Ok(RedbBackend {
            db,
            path: path.to_path_buf(),
        })
    }
}

impl Backend for RedbBackend {
    fn attempt(
        &self,
        body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(|e| StoreError::backend("beginning a redb write transaction", e))?;
        let outcome = match write.open_table(TABLE) {
            Ok(table) => {
                let mut tx = RedbTransaction {
                    table,
                    deferred: None,
                    wrote: false,
                };
                body(&mut tx).and_then(|()| tx.deferred.map_or(Ok(tx.wrote), Err))
            }
            Err(e) => Err(StoreError::backend("opening the redb table", e)),
        };
        match outcome {
            // A transaction that only read has nothing to make durable:
            // committing would still sync the file, once per read.
            Ok(false) => write
                .abort()
                .map_err(|e| StoreError::backend("ending a read-only redb transaction", e)),
            Ok(true) => write
                .commit()
                .map_err(|e| StoreError::backend("committing a redb transaction", e)),
            Err(err) => {
                if let Err(abort) = write.abort() {
                    tracing::warn!(error = %abort, "aborting a redb transaction failed");
                }
                Err(err)
            }
        }
    }

    fn describe(&self) -> String {
        format!("redb at {}", self.path.display())
    }

    fn snapshot(&self) -> Result<std::sync::Arc<dyn crate::Snapshot>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| StoreError::backend("beginning a redb read transaction", e))?;
        let table = read
            .open_table(TABLE)
            .map_err(|e| StoreError::backend("opening the redb table", e))?;
        Ok(std::sync::Arc::new(RedbSnapshot { table }))
    }
}

/// A redb read transaction's table: redb's MVCC keeps what it sees while it is held.
struct RedbSnapshot {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl crate::Snapshot for RedbSnapshot {
    fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        read_range(&self.table, begin, end, limit)
    }
}

/// Up to `limit` (0: all) entries of `table` with `begin <= key < end`, in key order: the
/// read of a write transaction and of a snapshot alike.
fn read_range(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    begin: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    if begin >= end {
        return Ok(Vec::new());
    }
    let limit = if limit == 0 { usize::MAX } else { limit };
    let range = table
        .range(begin..end)
        .map_err(|e| StoreError::backend("reading a key range from redb", e))?;
    range
        .take(limit)
        .map(|entry| {
            let (k, v) =
                entry.map_err(|e| StoreError::backend("reading a key range from redb", e))?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        })
        .collect()
}

struct RedbTransaction<'txn> {
    table: redb::Table<'txn, &'static [u8], &'static [u8]>,
    /// An error from `clear_range`, which cannot return one; it stops the commit.
    deferred: Option<StoreError>,
    /// Whether anything was written (else the transaction ends without a commit).
    wrote: bool,
}

impl Transaction for RedbTransaction<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self
            .table
            .get(key)
            .map_err(|e| StoreError::backend("reading a key from redb", e))?;
        Ok(found.map(|guard| guard.value().to_vec()))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.wrote = true;
        self.table
            .insert(key, value)
            .map_err(|e| StoreError::backend("writing a key to redb", e))?;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.wrote = true;
        self.table
            .remove(key)
            .map_err(|e| StoreError::backend("clearing a key in redb", e))?;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end || self.deferred.is_some() {
            return;
        }
        self.wrote = true;
        if let Err(e) = self.table.retain_in(begin..end, |_, _| false) {
            self.deferred = Some(StoreError::backend("clearing a key range in redb", e));
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        read_range(&self.table, begin, end, limit)
    }
}

#[cfg(test)]
mod tests {

    use crate::conformance;
    use crate::Database;

    fn fresh() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn get_set_clear() {
        conformance::get_set_clear(&fresh().1);
    }

    #[test]
    fn ordered_ranges() {
        conformance::ordered_ranges(&fresh().1);
    }

    #[test]
    fn read_your_writes() {
        conformance::read_your_writes(&fresh().1);
    }

    #[test]
    fn failed_closure_rolls_back() {
        conformance::failed_closure_rolls_back(&fresh().1);
    }

    #[test]
    fn conflict_is_retried() {
        conformance::conflict_is_retried(&fresh().1);
    }

    #[test]
    fn limits_are_enforced() {
        conformance::limits_are_enforced(&fresh().1);
    }

    #[test]
    fn chunked_values_round_trip() {
        conformance::chunked_values_round_trip(&fresh().1);
    }

    #[test]
    fn concurrent_increments_are_exact() {
        conformance::concurrent_increments_are_exact(&fresh().1, 4, 50);
    }

    #[test]
    fn whole_suite_on_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dirs/store.redb");
        conformance::run_all(&|| Database::open_redb(&path).unwrap());
    }

    #[test]
    fn second_open_of_one_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = Database::open_redb(&path).unwrap();
        let err = Database::open_redb(&path).unwrap_err().to_string();
        assert!(err.contains("already open"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn describe_names_the_file() {
        let (dir, db) = fresh();
        assert!(db.describe().contains(&*dir.path().to_string_lossy()));
        assert!(format!("{db:?}").contains("redb"));
    }

    #[test]
    fn random_operations_match_a_btreemap() {
        // One file for all cases: the check clears its key space before each run.
        let (_dir, db) = fresh();
        conformance::random_operations_match_a_btreemap(&db, 128);
    }
}
