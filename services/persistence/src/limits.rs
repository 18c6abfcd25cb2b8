//! FoundationDB's limits, enforced in one place for every backend.
//!
//! [`Limited`] wraps the raw transaction a backend hands out. Backends therefore only store
//! bytes; they never see a key, value or transaction that FoundationDB would refuse.

use crate::{
    KeyValue, StoreError, Transaction, MAX_KEY_BYTES, MAX_TRANSACTION_BYTES, MAX_VALUE_BYTES,
};

/// First byte of FoundationDB's system key space; user keys must sort below it.
const SYSTEM_PREFIX: u8 = 0xFF;

/// Checks a key that is read or written.
pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    if key.first() == Some(&SYSTEM_PREFIX) {
        return Err(StoreError::ReservedKey);
    }
    Ok(())
}

/// Checks a range bound: like a key, except that exactly `b"\xff"` (the end of the user key
/// space) is allowed.
fn check_bound(bound: &[u8]) -> Result<(), StoreError> {
    if bound == [SYSTEM_PREFIX] {
        return Ok(());
    }
    check_key(bound)
}

fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// A transaction that enforces the limits before passing calls on to the backend.
///
/// Violations by writes are sticky, as in FoundationDB: the call returns the error *and* the
/// transaction will not commit, even if the closure ignores the error. Read calls return their
/// error and leave the transaction usable.
pub(crate) struct Limited<'a> {
    inner: &'a mut dyn Transaction,
    written_bytes: usize,
    failed: Option<StoreError>,
}

impl<'a> Limited<'a> {
    pub(crate) fn new(inner: &'a mut dyn Transaction) -> Self {
        Limited {
            inner,
            written_bytes: 0,
            failed: None,
        }
    }

    /// The error that must stop the commit, if a write broke a limit.
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        match self.failed {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Runs the checks of one write; on failure remembers the first error and returns a copy.
    fn admit_write(
        &mut self,
        check: impl FnOnce() -> Result<(), StoreError>,
        bytes: usize,
    ) -> Result<(), StoreError> {
        let result = check().and_then(|()| {
            let total = self.written_bytes.saturating_add(bytes);
            if total > MAX_TRANSACTION_BYTES {
                Err(StoreError::TransactionTooLarge {
                    len: total,
                    max: MAX_TRANSACTION_BYTES,
                })
            } else {
                self.written_bytes = total;
                Ok(())
            }
        });
        if let Err(err) = &result {
            if self.failed.is_none() {
                self.failed = Some(copy_limit_error(err));
            }
        }
        result
    }
}

/// `StoreError` is not `Clone` (backend errors carry strings that are not worth cloning
/// everywhere); limit errors are plain data, so copy them by hand.
fn copy_limit_error(err: &StoreError) -> StoreError {
    match err {
        StoreError::KeyTooLarge { len, max } => StoreError::KeyTooLarge {
            len: *len,
            max: *max,
        },
        StoreError::ValueTooLarge { len, max } => StoreError::ValueTooLarge {
            len: *len,
            max: *max,
        },
        StoreError::TransactionTooLarge { len, max } => StoreError::TransactionTooLarge {
            len: *len,
            max: *max,
        },
        StoreError::ReservedKey => StoreError::ReservedKey,
        other => StoreError::Backend(other.to_string()),
    }
}

impl Transaction for Limited<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        self.inner.get(key)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.admit_write(
            || check_key(key).and_then(|()| check_value(value)),
            key.len() + value.len(),
        )?;
        self.inner.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.admit_write(|| check_key(key), key.len())?;
        self.inner.clear(key)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        let admitted = self.admit_write(
            || check_bound(begin).and_then(|()| check_bound(end)),
            begin.len() + end.len(),
        );
        if admitted.is_ok() && begin < end {
            self.inner.clear_range(begin, end);
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        check_bound(begin)?;
        check_bound(end)?;
        if begin >= end {
            return Ok(Vec::new());
        }
        self.inner.get_range(begin, end, limit)
    }
}
