//! Splits and merges of regions (docs/regions.md), as requested in the
//! cluster store and carried out by the leading coordinator, the only
//! writer of the cell map.
//!
//! `<prefix>reshapes/<region>` holds a [`Reshape`]: `{"op": "split" |
//! "merge", "requested_unix_ms", "authority", "to"}`. `tessera ctl split`,
//! `ctl merge` and the rebalancer create it (compare-and-put on absence:
//! one reshape per region at a time). The leading coordinator checks the
//! authority (an operator's credential or a member's signature, like a
//! migration's: the process that changes the map checks, whoever asked),
//! then:
//!
//! - **split**: if `region` is still a leaf, replaces it by four leaves of
//!   the same owner at the tree's next epoch, in one compare-and-put on the
//!   cell key, and deletes the request. The owner re-partitions its entities
//!   at its next tick; moving a quadrant elsewhere is then a migration.
//! - **merge**: while `region`'s four quadrants are leaves, asks for the
//!   migration of each quadrant not on `to` (the shard that owns most of
//!   them); once all four are on `to`, replaces them by one leaf at the
//!   tree's next epoch and deletes the request.
//!
//! A request whose region no longer has the shape its operation needs, or
//! that is older than [`RESHAPE_TIMEOUT`], is deleted: the signature covers
//! the request time, so a captured request cannot be replayed later.

use crate::authority::{Authority, ClusterTrust, Signer};
use crate::cellmap::{cell_key, next_epoch, parse_tree, tree_json, CellOwner, CellTree};
use crate::migration::now_unix_ms;
use crate::store::{ClusterStore, Expect};
use crate::CoordinatorError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_proto::{Grid, RegionId, ShardId};

/// How long a reshape request may wait to be carried out.
pub const RESHAPE_TIMEOUT_MS: u64 = 60_000;

/// The smallest region side a split may produce, metres, by default.
pub const MIN_REGION_SIDE: f32 = 8.0;

/// The deepest level a cell of side `cell_size` may be split to without
/// going below `min_side`.
pub fn max_depth(cell_size: f32, min_side: f32) -> u8 {
    let mut depth = 0u8;
    let mut side = cell_size;
    while side / 2.0 >= min_side - 1e-3 && depth < tessera_proto::region::MAX_DEPTH {
        side /= 2.0;
        depth += 1;
    }
    depth
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReshapeOp {
    Split,
    Merge,
}

impl std::fmt::Display for ReshapeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReshapeOp::Split => "split",
            ReshapeOp::Merge => "merge",
        })
    }
}

/// A request to split or merge a region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reshape {
    pub op: ReshapeOp,
    /// For a merge, the shard the merged region goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ShardId>,
    pub requested_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<Authority>,
}

pub fn reshape_key(prefix: &str, region: RegionId) -> String {
    format!("{prefix}reshapes/{region}")
}

/// The canonical bytes a reshape request's authority signs.
fn message(prefix: &str, region: RegionId, r: &Reshape, by: &str) -> Vec<u8> {
    let to = r.to.as_ref().map(|s| s.0.as_str()).unwrap_or("");
    format!(
        "tessera-reshape/1|{prefix}|{region}|{}|{to}|{}|{by}",
        r.op, r.requested_unix_ms
    )
    .into_bytes()
}

pub fn sign(signer: &Signer, prefix: &str, region: RegionId, r: &Reshape) -> Authority {
    signer.sign_bytes(&message(prefix, region, r, signer.by()))
}

pub async fn verify(
    key: &ClusterTrust,
    prefix: &str,
    region: RegionId,
    r: &Reshape,
) -> Result<(), crate::authority::AuthorityError> {
    let auth = r
        .authority
        .as_ref()
        .ok_or(crate::authority::AuthorityError::Unsigned)?;
    key.verify_bytes_now(auth, &message(prefix, region, r, &auth.by))
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum ReshapeError {
    #[error("cell {0} is not in the cluster map")]
    UnknownCell(tessera_proto::CellId),
    #[error("region {region} cannot be split: {why}")]
    CannotSplit { region: RegionId, why: String },
    #[error("region {region} cannot be merged: {why}")]
    CannotMerge { region: RegionId, why: String },
    #[error("region {0} already has a split or merge in progress")]
    InProgress(RegionId),
    #[error(transparent)]
    Cluster(#[from] CoordinatorError),
}

/// Why `region` of `tree` cannot be split now (`None`: it can).
pub fn why_not_split(
    tree: &CellTree,
    grid: &Grid,
    region: RegionId,
    min_side: f32,
) -> Option<String> {
    if tree.get(region).is_none() {
        return Some(match tree.leaf_containing(region) {
            Some((leaf, _)) => format!("it is inside region {leaf}; split that first"),
            None => "it is already split".into(),
        });
    }
    if region.children().is_none() || region.side(grid) / 2.0 < min_side - 1e-3 {
        return Some(format!(
            "its quadrants would be narrower than the minimum side of {min_side} m"
        ));
    }
    None
}

/// Every leaf under `region` with its owner, if `region` is split (to any
/// depth: a merge collapses the whole subtree in one step), else why not.
pub fn mergeable(tree: &CellTree, region: RegionId) -> Result<Vec<(RegionId, CellOwner)>, String> {
    if region.children().is_none() {
        return Err("it has no quadrants".into());
    }
    if tree.get(region).is_some() {
        return Err("it is not split".into());
    }
    let leaves: Vec<(RegionId, CellOwner)> = tree
        .leaves(region.cell_id())
        .filter(|(r, _)| region.contains(*r) && *r != region)
        .map(|(r, o)| (r, o.clone()))
        .collect();
    if leaves.is_empty() {
        return Err("it lies inside a leaf of the map".into());
    }
    Ok(leaves)
}

/// The shard that owns most of `leaves` (ties: the lowest id).
pub fn merge_target(leaves: &[(RegionId, CellOwner)]) -> ShardId {
    let mut count: BTreeMap<&ShardId, usize> = BTreeMap::new();
    for (_, o) in leaves {
        *count.entry(&o.owner).or_default() += 1;
    }
    let best = count.values().copied().max().unwrap_or(0);
    count
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(s, _)| s.clone())
        .expect("a merge has leaves")
}

async fn read_tree(
    store: &dyn ClusterStore,
    prefix: &str,
    region: RegionId,
) -> Result<CellTree, ReshapeError> {
    let Some(kv) = store
        .get(&cell_key(prefix, region.cell_id()))
        .await
        .map_err(CoordinatorError::from)?
    else {
        return Err(ReshapeError::UnknownCell(region.cell_id()));
    };
    Ok(parse_tree(&kv.key, &kv.value)?)
}

async fn put_request(
    store: &dyn ClusterStore,
    prefix: &str,
    region: RegionId,
    mut r: Reshape,
    signer: &Signer,
) -> Result<Reshape, ReshapeError> {
    r.authority = Some(sign(signer, prefix, region, &r));
    let value = serde_json::to_vec(&r).expect("a reshape serialises");
    let put = store
        .compare_and_put(&reshape_key(prefix, region), Expect::Absent, value, None)
        .await
        .map_err(CoordinatorError::from)?;
    match put {
        Some(_) => Ok(r),
        None => Err(ReshapeError::InProgress(region)),
    }
}

/// Requests a split of `region` (what `tessera ctl split` does). The
/// leading coordinator checks the minimum side (it knows the cell size).
pub async fn request_split(
    store: &dyn ClusterStore,
    prefix: &str,
    region: RegionId,
    signer: &Signer,
) -> Result<Reshape, ReshapeError> {
    let tree = read_tree(store, prefix, region).await?;
    // Any cell size will do for the shape; the side is checked by the leader.
    if let Some(why) = why_not_split(&tree, &Grid::new(1.0), region, 0.0) {
        return Err(ReshapeError::CannotSplit { region, why });
    }
    let r = Reshape {
        op: ReshapeOp::Split,
        to: None,
        requested_unix_ms: now_unix_ms(),
        authority: None,
    };
    put_request(store, prefix, region, r, signer).await
}

/// Requests a merge of `region`'s four quadrants (what `tessera ctl merge`
/// does), onto `to` or the shard that owns most of them.
pub async fn request_merge(
    store: &dyn ClusterStore,
    prefix: &str,
    region: RegionId,
    to: Option<ShardId>,
    signer: &Signer,
) -> Result<Reshape, ReshapeError> {
    let tree = read_tree(store, prefix, region).await?;
    let quadrants =
        mergeable(&tree, region).map_err(|why| ReshapeError::CannotMerge { region, why })?;
    let r = Reshape {
        op: ReshapeOp::Merge,
        to: Some(to.unwrap_or_else(|| merge_target(&quadrants))),
        requested_unix_ms: now_unix_ms(),
        authority: None,
    };
    put_request(store, prefix, region, r, signer).await
}

/// What the leader did with one request this round.
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// The map changed: split or merged.
    Done,
    /// Waiting for migrations of quadrants to the merge target.
    Gathering { moving: usize },
    /// Deleted without a change: why.
    Dropped(String),
}

/// The new tree for a split of `region` (its owner keeps all four
/// quadrants), or `None` if `region` is not a leaf of `tree`.
pub fn split_tree(tree: &CellTree, region: RegionId) -> Option<CellTree> {
    let owner = tree.get(region)?.clone();
    let epoch = next_epoch(tree);
    let q = CellOwner {
        owner: owner.owner,
        epoch,
    };
    let mut t = tree.clone();
    t.split(region, [q.clone(), q.clone(), q.clone(), q]).ok()?;
    Some(t)
}

/// The new tree for a merge of every leaf under `region` onto `to`, if
/// `to` owns them all.
pub fn merge_tree(tree: &CellTree, region: RegionId, to: &ShardId) -> Option<CellTree> {
    let leaves = mergeable(tree, region).ok()?;
    if leaves.iter().any(|(_, o)| &o.owner != to) {
        return None;
    }
    let mut t = tree.clone();
    t.collapse(
        region,
        CellOwner {
            owner: to.clone(),
            epoch: next_epoch(tree),
        },
    )
    .ok()?;
    Some(t)
}

/// One reshape request as the leader finds it.
pub struct Pending {
    pub region: RegionId,
    pub reshape: Reshape,
    pub key: String,
}

/// Carries out one request against the cell's current tree (`tree` at
/// `rev`). `member` signs the migrations a merge needs; `live` are the
/// registered shards.
pub async fn carry_out(
    store: &dyn ClusterStore,
    prefix: &str,
    key: Option<&ClusterTrust>,
    p: &Pending,
    tree: &CellTree,
    rev: i64,
    live: &[ShardId],
    member: &Signer,
) -> Result<Progress, CoordinatorError> {
    let region = p.region;
    let r = &p.reshape;
    let drop = |why: String| async move {
        store.delete(&p.key).await?;
        Ok::<Progress, CoordinatorError>(Progress::Dropped(why))
    };
    if let Some(key) = key {
        if let Err(e) = verify(key, prefix, region, r).await {
            return drop(format!("refused: {e}")).await;
        }
    }
    if now_unix_ms().saturating_sub(r.requested_unix_ms) > RESHAPE_TIMEOUT_MS {
        return drop("timed out".into()).await;
    }
    let cell = cell_key(prefix, region.cell_id());
    // Writes the new tree in place of the one read (`rev`) and drops the
    // request; a lost race (the map changed meanwhile) waits for the next
    // round, which reads the new map.
    let flip = |new: CellTree| async move {
        let done = store
            .compare_and_put(&cell, Expect::ModRevision(rev), tree_json(&new), None)
            .await?
            .is_some();
        if !done {
            return Ok::<Progress, CoordinatorError>(Progress::Gathering { moving: 0 });
        }
        store.delete(&p.key).await?;
        Ok(Progress::Done)
    };
    match r.op {
        ReshapeOp::Split => {
            let Some(new) = split_tree(tree, region) else {
                return drop("the region is no longer a leaf of the map".into()).await;
            };
            flip(new).await
        }
        ReshapeOp::Merge => {
            let Some(to) = r.to.clone() else {
                return drop("a merge request without a target".into()).await;
            };
            let leaves = match mergeable(tree, region) {
                Ok(l) => l,
                Err(why) => return drop(why).await,
            };
            if !live.contains(&to) {
                return drop(format!("the merge target {to} is not registered")).await;
            }
            if let Some(new) = merge_tree(tree, region, &to) {
                return flip(new).await;
            }
            // One region at a time: a migration takes the cell tree's next
            // epoch, so two in one cell at once would leave the second
            // stale when the first flips (it is cancelled, and a region
            // already shipped is taken back).
            let away: Vec<&(RegionId, CellOwner)> =
                leaves.iter().filter(|(_, o)| o.owner != to).collect();
            let moving = away.len();
            for (q, _) in &away {
                if store
                    .get(&crate::migration::migration_key(prefix, *q))
                    .await
                    .map_err(CoordinatorError::from)?
                    .is_some()
                {
                    return Ok(Progress::Gathering { moving });
                }
            }
            if let Some((q, o)) = away.first() {
                match crate::migration::request_move(store, prefix, *q, &to, member).await {
                    Ok(_) => {
                        tracing::info!(region = %q, from = %o.owner, to = %to, "merge: moving a region to the merge target")
                    }
                    Err(crate::migration::MoveError::Cluster(e)) => return Err(e),
                    Err(e) => {
                        tracing::debug!(region = %q, error = %e, "merge: region not moved yet")
                    }
                }
            }
            Ok(Progress::Gathering { moving })
        }
    }
}

/// Every reshape request in the store (bad values are deleted).
pub async fn list(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Vec<Pending>, CoordinatorError> {
    let dir = format!("{prefix}reshapes/");
    let mut out = Vec::new();
    for kv in store.list(&dir).await? {
        let parsed = crate::migration::region_under(&kv.key, &dir)
            .zip(serde_json::from_slice::<Reshape>(&kv.value).ok());
        match parsed {
            Some((region, reshape)) => out.push(Pending {
                region,
                reshape,
                key: kv.key,
            }),
            None => {
                tracing::warn!(key = %kv.key, "bad reshape request; removing it");
                store.delete(&kv.key).await?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_side_bounds_the_depth() {
        assert_eq!(max_depth(64.0, 8.0), 3);
        assert_eq!(max_depth(64.0, 10.0), 2);
        assert_eq!(max_depth(64.0, 64.0), 0);
        assert_eq!(max_depth(64.0, 100.0), 0);
        assert_eq!(max_depth(64.0, 0.01), tessera_proto::region::MAX_DEPTH);
    }

    fn owner(shard: &str, epoch: u64) -> CellOwner {
        CellOwner {
            owner: ShardId::new(shard),
            epoch: tessera_proto::Epoch(epoch),
        }
    }

    /// A merge takes every leaf under the region, however deep, and
    /// flips only once one shard holds them all.
    #[test]
    fn a_merge_collapses_the_whole_subtree_once_one_shard_holds_it() {
        let r = |t: &str| t.parse::<RegionId>().unwrap();
        let mut tree = CellTree::whole(owner("a", 1));
        tree.split(
            r("0,0"),
            [owner("a", 2), owner("b", 2), owner("a", 2), owner("a", 2)],
        )
        .unwrap();
        tree.split(
            r("0,0/0"),
            [owner("a", 3), owner("b", 3), owner("a", 3), owner("a", 3)],
        )
        .unwrap();
        let leaves = mergeable(&tree, r("0,0")).unwrap();
        assert_eq!(leaves.len(), 7);
        assert_eq!(merge_target(&leaves), ShardId::new("a"));
        assert_eq!(mergeable(&tree, r("0,0/0")).unwrap().len(), 4);
        assert_eq!(mergeable(&tree, r("0,0/1")).unwrap_err(), "it is not split");
        assert_eq!(
            mergeable(&tree, r("0,0/1/2")).unwrap_err(),
            "it lies inside a leaf of the map"
        );
        // b still holds two of them: no flip yet.
        assert!(merge_tree(&tree, r("0,0"), &ShardId::new("a")).is_none());
        *tree.get_mut(r("0,0/1")).unwrap() = owner("a", 4);
        *tree.get_mut(r("0,0/0/1")).unwrap() = owner("a", 5);
        let merged = merge_tree(&tree, r("0,0"), &ShardId::new("a")).unwrap();
        assert_eq!(merged, CellTree::whole(owner("a", 6)));
    }
}
