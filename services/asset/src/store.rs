//! Assets in a [`Database`]: the only state of an asset replica.
//!
//! Key layout (parts joined with [`tessera_persistence::key`]):
//!
//! ```text
//! ("asset", "blob", <blake3 hex>)    the content, written with set_chunked (chunks of 100 KB)
//! ("asset", "name", <name>)          JSON AssetRecord: the name's current version
//! ("asset", "history", <name>, <seq u64 BE>)  JSON HistoryEntry: one upload, rollback or removal
//! ("asset", "manifest-version")      u64 BE, bumped by every change of a name
//! ```
//!
//! A put writes the blob (unless that content is already stored), the name record, a history
//! entry and the version in one transaction, so readers never see a name whose blob is
//! missing. Blobs are never deleted: an older version stays reachable by hash (clients may
//! still be fetching it), which is what a rollback points the name back at. A removal deletes
//! the name record only; the history stays, so a removed version can be rolled back to.

use crate::{hash_hex, AssetError, AssetName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_persistence::{
    get_chunked, get_chunked_header, get_chunks, key, prefix_range, set_chunked, ChunkLayout,
    ChunkedHeader, Database, StoreError, Transaction, MAX_VALUE_BYTES,
};

/// The current version of one name, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetRecord {
    /// blake3 of the content, hex.
    pub hash: String,
    pub size: u64,
    pub content_type: String,
    pub updated_unix_ms: u64,
    /// Who uploaded it: `operator:<name>`.
    pub by: String,
}

/// One entry of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub hash: String,
    pub size: u64,
    pub content_type: String,
    pub updated_unix_ms: u64,
}

/// Every asset's current version; `version` grows with every change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub assets: BTreeMap<String, ManifestEntry>,
}

/// The format of [`HistoryEntry`] records written by this release.
pub const HISTORY_FORMAT: u32 = 1;

/// History entries kept per name; older ones are dropped (and can no longer be rolled back
/// to by `rollback`, though their blobs stay reachable by hash).
pub const HISTORY_LIMIT: usize = 100;

/// What changed a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryAction {
    /// New content was uploaded.
    Upload,
    /// An earlier version was made current again.
    Rollback,
    /// The name was removed (for a script: the world folder's version runs again).
    Remove,
}

impl HistoryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryAction::Upload => "upload",
            HistoryAction::Rollback => "rollback",
            HistoryAction::Remove => "remove",
        }
    }
}

/// One change of a name, oldest first in its [`History`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// [`HISTORY_FORMAT`] when written.
    pub format: u32,
    /// Position in the name's history, from 1 (0: a version stored before histories were
    /// kept, shown but not stored).
    pub seq: u64,
    pub action: HistoryAction,
    /// The content the name pointed at afterwards (`None` after a removal).
    pub hash: Option<String>,
    pub size: Option<u64>,
    pub unix_ms: u64,
    /// Who: `operator:<name>` (or the process that published it, such as `tessera-up`).
    pub by: String,
}

/// A name's current version and its changes, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub current: Option<AssetRecord>,
    pub entries: Vec<HistoryEntry>,
}

impl History {
    /// The version a rollback without a hash goes back to, like a browser's back button: the
    /// one in effect before the current one. Uploads add to the line of versions; a rollback
    /// moves back along it (so rolling back twice goes back two versions), and an upload after
    /// a rollback drops what was ahead. `None` when no upload is in effect or nothing is
    /// before it.
    pub fn previous(&self) -> Option<&HistoryEntry> {
        let current = self.current.as_ref()?;
        let mut line: Vec<&HistoryEntry> = Vec::new();
        let mut cursor: Option<usize> = None;
        for entry in &self.entries {
            match (entry.action, &entry.hash) {
                (HistoryAction::Remove, _) | (_, None) => cursor = None,
                (HistoryAction::Rollback, Some(hash)) => {
                    let back = cursor.and_then(|c| {
                        line[..c]
                            .iter()
                            .rposition(|e| e.hash.as_ref() == Some(hash))
                    });
                    match back {
                        Some(i) => cursor = Some(i),
                        None => {
                            line.truncate(cursor.map_or(line.len(), |c| c + 1));
                            line.push(entry);
                            cursor = Some(line.len() - 1);
                        }
                    }
                }
                (HistoryAction::Upload, Some(_)) => {
                    line.truncate(cursor.map_or(line.len(), |c| c + 1));
                    line.push(entry);
                    cursor = Some(line.len() - 1);
                }
            }
        }
        let at = cursor?;
        if line[at].hash.as_deref() != Some(current.hash.as_str()) {
            return None;
        }
        line[..at]
            .iter()
            .rev()
            .find(|e| e.hash.as_deref() != Some(current.hash.as_str()))
            .copied()
    }

    /// The entry that introduced content `hash` most recently, if the history has it.
    pub fn version(&self, hash: &str) -> Option<&HistoryEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.hash.as_deref() == Some(hash))
    }
}

/// What a put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The name now points at the new content.
    Changed(AssetRecord),
    /// The name already pointed at this content; nothing was written.
    Unchanged(AssetRecord),
}

fn blob_key(hash: &str) -> Vec<u8> {
    key(&[b"asset", b"blob", hash.as_bytes()])
}

fn name_key(name: &AssetName) -> Vec<u8> {
    key(&[b"asset", b"name", name.as_str().as_bytes()])
}

fn version_key() -> Vec<u8> {
    key(&[b"asset", b"manifest-version"])
}

fn history_prefix(name: &AssetName) -> Vec<u8> {
    key(&[b"asset", b"history", name.as_str().as_bytes()])
}

fn history_key(name: &AssetName, seq: u64) -> Vec<u8> {
    key(&[
        b"asset",
        b"history",
        name.as_str().as_bytes(),
        &seq.to_be_bytes(),
    ])
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

/// The stored history of `name` (oldest first) in `tx`.
fn read_history(
    tx: &mut dyn Transaction,
    name: &AssetName,
) -> Result<Vec<(Vec<u8>, HistoryEntry)>, StoreError> {
    let (begin, end) = prefix_range(&history_prefix(name));
    tx.get_range(&begin, &end, 0)?
        .into_iter()
        .map(|(k, v)| {
            let entry = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("history entry of asset {name}: {e}")))?;
            Ok((k, entry))
        })
        .collect()
}

/// The entry standing for `record`, stored before histories were kept.
fn legacy_entry(record: &AssetRecord, seq: u64) -> HistoryEntry {
    HistoryEntry {
        format: HISTORY_FORMAT,
        seq,
        action: HistoryAction::Upload,
        hash: Some(record.hash.clone()),
        size: Some(record.size),
        unix_ms: record.updated_unix_ms,
        by: record.by.clone(),
    }
}

/// Appends a history entry to `name` in `tx` (first one for a `current` version stored before
/// histories were kept), dropping the oldest beyond [`HISTORY_LIMIT`]; bumps the manifest
/// version.
fn record_change(
    tx: &mut dyn Transaction,
    name: &AssetName,
    current: Option<&AssetRecord>,
    mut entry: HistoryEntry,
) -> Result<(), StoreError> {
    let mut history = read_history(tx, name)?;
    if history.is_empty() {
        if let Some(current) = current {
            let legacy = legacy_entry(current, 1);
            let k = history_key(name, 1);
            tx.set(&k, &encode("a history entry", &legacy)?)?;
            history.push((k, legacy));
        }
    }
    entry.seq = history.last().map_or(0, |(_, e)| e.seq) + 1;
    tx.set(
        &history_key(name, entry.seq),
        &encode("a history entry", &entry)?,
    )?;
    let excess = (history.len() + 1).saturating_sub(HISTORY_LIMIT);
    for (k, _) in history.iter().take(excess) {
        tx.clear(k)?;
    }
    let version_key = version_key();
    let version = decode_version(tx.get(&version_key)?)? + 1;
    tx.set(&version_key, &version.to_be_bytes())?;
    Ok(())
}

/// The record `name` (at `name_key`) points at in `tx`, if any.
fn read_record(
    tx: &mut dyn Transaction,
    name_key: &[u8],
    name: &AssetName,
) -> Result<Option<AssetRecord>, StoreError> {
    tx.get(name_key)?
        .map(|bytes| decode_record(name.as_str().as_bytes(), &bytes))
        .transpose()
}

fn decode_record(name: &[u8], bytes: &[u8]) -> Result<AssetRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "asset record {:?}: {e}",
            String::from_utf8_lossy(name)
        ))
    })
}

fn decode_version(bytes: Option<Vec<u8>>) -> Result<u64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("asset manifest version is not 8 bytes".into())),
    }
}

/// One stored blob, read a piece at a time: [`BlobReader::next_piece`] returns at most one
/// stored chunk ([`tessera_persistence::MAX_VALUE_BYTES`], 100 KB), each read in its own short
/// transaction, so serving a blob never holds it whole in memory nor keeps a transaction open
/// while a client downloads. Blobs are immutable and never deleted, so the pieces of separate
/// transactions belong together. Blocking, like [`AssetStore`].
#[derive(Debug)]
pub struct BlobReader {
    db: Database,
    key: Vec<u8>,
    source: Source,
    /// The whole blob's length.
    len: u64,
    /// The next byte to return.
    pos: u64,
    /// One past the last byte to return.
    end: u64,
}

/// Where a blob's bytes are.
#[derive(Debug)]
enum Source {
    /// Small blobs live in their header key; it was read with the header.
    Inline(Vec<u8>),
    Chunked(ChunkLayout),
}

impl BlobReader {
    /// The whole blob's length in bytes (whatever range is being read).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Reads only bytes `start..=end` (clipped to the blob) from now on.
    pub fn range(mut self, start: u64, end: u64) -> BlobReader {
        self.end = end.saturating_add(1).min(self.len);
        self.pos = start.min(self.end);
        self
    }

    /// The next bytes, at most one stored chunk; `None` once the range is read.
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, AssetError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let piece = match &self.source {
            Source::Inline(content) => content[usize_of(self.pos)..usize_of(self.end)].to_vec(),
            Source::Chunked(layout) => {
                let index = layout.chunk_of(self.pos);
                let chunk_start = u64::from(index) * MAX_VALUE_BYTES as u64;
                let (key, layout) = (&self.key, *layout);
                let mut chunks = self
                    .db
                    .transact(|tx| get_chunks(tx, key, &layout, index, 1))?;
                let chunk = chunks.pop().unwrap_or_default();
                let from = usize_of(self.pos - chunk_start);
                let to = usize_of((self.end - chunk_start).min(chunk.len() as u64));
                chunk
                    .get(from..to)
                    .filter(|p| !p.is_empty())
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("blob chunk {index} is shorter than promised"))
                    })?
            }
        };
        self.pos += piece.len() as u64;
        Ok(Some(piece))
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Blocking access to the assets in a database; call it from `spawn_blocking` in async code.
#[derive(Clone, Debug)]
pub struct AssetStore {
    db: Database,
}

impl AssetStore {
    pub fn new(db: Database) -> AssetStore {
        AssetStore { db }
    }

    /// Makes `name` point at `content`, uploaded by `by` at `now_unix_ms`.
    pub fn put(
        &self,
        name: &AssetName,
        content: &[u8],
        by: &str,
        now_unix_ms: u64,
    ) -> Result<PutOutcome, AssetError> {
        let hash = hash_hex(content);
        let record = AssetRecord {
            hash: hash.clone(),
            size: content.len() as u64,
            content_type: name.content_type().to_string(),
            updated_unix_ms: now_unix_ms,
            by: by.to_string(),
        };
        let record_json = encode("an asset record", &record)?;
        let entry = HistoryEntry {
            format: HISTORY_FORMAT,
            seq: 0,
            action: HistoryAction::Upload,
            hash: Some(hash.clone()),
            size: Some(record.size),
            unix_ms: now_unix_ms,
            by: by.to_string(),
        };
        let (name_key, blob_key) = (name_key(name), blob_key(&hash));
        let outcome = self.db.transact(|tx| {
            let current = read_record(tx, &name_key, name)?;
            if let Some(current) = current.as_ref().filter(|c| c.hash == hash) {
                return Ok(PutOutcome::Unchanged(current.clone()));
            }
            if tx.get(&blob_key)?.is_none() {
                set_chunked(tx, &blob_key, content)?;
            }
            tx.set(&name_key, &record_json)?;
            record_change(tx, name, current.as_ref(), entry.clone())?;
            Ok(PutOutcome::Changed(record.clone()))
        })?;
        Ok(outcome)
    }

    /// Makes `name` point at content `hash` again, a version its history holds, on behalf of
    /// `by` at `now_unix_ms`. [`AssetError::NoSuchVersion`] if the history does not hold it.
    pub fn rollback(
        &self,
        name: &AssetName,
        hash: &str,
        by: &str,
        now_unix_ms: u64,
    ) -> Result<PutOutcome, AssetError> {
        let name_key = name_key(name);
        let outcome = self.db.transact(|tx| {
            let current = read_record(tx, &name_key, name)?;
            if let Some(current) = current.as_ref().filter(|c| c.hash == hash) {
                return Ok(Ok(PutOutcome::Unchanged(current.clone())));
            }
            let history = History {
                current: current.clone(),
                entries: read_history(tx, name)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect(),
            };
            let Some(size) = history.version(hash).and_then(|e| e.size) else {
                return Ok(Err(AssetError::NoSuchVersion {
                    name: name.to_string(),
                    hash: hash.to_string(),
                }));
            };
            let record = AssetRecord {
                hash: hash.to_string(),
                size,
                content_type: name.content_type().to_string(),
                updated_unix_ms: now_unix_ms,
                by: by.to_string(),
            };
            tx.set(&name_key, &encode("an asset record", &record)?)?;
            let entry = HistoryEntry {
                format: HISTORY_FORMAT,
                seq: 0,
                action: HistoryAction::Rollback,
                hash: Some(hash.to_string()),
                size: Some(size),
                unix_ms: now_unix_ms,
                by: by.to_string(),
            };
            record_change(tx, name, current.as_ref(), entry)?;
            Ok(Ok(PutOutcome::Changed(record)))
        })?;
        outcome
    }

    /// Removes `name` (its current version; the history and blobs stay), on behalf of `by` at
    /// `now_unix_ms`. Returns what it pointed at, `None` if nothing (and writes nothing).
    pub fn remove(
        &self,
        name: &AssetName,
        by: &str,
        now_unix_ms: u64,
    ) -> Result<Option<AssetRecord>, AssetError> {
        let name_key = name_key(name);
        Ok(self.db.transact(|tx| {
            let Some(bytes) = tx.get(&name_key)? else {
                return Ok(None);
            };
            let current = decode_record(name.as_str().as_bytes(), &bytes)?;
            tx.clear(&name_key)?;
            let entry = HistoryEntry {
                format: HISTORY_FORMAT,
                seq: 0,
                action: HistoryAction::Remove,
                hash: None,
                size: None,
                unix_ms: now_unix_ms,
                by: by.to_string(),
            };
            record_change(tx, name, Some(&current), entry)?;
            Ok(Some(current))
        })?)
    }

    /// The current version of `name` and its changes, oldest first (a version stored before
    /// histories were kept shows as an upload with `seq` 0).
    pub fn history(&self, name: &AssetName) -> Result<History, AssetError> {
        let name_key = name_key(name);
        Ok(self.db.transact(|tx| {
            let current = read_record(tx, &name_key, name)?;
            let mut entries: Vec<HistoryEntry> = read_history(tx, name)?
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            if entries.is_empty() {
                entries.extend(current.as_ref().map(|c| legacy_entry(c, 0)));
            }
            Ok(History { current, entries })
        })?)
    }

    /// The whole content with blake3 hash `hash` (lowercase hex), if stored. The HTTP service
    /// streams blobs with [`AssetStore::open_blob`] instead.
    pub fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, AssetError> {
        let key = blob_key(hash);
        Ok(self.db.transact(|tx| get_chunked(tx, &key))?)
    }

    /// The content with blake3 hash `hash`, if stored, as a reader that fetches it a chunk at
    /// a time. Only the blob's header is read here.
    pub fn open_blob(&self, hash: &str) -> Result<Option<BlobReader>, AssetError> {
        let key = blob_key(hash);
        let Some(header) = self.db.transact(|tx| get_chunked_header(tx, &key))? else {
            return Ok(None);
        };
        let (len, source) = match header {
            ChunkedHeader::Inline(content) => (content.len() as u64, Source::Inline(content)),
            ChunkedHeader::Chunked(layout) => (layout.len, Source::Chunked(layout)),
        };
        Ok(Some(BlobReader {
            db: self.db.clone(),
            key,
            source,
            len,
            pos: 0,
            end: len,
        }))
    }

    /// Whether content with hash `hash` is stored (a cheap read: the chunk header only).
    pub fn has_blob(&self, hash: &str) -> Result<bool, AssetError> {
        let key = blob_key(hash);
        Ok(self.db.transact(|tx| tx.get(&key))?.is_some())
    }

    /// The current version of `name`, if any. Its blob can be read afterwards in another
    /// transaction: blobs are never deleted, so it is still there.
    pub fn record(&self, name: &AssetName) -> Result<Option<AssetRecord>, AssetError> {
        let key = name_key(name);
        let bytes = self.db.transact(|tx| tx.get(&key))?;
        Ok(bytes
            .map(|b| decode_record(name.as_str().as_bytes(), &b))
            .transpose()?)
    }

    /// Every name's current version, and the manifest version, read together.
    pub fn manifest(&self) -> Result<Manifest, AssetError> {
        let (version, records) = self.records()?;
        let assets = records
            .into_iter()
            .map(|(name, record)| {
                let entry = ManifestEntry {
                    hash: record.hash,
                    size: record.size,
                    content_type: record.content_type,
                    updated_unix_ms: record.updated_unix_ms,
                };
                (name, entry)
            })
            .collect();
        Ok(Manifest { version, assets })
    }

    /// Every name's current record, and the manifest version, read together.
    pub fn records(&self) -> Result<(u64, BTreeMap<String, AssetRecord>), AssetError> {
        let names = key(&[b"asset", b"name"]);
        let (begin, end) = prefix_range(&names);
        let version_key = version_key();
        Ok(self.db.transact(|tx| {
            let version = decode_version(tx.get(&version_key)?)?;
            let mut records = BTreeMap::new();
            for (k, v) in tx.get_range(&begin, &end, 0)? {
                let name = k.get(names.len()..).unwrap_or_default();
                let name = match tessera_persistence::parse_key(name).as_deref() {
                    Some([part]) => String::from_utf8_lossy(part).into_owned(),
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "unexpected key {k:?} among asset names"
                        )))
                    }
                };
                let record = decode_record(name.as_bytes(), &v)?;
                records.insert(name, record);
            }
            Ok((version, records))
        })?)
    }

    /// A reader over `content` held in memory (a world folder's script, which is not stored),
    /// for the same answers as a stored blob.
    pub fn reader_of(&self, content: Vec<u8>) -> BlobReader {
        let len = content.len() as u64;
        BlobReader {
            db: self.db.clone(),
            key: Vec::new(),
            source: Source::Inline(content),
            len,
            pos: 0,
            end: len,
        }
    }

    /// A trivial read, for readiness checks.
    pub fn check(&self) -> Result<(), AssetError> {
        let key = version_key();
        self.db.transact(|tx| tx.get(&key).map(drop))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece of a reader, checked to be at most one chunk.
    fn pieces(mut reader: BlobReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(piece) = reader.next_piece().unwrap() {
            assert!(!piece.is_empty() && piece.len() <= MAX_VALUE_BYTES);
            out.push(piece);
        }
        assert_eq!(reader.remaining(), 0);
        out
    }

    #[test]
    fn blobs_are_read_a_chunk_at_a_time() {
        let (_dir, store) = store();
        let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let name = AssetName::parse("meshes/big.glb").unwrap();
        store.put(&name, &content, "operator:ann", 1).unwrap();
        let hash = hash_hex(&content);

        let reader = store.open_blob(&hash).unwrap().unwrap();
        assert_eq!(reader.len(), content.len() as u64);
        let whole = pieces(reader);
        assert_eq!(whole.len(), content.len().div_ceil(MAX_VALUE_BYTES));
        assert_eq!(whole.concat(), content);

        // Ranges inside one chunk, across chunk borders, and to the end.
        for (start, end) in [
            (0, 0),
            (5, 99_999),
            (99_999, 100_000),
            (150_000, 1_234_567),
            (1_999_990, 1_999_999),
            (1_999_990, u64::MAX),
        ] {
            let reader = store.open_blob(&hash).unwrap().unwrap().range(start, end);
            let end = end.min(content.len() as u64 - 1);
            assert_eq!(reader.remaining(), end - start + 1);
            assert_eq!(
                pieces(reader).concat(),
                &content[start as usize..=end as usize],
                "{start}-{end}"
            );
        }
    }

    fn store() -> (tempfile::TempDir, AssetStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        (dir, AssetStore::new(db))
    }

    #[test]
    fn puts_version_the_manifest_and_share_blobs() {
        let (_dir, store) = store();
        let a = AssetName::parse("scripts/a.rhai").unwrap();
        let b = AssetName::parse("b.png").unwrap();
        assert_eq!(store.manifest().unwrap(), Manifest::default());
        assert!(matches!(
            store.put(&a, b"one", "operator:ann", 5).unwrap(),
            PutOutcome::Changed(_)
        ));
        assert!(matches!(
            store.put(&a, b"one", "operator:ann", 6).unwrap(),
            PutOutcome::Unchanged(r) if r.updated_unix_ms == 5
        ));
        store.put(&b, b"one", "operator:bob", 7).unwrap();
        let m = store.manifest().unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.assets.len(), 2);
        assert_eq!(m.assets["b.png"].content_type, "image/png");
        assert_eq!(m.assets["b.png"].hash, hash_hex(b"one"));
        store.put(&a, b"two", "operator:ann", 8).unwrap();
        let record = store.record(&a).unwrap().unwrap();
        assert_eq!(record.by, "operator:ann");
        assert_eq!(store.blob(&record.hash).unwrap().unwrap(), b"two");
        // The old version stays reachable by hash.
        assert_eq!(store.blob(&hash_hex(b"one")).unwrap().unwrap(), b"one");
        assert!(store.has_blob(&hash_hex(b"one")).unwrap());
        assert!(!store.has_blob(&hash_hex(b"three")).unwrap());
        assert_eq!(store.manifest().unwrap().version, 3);
        let mut small = store.open_blob(&hash_hex(b"two")).unwrap().unwrap();
        assert_eq!(small.len(), 3);
        assert_eq!(small.next_piece().unwrap().unwrap(), b"two");
        assert!(small.next_piece().unwrap().is_none());
        assert!(store.open_blob(&hash_hex(b"three")).unwrap().is_none());
        assert!(store
            .record(&AssetName::parse("nope").unwrap())
            .unwrap()
            .is_none());
        store.check().unwrap();
    }

    #[test]
    fn rollbacks_and_removals_keep_a_history_and_bump_the_manifest() {
        let (_dir, store) = store();
        let a = AssetName::parse("scripts/a.rhai").unwrap();
        for (i, v) in [b"v1", b"v2", b"v3"].iter().enumerate() {
            store.put(&a, *v, "operator:ann", 10 + i as u64).unwrap();
        }
        // Unchanged content adds nothing.
        store.put(&a, b"v3", "operator:ann", 20).unwrap();
        let history = store.history(&a).unwrap();
        assert_eq!(history.entries.len(), 3);
        assert_eq!(
            history.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(history.previous().unwrap().hash, Some(hash_hex(b"v2")));
        let version = store.manifest().unwrap().version;

        let PutOutcome::Changed(record) = store
            .rollback(&a, &hash_hex(b"v1"), "operator:bob", 30)
            .unwrap()
        else {
            panic!("nothing changed");
        };
        assert_eq!((record.size, record.by.as_str()), (2, "operator:bob"));
        assert_eq!(store.manifest().unwrap().version, version + 1);
        assert_eq!(store.record(&a).unwrap().unwrap().hash, hash_hex(b"v1"));
        assert!(matches!(
            store.rollback(&a, &hash_hex(b"v1"), "operator:bob", 31),
            Ok(PutOutcome::Unchanged(_))
        ));
        assert!(matches!(
            store.rollback(&a, &hash_hex(b"other"), "operator:bob", 32),
            Err(AssetError::NoSuchVersion { .. })
        ));
        // Even stored content of another name is not this name's version.
        let b = AssetName::parse("b.png").unwrap();
        store.put(&b, b"png", "operator:ann", 33).unwrap();
        assert!(store.rollback(&a, &hash_hex(b"png"), "x", 34).is_err());

        let removed = store.remove(&a, "operator:ann", 40).unwrap().unwrap();
        assert_eq!(removed.hash, hash_hex(b"v1"));
        assert!(store.record(&a).unwrap().is_none());
        assert!(!store
            .manifest()
            .unwrap()
            .assets
            .contains_key("scripts/a.rhai"));
        assert!(store.remove(&a, "operator:ann", 41).unwrap().is_none());
        let history = store.history(&a).unwrap();
        let actions: Vec<_> = history.entries.iter().map(|e| e.action).collect();
        use HistoryAction::*;
        assert_eq!(actions, [Upload, Upload, Upload, Rollback, Remove]);
        assert!(history.previous().is_none());
        assert!(history.entries.iter().all(|e| e.format == HISTORY_FORMAT));
        // The removed version's blob stays, and a rollback brings any version back.
        store
            .rollback(&a, &hash_hex(b"v3"), "operator:ann", 50)
            .unwrap();
        assert_eq!(store.record(&a).unwrap().unwrap().hash, hash_hex(b"v3"));
    }

    fn entry(action: HistoryAction, hash: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            format: HISTORY_FORMAT,
            seq: 0,
            action,
            hash: hash.map(str::to_string),
            size: hash.map(|_| 1),
            unix_ms: 0,
            by: String::new(),
        }
    }

    fn previous(
        entries: &[(HistoryAction, Option<&str>)],
        current: Option<&str>,
    ) -> Option<String> {
        let history = History {
            current: current.map(|hash| AssetRecord {
                hash: hash.to_string(),
                size: 1,
                content_type: String::new(),
                updated_unix_ms: 0,
                by: String::new(),
            }),
            entries: entries.iter().map(|(a, h)| entry(*a, *h)).collect(),
        };
        history.previous().and_then(|e| e.hash.clone())
    }

    #[test]
    fn a_rollback_without_a_hash_steps_back_like_a_back_button() {
        use HistoryAction::*;
        let p = |entries: &[(HistoryAction, Option<&str>)], current| previous(entries, current);
        let ups = [
            (Upload, Some("1")),
            (Upload, Some("2")),
            (Upload, Some("3")),
        ];
        assert_eq!(p(&ups, Some("3")).as_deref(), Some("2"));
        // Twice back goes two back, not forth again.
        let back = [&ups[..], &[(Rollback, Some("2"))]].concat();
        assert_eq!(p(&back, Some("2")).as_deref(), Some("1"));
        let back2 = [&back[..], &[(Rollback, Some("1"))]].concat();
        assert_eq!(p(&back2, Some("1")), None);
        // An upload after a rollback: back goes to what ran before it.
        let after = [&back2[..], &[(Upload, Some("4"))]].concat();
        assert_eq!(p(&after, Some("4")).as_deref(), Some("1"));
        // The same content uploaded twice in a row is skipped.
        let same = [
            (Upload, Some("1")),
            (Upload, Some("2")),
            (Rollback, Some("1")),
            (Upload, Some("2")),
        ];
        assert_eq!(p(&same, Some("2")).as_deref(), Some("1"));
        // Nothing in effect after a removal; a rollback after it starts a new line.
        let removed = [&ups[..], &[(Remove, None)]].concat();
        assert_eq!(p(&removed, None), None);
        let revived = [&removed[..], &[(Rollback, Some("2"))]].concat();
        assert_eq!(p(&revived, Some("2")).as_deref(), Some("3"));
        // A store whose current version is not the history's (written around it) has no
        // previous.
        assert_eq!(p(&ups, Some("9")), None);
    }

    #[test]
    fn versions_stored_before_histories_show_and_join_the_history() {
        let (_dir, store) = store();
        let a = AssetName::parse("scripts/a.rhai").unwrap();
        // A record as an earlier release wrote it: no history.
        let old = AssetRecord {
            hash: hash_hex(b"old"),
            size: 3,
            content_type: a.content_type().into(),
            updated_unix_ms: 7,
            by: "operator:ann".into(),
        };
        let (nk, bk) = (name_key(&a), blob_key(&old.hash));
        store
            .db
            .transact(|tx| {
                set_chunked(tx, &bk, b"old")?;
                tx.set(&nk, &serde_json::to_vec(&old).unwrap())
            })
            .unwrap();
        let history = store.history(&a).unwrap();
        assert_eq!(history.entries.len(), 1);
        assert_eq!((history.entries[0].seq, history.entries[0].unix_ms), (0, 7));
        store.put(&a, b"new", "operator:bob", 8).unwrap();
        let history = store.history(&a).unwrap();
        assert_eq!(
            history.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(history.previous().unwrap().hash, Some(old.hash.clone()));
        store.rollback(&a, &old.hash, "operator:bob", 9).unwrap();
        assert_eq!(
            store
                .blob(&store.record(&a).unwrap().unwrap().hash)
                .unwrap()
                .unwrap(),
            b"old"
        );
    }

    #[test]
    fn the_history_keeps_its_last_entries() {
        let (_dir, store) = store();
        let a = AssetName::parse("notes.txt").unwrap();
        for i in 0..(HISTORY_LIMIT as u64 + 5) {
            store.put(&a, &i.to_be_bytes(), "operator:ann", i).unwrap();
        }
        let history = store.history(&a).unwrap();
        assert_eq!(history.entries.len(), HISTORY_LIMIT);
        assert_eq!(history.entries[0].seq, 6);
        assert!(store
            .rollback(&a, &hash_hex(&0u64.to_be_bytes()), "x", 1)
            .is_err());
        assert!(store
            .rollback(&a, &hash_hex(&10u64.to_be_bytes()), "x", 1)
            .is_ok());
    }
}
