//! The contract every backend must meet, written once.
//!
//! Each check takes a [`Database`] on the backend under test and panics with a message on the
//! first violation. Checks work under their own key prefix and clear it first, so they can share
//! one store. [`run_all`] runs everything; a backend's test module calls it (or the checks one
//! by one, for clearer test names). Enabled in this crate's tests and, for other backends'
//! tests, by the cargo feature `conformance`.

use std::collections::BTreeMap;

use crate::{
    clear_chunked, get_chunked, get_chunked_header, get_chunks, key, prefix_range, set_chunked,
    ChunkedHeader, Database, KeyValue, StoreError, MAX_KEY_BYTES, MAX_TRANSACTION_BYTES,
    MAX_VALUE_BYTES,
};

/// Runs every check. `open` must open the *same* store each time it is called: the reopen
/// check drops the handle it got and opens the store again. `open` is never called while
/// another handle it returned is alive.
pub fn run_all(open: &dyn Fn() -> Database) {
    {
        let db = open();
        get_set_clear(&db);
        ordered_ranges(&db);
        read_your_writes(&db);
        failed_closure_rolls_back(&db);
        conflict_is_retried(&db);
        limits_are_enforced(&db);
        chunked_values_round_trip(&db);
        concurrent_increments_are_exact(&db, 4, 50);
        check_against_model(&db, &example_model_ops());
    }
    survives_reopen(open);
}

/// The key prefix of one check.
fn space(check: &str) -> Vec<u8> {
    key(&[b"conformance", check.as_bytes()])
}

/// A key inside a check's space.
fn at(space: &[u8], part: &[u8]) -> Vec<u8> {
    let mut k = space.to_vec();
    k.extend_from_slice(&key(&[part]));
    k
}

fn reset(db: &Database, space: &[u8]) {
    let (begin, end) = prefix_range(space);
    db.transact(|tx| {
        tx.clear_range(&begin, &end);
        Ok(())
    })
    .expect("clearing the check's key space");
}

fn all(db: &Database, space: &[u8]) -> Vec<KeyValue> {
    let (begin, end) = prefix_range(space);
    db.get_range(&begin, &end, 0)
        .expect("reading the check's key space")
}

/// Deterministic, incompressible-looking test bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// Single-key reads, writes and clears, including the largest allowed key and value.
pub fn get_set_clear(db: &Database) {
    let s = space("get_set_clear");
    reset(db, &s);
    let k = at(&s, b"k");
    assert_eq!(db.get(&k).unwrap(), None, "missing key reads as None");
    db.set(&k, b"one").unwrap();
    assert_eq!(db.get(&k).unwrap().as_deref(), Some(&b"one"[..]));
    db.set(&k, b"two").unwrap();
    assert_eq!(
        db.get(&k).unwrap().as_deref(),
        Some(&b"two"[..]),
        "set overwrites"
    );
    db.clear(&k).unwrap();
    assert_eq!(db.get(&k).unwrap(), None, "clear removes");
    db.clear(&k).unwrap();

    let empty = at(&s, b"empty");
    db.set(&empty, b"").unwrap();
    assert_eq!(
        db.get(&empty).unwrap(),
        Some(Vec::new()),
        "empty values are values"
    );

    let mut longest = s.clone();
    longest.resize(MAX_KEY_BYTES, b'k');
    let biggest = pattern(MAX_VALUE_BYTES, 1);
    db.set(&longest, &biggest).unwrap();
    assert_eq!(
        db.get(&longest).unwrap(),
        Some(biggest),
        "limits are inclusive"
    );
}

/// `get_range` is ascending, begin-inclusive, end-exclusive and honours its limit;
/// `clear_range` removes exactly its range.
pub fn ordered_ranges(db: &Database) {
    let s = space("ordered_ranges");
    reset(db, &s);
    let order = [7u8, 3, 0, 9, 1, 8, 2, 6, 4, 5];
    db.transact(|tx| {
        for i in order {
            tx.set(&at(&s, &[i]), &[i])?;
        }
        Ok(())
    })
    .unwrap();
    let expected: Vec<_> = (0u8..10).map(|i| (at(&s, &[i]), vec![i])).collect();
    let (begin, end) = prefix_range(&s);
    assert_eq!(
        db.get_range(&begin, &end, 0).unwrap(),
        expected,
        "ascending order"
    );
    assert_eq!(
        db.get_range(&begin, &end, 3).unwrap(),
        expected[..3],
        "limit"
    );
    assert_eq!(
        db.get_range(&begin, &end, 100).unwrap(),
        expected,
        "limit above count"
    );
    assert_eq!(
        db.get_range(&at(&s, &[2]), &at(&s, &[5]), 0).unwrap(),
        expected[2..5],
        "begin inclusive, end exclusive"
    );
    assert!(
        db.get_range(&at(&s, &[5]), &at(&s, &[2]), 0)
            .unwrap()
            .is_empty(),
        "inverted"
    );
    assert!(
        db.get_range(&at(&s, &[5]), &at(&s, &[5]), 0)
            .unwrap()
            .is_empty(),
        "empty"
    );
    let whole = db.get_range(b"", b"\xff", 0).unwrap();
    assert!(
        whole.windows(2).all(|w| w[0].0 < w[1].0),
        "whole key space is ordered"
    );
    assert!(
        expected.iter().all(|e| whole.contains(e)),
        "b\"\"..b\"\\xff\" is everything"
    );

    db.transact(|tx| {
        tx.clear_range(&at(&s, &[3]), &at(&s, &[6]));
        tx.clear_range(&at(&s, &[9]), &at(&s, &[8]));
        Ok(())
    })
    .unwrap();
    let left: Vec<_> = expected
        .iter()
        .filter(|(_, v)| !(3..6).contains(&v[0]))
        .cloned()
        .collect();
    assert_eq!(all(db, &s), left, "clear_range removes [begin, end) only");
}

/// Reads inside a transaction see its own sets, clears and range clears.
pub fn read_your_writes(db: &Database) {
    let s = space("read_your_writes");
    reset(db, &s);
    db.set(&at(&s, b"c"), b"old").unwrap();
    db.transact(|tx| {
        tx.set(&at(&s, b"a"), b"1")?;
        assert_eq!(
            tx.get(&at(&s, b"a"))?.as_deref(),
            Some(&b"1"[..]),
            "get sees set"
        );
        tx.set(&at(&s, b"b"), b"2")?;
        let (begin, end) = prefix_range(&s);
        let keys: Vec<_> = tx
            .get_range(&begin, &end, 0)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [at(&s, b"a"), at(&s, b"b"), at(&s, b"c")],
            "range sees sets"
        );
        tx.clear(&at(&s, b"c"))?;
        assert_eq!(tx.get(&at(&s, b"c"))?, None, "get sees clear");
        assert_eq!(tx.get_range(&begin, &end, 0)?.len(), 2, "range sees clear");
        tx.clear_range(&begin, &end);
        assert!(
            tx.get_range(&begin, &end, 0)?.is_empty(),
            "range sees clear_range"
        );
        assert_eq!(tx.get(&at(&s, b"a"))?, None, "get sees clear_range");
        tx.set(&at(&s, b"d"), b"4")?;
        assert_eq!(
            tx.get(&at(&s, b"d"))?.as_deref(),
            Some(&b"4"[..]),
            "set after clear"
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(
        all(db, &s),
        [(at(&s, b"d"), b"4".to_vec())],
        "committed state"
    );
}

/// An error returned by the closure aborts the transaction: none of its writes are visible.
pub fn failed_closure_rolls_back(db: &Database) {
    let s = space("failed_closure_rolls_back");
    reset(db, &s);
    db.set(&at(&s, b"x"), b"before").unwrap();
    db.set(&at(&s, b"z"), b"kept").unwrap();
    let before = all(db, &s);
    let result: Result<(), _> = db.transact(|tx| {
        tx.set(&at(&s, b"x"), b"after")?;
        tx.set(&at(&s, b"y"), b"new")?;
        tx.clear(&at(&s, b"z"))?;
        let (begin, end) = prefix_range(&s);
        tx.clear_range(&begin, &end);
        Err(StoreError::Corrupt("deliberate failure".into()))
    });
    assert!(
        matches!(result, Err(StoreError::Corrupt(_))),
        "the closure's error is returned unchanged, got {result:?}"
    );
    assert_eq!(
        all(db, &s),
        before,
        "nothing of the failed attempt is visible"
    );
}

/// A `Conflict` is retried, and only the successful attempt's writes are visible.
pub fn conflict_is_retried(db: &Database) {
    let s = space("conflict_is_retried");
    reset(db, &s);
    let mut attempts = 0;
    let result = db.transact(|tx| {
        attempts += 1;
        tx.set(&at(&s, format!("attempt{attempts}").as_bytes()), b"")?;
        if attempts < 3 {
            return Err(StoreError::Conflict);
        }
        Ok(attempts)
    });
    assert_eq!(result.unwrap(), 3, "ran until it did not conflict");
    assert_eq!(
        all(db, &s),
        [(at(&s, b"attempt3"), Vec::new())],
        "only the last attempt"
    );
}

/// Every limit produces its own error, and a transaction that broke one writes nothing, even
/// when its closure ignored the error.
pub fn limits_are_enforced(db: &Database) {
    let s = space("limits_are_enforced");
    reset(db, &s);
    let sentinel = at(&s, b"sentinel");
    let mut long_key = s.clone();
    long_key.resize(MAX_KEY_BYTES + 1, b'k');

    let r = db.transact(|tx| {
        tx.set(&sentinel, b"x")?;
        tx.set(&long_key, b"v")
    });
    assert!(
        matches!(r, Err(StoreError::KeyTooLarge { len, max })
            if len == MAX_KEY_BYTES + 1 && max == MAX_KEY_BYTES),
        "key limit, got {r:?}"
    );

    let r = db.transact(|tx| {
        tx.set(&sentinel, b"x")?;
        tx.set(&at(&s, b"big"), &vec![0; MAX_VALUE_BYTES + 1])
    });
    assert!(
        matches!(r, Err(StoreError::ValueTooLarge { len, max })
            if len == MAX_VALUE_BYTES + 1 && max == MAX_VALUE_BYTES),
        "value limit, got {r:?}"
    );

    let value = vec![7u8; MAX_VALUE_BYTES];
    let r = db.transact(|tx| {
        tx.set(&sentinel, b"x")?;
        for i in 0u32.. {
            tx.set(&at(&s, &i.to_be_bytes()), &value)?;
        }
        Ok(())
    });
    assert!(
        matches!(r, Err(StoreError::TransactionTooLarge { len, max })
            if len > MAX_TRANSACTION_BYTES && max == MAX_TRANSACTION_BYTES),
        "transaction limit, got {r:?}"
    );

    let r = db.transact(|tx| tx.set(b"\xffsystem", b"v"));
    assert!(
        matches!(r, Err(StoreError::ReservedKey)),
        "reserved keys, got {r:?}"
    );

    // Ignoring a write's error does not let the transaction commit.
    let r = db.transact(|tx| {
        tx.set(&sentinel, b"x")?;
        let ignored = tx.set(&long_key, b"v");
        assert!(ignored.is_err());
        Ok(())
    });
    assert!(
        matches!(r, Err(StoreError::KeyTooLarge { .. })),
        "sticky, got {r:?}"
    );
    let r = db.transact(|tx| {
        tx.set(&sentinel, b"x")?;
        tx.clear_range(&s, &long_key);
        Ok(())
    });
    assert!(
        matches!(r, Err(StoreError::KeyTooLarge { .. })),
        "clear_range, got {r:?}"
    );
    assert!(
        all(db, &s).is_empty(),
        "no limit-breaking transaction wrote anything"
    );

    // A read that breaks a limit fails alone; the transaction stays usable.
    db.transact(|tx| {
        assert!(matches!(
            tx.get(&long_key),
            Err(StoreError::KeyTooLarge { .. })
        ));
        tx.set(&sentinel, b"x")
    })
    .unwrap();
    assert_eq!(db.get(&sentinel).unwrap().as_deref(), Some(&b"x"[..]));
}

/// A chunked value read the way a streaming reader does: the header, then two chunks per
/// transaction.
fn read_piecewise(db: &Database, k: &[u8]) -> Option<Vec<u8>> {
    let header = db.transact(|tx| get_chunked_header(tx, k)).unwrap()?;
    let layout = match header {
        ChunkedHeader::Inline(value) => return Some(value),
        ChunkedHeader::Chunked(layout) => layout,
    };
    let mut value = Vec::new();
    for first in (0..layout.count).step_by(2) {
        let n = (layout.count - first).min(2);
        for chunk in db
            .transact(|tx| get_chunks(tx, k, &layout, first, n))
            .unwrap()
        {
            value.extend_from_slice(&chunk);
        }
    }
    let past = db.transact(|tx| get_chunks(tx, k, &layout, layout.count, 1));
    assert!(
        matches!(past, Err(StoreError::Corrupt(_))),
        "a chunk past the last: {past:?}"
    );
    Some(value)
}

/// Chunked values round trip at and around the chunk size and at 1 MB (also read piecewise),
/// shrink without leaving stale chunks, and clear completely.
pub fn chunked_values_round_trip(db: &Database) {
    let s = space("chunked_values_round_trip");
    reset(db, &s);
    let k = at(&s, b"blob");
    let read = |db: &Database| db.transact(|tx| get_chunked(tx, &k)).unwrap();
    assert_eq!(read(db), None);
    for len in [
        0,
        1,
        MAX_VALUE_BYTES - 1,
        MAX_VALUE_BYTES,
        MAX_VALUE_BYTES + 1,
        1_000_000,
        250_000,
        10,
    ] {
        let value = pattern(len, len as u64);
        db.transact(|tx| set_chunked(tx, &k, &value)).unwrap();
        assert_eq!(read(db).as_ref(), Some(&value), "round trip of {len} bytes");
        assert_eq!(
            read_piecewise(db, &k).as_ref(),
            Some(&value),
            "piecewise read of {len} bytes"
        );
        let expected_keys = 1 + if len < MAX_VALUE_BYTES {
            0
        } else {
            len.div_ceil(MAX_VALUE_BYTES)
        };
        assert_eq!(
            all(db, &s).len(),
            expected_keys,
            "no stale chunks after {len} bytes"
        );
    }
    let value = pattern(1_000_000, 9);
    db.transact(|tx| {
        set_chunked(tx, &k, &value)?;
        assert_eq!(
            get_chunked(tx, &k)?.as_ref(),
            Some(&value),
            "read your chunked write"
        );
        Ok(())
    })
    .unwrap();
    db.transact(|tx| clear_chunked(tx, &k)).unwrap();
    assert_eq!(read(db), None);
    assert!(all(db, &s).is_empty(), "clear_chunked removes every chunk");

    let too_big = vec![0u8; MAX_TRANSACTION_BYTES];
    let r = db.transact(|tx| set_chunked(tx, &k, &too_big));
    assert!(
        matches!(r, Err(StoreError::TransactionTooLarge { .. })),
        "got {r:?}"
    );
    assert!(all(db, &s).is_empty());
}

/// `threads` threads each add 1 to one counter `per_thread` times; the total is exact.
pub fn concurrent_increments_are_exact(db: &Database, threads: usize, per_thread: usize) {
    let s = space("concurrent_increments_are_exact");
    reset(db, &s);
    let counter = at(&s, b"counter");
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    db.transact(|tx| {
                        let now = match tx.get(&counter)? {
                            Some(bytes) => u64::from_be_bytes(bytes.try_into().map_err(|_| {
                                StoreError::Corrupt("counter is not 8 bytes".into())
                            })?),
                            None => 0,
                        };
                        tx.set(&counter, &(now + 1).to_be_bytes())
                    })
                    .expect("incrementing the counter");
                }
            });
        }
    });
    let total = db.get(&counter).unwrap().expect("counter exists");
    assert_eq!(
        total,
        ((threads * per_thread) as u64).to_be_bytes(),
        "every increment counted exactly once"
    );
}

/// Committed data, chunked values included, survives closing and reopening the store.
pub fn survives_reopen(open: &dyn Fn() -> Database) {
    let s = space("survives_reopen");
    let blob = pattern(300_000, 3);
    {
        let db = open();
        reset(&db, &s);
        db.transact(|tx| {
            tx.set(&at(&s, b"a"), b"1")?;
            set_chunked(tx, &at(&s, b"blob"), &blob)
        })
        .unwrap();
    }
    let db = open();
    assert_eq!(db.get(&at(&s, b"a")).unwrap().as_deref(), Some(&b"1"[..]));
    let read = db.transact(|tx| get_chunked(tx, &at(&s, b"blob"))).unwrap();
    assert_eq!(read, Some(blob), "chunked value after reopen");
}

/// One step of a model-checked run (see [`check_against_model`]). Keys and range bounds are
/// relative to the check's key space.
#[derive(Debug, Clone)]
pub enum ModelOp {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    GetRange(Vec<u8>, Vec<u8>, usize),
    /// Ends the current transaction by committing it.
    Commit,
    /// Ends the current transaction by failing its closure.
    Abort,
}

/// Runs [`check_against_model`] on `cases` random [`ModelOp`] sequences (proptest, shrinking a
/// failure to a small case). Only in this crate's tests: proptest is a dev-dependency.
#[cfg(test)]
pub(crate) fn random_operations_match_a_btreemap(db: &Database, cases: u32) {
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    });
    runner
        .run(&model_ops(), |ops| {
            check_against_model(db, &ops);
            Ok(())
        })
        .unwrap();
}

/// Random [`ModelOp`] sequences over a handful of short keys (so operations collide).
#[cfg(test)]
fn model_ops() -> impl proptest::strategy::Strategy<Value = Vec<ModelOp>> {
    use proptest::prelude::*;

    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0xFF]), 0..4)
    }
    let op = prop_oneof![
        4 => (small_key(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(k, v)| ModelOp::Set(k, v)),
        2 => small_key().prop_map(ModelOp::Clear),
        1 => (small_key(), small_key()).prop_map(|(b, e)| ModelOp::ClearRange(b, e)),
        2 => small_key().prop_map(ModelOp::Get),
        2 => (small_key(), small_key(), 0usize..4)
            .prop_map(|(b, e, limit)| ModelOp::GetRange(b, e, limit)),
        1 => Just(ModelOp::Commit),
        1 => Just(ModelOp::Abort),
    ];
    prop::collection::vec(op, 0..40)
}

fn example_model_ops() -> Vec<ModelOp> {
    use ModelOp::*;
    vec![
        Set(b"a".to_vec(), b"1".to_vec()),
        Set(b"b".to_vec(), b"2".to_vec()),
        Commit,
        ClearRange(b"a".to_vec(), b"b".to_vec()),
        Set(b"c".to_vec(), b"3".to_vec()),
        GetRange(Vec::new(), b"z".to_vec(), 0),
        Abort,
        Clear(b"b".to_vec()),
        Get(b"b".to_vec()),
        GetRange(Vec::new(), b"z".to_vec(), 1),
    ]
}

/// Replays `ops` against the store and against a `BTreeMap`, and panics where they differ:
/// every read inside a transaction, and the whole key space after every transaction.
/// Operations after the last `Commit`/`Abort` form a final committed transaction.
pub fn check_against_model(db: &Database, ops: &[ModelOp]) {
    let s = space("model");
    reset(db, &s);
    let full = |k: &[u8]| {
        let mut out = s.clone();
        out.extend_from_slice(k);
        out
    };
    let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (number, group) in ops
        .split_inclusive(|op| matches!(op, ModelOp::Commit | ModelOp::Abort))
        .enumerate()
    {
        let abort = matches!(group.last(), Some(ModelOp::Abort));
        let mut outcome = None;
        let result = db.transact(|tx| {
            let mut model = committed.clone();
            for (step, op) in group.iter().enumerate() {
                let mismatch = |what: String| {
                    StoreError::Corrupt(format!(
                        "transaction {number}, step {step} ({op:?}): {what}"
                    ))
                };
                match op {
                    ModelOp::Set(k, v) => {
                        tx.set(&full(k), v)?;
                        model.insert(k.clone(), v.clone());
                    }
                    ModelOp::Clear(k) => {
                        tx.clear(&full(k))?;
                        model.remove(k);
                    }
                    ModelOp::ClearRange(b, e) => {
                        tx.clear_range(&full(b), &full(e));
                        if b < e {
                            model.retain(|k, _| !(b <= k && k < e));
                        }
                    }
                    ModelOp::Get(k) => {
                        let got = tx.get(&full(k))?;
                        if got.as_ref() != model.get(k) {
                            return Err(mismatch(format!(
                                "store {got:?}, model {:?}",
                                model.get(k)
                            )));
                        }
                    }
                    ModelOp::GetRange(b, e, limit) => {
                        let got = tx.get_range(&full(b), &full(e), *limit)?;
                        let want: Vec<_> = if b < e {
                            model
                                .range(b.clone()..e.clone())
                                .take(if *limit == 0 { usize::MAX } else { *limit })
                                .map(|(k, v)| (full(k), v.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        if got != want {
                            return Err(mismatch(format!("store {got:?}, model {want:?}")));
                        }
                    }
                    ModelOp::Commit | ModelOp::Abort => {}
                }
            }
            if abort {
                return Err(StoreError::Backend("model abort".into()));
            }
            outcome = Some(model);
            Ok(())
        });
        match (result, abort) {
            (Ok(()), false) => committed = outcome.take().expect("committed transaction ran"),
            (Err(StoreError::Backend(msg)), true) if msg == "model abort" => {}
            (other, _) => panic!("transaction {number}: {other:?}"),
        }
        let want: Vec<_> = committed
            .iter()
            .map(|(k, v)| (full(k), v.clone()))
            .collect();
        assert_eq!(all(db, &s), want, "after transaction {number}");
    }
}
