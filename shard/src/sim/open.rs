//! Opening a cell this shard was given without a migration: from its last
//! checkpoint (a failover, or a restart of the whole world), or fresh from
//! the world file.

use super::Shard;
use crate::cell::Cell;
use crate::script::ScriptInstance;
use std::collections::{HashMap, HashSet};
use tessera_coordinator::migration::now_unix_ms;
use tessera_proto::cluster::{EntityTransfer, ScriptState};
use tessera_proto::msg::{EntityKind, Input};
use tessera_proto::{EntityId, Epoch, RegionId, Vec3};

/// Neighbour cells' checkpoints as a restore reads them, kept for one
/// reconcile so each is read at most once.
pub(super) type NeighbourCheckpoints = HashMap<RegionId, Option<SavedIds>>;

/// The entities of a checkpoint and when it was saved.
pub(super) struct SavedIds {
    saved_unix_ms: u64,
    entities: Vec<EntityId>,
}

impl Shard {
    /// Opens a cell this shard was given without a migration: from its last checkpoint if
    /// there is one (a failover, or a restart of the whole world), else from the world file.
    pub(super) fn open_cell(
        &mut self,
        id: RegionId,
        epoch: Epoch,
        neighbours: &mut NeighbourCheckpoints,
    ) {
        let Some(c) = &self.config.checkpoints else {
            return self.open_fresh(id, epoch);
        };
        match crate::checkpoint::claim(&c.db, id, epoch) {
            Ok(Some(cp)) => self.open_checkpoint(id, epoch, cp, neighbours),
            Ok(None) => self.open_fresh(id, epoch),
            Err(e) => {
                // Availability over state: the cell runs, from the world file.
                metrics::counter!("tessera_shard_checkpoint_errors_total", "shard" => self.id.0.clone())
                    .increment(1);
                tracing::error!(shard = %self.id, cell = %id, epoch = %epoch, error = %e, "cannot read the cell's checkpoint; opening it from the world file");
                self.open_fresh(id, epoch);
            }
        }
    }

    /// Opens a cell as its last checkpoint left it, without its players (their routers re-join
    /// them here).
    fn open_checkpoint(
        &mut self,
        id: RegionId,
        epoch: Epoch,
        cp: crate::checkpoint::CellCheckpoint,
        neighbours: &mut NeighbourCheckpoints,
    ) {
        let mut cell = Cell::new(id, epoch, &self.world);
        let age_ms = now_unix_ms().saturating_sub(cp.saved_unix_ms);
        let elsewhere = self.entities_that_moved_on(id, cp.saved_unix_ms, neighbours);
        let mut players = 0;
        for t in cp.entities {
            if t.player.is_some() {
                players += 1;
                continue;
            }
            if elsewhere.contains(&t.id) {
                tracing::info!(shard = %self.id, cell = %id, entity = %t.id, "not restored: it is in a neighbour cell now");
                continue;
            }
            self.forwarding.forget(t.id);
            cell.insert(t);
        }
        tracing::info!(shard = %self.id, cell = %id, epoch = %epoch, entities = cell.entity_count(), players_left_to_routers = players, from_shard = %cp.shard, from_epoch = %cp.epoch, checkpoint_tick = cp.tick, age_ms, "cell restored from its checkpoint");
        metrics::counter!("tessera_shard_cells_restored_total", "shard" => self.id.0.clone())
            .increment(1);
        self.cells.insert(id, cell);
    }

    /// Entities in the neighbours of `id` as they are now: simulated here,
    /// or in a checkpoint newer than `since` (unix ms). An entity of an
    /// older checkpoint of `id` that is among them walked on after it.
    fn entities_that_moved_on(
        &self,
        id: RegionId,
        since: u64,
        neighbours: &mut NeighbourCheckpoints,
    ) -> HashSet<EntityId> {
        let mut ids = HashSet::new();
        let Some(c) = &self.config.checkpoints else {
            return ids;
        };
        for n in self.touching_leaves(id) {
            if let Some(cell) = self.cells.get(&n) {
                ids.extend(cell.entity_ids());
                continue;
            }
            let other = neighbours.entry(n).or_insert_with(|| {
                crate::checkpoint::load(&c.db, n)
                    .ok()
                    .flatten()
                    .map(|cp| SavedIds {
                        saved_unix_ms: cp.saved_unix_ms,
                        entities: cp.entities.iter().map(|e| e.id).collect(),
                    })
            });
            if let Some(saved) = other {
                if saved.saved_unix_ms > since {
                    ids.extend(saved.entities.iter().copied());
                }
            }
        }
        ids
    }

    fn open_fresh(&mut self, id: RegionId, epoch: Epoch) {
        let mut cell = Cell::new(id, epoch, &self.world);
        for (index, (name, pos, def)) in self.world.npc_spawns().into_iter().enumerate() {
            if !id.contains_point(&self.grid, pos) {
                continue;
            }
            let entity = EntityId(EntityId::NPC_BIT | index as u64);
            let mut script = ScriptInstance::new(&def.script);
            let mut walk_target = None;
            if !self.world.scripts.contains_key(&def.script) {
                script.disabled = Some(format!("unknown script {}", def.script));
            } else {
                let ctx = crate::script::ScriptCtx {
                    entity,
                    name: &name,
                    pos,
                    home: pos,
                    tick: self.tick,
                    seed: crate::script::derive_seed(entity, self.tick, 0),
                };
                // A new world: nobody is around to hear, so only movement
                // matters.
                for action in self.scripts.init(&mut script, &ctx) {
                    match action {
                        crate::script::ScriptAction::WalkTo(t) => walk_target = Some(t),
                        crate::script::ScriptAction::Stop => walk_target = None,
                        _ => {}
                    }
                }
            }
            cell.insert(EntityTransfer {
                id: entity,
                kind: EntityKind::Npc,
                name,
                description: def.description.clone(),
                pos,
                vel: Vec3::ZERO,
                yaw: 0.0,
                home: pos,
                player: None,
                session: None,
                input: Input::default(),
                walk_target,
                script: Some(ScriptState {
                    script: script.script,
                    state_json: script.state.to_string(),
                    disabled: script.disabled,
                }),
            });
        }
        tracing::info!(shard = %self.id, cell = %id, epoch = %epoch, entities = cell.entity_count(), "cell opened");
        self.cells.insert(id, cell);
    }
}
