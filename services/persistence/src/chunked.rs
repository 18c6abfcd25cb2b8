//! Values larger than [`MAX_VALUE_BYTES`], split over several keys.
//!
//! Key layout for a chunked entry at `key`:
//!
//! ```text
//! key                         header
//!   0x00 ‖ value                  inline: the whole value, when it is at most
//!                                 MAX_VALUE_BYTES - 1 bytes
//!   0x01 ‖ u32 BE chunk count ‖ u64 BE total length
//!                                 chunked: the value lives in the chunk keys below
//! key ‖ 0x00 ‖ u32 BE index   chunk `index` (0, 1, ...), MAX_VALUE_BYTES bytes each except
//!                             the last
//! ```
//!
//! All chunk keys lie in `[key ‖ 0x00, key ‖ 0x01)`, so one range read fetches them and one
//! range clear removes them. Keys made by [`crate::key`] never continue with 0x00 after a
//! complete key, so chunk keys cannot collide with other tuple keys.
//!
//! [`get_chunked_header`] and [`get_chunks`] read a value a few chunks per transaction, for
//! streaming values that are never rewritten.
//!
//! The whole value is written in one transaction, so it is bounded by
//! [`crate::MAX_TRANSACTION_BYTES`] (a little under 10 MB); larger data must be split by the
//! caller over several entries and transactions.

use crate::{StoreError, Transaction, MAX_KEY_BYTES, MAX_VALUE_BYTES};

const INLINE: u8 = 0x00;
const CHUNKED: u8 = 0x01;
const HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes a chunk key adds to the entry's key: the 0x00 separator and the u32 index.
pub const CHUNK_KEY_OVERHEAD: usize = 1 + 4;

fn chunk_key(key: &[u8], index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + CHUNK_KEY_OVERHEAD);
    k.extend_from_slice(key);
    k.push(0x00);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn chunk_range(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut begin = key.to_vec();
    begin.push(0x00);
    let mut end = key.to_vec();
    end.push(0x01);
    (begin, end)
}

fn check_entry_key(key: &[u8]) -> Result<(), StoreError> {
    let max = MAX_KEY_BYTES - CHUNK_KEY_OVERHEAD;
    if key.len() > max {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max,
        });
    }
    Ok(())
}

/// Stores `value` under `key`, splitting it over chunk keys when it does not fit in one value.
/// Replaces any earlier chunked value at `key`. Read it back with [`get_chunked`].
pub fn set_chunked(tx: &mut dyn Transaction, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    check_entry_key(key)?;
    let (begin, end) = chunk_range(key);
    tx.clear_range(&begin, &end);
    if value.len() < MAX_VALUE_BYTES {
        let mut inline = Vec::with_capacity(value.len() + 1);
        inline.push(INLINE);
        inline.extend_from_slice(value);
        return tx.set(key, &inline);
    }
    let count = value.len().div_ceil(MAX_VALUE_BYTES);
    let count = u32::try_from(count).map_err(|_| StoreError::TransactionTooLarge {
        len: value.len(),
        max: crate::MAX_TRANSACTION_BYTES,
    })?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(CHUNKED);
    header.extend_from_slice(&count.to_be_bytes());
    header.extend_from_slice(&(value.len() as u64).to_be_bytes());
    tx.set(key, &header)?;
    for (index, chunk) in (0u32..).zip(value.chunks(MAX_VALUE_BYTES)) {
        tx.set(&chunk_key(key, index), chunk)?;
    }
    Ok(())
}

/// Reads a value written by [`set_chunked`]; `None` if there is none.
pub fn get_chunked(tx: &mut dyn Transaction, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    match get_chunked_header(tx, key)? {
        None => Ok(None),
        Some(ChunkedHeader::Inline(value)) => Ok(Some(value)),
        Some(ChunkedHeader::Chunked(layout)) => {
            // Stray chunks past the last one are noticed too.
            let (past, end) = (chunk_key(key, layout.count), chunk_range(key).1);
            if !tx.get_range(&past, &end, 1)?.is_empty() {
                return Err(corrupt(
                    key,
                    &format!("more chunks than the {} the header promises", layout.count),
                ));
            }
            let mut value = Vec::with_capacity(usize::try_from(layout.len).unwrap_or(0));
            for chunk in get_chunks(tx, key, &layout, 0, layout.count)? {
                value.extend_from_slice(&chunk);
            }
            Ok(Some(value))
        }
    }
}

/// How a value written by [`set_chunked`] is stored, as its header key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkedHeader {
    /// The value was small enough to live in the header key: here it is, whole.
    Inline(Vec<u8>),
    /// The value lives in chunk keys; read them with [`get_chunks`].
    Chunked(ChunkLayout),
}

/// The chunks of a chunked value: `count` chunks of [`MAX_VALUE_BYTES`] bytes, the last one
/// shorter, `len` bytes in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    pub count: u32,
    pub len: u64,
}

impl ChunkLayout {
    /// The chunk that holds byte `offset` (`offset < len`).
    pub fn chunk_of(&self, offset: u64) -> u32 {
        u32::try_from(offset / MAX_VALUE_BYTES as u64).unwrap_or(u32::MAX)
    }

    /// The length chunk `index` must have.
    fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * MAX_VALUE_BYTES as u64;
        self.len.saturating_sub(start).min(MAX_VALUE_BYTES as u64)
    }
}

fn corrupt(key: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt(format!("chunked value at {key:?}: {what}"))
}

/// Reads only the header of a value written by [`set_chunked`]; `None` if there is none. With
/// [`get_chunks`] a large value can be read a few chunks at a time, each read in its own short
/// transaction, as long as nobody rewrites the value in between (content-addressed values that
/// are never rewritten, for instance).
pub fn get_chunked_header(
    tx: &mut dyn Transaction,
    key: &[u8],
) -> Result<Option<ChunkedHeader>, StoreError> {
    check_entry_key(key)?;
    let Some(mut header) = tx.get(key)? else {
        return Ok(None);
    };
    match header.first() {
        Some(&INLINE) => {
            header.remove(0);
            Ok(Some(ChunkedHeader::Inline(header)))
        }
        Some(&CHUNKED) if header.len() == HEADER_LEN => {
            let count = u32::from_be_bytes(header[1..5].try_into().unwrap_or_default());
            let len = u64::from_be_bytes(header[5..].try_into().unwrap_or_default());
            let layout = ChunkLayout { count, len };
            if u64::from(count) != len.div_ceil(MAX_VALUE_BYTES as u64) {
                return Err(corrupt(
                    key,
                    &format!("header promises {len} bytes in {count} chunks"),
                ));
            }
            Ok(Some(ChunkedHeader::Chunked(layout)))
        }
        _ => Err(corrupt(key, "unknown header")),
    }
}

/// Chunks `first..first + count` of the chunked value at `key`, whose header gave `layout`,
/// each checked to be there and to have its length. Asking for chunks past the last one is an
/// error.
pub fn get_chunks(
    tx: &mut dyn Transaction,
    key: &[u8],
    layout: &ChunkLayout,
    first: u32,
    count: u32,
) -> Result<Vec<Vec<u8>>, StoreError> {
    check_entry_key(key)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let last = first
        .checked_add(count)
        .filter(|&end| end <= layout.count)
        .ok_or_else(|| {
            corrupt(
                key,
                &format!(
                    "chunks {first}..{first}+{count} asked of {} chunks",
                    layout.count
                ),
            )
        })?;
    let (begin, end) = (chunk_key(key, first), chunk_range(key).1);
    let chunks = tx.get_range(&begin, &end, count as usize)?;
    let mut values = Vec::with_capacity(chunks.len());
    let mut found = chunks.into_iter();
    for index in first..last {
        match found.next() {
            Some((k, value)) if k == chunk_key(key, index) => {
                if value.len() as u64 != layout.chunk_len(index) {
                    return Err(corrupt(
                        key,
                        &format!(
                            "chunk {index} holds {} bytes, the header promises {}",
                            value.len(),
                            layout.chunk_len(index)
                        ),
                    ));
                }
                values.push(value);
            }
            _ => return Err(corrupt(key, &format!("chunk {index} is missing"))),
        }
    }
    Ok(values)
}

/// Removes a value written by [`set_chunked`] (header and all chunks). Clearing a missing key
/// is not an error.
pub fn clear_chunked(tx: &mut dyn Transaction, key: &[u8]) -> Result<(), StoreError> {
    check_entry_key(key)?;
    tx.clear(key)?;
    let (begin, end) = chunk_range(key);
    tx.clear_range(&begin, &end);
    Ok(())
}
