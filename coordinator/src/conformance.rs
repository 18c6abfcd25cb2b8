//! The cluster-store conformance suite: one set of checks that every
//! [`ClusterStore`] must pass, run against [`MemStore`](crate::MemStore) and
//! against a real etcd through [`EtcdStore`](crate::EtcdStore)
//! (`tests/conformance_*.rs`).
//!
//! Each check takes the same base prefix and works under its own sub-prefix
//! (`<prefix><check>/`), so the checks can share one store and run at the
//! same time. The prefix must be unused. Checks panic with a message naming
//! what differed.
//!
//! Timing: leases use a 2 s TTL (etcd's minimum is about that, and it rounds
//! to whole seconds) and waits are generous, so a full run takes a few
//! seconds whatever the store. Compiled for this crate's tests and, for other
//! crates, with the `conformance` feature.

use crate::store::{ClusterStore, Expect, KeyValue, LeaseId, StoreError, WatchEvent};
use crate::CellOwner;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::{Epoch, ShardId};
use tokio::sync::{mpsc, Barrier};

/// TTL of the leases the checks grant.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a leased key may take to vanish after its TTL has run out
/// without keep-alive. etcd rounds TTLs up, checks expiry twice a second and
/// deletes through raft, so this is generous.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(8);
/// How long a watch event may take to arrive.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tasks racing for one key in [`compare_and_put_race`].
pub const CONTENDERS: usize = 8;
/// Rounds of that race.
pub const RACE_ROUNDS: u64 = 5;

/// Runs every check, one after another except the two lease-timing checks,
/// which run at the same time. [`watch_sees_lease_expiry`] runs while
/// nothing else touches the store, so that it proves expiry happens on its
/// own.
pub async fn run_all(store: Arc<dyn ClusterStore>, prefix: &str) {
    let s = &*store;
    timed("get_put_delete", get_put_delete(s, prefix)).await;
    timed(
        "list_in_key_order_under_prefix",
        list_in_key_order_under_prefix(s, prefix),
    )
    .await;
    timed("put_revisions_increase", put_revisions_increase(s, prefix)).await;
    timed("compare_and_put_absent", compare_and_put_absent(s, prefix)).await;
    timed(
        "compare_and_put_mod_revision",
        compare_and_put_mod_revision(s, prefix),
    )
    .await;
    timed(
        "compare_and_put_race",
        compare_and_put_race(store.clone(), prefix),
    )
    .await;
    timed("watch_puts_and_deletes", watch_puts_and_deletes(s, prefix)).await;
    timed("lease_revoke", lease_revoke(s, prefix)).await;
    timed(
        "watch_sees_lease_expiry",
        watch_sees_lease_expiry(s, prefix),
    )
    .await;
    tokio::join!(
        timed(
            "lease_expires_without_keep_alive",
            lease_expires_without_keep_alive(s, prefix)
        ),
        timed("lease_kept_alive", lease_kept_alive(s, prefix)),
        timed("lease_time_to_live", lease_time_to_live(s)),
    );
}

async fn timed(name: &str, check: impl Future<Output = ()>) {
    let start = Instant::now();
    check.await;
    eprintln!("conformance: {name} ok ({:.1?})", start.elapsed());
}

/// get of a missing key, put, get, overwrite, delete, delete again; values
/// are bytes (empty and non-UTF-8 values round-trip).
pub async fn get_put_delete(store: &dyn ClusterStore, prefix: &str) {
    let key = format!("{prefix}get_put_delete/a");
    assert_eq!(store.get(&key).await.unwrap(), None, "{key} before any put");

    let r1 = store.put(&key, b"one".to_vec(), None).await.unwrap();
    let kv = store.get(&key).await.unwrap().expect("key after put");
    assert_eq!(
        kv,
        KeyValue {
            key: key.clone(),
            value: b"one".to_vec(),
            mod_revision: r1,
            lease: None,
        }
    );

    let r2 = store.put(&key, vec![0, 0xff, 0xfe], None).await.unwrap();
    assert!(r2 > r1, "overwrite revision {r2} after {r1}");
    let kv = store.get(&key).await.unwrap().expect("key after overwrite");
    assert_eq!((kv.value, kv.mod_revision), (vec![0, 0xff, 0xfe], r2));

    let r3 = store.put(&key, Vec::new(), None).await.unwrap();
    let kv = store
        .get(&key)
        .await
        .unwrap()
        .expect("key with an empty value");
    assert_eq!((kv.value, kv.mod_revision), (Vec::new(), r3));

    assert!(
        store.delete(&key).await.unwrap(),
        "delete of an existing key"
    );
    assert_eq!(store.get(&key).await.unwrap(), None, "{key} after delete");
    assert!(
        !store.delete(&key).await.unwrap(),
        "delete of a missing key"
    );
}

/// list returns exactly the keys that start with the prefix, in key order,
/// with their values and revisions; neighbours that share a string prefix
/// but not the whole prefix are left out.
pub async fn list_in_key_order_under_prefix(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}list/");
    let inside = ["b", "a", "c/1", "ab", "", "a/z", "b\u{e9}"];
    // Around the range: "list0" is the first key after every "list/..." key
    // (etcd's prefix range end), "lis" and "list" sort just before.
    let outside = [
        format!("{prefix}list"),
        format!("{prefix}list0"),
        format!("{prefix}lis"),
        format!("{prefix}lisz/a"),
    ];
    for k in &outside {
        store.put(k, b"outside".to_vec(), None).await.unwrap();
    }
    let mut written = Vec::new();
    for name in inside {
        let key = format!("{base}{name}");
        let value = format!("value of {name}").into_bytes();
        let rev = store.put(&key, value.clone(), None).await.unwrap();
        written.push(KeyValue {
            key,
            value,
            mod_revision: rev,
            lease: None,
        });
    }
    written.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(store.list(&base).await.unwrap(), written, "list {base}");

    let one = store.list(&format!("{base}c/")).await.unwrap();
    assert_eq!(
        one.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        [format!("{base}c/1")],
        "list of a narrower prefix"
    );
    assert!(
        store
            .list(&format!("{base}nothing/"))
            .await
            .unwrap()
            .is_empty(),
        "list of an empty prefix"
    );

    store.delete(&format!("{base}b")).await.unwrap();
    let keys: Vec<_> = store
        .list(&base)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert!(
        !keys.contains(&format!("{base}b")),
        "deleted key still listed: {keys:?}"
    );
    assert_eq!(keys.len(), inside.len() - 1);
}

/// Every write gets a larger revision than the one before, and the key's
/// mod_revision is the revision its write returned.
pub async fn put_revisions_increase(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}revisions/");
    let mut last = 0;
    let mut written = Vec::new();
    for i in 0..10 {
        let key = format!("{base}{}", i % 3);
        let rev = store.put(&key, vec![i], None).await.unwrap();
        assert!(rev > last, "put #{i} returned revision {rev} after {last}");
        last = rev;
        written.push((key, rev));
    }
    for (key, rev) in written.iter().rev().take(3) {
        let kv = store.get(key).await.unwrap().expect("written key");
        assert_eq!(kv.mod_revision, *rev, "mod_revision of {key}");
    }
    // A delete is a write too.
    store.delete(&format!("{base}0")).await.unwrap();
    let after = store.put(&format!("{base}1"), vec![], None).await.unwrap();
    assert!(
        after > last + 1,
        "put after a delete: {after}, last put {last}"
    );
}

/// Expect::Absent succeeds once, then fails without writing; it succeeds
/// again once the key is deleted.
pub async fn compare_and_put_absent(store: &dyn ClusterStore, prefix: &str) {
    let key = format!("{prefix}cas_absent/k");
    let rev = store
        .compare_and_put(&key, Expect::Absent, b"first".to_vec(), None)
        .await
        .unwrap()
        .expect("Absent on a missing key succeeds");
    let kv = store
        .get(&key)
        .await
        .unwrap()
        .expect("key after compare-and-put");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"first"[..], rev));

    let again = store
        .compare_and_put(&key, Expect::Absent, b"second".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(again, None, "Absent on an existing key fails");
    let kv = store
        .get(&key)
        .await
        .unwrap()
        .expect("key after failed compare-and-put");
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision),
        (&b"first"[..], rev),
        "failed CAS wrote"
    );

    store.delete(&key).await.unwrap();
    let rev2 = store
        .compare_and_put(&key, Expect::Absent, b"third".to_vec(), None)
        .await
        .unwrap()
        .expect("Absent after delete succeeds");
    assert!(rev2 > rev);
}

/// Expect::ModRevision succeeds on the current revision only: an old one
/// fails after any change, and no revision matches a missing key.
pub async fn compare_and_put_mod_revision(store: &dyn ClusterStore, prefix: &str) {
    let key = format!("{prefix}cas_revision/k");
    for rev in [0, 1] {
        let r = store
            .compare_and_put(&key, Expect::ModRevision(rev), b"x".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(r, None, "ModRevision({rev}) on a missing key must fail");
    }
    assert_eq!(store.get(&key).await.unwrap(), None);

    let r1 = store.put(&key, b"v1".to_vec(), None).await.unwrap();
    let r2 = store
        .compare_and_put(&key, Expect::ModRevision(r1), b"v2".to_vec(), None)
        .await
        .unwrap()
        .expect("ModRevision(current) succeeds");
    assert!(r2 > r1);
    assert_eq!(store.get(&key).await.unwrap().unwrap().mod_revision, r2);

    // r1 is old now: fails, and changes nothing.
    let stale = store
        .compare_and_put(&key, Expect::ModRevision(r1), b"v3".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(stale, None, "ModRevision(old) must fail");
    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v2"[..], r2));

    // A plain put also makes the read revision stale.
    let r3 = store.put(&key, b"v3".to_vec(), None).await.unwrap();
    let r = store
        .compare_and_put(&key, Expect::ModRevision(r2), b"v4".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(r, None, "ModRevision after an unconditional put");
    // A delete too, even when the key is recreated.
    store.delete(&key).await.unwrap();
    store.put(&key, b"v5".to_vec(), None).await.unwrap();
    let r = store
        .compare_and_put(&key, Expect::ModRevision(r3), b"v6".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(r, None, "ModRevision across delete and recreate");
}

/// The epoch bump race at the core of cell-ownership fencing: in each round
/// [`CONTENDERS`] tasks read the cell's owner, wait until all have read, and
/// then all try to write themselves as owner at epoch + 1 with a
/// compare-and-put on what they read. Exactly one wins each round; the
/// stored owner is the winner, at the next epoch, at the winner's revision.
/// Round 0 claims the absent key.
pub async fn compare_and_put_race(store: Arc<dyn ClusterStore>, prefix: &str) {
    let key = format!("{prefix}race/cells/0,0");
    for round in 0..=RACE_ROUNDS {
        let barrier = Arc::new(Barrier::new(CONTENDERS));
        let mut tasks = Vec::new();
        for i in 0..CONTENDERS {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let (expect, epoch) = match store.get(&key).await.unwrap() {
                    None => (Expect::Absent, Epoch(0)),
                    Some(kv) => {
                        let owner: CellOwner = serde_json::from_slice(&kv.value).unwrap();
                        (Expect::ModRevision(kv.mod_revision), owner.epoch)
                    }
                };
                // Everybody has read before anybody writes.
                barrier.wait().await;
                let claim = CellOwner {
                    owner: ShardId::new(format!("contender-{i}")),
                    epoch: Epoch(epoch.0 + 1),
                };
                let value = serde_json::to_vec(&claim).unwrap();
                let won = store
                    .compare_and_put(&key, expect, value, None)
                    .await
                    .unwrap();
                (claim, won)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (claim, won) = task.await.expect("a contender panicked");
            assert_eq!(
                claim.epoch,
                Epoch(round + 1),
                "round {round}: contender read a wrong epoch"
            );
            if let Some(rev) = won {
                winners.push((claim, rev));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (claim, rev) = winners.remove(0);
        let kv = store.get(&key).await.unwrap().expect("the raced key");
        let stored: CellOwner = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(
            stored, claim,
            "round {round}: stored owner is not the winner"
        );
        assert_eq!(kv.mod_revision, rev, "round {round}: winner's revision");
    }
}

/// A watch delivers, in revision order, the puts and deletes under its
/// prefix made after it was created, and nothing else: not writes before
/// it, not keys outside the prefix. Deletes caused by revoking a lease are
/// delivered too. Dropping the receiver is allowed at any time.
pub async fn watch_puts_and_deletes(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}watch/");
    let key = |name: &str| format!("{base}{name}");
    store
        .put(&key("before"), b"0".to_vec(), None)
        .await
        .unwrap();

    let mut events = store.watch(&base).await.unwrap();
    // An unrelated watch on an outer prefix may come and go.
    drop(store.watch(prefix).await.unwrap());

    let ra = store.put(&key("a"), b"1".to_vec(), None).await.unwrap();
    store
        .put(&format!("{prefix}watch"), b"outside".to_vec(), None)
        .await
        .unwrap();
    store
        .put(&format!("{prefix}watch0"), b"outside".to_vec(), None)
        .await
        .unwrap();
    let rb = store
        .put(&key("b/deep"), b"2".to_vec(), None)
        .await
        .unwrap();
    assert!(store.delete(&key("a")).await.unwrap());
    assert!(!store.delete(&key("never")).await.unwrap());
    let rc = store
        .compare_and_put(&key("b/deep"), Expect::ModRevision(rb), b"3".to_vec(), None)
        .await
        .unwrap()
        .expect("compare-and-put on the watched key");
    assert_eq!(
        store
            .compare_and_put(&key("b/deep"), Expect::Absent, b"x".to_vec(), None)
            .await
            .unwrap(),
        None
    );
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let rl = store
        .put(&key("leased"), b"4".to_vec(), Some(lease))
        .await
        .unwrap();
    let rl2 = store
        .put(&key("leased2"), b"4".to_vec(), Some(lease))
        .await
        .unwrap();
    store.revoke(lease).await.unwrap();
    let rend = store.put(&key("end"), b"5".to_vec(), None).await.unwrap();

    let put = |name: &str, value: &[u8], rev: i64, lease: Option<LeaseId>| {
        WatchEvent::Put(KeyValue {
            key: key(name),
            value: value.to_vec(),
            mod_revision: rev,
            lease,
        })
    };
    assert_eq!(recv(&mut events, "put a").await, put("a", b"1", ra, None));
    assert_eq!(
        recv(&mut events, "put b/deep").await,
        put("b/deep", b"2", rb, None)
    );
    let ra_deleted = match recv(&mut events, "delete a").await {
        WatchEvent::Delete { key: k, revision } if k == key("a") => revision,
        other => panic!("expected the delete of {}, got {other:?}", key("a")),
    };
    assert!(
        rb < ra_deleted && ra_deleted < rc,
        "delete revision {ra_deleted} not between {rb} and {rc}"
    );
    assert_eq!(
        recv(&mut events, "compare-and-put b/deep").await,
        put("b/deep", b"3", rc, None)
    );
    assert_eq!(
        recv(&mut events, "put leased").await,
        put("leased", b"4", rl, Some(lease))
    );
    assert_eq!(
        recv(&mut events, "put leased2").await,
        put("leased2", b"4", rl2, Some(lease))
    );
    // Revoking deletes both keys. etcd does it in one write, so both deletes
    // may carry the same revision, in any key order; MemStore gives each its
    // own. Revisions never go down.
    let mut deleted = Vec::new();
    let mut last = rl2;
    for _ in 0..2 {
        match recv(&mut events, "delete by revoke").await {
            WatchEvent::Delete { key: k, revision } => {
                assert!(
                    rl2 < revision && last <= revision && revision < rend,
                    "revoke delete of {k} at {revision}: after {rl2} and {last}, before {rend}"
                );
                last = revision;
                deleted.push(k);
            }
            other => panic!("expected a delete by revoke, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, [key("leased"), key("leased2")]);
    assert_eq!(
        recv(&mut events, "put end").await,
        put("end", b"5", rend, None)
    );
    assert_no_event(&mut events).await;
}

/// A key whose lease runs out vanishes with a delete event, without anybody
/// touching the store meanwhile (a coordinator learns that a shard died from
/// its watch alone). Run it while nothing else uses the store: other
/// requests could trigger an expiry that a lazy store would otherwise miss.
pub async fn watch_sees_lease_expiry(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}watch_expiry/");
    let key = format!("{base}shard");
    let mut events = store.watch(&base).await.unwrap();
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let rev = store
        .put(&key, b"alive".to_vec(), Some(lease))
        .await
        .unwrap();
    match recv(&mut events, "put of the leased key").await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), (key.as_str(), rev)),
        other => panic!("expected the put of {key}, got {other:?}"),
    }
    let start = Instant::now();
    let deadline = LEASE_TTL + EXPIRY_GRACE;
    match tokio::time::timeout(deadline, events.recv()).await {
        Ok(Some(WatchEvent::Delete { key: k, revision })) => {
            assert_eq!(k, key);
            assert!(revision > rev);
        }
        Ok(other) => panic!("expected the expiry delete of {key}, got {other:?}"),
        Err(_) => panic!(
            "no delete event for {key} within {deadline:?} of its lease running out \
             (the store must expire leases by itself, not only when it is next used)"
        ),
    }
    let waited = start.elapsed();
    assert!(waited >= LEASE_TTL / 2, "expired after only {waited:?}");
    assert_no_event(&mut events).await;
}

/// Without keep-alive, a leased key vanishes after the TTL (not long before),
/// and the lease is then gone: keep-alive and puts on it fail with
/// LeaseNotFound.
pub async fn lease_expires_without_keep_alive(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}lease_expiry/");
    let key = format!("{base}k");
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let rev = store.put(&key, b"v".to_vec(), Some(lease)).await.unwrap();
    let kv = store
        .get(&key)
        .await
        .unwrap()
        .expect("leased key after put");
    assert_eq!((kv.lease, kv.mod_revision), (Some(lease), rev));
    let start = Instant::now();

    tokio::time::sleep(LEASE_TTL / 2).await;
    assert!(
        store.get(&key).await.unwrap().is_some(),
        "leased key vanished before half its TTL"
    );

    let gone_after = wait_until_gone(store, &key, LEASE_TTL + EXPIRY_GRACE).await;
    assert!(
        gone_after.is_some(),
        "leased key still there {:?} after its TTL",
        EXPIRY_GRACE
    );
    let elapsed = start.elapsed();
    assert!(elapsed >= LEASE_TTL / 2, "vanished after {elapsed:?}");

    assert_lease_not_found(
        store.keep_alive(lease).await,
        lease,
        "keep_alive on an expired lease",
    );
    assert_lease_not_found(
        store.put(&format!("{base}late"), vec![], Some(lease)).await,
        lease,
        "put with an expired lease",
    );
    assert_eq!(store.get(&format!("{base}late")).await.unwrap(), None);
}

/// With keep-alive every quarter TTL, a leased key outlives its TTL several
/// times over; once keep-alive stops, it vanishes.
pub async fn lease_kept_alive(store: &dyn ClusterStore, prefix: &str) {
    let key = format!("{prefix}lease_kept/k");
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    store.put(&key, b"v".to_vec(), Some(lease)).await.unwrap();
    let until = Instant::now() + LEASE_TTL * 5 / 2;
    while Instant::now() < until {
        tokio::time::sleep(LEASE_TTL / 4).await;
        store
            .keep_alive(lease)
            .await
            .expect("keep_alive on a live lease");
        assert!(
            store.get(&key).await.unwrap().is_some(),
            "key vanished despite keep-alive"
        );
    }
    assert!(
        wait_until_gone(store, &key, LEASE_TTL + EXPIRY_GRACE)
            .await
            .is_some(),
        "key still there after keep-alive stopped"
    );
}

/// A lease's time to live counts down from its granted TTL, goes back up on keep-alive and
/// is gone once revoked; an unknown lease has none. etcd counts whole seconds (rounded
/// down), hence the second of slack.
pub async fn lease_time_to_live(store: &dyn ClusterStore) {
    let granted = Duration::from_secs(10);
    let lease = store.grant_lease(granted).await.unwrap();
    let fresh = store
        .lease_time_to_live(lease)
        .await
        .unwrap()
        .expect("a granted lease has a time to live");
    assert_eq!(fresh.granted, granted, "{fresh:?}");
    assert!(
        fresh.unrenewed_for() <= Duration::from_secs(1),
        "just granted: {fresh:?}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let aged = store.lease_time_to_live(lease).await.unwrap().unwrap();
    assert!(
        aged.unrenewed_for() >= Duration::from_secs(2)
            && aged.unrenewed_for() <= Duration::from_secs(4),
        "2.2 s without keep-alive: {aged:?}"
    );
    store.keep_alive(lease).await.unwrap();
    let renewed = store.lease_time_to_live(lease).await.unwrap().unwrap();
    assert!(
        renewed.unrenewed_for() <= Duration::from_secs(1),
        "after keep-alive: {renewed:?}"
    );
    store.revoke(lease).await.unwrap();
    assert_eq!(store.lease_time_to_live(lease).await.unwrap(), None);
    let unknown = store.grant_lease(granted).await.unwrap();
    store.revoke(unknown).await.unwrap();
    assert_eq!(
        store.lease_time_to_live(unknown + 1_000_000).await.unwrap(),
        None,
        "a lease never granted"
    );
}

/// Revoke deletes the lease's keys at once (and only those); the lease is
/// then unknown to keep_alive and put; revoking again is not an error.
pub async fn lease_revoke(store: &dyn ClusterStore, prefix: &str) {
    let base = format!("{prefix}lease_revoke/");
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let other = store.grant_lease(LEASE_TTL * 10).await.unwrap();
    assert_ne!(lease, other);
    store
        .put(&format!("{base}a"), b"a".to_vec(), Some(lease))
        .await
        .unwrap();
    store
        .compare_and_put(
            &format!("{base}b"),
            Expect::Absent,
            b"b".to_vec(),
            Some(lease),
        )
        .await
        .unwrap()
        .expect("compare-and-put with a lease");
    store
        .put(&format!("{base}other"), vec![], Some(other))
        .await
        .unwrap();
    store
        .put(&format!("{base}plain"), vec![], None)
        .await
        .unwrap();
    assert_eq!(
        store.get(&format!("{base}b")).await.unwrap().unwrap().lease,
        Some(lease)
    );

    store.revoke(lease).await.unwrap();
    let keys: Vec<_> = store
        .list(&base)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        [format!("{base}other"), format!("{base}plain")],
        "right after revoke"
    );

    assert_lease_not_found(
        store.put(&format!("{base}c"), vec![], Some(lease)).await,
        lease,
        "put with a revoked lease",
    );
    assert_lease_not_found(
        store
            .compare_and_put(&format!("{base}d"), Expect::Absent, vec![], Some(lease))
            .await,
        lease,
        "compare-and-put with a revoked lease",
    );
    assert_lease_not_found(
        store.keep_alive(lease).await,
        lease,
        "keep_alive on a revoked lease",
    );
    assert!(
        store.list(&base).await.unwrap().len() == 2,
        "a write with a revoked lease landed"
    );
    store.revoke(lease).await.expect("revoking a revoked lease");

    store.revoke(other).await.unwrap();
    assert_eq!(store.get(&format!("{base}other")).await.unwrap(), None);
}

async fn recv(events: &mut mpsc::UnboundedReceiver<WatchEvent>, what: &str) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("watch closed while waiting for {what}"),
        Err(_) => panic!("no watch event for {what} within {EVENT_TIMEOUT:?}"),
    }
}

/// Nothing more arrives for a moment (a stray event would be a bug).
async fn assert_no_event(events: &mut mpsc::UnboundedReceiver<WatchEvent>) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        panic!("unexpected watch event {event:?}");
    }
}

/// Polls until `key` is gone; how long that took, or None at the deadline.
async fn wait_until_gone(
    store: &dyn ClusterStore,
    key: &str,
    deadline: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if store.get(key).await.unwrap().is_none() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn assert_lease_not_found<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    lease: LeaseId,
    what: &str,
) {
    match r {
        Err(StoreError::LeaseNotFound(id)) => {
            assert_eq!(id, lease, "{what}: lease id in the error")
        }
        other => panic!("{what}: expected LeaseNotFound({lease}), got {other:?}"),
    }
}
