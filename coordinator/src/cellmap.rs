//! The cell map: which shard owns each cell, at which epoch.
//!
//! Stored as `<prefix>cells/<x>,<z>` -> `{"owner": "...", "epoch": N}` (JSON,
//! see docs/etcd-keys.md). Readers keep a local copy that a watch keeps up
//! to date.

use crate::store::{follow, ClusterStore, Expect, Follow, WatchEvent};
use crate::CoordinatorError;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::{CellId, Epoch, ShardId};

/// Owner of a cell. An owner cannot be written without its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellOwner {
    pub owner: ShardId,
    pub epoch: Epoch,
}

pub fn cell_key(prefix: &str, cell: CellId) -> String {
    format!("{prefix}cells/{cell}")
}

/// The cell a key names, if the key is `<dir><x>,<z>` (cells/, migrations/).
pub(crate) fn cell_under(key: &str, dir: &str) -> Option<CellId> {
    key.strip_prefix(dir)?.parse().ok()
}

fn parse_cell_key(prefix: &str, key: &str) -> Option<CellId> {
    cell_under(key.strip_prefix(prefix)?, "cells/")
}

/// A local, watch-maintained copy of the cell map. Clones share it.
#[derive(Clone, Default)]
pub struct CellMap {
    cells: Arc<RwLock<HashMap<CellId, CellOwner>>>,
    /// Bumped on every change, so readers can notice changes cheaply.
    version: Arc<std::sync::atomic::AtomicU64>,
}

impl CellMap {
    /// Loads the map and keeps it current until the store's watch ends.
    pub async fn watch(
        store: Arc<dyn ClusterStore>,
        prefix: &str,
    ) -> Result<CellMap, CoordinatorError> {
        let map = CellMap::default();
        let m = map.clone();
        let p = prefix.to_string();
        follow(store, format!("{prefix}cells/"), move |f| match f {
            Follow::Snapshot(kvs) => {
                // Build the new map aside and swap it in at once: a reader
                // (a shard reconciling its cells) must never see it empty.
                let fresh = CellMap::default();
                for kv in kvs {
                    fresh.apply(&p, &WatchEvent::Put(kv));
                }
                let fresh = std::mem::take(&mut *fresh.cells.write());
                *m.cells.write() = fresh;
                m.bump();
            }
            Follow::Event(ev) => m.apply(&p, &ev),
        })
        .await?;
        Ok(map)
    }

    /// Sets one cell's owner directly (benchmarks, in-process tests).
    pub fn set(&self, cell: CellId, owner: CellOwner) {
        self.cells.write().insert(cell, owner);
        self.bump();
    }

    /// A map that never changes (benchmarks, unit tests of other crates).
    pub fn fixed(entries: impl IntoIterator<Item = (CellId, CellOwner)>) -> CellMap {
        let map = CellMap::default();
        map.cells.write().extend(entries);
        map
    }

    fn apply(&self, prefix: &str, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                let Some(cell) = parse_cell_key(prefix, &kv.key) else {
                    return;
                };
                match serde_json::from_slice::<CellOwner>(&kv.value) {
                    Ok(owner) => {
                        let mut cells = self.cells.write();
                        // Never go back to an older epoch (watch events can
                        // race with the initial list).
                        if cells.get(&cell).is_none_or(|o| o.epoch <= owner.epoch) {
                            cells.insert(cell, owner);
                            self.bump();
                        }
                    }
                    Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad cell owner value"),
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(cell) = parse_cell_key(prefix, key) {
                    self.cells.write().remove(&cell);
                    self.bump();
                }
            }
        }
    }

    fn bump(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes with every update of the map.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn owner(&self, cell: CellId) -> Option<CellOwner> {
        self.cells.read().get(&cell).cloned()
    }

    pub fn cells_of(&self, shard: &ShardId) -> Vec<(CellId, Epoch)> {
        let mut v: Vec<_> = self
            .cells
            .read()
            .iter()
            .filter(|(_, o)| &o.owner == shard)
            .map(|(c, o)| (*c, o.epoch))
            .collect();
        v.sort();
        v
    }

    pub fn all(&self) -> Vec<(CellId, CellOwner)> {
        let mut v: Vec<_> = self
            .cells
            .read()
            .iter()
            .map(|(c, o)| (*c, o.clone()))
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }
}

/// Every cell's owner, with the revision of its key (for compare-and-set).
pub async fn list_owners(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Vec<(CellId, CellOwner, i64)>, CoordinatorError> {
    let dir = format!("{prefix}cells/");
    let mut out = Vec::new();
    for kv in store.list(&dir).await? {
        let Some(cell) = cell_under(&kv.key, &dir) else {
            continue;
        };
        let owner = serde_json::from_slice::<CellOwner>(&kv.value).map_err(|e| {
            CoordinatorError::BadValue {
                key: kv.key.clone(),
                reason: e.to_string(),
            }
        })?;
        out.push((cell, owner, kv.mod_revision));
    }
    Ok(out)
}

/// Claims unowned cells for the planned shards (epoch 1). Cells that already
/// have an owner are left alone: placement never steals.
pub async fn place_unowned(
    store: &dyn ClusterStore,
    prefix: &str,
    plan: &[(CellId, ShardId)],
) -> Result<usize, CoordinatorError> {
    let mut placed = 0;
    for (cell, shard) in plan {
        let value = serde_json::to_vec(&CellOwner {
            owner: shard.clone(),
            epoch: Epoch(1),
        })
        .expect("cell owner serialises");
        if store
            .compare_and_put(&cell_key(prefix, *cell), Expect::Absent, value, None)
            .await?
            .is_some()
        {
            placed += 1;
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[tokio::test]
    async fn map_follows_store() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let a = ShardId::new("a");
        let plan = vec![
            (CellId::new(0, 0), a.clone()),
            (CellId::new(1, 0), a.clone()),
        ];
        assert_eq!(place_unowned(&*store, "/t/", &plan).await.unwrap(), 2);
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        assert_eq!(map.owner(CellId::new(0, 0)).unwrap().owner, a);
        // Placing again changes nothing.
        assert_eq!(place_unowned(&*store, "/t/", &plan).await.unwrap(), 0);
        let b = CellOwner {
            owner: ShardId::new("b"),
            epoch: Epoch(2),
        };
        store
            .put(
                &cell_key("/t/", CellId::new(1, 0)),
                serde_json::to_vec(&b).unwrap(),
                None,
            )
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(map.owner(CellId::new(1, 0)).unwrap(), b);
        assert_eq!(map.cells_of(&a), vec![(CellId::new(0, 0), Epoch(1))]);
    }
}
