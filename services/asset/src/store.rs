//! Assets in a [`Database`]: the only state of an asset replica.
//!
//! Key layout (parts joined with [`tessera_persistence::key`]):
//!
//! ```text
//! ("asset", "blob", <blake3 hex>)    the content, written with set_chunked (chunks of 100 KB)
//! ("asset", "name", <name>)          JSON AssetRecord: the name's current version
//! ("asset", "manifest-version")      u64 BE, bumped by every put that changes a name
//! ```
//!
//! A put writes the blob (unless that content is already stored), the name record and the
//! version in one transaction, so readers never see a name whose blob is missing. Blobs are
//! never deleted: an older version stays reachable by hash (clients may still be fetching it).

use crate::{hash_hex, AssetError, AssetName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_persistence::{
    get_chunked, get_chunked_header, get_chunks, key, prefix_range, set_chunked, ChunkLayout,
    ChunkedHeader, Database, StoreError, MAX_VALUE_BYTES,
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
        let record_json = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode an asset record: {e}")))?;
        let (name_key, blob_key, version_key) = (name_key(name), blob_key(&hash), version_key());
        let outcome = self.db.transact(|tx| {
            if let Some(bytes) = tx.get(&name_key)? {
                let current = decode_record(name.as_str().as_bytes(), &bytes)?;
                if current.hash == hash {
                    return Ok(PutOutcome::Unchanged(current));
                }
            }
            if tx.get(&blob_key)?.is_none() {
                set_chunked(tx, &blob_key, content)?;
            }
            tx.set(&name_key, &record_json)?;
            let version = decode_version(tx.get(&version_key)?)? + 1;
            tx.set(&version_key, &version.to_be_bytes())?;
            Ok(PutOutcome::Changed(record.clone()))
        })?;
        Ok(outcome)
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
        let names = key(&[b"asset", b"name"]);
        let (begin, end) = prefix_range(&names);
        let version_key = version_key();
        Ok(self.db.transact(|tx| {
            let version = decode_version(tx.get(&version_key)?)?;
            let mut assets = BTreeMap::new();
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
                assets.insert(
                    name,
                    ManifestEntry {
                        hash: record.hash,
                        size: record.size,
                        content_type: record.content_type,
                        updated_unix_ms: record.updated_unix_ms,
                    },
                );
            }
            Ok(Manifest { version, assets })
        })?)
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
}
