//! Backups: every key and value of a store to a file, and back
//! (`tessera ctl backup FILE` / `tessera ctl restore FILE`).
//!
//! **Format** (`tessera-backup/1`): the line `tessera-backup/1\n`, then one
//! frame per entry (a 4-byte big-endian length and a bincode `(key, value)`
//! pair, `tessera_proto::frame`), then an end frame that carries the number
//! of entries, so a truncated file is refused instead of restored in part.
//!
//! **Consistency.** The dump reads the key space in pages, all from one
//! snapshot ([`crate::Snapshot`]: a redb read transaction, a FoundationDB
//! read version), so a backup is the store at one moment even while the
//! cluster writes. Through the service, the first page asks for a snapshot
//! and the others name it; the service drops a snapshot once the backup read
//! past its last page, or after it went unused for 60 s, and
//! holds at most 4. A restore clears the whole key space and writes the
//! entries in batches of a few megabytes (the clear in the same transaction
//! as the first batch). The service refuses one while shards are
//! checkpointing into the store (a shard committed in the last 10 s: the
//! running cluster would overwrite what is restored) unless the operator
//! forces it (`tessera ctl restore --force`).
//!
//! **Who may.** Against the persistence service, a backup page and a restore
//! batch are each a request signed by an operator, which the service checks
//! (`remote::OperatorSession`); a plain commit that clears the whole key
//! space is refused.

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{Database, KeyValue, StoreError, MAX_KEY_BYTES, MAX_VALUE_BYTES};

const MAGIC: &[u8] = b"tessera-backup/1\n";
/// Entries read per transaction while dumping.
const PAGE: usize = 1000;
/// Bytes written per transaction while restoring (the limit is 10 MB).
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const MAX_FRAME: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + 64;

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Vec<u8>, Vec<u8>),
    End { entries: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Tessera backup (it does not start with \"tessera-backup/1\")")]
    NotABackup,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
}

fn write_record(out: &mut dyn Write, r: &Record) -> Result<(), BackupError> {
    let bytes = tessera_proto::frame::encode_frame(r, MAX_FRAME)
        .map_err(|e| BackupError::Damaged(format!("cannot encode an entry: {e}")))?;
    out.write_all(&bytes)?;
    Ok(())
}

/// What a backup reads and a restore writes: a store this process opened itself
/// ([`Database`]), or the persistence service as an operator, whose every request the service
/// checks ([`crate::remote::OperatorSession`]).
pub trait BackupStore {
    /// A reader of the whole store as it is now, in pages: every page comes from the same
    /// snapshot, so a backup never mixes two moments.
    fn pages(&self) -> Result<Box<dyn PageReader + '_>, StoreError>;
    /// Writes `batch` in one transaction; with `clear_all`, everything else is deleted first
    /// (the first batch of a restore).
    fn write_batch(&self, clear_all: bool, batch: &[KeyValue]) -> Result<(), StoreError>;
}

/// One backup's pages, all from one snapshot ([`BackupStore::pages`]).
pub trait PageReader {
    /// Up to `limit` entries from `begin` on, in key order.
    fn page(&mut self, begin: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError>;
}

struct SnapshotPages(std::sync::Arc<dyn crate::Snapshot>);

impl PageReader for SnapshotPages {
    fn page(&mut self, begin: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.0.get_range(begin, b"\xff", limit)
    }
}

impl BackupStore for Database {
    fn pages(&self) -> Result<Box<dyn PageReader + '_>, StoreError> {
        Ok(Box::new(SnapshotPages(self.snapshot()?)))
    }

    fn write_batch(&self, clear_all: bool, batch: &[KeyValue]) -> Result<(), StoreError> {
        self.transact(|tx| {
            if clear_all {
                tx.clear_range(b"", b"\xff");
            }
            for (k, v) in batch {
                tx.set(k, v)?;
            }
            Ok(())
        })
    }
}

/// Writes every entry of `db` to `out`, from one snapshot; returns how many.
pub fn dump(db: &dyn BackupStore, out: &mut dyn Write) -> Result<u64, BackupError> {
    dump_in_pages(db, out, PAGE)
}

/// [`dump`], `page` entries at a time.
pub fn dump_in_pages(
    db: &dyn BackupStore,
    out: &mut dyn Write,
    page: usize,
) -> Result<u64, BackupError> {
    out.write_all(MAGIC)?;
    let mut pages = db.pages()?;
    let mut begin: Vec<u8> = Vec::new();
    let mut entries = 0u64;
    loop {
        let page = pages.page(&begin, page)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let mut next = last.clone();
        next.push(0);
        for (k, v) in page {
            write_record(out, &Record::Entry(k, v))?;
            entries += 1;
        }
        begin = next;
    }
    write_record(out, &Record::End { entries })?;
    out.flush()?;
    Ok(entries)
}

fn read_record(input: &mut dyn Read) -> Result<Option<Record>, BackupError> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(BackupError::Damaged(format!(
            "an entry of {len} bytes, more than any key and value can take"
        )));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .map_err(|_| BackupError::Damaged("the file ends inside an entry".into()))?;
    tessera_proto::frame::decode(&body, MAX_FRAME)
        .map(Some)
        .map_err(|e| BackupError::Damaged(e.to_string()))
}

/// Checks that `input` is a whole backup and returns its entries, without
/// touching any store (restore reads the file twice: nothing is cleared for
/// a damaged file).
fn verify(input: &mut dyn BufRead) -> Result<u64, BackupError> {
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| BackupError::NotABackup)?;
    if magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let mut seen = 0u64;
    loop {
        match read_record(input)? {
            Some(Record::Entry(..)) => seen += 1,
            Some(Record::End { entries }) if entries == seen => return Ok(seen),
            Some(Record::End { entries }) => {
                return Err(BackupError::Damaged(format!(
                    "it says {entries} entries but holds {seen}"
                )))
            }
            None => {
                return Err(BackupError::Damaged(format!(
                    "it ends after {seen} entries without its end mark (truncated?)"
                )))
            }
        }
    }
}

/// Replaces everything in `db` with the backup `open()` reads (called twice:
/// once to check the whole file, once to load it). Returns the entries
/// restored.
pub fn restore(
    db: &dyn BackupStore,
    open: &mut dyn FnMut() -> std::io::Result<Box<dyn BufRead>>,
) -> Result<u64, BackupError> {
    let expected = verify(&mut *open()?)?;
    let mut input = open()?;
    let mut magic = vec![0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    let mut restored = 0u64;
    // The first batch clears the store in the same transaction.
    let mut first = true;
    let mut flush = |batch: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), BackupError> {
        db.write_batch(first, batch)?;
        first = false;
        batch.clear();
        Ok(())
    };
    while let Some(record) = read_record(&mut *input)? {
        match record {
            Record::Entry(k, v) => {
                bytes += k.len() + v.len();
                batch.push((k, v));
                restored += 1;
                if bytes > BATCH_BYTES {
                    flush(&mut batch)?;
                    bytes = 0;
                }
            }
            Record::End { .. } => break,
        }
    }
    flush(&mut batch)?;
    if restored != expected {
        return Err(BackupError::Damaged(format!(
            "the file changed while it was restored ({restored} of {expected} entries)"
        )));
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{key, set_chunked};

    fn store(dir: &tempfile::TempDir, name: &str) -> Database {
        Database::open_redb(&dir.path().join(name)).unwrap()
    }

    fn everything(db: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.get_range(b"", b"\xff", 0).unwrap()
    }

    fn opener(bytes: Vec<u8>) -> impl FnMut() -> std::io::Result<Box<dyn BufRead>> {
        move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn BufRead>)
    }

    #[test]
    fn a_backup_restores_exactly_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir, "a.redb"), store(&dir, "b.redb"));
        // More than one page, a chunked value, and keys with odd bytes.
        a.transact(|tx| {
            for i in 0..2500u32 {
                tx.set(&key(&[b"player", &i.to_be_bytes()]), &i.to_le_bytes())?;
            }
            tx.set(b"\x00\x01", b"")?;
            set_chunked(tx, b"big", &vec![7u8; 250_000])
        })
        .unwrap();
        b.set(b"stale", b"gone after the restore").unwrap();
        let mut file = Vec::new();
        let n = dump(&a, &mut file).unwrap();
        assert_eq!(n as usize, everything(&a).len());
        assert_eq!(restore(&b, &mut opener(file)).unwrap(), n);
        assert_eq!(everything(&a), everything(&b));
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir, "a.redb"), store(&dir, "b.redb"));
        a.set(b"k1", b"v1").unwrap();
        a.set(b"k2", b"v2").unwrap();
        b.set(b"keep", b"me").unwrap();
        let mut file = Vec::new();
        dump(&a, &mut file).unwrap();
        let truncated = file[..file.len() - 3].to_vec();
        let err = restore(&b, &mut opener(truncated)).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        let err = restore(&b, &mut opener(b"hello world".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Tessera backup"), "{err}");
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = restore(&b, &mut opener(huge)).unwrap_err().to_string();
        assert!(err.contains("more than any key"), "{err}");
        assert_eq!(b.get(b"keep").unwrap().as_deref(), Some(&b"me"[..]));
    }
}
