//! The narrow cluster-store interface (get, put, compare-and-set on revision,
//! prefix list and watch, leases) and its in-process implementation.
//!
//! The interface is etcd's data model: every write bumps a global revision;
//! each key remembers the revision that last modified it; a compare-and-set
//! succeeds only if that revision is still the one the caller read. A key
//! written under a lease disappears when the lease expires or is revoked.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} not found or expired")]
    LeaseNotFound(i64),
    /// etcd's auth refused the request: the client's user (its certificate's
    /// Common Name) has no role that grants it. Retrying will not help.
    #[error(
        "etcd refused: permission denied for user {user} to {op} {target} (each Tessera role's \
         etcd user may touch only its own keys, and a certificate whose name is no etcd user \
         nothing: docs/security.md, \"etcd users and roles\")"
    )]
    PermissionDenied {
        user: String,
        op: String,
        target: String,
    },
}

/// A lease: keys attached to it vanish when it expires.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that last modified this key.
    pub mod_revision: i64,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: i64 },
}

/// Expected state of a key for a compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist and have been last modified at this revision.
    ModRevision(i64),
}

/// The cluster store. Implemented by [`MemStore`] and, in a cluster, etcd.
pub trait ClusterStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;
    /// Every key starting with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>>;
    /// Unconditional write; returns the new revision.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
    /// Write only if the key is as expected; `Ok(None)` if it was not.
    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Changes under `prefix` from now on, in revision order.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError>>;
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// How long `lease` has left and the TTL it was granted with, or `None` when it is
    /// gone. etcd counts in whole seconds (the remainder rounded down), so callers must
    /// allow a second of slack; the liveness watchdog uses it to see a member that stopped
    /// renewing ([`crate::liveness`]).
    fn lease_time_to_live(
        &self,
        lease: LeaseId,
    ) -> BoxFuture<'_, Result<Option<LeaseTtl>, StoreError>>;
}

/// A lease's remaining time and granted TTL ([`ClusterStore::lease_time_to_live`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTtl {
    pub remaining: Duration,
    pub granted: Duration,
}

impl LeaseTtl {
    /// How long ago the lease was last granted or renewed, at least (etcd's whole seconds
    /// make it up to a second more).
    pub fn unrenewed_for(&self) -> Duration {
        self.granted.saturating_sub(self.remaining)
    }
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

#[derive(Default)]
struct MemInner {
    revision: i64,
    next_lease: LeaseId,
    kv: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>)>,
}

impl MemInner {
    /// Drops expired leases and their keys. Called on every operation, so
    /// expiry needs no background task.
    fn expire(&mut self, now: Instant) {
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kv
            .values()
            .filter(|kv| kv.lease == Some(id))
            .map(|kv| kv.key.clone())
            .collect();
        for k in keys {
            self.delete(&k);
        }
    }

    fn notify(&mut self, key: &str, ev: WatchEvent) {
        self.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.send(ev.clone()).is_ok()
        });
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        if let Some(id) = lease {
            if !self.leases.contains_key(&id) {
                return Err(StoreError::LeaseNotFound(id));
            }
        }
        self.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            mod_revision: self.revision,
            lease,
        };
        self.kv.insert(key.to_string(), kv.clone());
        self.notify(key, WatchEvent::Put(kv));
        Ok(self.revision)
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.kv.remove(key).is_none() {
            return false;
        }
        self.revision += 1;
        let ev = WatchEvent::Delete {
            key: key.to_string(),
            revision: self.revision,
        };
        self.notify(key, ev);
        true
    }
}

/// The in-process cluster store used by `tessera up`: etcd's semantics in a
/// mutex. Clones share one store.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemInner) -> T) -> T {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        f(&mut inner)
    }
}

impl ClusterStore for MemStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        let r = self.with(|s| s.kv.get(key).cloned());
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        let r = self.with(|s| {
            s.kv.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect()
        });
        Box::pin(async move { Ok(r) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        let r = self.with(|s| s.put(key, value, lease));
        Box::pin(async move { r })
    }

    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        let r = self.with(|s| {
            let current = s.kv.get(key).map(|kv| kv.mod_revision);
            let ok = match expect {
                Expect::Absent => current.is_none(),
                Expect::ModRevision(rev) => current == Some(rev),
            };
            if ok {
                s.put(key, value, lease).map(Some)
            } else {
                Ok(None)
            }
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let r = self.with(|s| s.delete(key));
        Box::pin(async move { Ok(r) })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|s| s.watchers.push((prefix.to_string(), tx)));
        Box::pin(async move { Ok(rx) })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        let id = self.with(|s| {
            s.next_lease += 1;
            let id = s.next_lease;
            s.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                },
            );
            id
        });
        let inner = Arc::downgrade(&self.inner);
        Box::pin(async move {
            tokio::spawn(expire_when_due(inner, id, ttl));
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        let r = self.with(|s| match s.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseNotFound(lease)),
        });
        Box::pin(async move { r })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(|s| s.drop_lease(lease));
        Box::pin(async move { Ok(()) })
    }

    fn lease_time_to_live(
        &self,
        lease: LeaseId,
    ) -> BoxFuture<'_, Result<Option<LeaseTtl>, StoreError>> {
        let now = Instant::now();
        let ttl = self.with(|s| {
            s.expire(now);
            s.leases.get(&lease).map(|l| LeaseTtl {
                remaining: l.deadline.saturating_duration_since(now),
                granted: l.ttl,
            })
        });
        Box::pin(async move { Ok(ttl) })
    }
}

/// Expires lease `id` when its deadline passes, so its keys vanish (and
/// watchers hear of it) even if nobody uses the store meanwhile. Sleeps again
/// when a keep-alive moved the deadline; ends when the lease or the store is
/// gone.
async fn expire_when_due(inner: Weak<Mutex<MemInner>>, id: LeaseId, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut s = inner.lock();
        let now = Instant::now();
        s.expire(now);
        match s.leases.get(&id) {
            Some(lease) => wait = lease.deadline.saturating_duration_since(now),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: rev.to_string().into_bytes(),
            mod_revision: rev,
            lease: None,
        }
    }

    /// Events made between subscribing and listing arrive after the snapshot that already
    /// holds them; handing them on would set a key back to an older value for a moment.
    #[test]
    fn events_older_than_the_snapshot_are_dropped() {
        let mut s = Staleness::default();
        s.snapshot(&[kv("/t/cells/0,0", 7), kv("/t/cells/1,0", 3)]);
        // The flip to shard-1 at revision 7 is in the snapshot; the watch replays 5 and 7.
        assert!(!s.fresh(&WatchEvent::Put(kv("/t/cells/0,0", 5))));
        assert!(!s.fresh(&WatchEvent::Put(kv("/t/cells/0,0", 7))));
        assert!(s.fresh(&WatchEvent::Put(kv("/t/cells/0,0", 8))));
        assert!(!s.fresh(&WatchEvent::Delete {
            key: "/t/cells/1,0".into(),
            revision: 2
        }));
        assert!(s.fresh(&WatchEvent::Delete {
            key: "/t/cells/1,0".into(),
            revision: 9
        }));
        // A key the snapshot did not have: every newer event goes through, an older one not.
        assert!(s.fresh(&WatchEvent::Put(kv("/t/cells/2,0", 4))));
        assert!(!s.fresh(&WatchEvent::Put(kv("/t/cells/2,0", 4))));
        // A new snapshot starts over from what it shows.
        s.snapshot(&[kv("/t/cells/0,0", 20)]);
        assert!(!s.fresh(&WatchEvent::Put(kv("/t/cells/0,0", 8))));
    }

    #[tokio::test]
    async fn cas_on_revision() {
        let s = MemStore::new();
        let r1 = s
            .compare_and_put("/t/a", Expect::Absent, b"1".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .compare_and_put("/t/a", Expect::Absent, b"2".to_vec(), None)
            .await
            .unwrap()
            .is_none());
        let r2 = s
            .compare_and_put("/t/a", Expect::ModRevision(r1), b"2".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert!(r2 > r1);
        assert!(s
            .compare_and_put("/t/a", Expect::ModRevision(r1), b"3".to_vec(), None)
            .await
            .unwrap()
            .is_none());
        assert_eq!(s.get("/t/a").await.unwrap().unwrap().value, b"2");
    }

    #[tokio::test]
    async fn list_and_watch_prefix() {
        let s = MemStore::new();
        let mut w = s.watch("/t/cells/").await.unwrap();
        s.put("/t/cells/0,0", b"a".to_vec(), None).await.unwrap();
        s.put("/t/other", b"b".to_vec(), None).await.unwrap();
        s.put("/t/cells/1,0", b"c".to_vec(), None).await.unwrap();
        s.delete("/t/cells/0,0").await.unwrap();
        let keys: Vec<_> = s
            .list("/t/cells/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec!["/t/cells/1,0"]);
        assert!(matches!(w.recv().await, Some(WatchEvent::Put(kv)) if kv.key == "/t/cells/0,0"));
        assert!(matches!(w.recv().await, Some(WatchEvent::Put(kv)) if kv.key == "/t/cells/1,0"));
        assert!(
            matches!(w.recv().await, Some(WatchEvent::Delete { key, .. }) if key == "/t/cells/0,0")
        );
    }

    #[tokio::test]
    async fn lease_expiry_removes_keys() {
        let s = MemStore::new();
        let lease = s.grant_lease(Duration::from_millis(50)).await.unwrap();
        s.put("/t/shards/a", b"x".to_vec(), Some(lease))
            .await
            .unwrap();
        s.keep_alive(lease).await.unwrap();
        assert!(s.get("/t/shards/a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.get("/t/shards/a").await.unwrap().is_none());
        assert!(s.keep_alive(lease).await.is_err());
        assert!(s.put("/t/x", vec![], Some(lease)).await.is_err());
    }
}

/// The newest revision [`follow`] has handed on for each key, so that a watch event older
/// than what a snapshot already showed is dropped instead of undoing it.
#[derive(Debug, Default)]
struct Staleness {
    newest: HashMap<String, i64>,
}

impl Staleness {
    fn snapshot(&mut self, kvs: &[KeyValue]) {
        self.newest = kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
    }

    /// Whether `ev` is newer than what was handed on for its key (and remembers it if so).
    fn fresh(&mut self, ev: &WatchEvent) -> bool {
        let (key, revision) = match ev {
            WatchEvent::Put(kv) => (&kv.key, kv.mod_revision),
            WatchEvent::Delete { key, revision } => (key, *revision),
        };
        match self.newest.get(key) {
            Some(&seen) if seen >= revision => false,
            _ => {
                self.newest.insert(key.clone(), revision);
                true
            }
        }
    }
}

/// What [`follow`] hands its callback.
#[derive(Debug)]
pub enum Follow {
    /// The complete current contents of the prefix: replace what you had.
    Snapshot(Vec<KeyValue>),
    /// A change after the last snapshot.
    Event(WatchEvent),
}

/// Lists `prefix` and then follows its changes for as long as the process
/// lives. When the watch breaks (etcd restarted, network cut), it lists and
/// watches again with backoff and hands `apply` a fresh snapshot, so changes
/// missed in between (deletions included) are not lost. Returns once the
/// first snapshot has been applied.
pub async fn follow(
    store: Arc<dyn ClusterStore>,
    prefix: String,
    apply: impl Fn(Follow) + Send + Sync + 'static,
) -> Result<(), StoreError> {
    // Subscribe before listing so no change falls between the two. Changes made between
    // the two arrive on the watch too, after the snapshot that already holds them: they are
    // dropped (`Staleness`), or a key would go back to an older value for a moment (a shard
    // once dropped a cell it had just opened that way).
    let events = store.watch(&prefix).await?;
    let kvs = store.list(&prefix).await?;
    let mut staleness = Staleness::default();
    staleness.snapshot(&kvs);
    apply(Follow::Snapshot(kvs));
    tokio::spawn(async move {
        let mut events = events;
        loop {
            while let Some(ev) = events.recv().await {
                if staleness.fresh(&ev) {
                    apply(Follow::Event(ev));
                }
            }
            tracing::warn!(prefix = %prefix, "cluster store watch ended; re-syncing");
            let mut backoff = std::time::Duration::from_millis(100);
            events = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                let Ok(w) = store.watch(&prefix).await else {
                    continue;
                };
                match store.list(&prefix).await {
                    Ok(kvs) => {
                        staleness.snapshot(&kvs);
                        apply(Follow::Snapshot(kvs));
                        break w;
                    }
                    Err(_) => continue,
                }
            };
            tracing::info!(prefix = %prefix, "cluster store watch re-established");
        }
    });
    Ok(())
}
