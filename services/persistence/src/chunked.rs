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
    check_entry_key(key)?;
    let Some(header) = tx.get(key)? else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("chunked value at {key:?}: {what}"));
    match header.split_first() {
        Some((&INLINE, value)) => Ok(Some(value.to_vec())),
        Some((&CHUNKED, rest)) if rest.len() == HEADER_LEN - 1 => {
            let (count, len) = rest.split_at(4);
            let count = u32::from_be_bytes(count.try_into().map_err(|_| corrupt("bad header"))?);
            let len = u64::from_be_bytes(len.try_into().map_err(|_| corrupt("bad header"))?);
            let (begin, end) = chunk_range(key);
            // One more than expected, so that stray extra chunks are noticed.
            let chunks = tx.get_range(&begin, &end, count as usize + 1)?;
            if chunks.len() != count as usize {
                return Err(corrupt(&format!(
                    "header promises {count} chunks, found {}",
                    chunks.len()
                )));
            }
            let mut value = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            for (index, (chunk_key_found, chunk)) in (0u32..).zip(chunks) {
                if chunk_key_found != chunk_key(key, index) {
                    return Err(corrupt(&format!("chunk {index} is missing")));
                }
                value.extend_from_slice(&chunk);
            }
            if value.len() as u64 != len {
                return Err(corrupt(&format!(
                    "header promises {len} bytes, chunks hold {}",
                    value.len()
                )));
            }
            Ok(Some(value))
        }
        _ => Err(corrupt("unknown header")),
    }
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
