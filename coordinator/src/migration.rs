//! Live migration of a region (a whole cell, or a region of a split one),
//! as recorded in the cluster store (`<prefix>migrations/<region>`,
//! docs/cluster-keys.md).
//!
//! 1. Someone (`tessera ctl move`, later the hot-cell detector) creates the
//!    key: `{from, to, epoch: current + 1, state: "requested"}`.
//! 2. The source shard, at its next tick boundary, freezes the cell: it
//!    extracts every entity and ships them to the target in one
//!    `ToShard::CellSnapshot`, stops simulating the cell and forwards
//!    anything for those entities to the target.
//! 3. The target keeps the snapshot (not simulating yet: it is not the
//!    owner), defers messages for its entities, and sets the state to
//!    `"restored"`.
//! 4. The leading coordinator flips the owner to the target with the new
//!    epoch in one compare-and-set and deletes the migration key.
//! 5. The target sees it owns the cell, opens it from the snapshot, replays
//!    the deferred messages and tells routers (`OwnerChanged`).
//!
//! The stall, from the source's last tick of the cell to the target's first,
//! is measured by the target (`tessera_shard_migration_stall_seconds`).

use crate::authority::{Authority, ClusterTrust, Signer};
use crate::cellmap::CellOwner;
use crate::operators::OPERATOR_REFRESH;
use crate::store::{follow, ClusterStore, Expect, Follow, WatchEvent};
use crate::CoordinatorError;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::{Epoch, RegionId, ShardId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    Requested,
    Restored,
    /// The coordinator gave up on it: the owner will not flip for this
    /// epoch, so the source takes the cell back and the target forgets its
    /// snapshot. Deleted a few seconds later.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub from: ShardId,
    pub to: ShardId,
    /// The epoch the target will own the region at: the cell tree's
    /// highest epoch plus one when it was requested (docs/regions.md).
    pub epoch: Epoch,
    pub state: MigrationState,
    /// When it was requested (unix milliseconds).
    pub requested_unix_ms: u64,
    /// Who asked, and the proof ([`crate::authority`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<Authority>,
    /// When the coordinator cancelled it (unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_unix_ms: Option<u64>,
}

/// `draining/<shard>`: the shard is being drained (cordoned). The
/// rebalancer neither gives it cells nor moves its cells; the shard deletes
/// the key when it starts again.
pub fn draining_key(prefix: &str, shard: &ShardId) -> String {
    format!("{prefix}draining/{shard}")
}

/// The value of a `draining/<shard>` key: who cordoned the shard, when, and their signature
/// over [`cordon_message`] (the coordinator ignores a cordon that does not verify).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cordon {
    pub since_unix_ms: u64,
    pub by: String,
    #[serde(default)]
    pub authority: Option<Authority>,
}

/// The bytes a cordon's signer signs.
pub fn cordon_message(prefix: &str, shard: &ShardId, since_unix_ms: u64, by: &str) -> Vec<u8> {
    format!("tessera-drain/1|{prefix}|{shard}|{since_unix_ms}|{by}").into_bytes()
}

impl Cordon {
    /// A cordon of `shard` by `signer`, now.
    pub fn new(prefix: &str, shard: &ShardId, signer: &Signer) -> Cordon {
        let since_unix_ms = now_unix_ms();
        Cordon {
            since_unix_ms,
            by: signer.by().to_string(),
            authority: Some(signer.sign_bytes(&cordon_message(
                prefix,
                shard,
                since_unix_ms,
                signer.by(),
            ))),
        }
    }

    /// Checks the signature (reading an operator the cached view does not know).
    pub async fn verify(
        &self,
        key: &ClusterTrust,
        prefix: &str,
        shard: &ShardId,
    ) -> Result<(), crate::authority::AuthorityError> {
        let auth = self
            .authority
            .as_ref()
            .ok_or(crate::authority::AuthorityError::Unsigned)?;
        if auth.by != self.by {
            return Err(crate::authority::AuthorityError::BadSignature(
                auth.by.clone(),
            ));
        }
        key.verify_bytes_now(
            auth,
            &cordon_message(prefix, shard, self.since_unix_ms, &self.by),
        )
        .await
    }
}

pub fn migration_key(prefix: &str, region: RegionId) -> String {
    format!("{prefix}migrations/{region}")
}

/// The region a key names, if the key is `<dir><region>`.
pub(crate) fn region_under(key: &str, dir: &str) -> Option<RegionId> {
    key.strip_prefix(dir)?.parse().ok()
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A watch-maintained copy of the migrations in flight. Clones share it.
#[derive(Clone, Default)]
pub struct MigrationBoard {
    entries: Arc<RwLock<HashMap<RegionId, Migration>>>,
    /// Requests signed by an operator the cached view does not know yet (added a moment
    /// ago): checked again against the store every [`OPERATOR_REFRESH`] until they verify or
    /// go away.
    pending: Arc<RwLock<HashMap<RegionId, Migration>>>,
}

impl MigrationBoard {
    /// Follows `migrations/`. With `key`, requests that do not verify
    /// ([`ClusterTrust::verify`]) are left off the board, with a log line.
    pub async fn watch(
        store: Arc<dyn ClusterStore>,
        prefix: &str,
        key: Option<ClusterTrust>,
    ) -> Result<MigrationBoard, CoordinatorError> {
        let board = MigrationBoard::default();
        let b = board.clone();
        let dir = format!("{prefix}migrations/");
        let d = dir.clone();
        let p = prefix.to_string();
        let check = key.clone();
        follow(store, dir, move |f| {
            // A request on the board, in `pending` (an operator not known yet), or neither.
            let parse = |kv: &crate::store::KeyValue| -> Option<(RegionId, Migration, bool)> {
                let cell = region_under(&kv.key, &d)?;
                let m: Migration = serde_json::from_slice(&kv.value).ok()?;
                if let Some(key) = &check {
                    if let Err(e) = key.verify(&p, cell, &m) {
                        let by_operator = m
                            .authority
                            .as_ref()
                            .is_some_and(|a| a.by.starts_with("operator:"));
                        if by_operator {
                            return Some((cell, m, false));
                        }
                        tracing::warn!(cell = %cell, from = %m.from, to = %m.to, error = %e, "migration request ignored");
                        return None;
                    }
                }
                Some((cell, m, true))
            };
            match f {
                Follow::Snapshot(kvs) => {
                    let (mut fresh, mut pending) = (HashMap::new(), HashMap::new());
                    for (cell, m, ok) in kvs.iter().filter_map(parse) {
                        if ok {
                            fresh.insert(cell, m);
                        } else {
                            pending.insert(cell, m);
                        }
                    }
                    *b.entries.write() = fresh;
                    *b.pending.write() = pending;
                }
                Follow::Event(WatchEvent::Put(kv)) => match parse(&kv) {
                    Some((cell, m, true)) => {
                        b.pending.write().remove(&cell);
                        b.entries.write().insert(cell, m);
                    }
                    Some((cell, m, false)) => {
                        b.entries.write().remove(&cell);
                        b.pending.write().insert(cell, m);
                    }
                    None => {
                        if let Some(cell) = region_under(&kv.key, &d) {
                            b.entries.write().remove(&cell);
                            b.pending.write().remove(&cell);
                        }
                    }
                },
                Follow::Event(WatchEvent::Delete { key, .. }) => {
                    if let Some(cell) = region_under(&key, &d) {
                        b.entries.write().remove(&cell);
                        b.pending.write().remove(&cell);
                    }
                }
            }
        })
        .await?;
        if let Some(key) = key {
            board.recheck_pending(key, prefix.to_string());
        }
        Ok(board)
    }

    /// Every [`OPERATOR_REFRESH`], checks the pending requests against the store again and
    /// puts those that verify on the board (until the board is dropped).
    fn recheck_pending(&self, key: ClusterTrust, prefix: String) {
        let weak = Arc::downgrade(&self.pending);
        let entries = Arc::downgrade(&self.entries);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OPERATOR_REFRESH).await;
                let (Some(pending), Some(entries)) = (weak.upgrade(), entries.upgrade()) else {
                    return;
                };
                let waiting: Vec<(RegionId, Migration)> = pending
                    .read()
                    .iter()
                    .map(|(c, m)| (*c, m.clone()))
                    .collect();
                for (cell, m) in waiting {
                    match key.verify_now(&prefix, cell, &m).await {
                        Ok(()) => {
                            let mut p = pending.write();
                            // Unless the request changed meanwhile.
                            if p.get(&cell) == Some(&m) {
                                p.remove(&cell);
                                entries.write().insert(cell, m);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(cell = %cell, error = %e, "migration request still not verified");
                        }
                    }
                }
            }
        });
    }

    /// Sets an entry directly (tests, single-process use).
    pub fn set(&self, cell: RegionId, m: Migration) {
        self.entries.write().insert(cell, m);
    }

    pub fn remove(&self, cell: RegionId) {
        self.entries.write().remove(&cell);
    }

    /// Cancelled migrations from or to `shard`.
    pub fn cancelled(&self, shard: &ShardId) -> Vec<(RegionId, Migration)> {
        self.entries
            .read()
            .iter()
            .filter(|(_, m)| {
                m.state == MigrationState::Cancelled && (&m.from == shard || &m.to == shard)
            })
            .map(|(c, m)| (*c, m.clone()))
            .collect()
    }

    /// Requested migrations out of `shard`.
    pub fn outgoing(&self, shard: &ShardId) -> Vec<(RegionId, Migration)> {
        self.entries
            .read()
            .iter()
            .filter(|(_, m)| &m.from == shard && m.state == MigrationState::Requested)
            .map(|(c, m)| (*c, m.clone()))
            .collect()
    }

    pub fn get(&self, cell: RegionId) -> Option<Migration> {
        self.entries.read().get(&cell).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("cell {0} is not in the cluster map")]
    UnknownCell(tessera_proto::CellId),
    #[error("region {region} is not a region of the map: {why}")]
    NotARegion { region: RegionId, why: String },
    #[error("shard {0} is not registered (is it running?)")]
    UnknownShard(ShardId),
    #[error("region {cell} is already owned by {shard}")]
    AlreadyThere { cell: RegionId, shard: ShardId },
    #[error("region {0} is already migrating")]
    InProgress(RegionId),
    #[error(transparent)]
    Cluster(#[from] CoordinatorError),
}

/// The owner of `region` if it is a leaf of its cell's tree, else why not.
pub fn leaf_owner(tree: &crate::cellmap::CellTree, region: RegionId) -> Result<CellOwner, String> {
    if let Some(owner) = tree.get(region) {
        return Ok(owner.clone());
    }
    Err(match tree.leaf_containing(region) {
        Some((leaf, _)) => format!("it is inside region {leaf}, which is not split"),
        None => "it is split; name one of its regions (tessera ctl cells)".into(),
    })
}

/// Requests a move of `cell` (a whole cell or a region of a split one) to
/// `to` (what `tessera ctl move` does), signed by `signer`.
pub async fn request_move(
    store: &dyn ClusterStore,
    prefix: &str,
    cell: impl Into<RegionId>,
    to: &ShardId,
    signer: &Signer,
) -> Result<Migration, MoveError> {
    let cell: RegionId = cell.into();
    let Some(kv) = store
        .get(&crate::cellmap::cell_key(prefix, cell.cell_id()))
        .await
        .map_err(CoordinatorError::from)?
    else {
        return Err(MoveError::UnknownCell(cell.cell_id()));
    };
    let tree = crate::cellmap::parse_tree(&kv.key, &kv.value)?;
    let owner =
        leaf_owner(&tree, cell).map_err(|why| MoveError::NotARegion { region: cell, why })?;
    let epoch = crate::cellmap::next_epoch(&tree);
    if &owner.owner == to {
        return Err(MoveError::AlreadyThere {
            cell,
            shard: to.clone(),
        });
    }
    let live = crate::membership::live_shards(store, prefix).await?;
    if !live.iter().any(|(id, _)| id == to) {
        return Err(MoveError::UnknownShard(to.clone()));
    }
    let mut m = Migration {
        from: owner.owner,
        to: to.clone(),
        epoch,
        state: MigrationState::Requested,
        requested_unix_ms: now_unix_ms(),
        authority: None,
        cancelled_unix_ms: None,
    };
    m.authority = Some(signer.sign(prefix, cell, &m));
    let value = serde_json::to_vec(&m).expect("migration serialises");
    let put = store
        .compare_and_put(&migration_key(prefix, cell), Expect::Absent, value, None)
        .await
        .map_err(CoordinatorError::from)?;
    match put {
        Some(_) => Ok(m),
        None => Err(MoveError::InProgress(cell)),
    }
}

/// Marks a migration restored (the target holds the snapshot). Only moves
/// `Requested` -> `Restored` for the same target and epoch.
pub async fn mark_restored(
    store: &dyn ClusterStore,
    prefix: &str,
    cell: RegionId,
    to: &ShardId,
    epoch: Epoch,
) -> Result<bool, CoordinatorError> {
    let key = migration_key(prefix, cell);
    let Some(kv) = store.get(&key).await? else {
        return Ok(false);
    };
    let Ok(mut m) = serde_json::from_slice::<Migration>(&kv.value) else {
        return Ok(false);
    };
    if &m.to != to || m.epoch != epoch || m.state != MigrationState::Requested {
        return Ok(false);
    }
    m.state = MigrationState::Restored;
    let value = serde_json::to_vec(&m).expect("migration serialises");
    Ok(store
        .compare_and_put(&key, Expect::ModRevision(kv.mod_revision), value, None)
        .await?
        .is_some())
}

/// Lifts the drain mark of `shard`, so the rebalancer may give it cells again; whether there
/// was one (`tessera ctl uncordon`).
pub async fn uncordon(
    store: &dyn ClusterStore,
    prefix: &str,
    shard: &ShardId,
) -> Result<bool, CoordinatorError> {
    let key = draining_key(prefix, shard);
    let was = store.get(&key).await?.is_some();
    if was {
        store.delete(&key).await?;
    }
    Ok(was)
}

/// Moves every cell of `shard` to the other live shards (fewest cells
/// first) and waits until `shard` owns none, up to `timeout`. This is the
/// graceful drain: SIGTERM on a shard, or `tessera ctl drain`. Returns the
/// number of cells moved.
pub async fn drain(
    store: &dyn ClusterStore,
    prefix: &str,
    shard: &ShardId,
    timeout: std::time::Duration,
    signer: &Signer,
) -> Result<usize, DrainError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // A shard that is not registered (a typo, one long gone) has nothing to drain, and a drain
    // mark for it would cordon whichever shard takes the name next.
    let registered = store
        .get(&crate::membership::shard_key(prefix, shard))
        .await
        .map_err(CoordinatorError::from)?;
    if registered.is_none() {
        return Err(DrainError::UnknownShard(shard.clone()));
    }
    // Cordon first, so the rebalancer does not hand the shard cells back.
    let cordon = Cordon::new(prefix, shard, signer);
    store
        .put(
            &draining_key(prefix, shard),
            serde_json::to_vec(&cordon).expect("a cordon serializes"),
            None,
        )
        .await
        .map_err(CoordinatorError::from)?;
    let mut moved = std::collections::HashSet::new();
    loop {
        let owners = region_owners(store, prefix).await?;
        let mine: Vec<RegionId> = owners
            .iter()
            .filter(|(_, o)| &o.owner == shard)
            .map(|(c, _)| *c)
            .collect();
        if mine.is_empty() {
            return Ok(moved.len());
        }
        let mut load: HashMap<ShardId, usize> = crate::membership::live_shards(store, prefix)
            .await?
            .into_iter()
            .filter(|(id, _)| id != shard)
            .map(|(id, _)| (id, 0))
            .collect();
        if load.is_empty() {
            return Err(DrainError::NowhereToGo(shard.clone()));
        }
        for o in owners.values() {
            if let Some(n) = load.get_mut(&o.owner) {
                *n += 1;
            }
        }
        for cell in &mine {
            let target = load
                .iter()
                .min_by_key(|(id, n)| (**n, (*id).clone()))
                .map(|(id, _)| id.clone())
                .expect("load is not empty");
            match request_move(store, prefix, *cell, &target, signer).await {
                Ok(_) => {
                    moved.insert(*cell);
                    *load.entry(target).or_default() += 1;
                }
                Err(MoveError::InProgress(_)) => {}
                Err(MoveError::Cluster(e)) => return Err(e.into()),
                Err(e) => tracing::warn!(cell = %cell, error = %e, "drain: cannot move cell yet"),
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DrainError::Timeout {
                shard: shard.clone(),
                left: mine.len(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every leaf region of the map and its owner.
async fn region_owners(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<HashMap<RegionId, CellOwner>, CoordinatorError> {
    Ok(crate::cellmap::list_trees(store, prefix)
        .await?
        .into_iter()
        .flat_map(|t| {
            t.tree
                .leaves(t.cell)
                .map(|(r, o)| (r, o.clone()))
                .collect::<Vec<_>>()
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("there is no live shard called {0} (`tessera ctl shards` lists them)")]
    UnknownShard(ShardId),
    #[error("no other live shard to take the cells of {0}")]
    NowhereToGo(ShardId),
    #[error("{shard} still owns {left} cells after the drain timeout")]
    Timeout { shard: ShardId, left: usize },
    #[error(transparent)]
    Cluster(#[from] CoordinatorError),
}
