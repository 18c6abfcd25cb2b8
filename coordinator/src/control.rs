//! The coordinator's control loop: leader election, then placing cells on
//! live shards. Run several coordinators; one leads (`coordinator/leader`
//! under its lease), the others wait and take over when its lease expires.
//!
//! Placement, as leader, every `interval`:
//! - cells nobody owns go to live shards (X stripes over the live shards);
//!   the first placement waits `settle` after the first shard appears, so
//!   shards starting together share the world;
//! - cells owned by a shard that is no longer registered (its lease
//!   expired) are reassigned to a live shard with the next epoch, by
//!   compare-and-set on the cell key's revision.
//!
//! Rebalancing, as leader, once every cell is placed and at most once a
//! second (load reports come every second): the [`Rebalancer`] (see
//! `rebalance.rs` for its rules) plans moves from the cell map, the live
//! shards, their load reports and the migrations in flight, and each move
//! is requested like `tessera ctl move` does ([`migration::request_move`]).

use crate::cellmap::{
    cell_key, list_trees, next_epoch, tree_json, CellOwner, CellTree, StoredTree,
};
use crate::membership::live_shards;
use crate::migration::{self, Migration, MigrationState};
use crate::placement;
use crate::rebalance::{ClusterView, InFlight, RebalanceConfig, Rebalancer, ShardView};
use crate::store::{ClusterStore, Expect};
use crate::CoordinatorError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::{CellId, Epoch, ShardId};

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub id: String,
    pub prefix: String,
    /// Every cell of the world.
    pub cells: Vec<CellId>,
    pub lease_ttl: Duration,
    pub interval: Duration,
    pub settle: Duration,
    /// Checks who asked for each migration; `None` trusts every request
    /// (single-process use).
    pub authority: Option<crate::authority::ClusterTrust>,
    /// Move cells to relieve overloaded shards and fill joining ones;
    /// `None` turns the rebalancer off.
    pub rebalance: Option<RebalanceConfig>,
    /// The world's grid: how big a region is, for the minimum side.
    pub grid: tessera_proto::Grid,
    /// No split makes regions narrower than this, metres.
    pub min_region_side: f32,
    /// While leading, watch every member over the cluster bus and revoke the lease of one
    /// that is dead ([`crate::liveness`]); `None` leaves dead members to their lease TTL.
    pub liveness: Option<crate::liveness::LivenessConfig>,
}

/// How often the leader plans moves (shards report load every second).
pub const REBALANCE_EVERY: Duration = Duration::from_secs(1);

/// The leader key's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leader {
    pub id: String,
    pub since_unix: u64,
}

pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}coordinator/leader")
}

/// Runs until `shutdown` resolves; gives up leadership on the way out.
///
/// The leading loop runs as a task of its own. If it panics, the leader lease is revoked at
/// once, so a standby takes over within its campaign interval rather than after the lease
/// TTL, and the panic goes on unwinding out of `run` (the process exits non-zero).
pub async fn run(
    config: CoordinatorConfig,
    store: Arc<dyn ClusterStore>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    tokio::pin!(shutdown);
    loop {
        let lease = tokio::select! {
            l = campaign(&config, &*store) => l?,
            _ = &mut shutdown => return Ok(()),
        };
        tracing::info!(coordinator = %config.id, "became leader");
        let watchdog = config.liveness.clone().map(|l| {
            crate::liveness::WatchdogGuard::spawn(store.clone(), config.prefix.clone(), l)
        });
        let mut leading = tokio::spawn({
            let (config, store) = (config.clone(), store.clone());
            async move { lead(&config, &*store, lease).await }
        });
        let lost = tokio::select! {
            r = &mut leading => match r {
                Ok(r) => r,
                Err(died) => {
                    // Nobody leads while this lease stands: give it up now.
                    let _ = store.revoke(lease).await;
                    drop(watchdog);
                    tracing::error!(coordinator = %config.id, error = %died, "the leading loop died; leader lease revoked");
                    metrics::counter!("tessera_coordinator_leading_deaths_total").increment(1);
                    match died.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(cancelled) => panic!("the leading loop was cancelled: {cancelled}"),
                    }
                }
            },
            _ = &mut shutdown => {
                // Stopped before the lease goes, so nothing is written after it.
                leading.abort();
                let _ = leading.await;
                let _ = store.revoke(lease).await;
                tracing::info!(coordinator = %config.id, "stepped down");
                return Ok(());
            }
        };
        drop(watchdog);
        if let Err(e) = lost {
            tracing::error!(coordinator = %config.id, error = %e, "lost leadership");
        }
    }
}

/// Waits until this coordinator holds the leader key.
async fn campaign(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
) -> Result<i64, CoordinatorError> {
    let key = leader_key(&config.prefix);
    loop {
        match try_lead(config, store, &key).await {
            Ok(Some(lease)) => return Ok(lease),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(coordinator = %config.id, error = %e, "cannot campaign; retrying")
            }
        }
        tokio::time::sleep(config.interval).await;
    }
}

async fn try_lead(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    key: &str,
) -> Result<Option<i64>, CoordinatorError> {
    if store.get(key).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant_lease(config.lease_ttl).await?;
    let value = serde_json::to_vec(&Leader {
        id: config.id.clone(),
        since_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
    .expect("leader serialises");
    match store
        .compare_and_put(key, Expect::Absent, value, Some(lease))
        .await?
    {
        Some(_) => Ok(Some(lease)),
        None => {
            let _ = store.revoke(lease).await;
            Ok(None)
        }
    }
}

/// Leads until the lease cannot be kept.
async fn lead(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    lease: i64,
) -> Result<(), CoordinatorError> {
    let mut first_shard_seen: Option<tokio::time::Instant> = None;
    let mut last_renewal = tokio::time::Instant::now();
    // Migration progress wakes the loop at once (it is on the migration's
    // critical path); everything else is polled every `interval`.
    let mut changes = store
        .watch(&format!("{}migrations/", config.prefix))
        .await
        .ok();
    // A new leader starts with fresh hysteresis: streaks and cooldowns are
    // rebuilt from the reports it sees.
    let mut rebalancer = config.rebalance.clone().map(Rebalancer::new);
    let mut blocked: BTreeSet<ShardId> = BTreeSet::new();
    let mut last_rebalance = tokio::time::Instant::now();
    #[cfg(feature = "fault-injection")]
    let (leading_since, panic_after) = (tokio::time::Instant::now(), fault::panic_after());
    loop {
        #[cfg(feature = "fault-injection")]
        if panic_after.is_some_and(|after| leading_since.elapsed() >= after) {
            panic!(
                "injected fault: the leading loop of coordinator {} dies",
                config.id
            );
        }
        if last_renewal.elapsed() >= config.lease_ttl / 3 {
            match store.keep_alive(lease).await {
                Ok(()) => last_renewal = tokio::time::Instant::now(),
                Err(e @ crate::StoreError::LeaseNotFound(_)) => return Err(e.into()),
                Err(e) => {
                    if last_renewal.elapsed() >= config.lease_ttl {
                        return Err(e.into());
                    }
                    // The store is down: do nothing until it is back.
                    tokio::time::sleep(config.interval).await;
                    continue;
                }
            }
        }
        match place(config, store, &mut first_shard_seen).await {
            Ok(placed) => {
                if let Some(r) = rebalancer.as_mut() {
                    if placed && last_rebalance.elapsed() >= REBALANCE_EVERY {
                        last_rebalance = tokio::time::Instant::now();
                        if let Err(e) = rebalance(config, store, r, &mut blocked).await {
                            tracing::warn!(coordinator = %config.id, error = %e, "rebalance round failed");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(coordinator = %config.id, error = %e, "placement round failed")
            }
        }
        match changes.as_mut() {
            Some(rx) => tokio::select! {
                _ = tokio::time::sleep(config.interval) => {}
                ev = rx.recv() => if ev.is_none() { changes = None },
            },
            None => tokio::time::sleep(config.interval).await,
        }
    }
}

/// Fault injection for the fault tests (cargo feature `fault-injection`, which only test
/// builds turn on): a coordinator started with `TESSERA_FAULT_COORDINATOR_PANIC_AFTER_MS=N`
/// has its leading loop panic once it has led N ms (at the next round, `interval` later at
/// most).
#[cfg(feature = "fault-injection")]
mod fault {
    pub fn panic_after() -> Option<std::time::Duration> {
        std::env::var("TESSERA_FAULT_COORDINATOR_PANIC_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    }
}

/// One placement round. True when every cell had a live owner at the
/// start of it (the rebalancer runs only then).
async fn place(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    first_shard_seen: &mut Option<tokio::time::Instant>,
) -> Result<bool, CoordinatorError> {
    let live: Vec<ShardId> = live_shards(store, &config.prefix)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    if live.is_empty() {
        return Ok(false);
    }
    let seen = *first_shard_seen.get_or_insert_with(tokio::time::Instant::now);
    let current: HashMap<CellId, StoredTree> = list_trees(store, &config.prefix)
        .await?
        .into_iter()
        .map(|t| (t.cell, t))
        .collect();
    finish_migrations(config, store, &current, &live).await?;
    carry_out_reshapes(config, store, &current, &live).await?;
    if current.is_empty() && seen.elapsed() < config.settle {
        return Ok(false);
    }
    let placed = config.cells.iter().all(|c| {
        current.get(c).is_some_and(|t| {
            t.tree
                .leaves(t.cell)
                .all(|(_, owner)| live.contains(&owner.owner))
        })
    });
    // Cells go to shards that are not cordoned (a drained shard must not take cells by
    // failover), unless every live shard is.
    let cordoned = cordoned(store, &config.prefix, config.authority.as_ref()).await?;
    let mut sorted: Vec<ShardId> = live
        .iter()
        .filter(|s| !cordoned.contains(s))
        .cloned()
        .collect();
    if sorted.is_empty() {
        sorted = live.clone();
    }
    sorted.sort();
    let plan: HashMap<CellId, ShardId> = placement::stripes(&config.cells, &sorted)
        .into_iter()
        .collect();
    for cell in &config.cells {
        let target = plan.get(cell).cloned().unwrap_or_else(|| sorted[0].clone());
        let key = cell_key(&config.prefix, *cell);
        match current.get(cell) {
            None => {
                let value = owner_json(&target, Epoch(1));
                if store
                    .compare_and_put(&key, Expect::Absent, value, None)
                    .await?
                    .is_some()
                {
                    tracing::info!(cell = %cell, shard = %target, epoch = 1, "cell placed");
                }
            }
            Some(stored) => reassign_dead_regions(store, &key, stored, &live, &target).await?,
        }
    }
    Ok(placed)
}

/// Gives every region of a cell whose owner is no longer live to `target`,
/// all in one compare-and-put on the cell key, at the tree's next epoch
/// (docs/regions.md, Epochs). A whole cell is one such region.
async fn reassign_dead_regions(
    store: &dyn ClusterStore,
    key: &str,
    stored: &StoredTree,
    live: &[ShardId],
    target: &ShardId,
) -> Result<(), CoordinatorError> {
    let dead: Vec<(tessera_proto::RegionId, ShardId)> = stored
        .tree
        .leaves(stored.cell)
        .filter(|(_, o)| !live.contains(&o.owner))
        .map(|(r, o)| (r, o.owner.clone()))
        .collect();
    if dead.is_empty() {
        return Ok(());
    }
    let epoch = next_epoch(&stored.tree);
    let mut tree: CellTree = stored.tree.clone();
    for (region, _) in &dead {
        if let Some(o) = tree.get_mut(*region) {
            *o = CellOwner {
                owner: target.clone(),
                epoch,
            };
        }
    }
    if store
        .compare_and_put(
            key,
            Expect::ModRevision(stored.mod_revision),
            tree_json(&tree),
            None,
        )
        .await?
        .is_some()
    {
        for (region, from) in dead {
            tracing::warn!(region = %region, from = %from, to = %target, epoch = %epoch, "owner is gone; region reassigned");
        }
    }
    Ok(())
}

/// The cordoned (draining) shards; with `key`, only those whose cordon is signed by an
/// operator or the shard itself (others are ignored with a log line).
async fn cordoned(
    store: &dyn ClusterStore,
    prefix: &str,
    key: Option<&crate::authority::ClusterTrust>,
) -> Result<BTreeSet<ShardId>, CoordinatorError> {
    let mut out = BTreeSet::new();
    let draining = format!("{prefix}draining/");
    for kv in store.list(&draining).await? {
        let Some(id) = kv.key.strip_prefix(&draining) else {
            continue;
        };
        let shard = ShardId::new(id);
        if let Some(key) = key {
            let cordon = serde_json::from_slice::<crate::migration::Cordon>(&kv.value);
            let checked = match &cordon {
                Ok(c) => c
                    .verify(key, prefix, &shard)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("not a cordon: {e}")),
            };
            if let Err(why) = checked {
                tracing::warn!(shard = %shard, error = %why, "cordon ignored");
                continue;
            }
        }
        out.insert(shard);
    }
    Ok(out)
}

/// Reads what the rebalancer plans from: the cell map, the live shards
/// with their capacities and latest load reports, and the migrations in
/// flight. Cordoned (draining) shards are left out; with `key`, only those
/// whose cordon is signed by an operator or member.
pub async fn read_cluster_view(
    store: &dyn ClusterStore,
    prefix: &str,
    key: Option<&crate::authority::ClusterTrust>,
) -> Result<ClusterView, CoordinatorError> {
    let mut view = ClusterView::default();
    for (id, reg) in live_shards(store, prefix).await? {
        view.shards.insert(
            id,
            ShardView {
                capacity: reg.capacity,
                load: None,
            },
        );
    }
    let loads = format!("{prefix}load/");
    for kv in store.list(&loads).await? {
        let Some(id) = kv.key.strip_prefix(&loads) else {
            continue;
        };
        if let Some(s) = view.shards.get_mut(&ShardId::new(id)) {
            match serde_json::from_slice(&kv.value) {
                Ok(load) => s.load = Some(load),
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad load report"),
            }
        }
    }
    // Draining (cordoned) shards are left out: they get no cells, and
    // their own cells are the drain's to move.
    for shard in cordoned(store, prefix, key).await? {
        view.shards.remove(&shard);
    }
    for stored in list_trees(store, prefix).await? {
        for (region, owner) in stored.tree.leaves(stored.cell) {
            view.owners.insert(region, owner.owner.clone());
        }
    }
    let dir = format!("{prefix}migrations/");
    for kv in store.list(&dir).await? {
        let (Some(region), Ok(m)) = (
            crate::migration::region_under(&kv.key, &dir),
            serde_json::from_slice::<Migration>(&kv.value),
        ) else {
            continue;
        };
        view.in_flight.push(InFlight {
            cell: region,
            from: m.from,
            to: m.to,
        });
    }
    Ok(view)
}

/// How the coordinator signs its own requests: with its member identity; without a
/// [`crate::authority::ClusterTrust`] (one process) nobody checks, and nothing is signed.
fn member_signer(config: &CoordinatorConfig) -> crate::authority::Signer {
    let by = format!("coordinator:{}", config.id);
    match &config.authority {
        Some(trust) => trust.member(by),
        None => crate::authority::Signer::unchecked(by),
    }
}

/// One rebalancing round: plan, then request each move.
async fn rebalance(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    rebalancer: &mut Rebalancer,
    blocked: &mut BTreeSet<ShardId>,
) -> Result<(), CoordinatorError> {
    let view = read_cluster_view(store, &config.prefix, config.authority.as_ref()).await?;
    let plan = rebalancer.plan(&view, std::time::Instant::now());
    // Say once that a shard cannot be helped, until it is fine again.
    let loads = crate::rebalance::loads(&view, rebalancer.config());
    let high = rebalancer.config().high_watermark;
    blocked.retain(|s| loads.get(s).is_some_and(|l| *l > high));
    for b in &plan.blocked {
        if blocked.insert(b.shard.clone()) {
            tracing::warn!(shard = %b.shard, why = %b.why, "rebalance: shard needs help and cannot get it");
        }
    }
    let signer = member_signer(config);
    for r in &plan.reshapes {
        let requested = match r.op {
            crate::reshape::ReshapeOp::Split => {
                crate::reshape::request_split(store, &config.prefix, r.region, &signer).await
            }
            crate::reshape::ReshapeOp::Merge => {
                crate::reshape::request_merge(
                    store,
                    &config.prefix,
                    r.region,
                    Some(r.shard.clone()),
                    &signer,
                )
                .await
            }
        };
        match requested {
            Ok(_) => {
                tracing::info!(region = %r.region, op = %r.op, shard = %r.shard, why = %r.why, "rebalance: reshaping region")
            }
            Err(crate::reshape::ReshapeError::Cluster(e)) => return Err(e),
            Err(e) => {
                tracing::info!(region = %r.region, op = %r.op, error = %e, "rebalance: reshape not requested")
            }
        }
    }
    for m in plan.moves {
        match migration::request_move(store, &config.prefix, m.cell, &m.to, &signer).await {
            Ok(req) => tracing::info!(
                cell = %m.cell, from = %m.from, to = %m.to, reason = %m.reason,
                epoch = %req.epoch, cost_ms = m.cost_ms, players = m.players,
                from_load = m.from_load_after, to_load = m.to_load_after,
                "rebalance: moving cell"
            ),
            Err(migration::MoveError::Cluster(e)) => return Err(e),
            Err(e) => {
                tracing::info!(cell = %m.cell, from = %m.from, to = %m.to, reason = %m.reason, error = %e, "rebalance: move not requested")
            }
        }
    }
    Ok(())
}

/// Flips the owner of every restored migration (one compare-and-set on the
/// cell key) and clears migrations that can no longer complete.
async fn finish_migrations(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    current: &HashMap<CellId, StoredTree>,
    live: &[ShardId],
) -> Result<(), CoordinatorError> {
    let dir = format!("{}migrations/", config.prefix);
    for kv in store.list(&dir).await? {
        let Some(region) = crate::migration::region_under(&kv.key, &dir) else {
            continue;
        };
        let cell = region.cell_id();
        let Ok(m) = serde_json::from_slice::<Migration>(&kv.value) else {
            tracing::warn!(key = %kv.key, "bad migration value; removing it");
            store.delete(&kv.key).await?;
            continue;
        };
        if let Some(key) = &config.authority {
            if let Err(e) = key.verify_now(&config.prefix, region, &m).await {
                tracing::warn!(region = %region, from = %m.from, to = %m.to, error = %e, "migration request refused");
                store.delete(&kv.key).await?;
                continue;
            }
        }
        let Some(stored) = current.get(&cell) else {
            store.delete(&kv.key).await?;
            continue;
        };
        let rev = &stored.mod_revision;
        // The region's owner if it is still a leaf of the map (a split or
        // merge since the request makes the request stale).
        let owner = stored.tree.get(region);
        let now = migration::now_unix_ms();
        if m.state == MigrationState::Cancelled {
            // Kept long enough for both shards to see it.
            if now.saturating_sub(m.cancelled_unix_ms.unwrap_or(0)) > CANCELLED_KEEP_MS {
                store.delete(&kv.key).await?;
            }
            continue;
        }
        if owner.is_some_and(|o| o.owner == m.to && o.epoch == m.epoch) {
            // Flipped already (by an earlier leader): done.
            store.delete(&kv.key).await?;
            continue;
        }
        // Any change of the cell's tree since the request (which took its
        // next epoch) makes it stale: its epoch would not be the newest.
        let stale = owner.is_none_or(|o| o.owner != m.from)
            || crate::cellmap::next_epoch(&stored.tree) != m.epoch;
        let age_ms = now.saturating_sub(m.requested_unix_ms);
        if stale
            || !live.contains(&m.to)
            || (m.state == MigrationState::Requested && age_ms > 30_000)
        {
            // Not deleted at once: a source that already shipped the cell
            // must learn that the owner will not flip, to take it back.
            tracing::warn!(cell = %cell, from = %m.from, to = %m.to, state = ?m.state, "migration cannot complete; cancelled");
            let mut cancelled = m.clone();
            cancelled.state = MigrationState::Cancelled;
            cancelled.cancelled_unix_ms = Some(now);
            let value = serde_json::to_vec(&cancelled).expect("migration serialises");
            store
                .compare_and_put(&kv.key, Expect::ModRevision(kv.mod_revision), value, None)
                .await?;
            continue;
        }
        if m.state == MigrationState::Restored {
            let mut tree = stored.tree.clone();
            if let Some(leaf) = tree.get_mut(region) {
                *leaf = CellOwner {
                    owner: m.to.clone(),
                    epoch: m.epoch,
                };
            }
            let key = cell_key(&config.prefix, cell);
            if store
                .compare_and_put(&key, Expect::ModRevision(*rev), tree_json(&tree), None)
                .await?
                .is_some()
            {
                tracing::info!(region = %region, from = %m.from, to = %m.to, epoch = %m.epoch, "region migrated");
            }
            store.delete(&kv.key).await?;
        }
    }
    Ok(())
}

/// Carries out the split and merge requests (`reshapes/`): see
/// [`crate::reshape`].
async fn carry_out_reshapes(
    config: &CoordinatorConfig,
    store: &dyn ClusterStore,
    current: &HashMap<CellId, StoredTree>,
    live: &[ShardId],
) -> Result<(), CoordinatorError> {
    let pending = crate::reshape::list(store, &config.prefix).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let member = member_signer(config);
    for p in pending {
        let Some(stored) = current.get(&p.region.cell_id()) else {
            tracing::warn!(region = %p.region, "reshape of a cell not in the map; removing it");
            store.delete(&p.key).await?;
            continue;
        };
        if p.reshape.op == crate::reshape::ReshapeOp::Split {
            if let Some(why) = crate::reshape::why_not_split(
                &stored.tree,
                &config.grid,
                p.region,
                config.min_region_side,
            ) {
                tracing::warn!(region = %p.region, why = %why, "split refused");
                store.delete(&p.key).await?;
                continue;
            }
        }
        let by = p
            .reshape
            .authority
            .as_ref()
            .map(|a| a.by.clone())
            .unwrap_or_default();
        let progress = crate::reshape::carry_out(
            store,
            &config.prefix,
            config.authority.as_ref(),
            &p,
            &stored.tree,
            stored.mod_revision,
            live,
            &member,
        )
        .await?;
        match progress {
            crate::reshape::Progress::Done => {
                metrics::counter!("tessera_coordinator_reshapes_total", "op" => p.reshape.op.to_string())
                    .increment(1);
                tracing::info!(region = %p.region, op = %p.reshape.op, by = %by, "region reshaped");
            }
            crate::reshape::Progress::Dropped(why) => {
                tracing::warn!(region = %p.region, op = %p.reshape.op, by = %by, why = %why, "reshape request dropped")
            }
            crate::reshape::Progress::Gathering { moving } => {
                tracing::debug!(region = %p.region, moving, "merge: gathering quadrants")
            }
        }
    }
    Ok(())
}

/// How long a cancelled migration stays visible before it is deleted.
const CANCELLED_KEEP_MS: u64 = 5_000;

fn owner_json(shard: &ShardId, epoch: Epoch) -> Vec<u8> {
    tree_json(&CellTree::whole(CellOwner {
        owner: shard.clone(),
        epoch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator the test coordinators know.
    fn alice() -> &'static crate::operators::OperatorKey {
        static ALICE: std::sync::OnceLock<crate::operators::OperatorKey> =
            std::sync::OnceLock::new();
        ALICE.get_or_init(|| crate::operators::OperatorKey::generate("alice").unwrap())
    }

    /// The test cluster's CA, and what a member of `role` checks and signs with.
    fn test_trust(role: crate::identity::MemberRole) -> crate::authority::ClusterTrust {
        static CA: std::sync::OnceLock<crate::pki::ClusterCa> = std::sync::OnceLock::new();
        let ca = CA.get_or_init(|| crate::pki::ClusterCa::generate().unwrap());
        crate::authority::ClusterTrust::new(ca.trust().to_vec())
            .with_identity(std::sync::Arc::new(ca.member(role, "test").unwrap()))
    }
    use crate::membership::{shard_key, ShardRegistration};
    use crate::store::MemStore;
    use crate::CellMap;

    fn config(id: &str) -> CoordinatorConfig {
        CoordinatorConfig {
            id: id.into(),
            prefix: "/t/".into(),
            cells: (-2..2)
                .flat_map(|x| (0..2).map(move |z| CellId::new(x, z)))
                .collect(),
            lease_ttl: Duration::from_millis(600),
            interval: Duration::from_millis(50),
            settle: Duration::from_millis(100),
            authority: Some(
                test_trust(crate::identity::MemberRole::Coordinator).with_operators(
                    crate::operators::OperatorCache::fixed([(
                        "alice".to_string(),
                        alice().verifying_key(),
                    )]),
                ),
            ),
            rebalance: None,
            grid: tessera_proto::Grid::new(64.0),
            min_region_side: 8.0,
            liveness: None,
        }
    }

    /// `tessera ctl drain` of a shard that is not registered (a typo, a shard long gone) is
    /// refused and leaves no drain mark behind.
    #[tokio::test]
    async fn draining_a_shard_that_is_not_registered_is_refused_and_marks_nothing() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        register(&store, "s1", Duration::from_secs(60)).await;
        let key = test_trust(crate::identity::MemberRole::Shard);
        let ghost = ShardId::new("shard-9");
        let e = crate::migration::drain(
            &*store,
            "/t/",
            &ghost,
            Duration::from_secs(1),
            &key.member("shard:shard-9".into()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, crate::migration::DrainError::UnknownShard(ref s) if s == &ghost),
            "{e}"
        );
        assert!(
            e.to_string().contains("no live shard called shard-9"),
            "{e}"
        );
        assert!(store
            .get(&crate::migration::draining_key("/t/", &ghost))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_draining_shard_is_left_out_of_rebalancing_until_it_restarts() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        register(&store, "s1", Duration::from_secs(60)).await;
        register(&store, "s2", Duration::from_secs(60)).await;
        let view = read_cluster_view(&*store, "/t/", None).await.unwrap();
        assert_eq!(view.shards.len(), 2);
        // Draining s2 cordons it first, whatever becomes of its cells.
        let key = test_trust(crate::identity::MemberRole::Shard);
        let _ = crate::migration::drain(
            &*store,
            "/t/",
            &ShardId::new("s2"),
            Duration::from_millis(1),
            &key.member("shard:s2".into()),
        )
        .await;
        let view = read_cluster_view(&*store, "/t/", None).await.unwrap();
        assert!(
            view.shards.keys().all(|s| s.0 == "s1"),
            "{:?}",
            view.shards.keys()
        );
        // `ctl uncordon` lifts the mark: s2 takes cells again.
        let s2 = ShardId::new("s2");
        assert!(crate::migration::uncordon(&*store, "/t/", &s2)
            .await
            .unwrap());
        assert!(!crate::migration::uncordon(&*store, "/t/", &s2)
            .await
            .unwrap());
        let view = read_cluster_view(&*store, "/t/", None).await.unwrap();
        assert!(view.shards.contains_key(&s2), "{:?}", view.shards.keys());
        store
            .delete(&crate::migration::draining_key("/t/", &ShardId::new("s2")))
            .await
            .unwrap();
        assert_eq!(
            read_cluster_view(&*store, "/t/", None)
                .await
                .unwrap()
                .shards
                .len(),
            2
        );
    }

    /// A dead shard's cells fail over to shards that are not cordoned: a drained shard that
    /// got cells by failover would hold them while marked as leaving (the operator trial of
    /// issue 16). Only when every live shard is cordoned does one of them take the cells.
    #[tokio::test]
    async fn failover_skips_cordoned_shards() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let _c = tokio::spawn(run(config("a"), store.clone(), async move {
            let _ = rx.await;
        }));
        let doomed = register(&store, "s1", Duration::from_secs(60)).await;
        register(&store, "s2", Duration::from_secs(60)).await;
        register(&store, "s3", Duration::from_secs(60)).await;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        wait_for("placed", || map.all().len() == 8).await;
        let of = |s: &str| {
            map.all()
                .into_iter()
                .filter(|(_, o)| o.owner.0 == s)
                .count()
        };
        assert!(of("s1") > 0 && of("s2") > 0, "{:?}", map.all());
        // s2 is drained by an operator (cordoned; its cells stay until the drain moves
        // them), then s1 dies.
        let cordon = crate::migration::Cordon::new(
            "/t/",
            &ShardId::new("s2"),
            &crate::authority::Signer::operator(alice().clone()),
        );
        store
            .put(
                &crate::migration::draining_key("/t/", &ShardId::new("s2")),
                serde_json::to_vec(&cordon).unwrap(),
                None,
            )
            .await
            .unwrap();
        let s2_before = of("s2");
        store.revoke(doomed).await.unwrap();
        wait_for("s1's cells failed over", || of("s1") == 0).await;
        assert_eq!(
            of("s2"),
            s2_before,
            "a cordoned shard got cells by failover"
        );
        assert_eq!(of("s3"), 8 - s2_before);
    }

    #[tokio::test]
    async fn requests_without_a_valid_signature_are_refused() {
        use crate::migration::{migration_key, request_move};
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let _c = tokio::spawn(run(config("a"), store.clone(), async move {
            let _ = rx.await;
        }));
        register(&store, "s1", Duration::from_secs(60)).await;
        register(&store, "s2", Duration::from_secs(60)).await;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        while map.all().len() < 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (cell, owner) = map.all()[0].clone();
        let to = ShardId::new(if owner.owner.0 == "s1" { "s2" } else { "s1" });
        // Signed by an operator of another cluster: deleted, owner unchanged.
        let stranger = crate::operators::OperatorKey::generate("mallory").unwrap();
        request_move(
            &*store,
            "/t/",
            cell,
            &to,
            &crate::authority::Signer::operator(stranger),
        )
        .await
        .unwrap();
        let key = migration_key("/t/", cell.into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.get(&key).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "forged request kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(map.owner(cell).unwrap(), owner);
        // This cluster's operator: the request stays until a shard takes it.
        request_move(
            &*store,
            "/t/",
            cell,
            &to,
            &crate::authority::Signer::operator(alice().clone()),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.get(&key).await.unwrap().is_some(),
            "valid request dropped"
        );
    }

    async fn register(store: &Arc<dyn ClusterStore>, id: &str, ttl: Duration) -> i64 {
        let lease = store.grant_lease(ttl).await.unwrap();
        let reg = ShardRegistration {
            addr: "127.0.0.1:1".parse().unwrap(),
            node: "n".into(),
            capacity: 1,
            version: "0".into(),
        };
        store
            .put(
                &shard_key("/t/", &ShardId::new(id)),
                serde_json::to_vec(&reg).unwrap(),
                Some(lease),
            )
            .await
            .unwrap();
        lease
    }

    async fn report(store: &Arc<dyn ClusterStore>, id: &str, cells: &[CellId]) {
        use crate::membership::{load_key, CellLoad, ShardLoad};
        let load = ShardLoad {
            tick: 1,
            tick_budget_ms: 33.3,
            cells: cells
                .iter()
                .map(|c| CellLoad {
                    cell: *c,
                    region: None,
                    epoch: Epoch(1),
                    entities: 1,
                    players: 0,
                    ghosts: 0,
                    tick_ms: 0.5,
                    tick_p99_ms: 0.7,
                })
                .collect(),
            ..ShardLoad::default()
        };
        store
            .put(
                &load_key("/t/", &ShardId::new(id)),
                serde_json::to_vec(&load).unwrap(),
                None,
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_leader_requests_moves_to_a_shard_that_joins() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let mut cfg = config("a");
        cfg.rebalance = Some(RebalanceConfig::default());
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let _a = tokio::spawn(run(cfg.clone(), store.clone(), async move {
            let _ = rx.await;
        }));
        register(&store, "s1", Duration::from_secs(60)).await;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(map.all().len(), 8);
        report(&store, "s1", &cfg.cells).await;
        register(&store, "s2", Duration::from_secs(60)).await;
        report(&store, "s2", &[]).await;
        // Within a rebalance round or two, a migration to s2 is requested
        // (nobody completes it here: there are no shard processes).
        let dir = "/t/migrations/";
        let mut found = None;
        for _ in 0..40 {
            if let Some(kv) = store.list(dir).await.unwrap().into_iter().next() {
                found = Some(serde_json::from_slice::<Migration>(&kv.value).unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = found.expect("no migration requested for the new shard");
        assert_eq!((m.from.0.as_str(), m.to.0.as_str()), ("s1", "s2"));
        // One at a time: s2 is busy with it.
        assert_eq!(store.list(dir).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_leader_places_cells_and_reassigns_a_dead_shards_cells() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (stop_a, a_rx) = tokio::sync::oneshot::channel::<()>();
        let (_stop_b, b_rx) = tokio::sync::oneshot::channel::<()>();
        let a = tokio::spawn(run(config("a"), store.clone(), async move {
            let _ = a_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _b = tokio::spawn(run(config("b"), store.clone(), async move {
            let _ = b_rx.await;
        }));
        let leader = store.get(&leader_key("/t/")).await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Leader>(&leader.value).unwrap().id,
            "a"
        );

        let s1 = register(&store, "s1", Duration::from_secs(60)).await;
        let s2 = register(&store, "s2", Duration::from_millis(300)).await;
        let _ = s1;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Placed on both shards (s2's lease is still alive at first)...
        let all = map.all();
        assert_eq!(all.len(), 8);
        let _ = s2;
        // ...then s2's lease expires and its cells move to s1, epoch 2.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for (cell, owner) in map.all() {
            assert_eq!(owner.owner.0, "s1", "{cell}");
        }
        assert!(map.all().iter().any(|(_, o)| o.epoch == Epoch(2)));

        // The leader steps down; the other coordinator takes over.
        stop_a.send(()).unwrap();
        a.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leader = store.get(&leader_key("/t/")).await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Leader>(&leader.value).unwrap().id,
            "b"
        );
    }

    #[tokio::test]
    async fn a_dead_shards_regions_of_a_split_cell_are_reassigned_and_the_others_stay() {
        use tessera_proto::RegionId;
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let s1 = ShardId::new("s1");
        let s2 = ShardId::new("s2");
        register(&store, "s1", Duration::from_secs(60)).await;
        // Cell -2,0 is split: s2 (never registered, so dead) owns the
        // north-west and south-east quadrants, live s1 the other two.
        let owner = |s: &ShardId, e| CellOwner {
            owner: s.clone(),
            epoch: Epoch(e),
        };
        let cell = CellId::new(-2, 0);
        let mut tree = CellTree::whole(owner(&s1, 3));
        tree.split(
            RegionId::cell(cell),
            [owner(&s2, 4), owner(&s1, 4), owner(&s1, 5), owner(&s2, 6)],
        )
        .unwrap();
        store
            .put(&cell_key("/t/", cell), tree_json(&tree), None)
            .await
            .unwrap();
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let _c = tokio::spawn(run(config("a"), store.clone(), async move {
            let _ = rx.await;
        }));
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while map.regions_of(&s2).len() == 2 || map.all().len() < 7 {
            assert!(tokio::time::Instant::now() < deadline, "not reassigned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let [nw, ne, sw, se] = RegionId::cell(cell).children().unwrap();
        // One change, one epoch: the tree's highest (6) plus one.
        assert_eq!(map.region_owner(nw), Some(owner(&s1, 7)));
        assert_eq!(map.region_owner(se), Some(owner(&s1, 7)));
        // The live quadrants keep their epochs: nothing fences them.
        assert_eq!(map.region_owner(ne), Some(owner(&s1, 4)));
        assert_eq!(map.region_owner(sw), Some(owner(&s1, 5)));
        assert_eq!(map.regions_of(&s2), vec![]);
    }

    /// Starts a leader over `store` with two live shards and a placed map.
    async fn leader_with_map(
        store: &Arc<dyn ClusterStore>,
    ) -> (CellMap, tokio::sync::oneshot::Sender<()>) {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(config("a"), store.clone(), async move {
            let _ = rx.await;
        }));
        register(store, "s1", Duration::from_secs(60)).await;
        register(store, "s2", Duration::from_secs(60)).await;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        while map.all().len() < 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (map, stop)
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Operators as a cluster keeps them: records in the store, vouched for by a CA; the
    /// coordinator reads them as it runs.
    #[tokio::test]
    async fn a_revoked_operator_is_refused_within_seconds_and_forged_cordons_are_ignored() {
        use crate::authority::{ClusterTrust, Signer};
        use crate::migration::{migration_key, request_move, Cordon};
        use crate::operators::{OperatorCache, OperatorKey, OperatorRecord, Operators, Voucher};
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::ClusterCa::create(dir.path()).unwrap();
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(store.clone(), "/t/", vec![ca.cert().clone()]);
        let bob = OperatorKey::generate("bob").unwrap();
        let record = OperatorRecord::new("bob", &bob.public_hex(), &Voucher::Ca(&ca)).unwrap();
        operators.records().put(&record).await.unwrap();
        let key = ClusterTrust::new(ca.trust().to_vec())
            .with_operators(OperatorCache::follow(operators.clone()).await);
        let shard_key = key.clone().with_identity(std::sync::Arc::new(
            ca.member(crate::identity::MemberRole::Shard, "s1").unwrap(),
        ));
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let config = CoordinatorConfig {
            authority: Some(key.clone()),
            ..config("a")
        };
        tokio::spawn(run(config, store.clone(), async move {
            let _ = rx.await;
        }));
        register(&store, "s1", Duration::from_secs(60)).await;
        register(&store, "s2", Duration::from_secs(60)).await;
        let map = CellMap::watch(store.clone(), "/t/").await.unwrap();
        wait_for("cells placed", || map.all().len() == 8).await;
        let other = |owner: &ShardId| ShardId::new(if owner.0 == "s1" { "s2" } else { "s1" });

        // Bob's request stands.
        let (cell, owner) = map.all()[0].clone();
        let signer = Signer::operator(bob.clone());
        request_move(&*store, "/t/", cell, &other(&owner.owner), &signer)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let k = migration_key("/t/", cell.into());
        assert!(store.get(&k).await.unwrap().is_some(), "bob's move dropped");
        store.delete(&k).await.unwrap();

        // Revoked: within seconds, his next request is deleted unexecuted.
        let mut record = operators.records().get("bob").await.unwrap().unwrap();
        record.revoke(&Voucher::Ca(&ca)).unwrap();
        operators.records().put(&record).await.unwrap();
        tokio::time::sleep(crate::operators::OPERATOR_REFRESH * 2).await;
        let (cell, owner) = map.all()[1].clone();
        request_move(&*store, "/t/", cell, &other(&owner.owner), &signer)
            .await
            .unwrap();
        let k = migration_key("/t/", cell.into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.get(&k).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a revoked operator's move kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(map.owner(cell), Some(owner));

        // A cordon written without a valid signature keeps no shard from the rebalancer; a
        // member's signed one does.
        let s1 = ShardId::new("s1");
        let forged = Cordon {
            since_unix_ms: crate::migration::now_unix_ms(),
            by: "operator:mallory".into(),
            authority: None,
        };
        store
            .put(
                &crate::migration::draining_key("/t/", &s1),
                serde_json::to_vec(&forged).unwrap(),
                None,
            )
            .await
            .unwrap();
        let view = read_cluster_view(&*store, "/t/", Some(&key)).await.unwrap();
        assert!(view.shards.contains_key(&s1), "a forged cordon was obeyed");
        let by_bob = Cordon::new("/t/", &s1, &signer);
        store
            .put(
                &crate::migration::draining_key("/t/", &s1),
                serde_json::to_vec(&by_bob).unwrap(),
                None,
            )
            .await
            .unwrap();
        let view = read_cluster_view(&*store, "/t/", Some(&key)).await.unwrap();
        assert!(
            view.shards.contains_key(&s1),
            "a revoked operator's cordon was obeyed"
        );
        let member = Cordon::new("/t/", &s1, &shard_key.member("shard:s1".into()));
        store
            .put(
                &crate::migration::draining_key("/t/", &s1),
                serde_json::to_vec(&member).unwrap(),
                None,
            )
            .await
            .unwrap();
        let view = read_cluster_view(&*store, "/t/", Some(&key)).await.unwrap();
        assert!(
            !view.shards.contains_key(&s1),
            "a signed cordon was ignored"
        );
    }

    #[tokio::test]
    async fn the_leader_splits_a_region_an_operator_asked_for_and_nothing_else() {
        use crate::reshape::{request_split, reshape_key};
        use tessera_proto::RegionId;
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (map, _stop) = leader_with_map(&store).await;
        let (cell, owner) = map.all()[0].clone();
        let region = RegionId::cell(cell);
        // Signed by an operator of another cluster: deleted, map unchanged.
        let mallory = crate::operators::OperatorKey::generate("mallory").unwrap();
        request_split(
            &*store,
            "/t/",
            region,
            &crate::authority::Signer::operator(mallory),
        )
        .await
        .unwrap();
        let key = reshape_key("/t/", region);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.get(&key).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "forged request kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            map.owner(cell),
            Some(owner.clone()),
            "a forged split changed the map"
        );
        // Unsigned, written straight into the store: the same.
        let unsigned = crate::reshape::Reshape {
            op: crate::reshape::ReshapeOp::Split,
            to: None,
            requested_unix_ms: crate::migration::now_unix_ms(),
            authority: None,
        };
        store
            .put(&key, serde_json::to_vec(&unsigned).unwrap(), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(map.owner(cell), Some(owner.clone()));
        // A genuine request, replayed after the timeout: refused.
        let signer = crate::authority::Signer::operator(alice().clone());
        let mut old = unsigned.clone();
        old.requested_unix_ms -= crate::reshape::RESHAPE_TIMEOUT_MS + 1_000;
        old.authority = Some(crate::reshape::sign(&signer, "/t/", region, &old));
        store
            .put(&key, serde_json::to_vec(&old).unwrap(), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(map.owner(cell), Some(owner.clone()), "a replayed split");
        // This cluster's operator, now: four quadrants, same owner, next epoch.
        request_split(&*store, "/t/", region, &signer)
            .await
            .unwrap();
        wait_for("not split", || map.owner(cell).is_none()).await;
        for q in region.children().unwrap() {
            assert_eq!(
                map.region_owner(q),
                Some(CellOwner {
                    owner: owner.owner.clone(),
                    epoch: owner.epoch.next(),
                })
            );
        }
        assert!(store.get(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn no_split_goes_below_the_minimum_side() {
        use crate::reshape::request_split;
        use tessera_proto::RegionId;
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (map, _stop) = leader_with_map(&store).await;
        let (cell, _) = map.all()[0].clone();
        let signer = crate::authority::Signer::operator(alice().clone());
        // 64 m -> 32 -> 16 -> 8: three splits; a fourth would make 4 m.
        let mut region = RegionId::cell(cell);
        for _ in 0..3 {
            request_split(&*store, "/t/", region, &signer)
                .await
                .unwrap();
            let r = region;
            wait_for("not split", || map.region_owner(r).is_none()).await;
            region = region.children().unwrap()[3];
        }
        assert_eq!(region.side(&tessera_proto::Grid::new(64.0)), 8.0);
        request_split(&*store, "/t/", region, &signer)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(map.region_owner(region).is_some(), "split below 8 m");
    }

    #[tokio::test]
    async fn a_merge_gathers_the_quadrants_on_one_shard_then_merges_them() {
        use crate::cellmap::list_trees;
        use crate::migration::{migration_key, Migration, MigrationState};
        use crate::reshape::request_merge;
        use tessera_proto::RegionId;
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let (map, _stop) = leader_with_map(&store).await;
        let (cell, _) = map.all()[0].clone();
        let region = RegionId::cell(cell);
        let q = region.children().unwrap();
        // Quadrants on s1, s2, s1, s1 (as a split and one migration leave them).
        let owner = |s: &str, e: u64| CellOwner {
            owner: ShardId::new(s),
            epoch: Epoch(e),
        };
        let stored = list_trees(&*store, "/t/")
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.cell == cell)
            .unwrap();
        let mut tree = stored.tree.clone();
        tree.split(
            region,
            [
                owner("s1", 3),
                owner("s2", 4),
                owner("s1", 3),
                owner("s1", 3),
            ],
        )
        .unwrap();
        store
            .compare_and_put(
                &cell_key("/t/", cell),
                Expect::ModRevision(stored.mod_revision),
                tree_json(&tree),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        wait_for("map", || map.region_owner(q[1]).is_some()).await;
        let signer = crate::authority::Signer::operator(alice().clone());
        let r = request_merge(&*store, "/t/", region, None, &signer)
            .await
            .unwrap();
        assert_eq!(
            r.to,
            Some(ShardId::new("s1")),
            "the shard with most quadrants"
        );
        // The leader asks for the odd quadrant's migration (no shard
        // processes here complete it) and does not merge yet.
        let mkey = migration_key("/t/", q[1]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let m: Migration = loop {
            if let Some(kv) = store.get(&mkey).await.unwrap() {
                break serde_json::from_slice(&kv.value).unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no migration requested"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!((m.from.0.as_str(), m.to.0.as_str()), ("s2", "s1"));
        assert_eq!(m.state, MigrationState::Requested);
        assert!(
            map.owner(cell).is_none(),
            "merged before the quadrants were together"
        );
        // The target restores it: the owner flips, then the merge follows.
        crate::migration::mark_restored(&*store, "/t/", q[1], &ShardId::new("s1"), m.epoch)
            .await
            .unwrap();
        wait_for("not merged", || map.owner(cell).is_some()).await;
        let merged = map.owner(cell).unwrap();
        assert_eq!(merged.owner, ShardId::new("s1"));
        assert_eq!(
            merged.epoch,
            m.epoch.next(),
            "one epoch above everything before"
        );
    }
}
