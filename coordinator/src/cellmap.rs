//! The cell map: which shard owns each region of each cell, at which epoch.
//!
//! Stored as one key per cell, `<prefix>cells/<x>,<z>`, whose JSON value is
//! the cell's ownership tree ([`CellTree`]): a whole cell is
//! `{"owner": "...", "epoch": N}` (exactly what stores written before
//! regions hold), a split one `{"split": [nw, ne, sw, se]}`. A split or
//! merge is therefore one compare-and-put on one key (docs/regions.md,
//! docs/cluster-keys.md). Readers keep a local copy that a watch keeps up to
//! date.

use crate::store::{follow, ClusterStore, Expect, Follow, WatchEvent};
use crate::CoordinatorError;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::{CellId, Epoch, Grid, RegionId, RegionTree, ShardId, Vec3};

/// Owner of a region. An owner cannot be written without its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellOwner {
    pub owner: ShardId,
    pub epoch: Epoch,
}

/// The ownership of one cell: whole, or split into regions, each with its
/// owner and epoch.
pub type CellTree = RegionTree<CellOwner>;

/// The highest epoch in a cell's tree. Every change of a tree gives the
/// regions it creates or moves this plus one ([`next_epoch`]), so it grows
/// with every change and a reader can tell a newer tree from an older one.
pub fn tree_epoch(tree: &CellTree) -> Epoch {
    // The cell is only needed to name the leaves.
    tree.leaves(CellId::new(0, 0))
        .map(|(_, o)| o.epoch)
        .max()
        .unwrap_or(Epoch(0))
}

/// The epoch a change of `tree` gives the regions it creates or moves.
pub fn next_epoch(tree: &CellTree) -> Epoch {
    tree_epoch(tree).next()
}

/// Reads a cell key's value: a whole cell's owner record, or a split tree.
pub fn parse_tree(key: &str, value: &[u8]) -> Result<CellTree, CoordinatorError> {
    serde_json::from_slice(value).map_err(|e| CoordinatorError::BadValue {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// The JSON a cell key holds for `tree`.
pub fn tree_json(tree: &CellTree) -> Vec<u8> {
    serde_json::to_vec(tree).expect("a cell tree serialises")
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
    cells: Arc<RwLock<HashMap<CellId, CellTree>>>,
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

    /// Sets one whole cell's owner directly (benchmarks, in-process tests).
    pub fn set(&self, cell: CellId, owner: CellOwner) {
        self.set_tree(cell, CellTree::whole(owner));
    }

    /// Sets one cell's tree directly (benchmarks, in-process tests).
    pub fn set_tree(&self, cell: CellId, tree: CellTree) {
        self.cells.write().insert(cell, tree);
        self.bump();
    }

    /// A map that never changes (benchmarks, unit tests of other crates).
    pub fn fixed(entries: impl IntoIterator<Item = (CellId, CellOwner)>) -> CellMap {
        let map = CellMap::default();
        map.cells.write().extend(
            entries
                .into_iter()
                .map(|(cell, owner)| (cell, CellTree::whole(owner))),
        );
        map
    }

    fn apply(&self, prefix: &str, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                let Some(cell) = parse_cell_key(prefix, &kv.key) else {
                    return;
                };
                match parse_tree(&kv.key, &kv.value) {
                    Ok(tree) => {
                        let mut cells = self.cells.write();
                        // Never go back to an older tree (watch events can
                        // race with the initial list).
                        let newer = cells
                            .get(&cell)
                            .is_none_or(|old| tree_epoch(old) <= tree_epoch(&tree));
                        if newer {
                            cells.insert(cell, tree);
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

    /// The owner of `cell` while it is whole; `None` if nobody owns it or
    /// it is split into regions ([`CellMap::region_owner`],
    /// [`CellMap::owner_at`]).
    pub fn owner(&self, cell: CellId) -> Option<CellOwner> {
        self.cells.read().get(&cell)?.as_whole().cloned()
    }

    /// The ownership tree of `cell`.
    pub fn tree(&self, cell: CellId) -> Option<CellTree> {
        self.cells.read().get(&cell).cloned()
    }

    /// The owner of `region` if it is a leaf of the map (whole, not split
    /// further, and not inside a bigger leaf).
    pub fn region_owner(&self, region: RegionId) -> Option<CellOwner> {
        self.cells
            .read()
            .get(&region.cell_id())?
            .get(region)
            .cloned()
    }

    /// The leaf region that holds `pos`, and its owner.
    pub fn owner_at(&self, grid: &Grid, pos: Vec3) -> Option<(RegionId, CellOwner)> {
        let cell = grid.cell_of(pos);
        let cells = self.cells.read();
        let (region, owner) = cells.get(&cell)?.leaf_at(grid, cell, pos)?;
        Some((region, owner.clone()))
    }

    /// The whole cells `shard` owns, with their epochs. Regions of split
    /// cells are in [`CellMap::regions_of`].
    pub fn cells_of(&self, shard: &ShardId) -> Vec<(CellId, Epoch)> {
        let mut v: Vec<_> = self
            .cells
            .read()
            .iter()
            .filter_map(|(c, t)| t.as_whole().map(|o| (c, o)))
            .filter(|(_, o)| &o.owner == shard)
            .map(|(c, o)| (*c, o.epoch))
            .collect();
        v.sort();
        v
    }

    /// Every leaf region `shard` owns (whole cells included), with its
    /// epoch.
    pub fn regions_of(&self, shard: &ShardId) -> Vec<(RegionId, Epoch)> {
        let mut v: Vec<_> = self
            .all_regions()
            .into_iter()
            .filter(|(_, o)| &o.owner == shard)
            .map(|(r, o)| (r, o.epoch))
            .collect();
        v.sort();
        v
    }

    /// Every whole cell and its owner.
    pub fn all(&self) -> Vec<(CellId, CellOwner)> {
        let mut v: Vec<_> = self
            .cells
            .read()
            .iter()
            .filter_map(|(c, t)| t.as_whole().map(|o| (*c, o.clone())))
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    /// Every leaf region of the map (whole cells included) and its owner.
    pub fn all_regions(&self) -> Vec<(RegionId, CellOwner)> {
        let mut v: Vec<_> = self
            .cells
            .read()
            .iter()
            .flat_map(|(c, t)| {
                t.leaves(*c)
                    .map(|(r, o)| (r, o.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by_key(|(r, _)| *r);
        v
    }
}

/// One cell's tree as the store holds it, with its key's revision (for
/// compare-and-set).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTree {
    pub cell: CellId,
    pub tree: CellTree,
    pub mod_revision: i64,
}

impl StoredTree {
    /// The cell's owner while it is whole.
    pub fn whole(&self) -> Option<&CellOwner> {
        self.tree.as_whole()
    }
}

/// Every cell's ownership tree, with the revision of its key.
pub async fn list_trees(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Vec<StoredTree>, CoordinatorError> {
    let dir = format!("{prefix}cells/");
    let mut out = Vec::new();
    for kv in store.list(&dir).await? {
        let Some(cell) = cell_under(&kv.key, &dir) else {
            continue;
        };
        out.push(StoredTree {
            cell,
            tree: parse_tree(&kv.key, &kv.value)?,
            mod_revision: kv.mod_revision,
        });
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
        let value = tree_json(&CellTree::whole(CellOwner {
            owner: shard.clone(),
            epoch: Epoch(1),
        }));
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

    fn owner(shard: &str, epoch: u64) -> CellOwner {
        CellOwner {
            owner: ShardId::new(shard),
            epoch: Epoch(epoch),
        }
    }

    #[tokio::test]
    async fn a_value_written_before_regions_loads_as_a_whole_cell() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        // Byte for byte what the previous release wrote.
        let old = br#"{"owner":"shard-1","epoch":3}"#.to_vec();
        store.put("/t/cells/2,-1", old, None).await.unwrap();
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        let cell = CellId::new(2, -1);
        assert_eq!(map.owner(cell), Some(owner("shard-1", 3)));
        assert_eq!(
            map.regions_of(&ShardId::new("shard-1")),
            vec![(RegionId::cell(cell), Epoch(3))]
        );
        let listed = list_trees(&*store, "/t/").await.unwrap();
        assert_eq!(listed[0].whole(), Some(&owner("shard-1", 3)));
        // And a whole cell is written exactly as before.
        assert_eq!(
            tree_json(&CellTree::whole(owner("shard-1", 3))),
            br#"{"owner":"shard-1","epoch":3}"#.to_vec()
        );
    }

    #[tokio::test]
    async fn a_split_cell_names_the_owner_of_every_point() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let cell = CellId::new(0, 0);
        let mut tree = CellTree::whole(owner("a", 1));
        let epoch = next_epoch(&tree);
        let parent = RegionId::cell(cell);
        tree.split(
            parent,
            [
                owner("a", epoch.0),
                owner("b", epoch.0),
                owner("c", epoch.0),
                owner("a", epoch.0),
            ],
        )
        .unwrap();
        store
            .put(&cell_key("/t/", cell), tree_json(&tree), None)
            .await
            .unwrap();
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        let grid = Grid::new(64.0);
        let (region, o) = map.owner_at(&grid, Vec3::new(40.0, 0.0, 10.0)).unwrap();
        assert_eq!(region.to_string(), "0,0/1");
        assert_eq!(o, owner("b", 2));
        assert_eq!(map.owner(cell), None, "a split cell has no single owner");
        assert_eq!(map.cells_of(&ShardId::new("a")), vec![]);
        let regions: Vec<String> = map
            .regions_of(&ShardId::new("a"))
            .into_iter()
            .map(|(r, _)| r.to_string())
            .collect();
        assert_eq!(regions, vec!["0,0/0", "0,0/3"]);
        assert_eq!(
            map.region_owner("0,0/2".parse().unwrap()),
            Some(owner("c", 2))
        );
        assert_eq!(map.region_owner(parent), None);
    }

    #[test]
    fn the_map_never_goes_back_to_an_older_tree() {
        let map = CellMap::default();
        let cell = CellId::new(0, 0);
        let mut split = CellTree::whole(owner("a", 4));
        split
            .split(
                RegionId::cell(cell),
                [owner("a", 5), owner("b", 5), owner("a", 5), owner("a", 5)],
            )
            .unwrap();
        let put = |tree: &CellTree| {
            WatchEvent::Put(crate::store::KeyValue {
                key: "/t/cells/0,0".into(),
                value: tree_json(tree),
                mod_revision: 1,
                lease: None,
            })
        };
        map.apply("/t/", &put(&split));
        // A late event of the whole cell before the split changes nothing.
        map.apply("/t/", &put(&CellTree::whole(owner("a", 4))));
        assert_eq!(map.tree(cell), Some(split.clone()));
        // A merge (epoch 6) is newer.
        map.apply("/t/", &put(&CellTree::whole(owner("b", 6))));
        assert_eq!(map.owner(cell), Some(owner("b", 6)));
    }

    #[test]
    fn every_change_of_a_tree_raises_its_epoch() {
        let mut tree = CellTree::whole(owner("a", 1));
        let cell = RegionId::cell(CellId::new(0, 0));
        let e = next_epoch(&tree);
        tree.split(
            cell,
            [
                owner("a", e.0),
                owner("a", e.0),
                owner("a", e.0),
                owner("a", e.0),
            ],
        )
        .unwrap();
        assert_eq!(tree_epoch(&tree), Epoch(2));
        // Moving one quadrant, then another: each raises the tree's epoch.
        let [nw, ne, ..] = cell.children().unwrap();
        let e = next_epoch(&tree);
        *tree.get_mut(nw).unwrap() = owner("b", e.0);
        assert_eq!(tree_epoch(&tree), Epoch(3));
        let e = next_epoch(&tree);
        *tree.get_mut(ne).unwrap() = owner("c", e.0);
        assert_eq!(tree_epoch(&tree), Epoch(4));
    }
}
