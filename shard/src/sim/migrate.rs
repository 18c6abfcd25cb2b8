//! Live migration on the shard's side (the steps as recorded in the cluster
//! store are in `tessera_coordinator::migration`): the source freezes a cell
//! at a tick boundary and ships it whole; the target keeps the snapshot
//! until the map names it owner at the migration's epoch, then opens it and
//! replays the messages that waited. A cancelled migration is undone on
//! both sides.

use super::{Shard, ShardNotice};
use crate::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;
use tessera_coordinator::migration::{now_unix_ms, MigrationBoard};
use tessera_proto::cluster::{EntityTransfer, PlayerEvent, ToShard};
use tessera_proto::{EntityId, Epoch, RegionId, ShardId};

/// The shard's migrations in flight.
#[derive(Default)]
pub(super) struct Migrations {
    /// Migrations as the cluster store records them.
    pub(super) board: MigrationBoard,
    /// Tells the shard's process what it must record in the cluster store.
    pub(super) notices: Option<tokio::sync::mpsc::UnboundedSender<ShardNotice>>,
    /// Cells this shard froze and shipped, and to whom; not simulated here
    /// any more, whatever the map still says.
    pub(super) shipped: HashMap<RegionId, Shipped>,
    /// Cells shipped to this shard, waiting for the map to make it owner.
    pub(super) incoming: HashMap<RegionId, Incoming>,
    /// Messages for entities of incoming cells, replayed once they open.
    pub(super) deferred: Vec<ToShard>,
    /// Stall of the last migration into this shard, ms.
    pub(super) last_stall_ms: Option<u64>,
}

/// A cell this shard froze and shipped, kept until the map names the
/// target, so a cancelled migration can take it back.
pub(super) struct Shipped {
    pub(super) to: ShardId,
    epoch: Epoch,
    frozen_unix_ms: u64,
    entities: Vec<EntityTransfer>,
}

/// A cell shipped to this shard.
pub(super) struct Incoming {
    pub(super) epoch: Epoch,
    frozen_unix_ms: u64,
    entities: Vec<EntityTransfer>,
}

impl Migrations {
    /// True if `entity` is in a cell shipped here that has not opened yet,
    /// or handed into one.
    pub(super) fn is_incoming(&self, entity: EntityId) -> bool {
        self.incoming
            .values()
            .any(|inc| inc.entities.iter().any(|e| e.id == entity))
            || self
                .deferred
                .iter()
                .any(|m| matches!(m, ToShard::Handoff { entity: e, .. } if e.id == entity))
    }
}

impl Shard {
    /// Follows migrations on `board` and reports progress on `notices`.
    pub fn with_migrations(
        mut self,
        board: MigrationBoard,
        notices: tokio::sync::mpsc::UnboundedSender<ShardNotice>,
    ) -> Shard {
        self.migrations.board = board;
        self.migrations.notices = Some(notices);
        self
    }

    /// Opens a cell from a migration snapshot: its entities exactly as the
    /// old owner froze them, then the messages that waited for them.
    pub(super) fn open_migrated(&mut self, id: RegionId, inc: Incoming, now: Instant) {
        let mut cell = Cell::new(id, inc.epoch, &self.world);
        let mut sessions = Vec::new();
        for t in inc.entities {
            self.forwarding.forget(t.id);
            if let Some(s) = &t.session {
                sessions.push(s.clone());
            }
            cell.insert(t);
        }
        let stall_ms = now_unix_ms().saturating_sub(inc.frozen_unix_ms);
        metrics::histogram!("tessera_shard_migration_stall_seconds", "shard" => self.id.0.clone())
            .record(stall_ms as f64 / 1000.0);
        tracing::info!(shard = %self.id, cell = %id, epoch = %inc.epoch, entities = cell.entity_count(), stall_ms, "migrated cell opened");
        self.migrations.last_stall_ms = Some(stall_ms);
        self.cells.insert(id, cell);
        // The new owner's checkpoint, at once: it also fences the old owner's late writes.
        self.checkpoint(&[id]);
        for s in sessions {
            self.send_player(
                &s,
                PlayerEvent::OwnerChanged {
                    region: id,
                    shard: self.id.clone(),
                },
            );
        }
        for msg in std::mem::take(&mut self.migrations.deferred) {
            self.handle(msg, now);
        }
    }

    /// Undoes what cancelled migrations left: a cell this shard shipped
    /// opens here again from what it shipped (the owner never flipped), and
    /// a snapshot shipped here is forgotten.
    fn settle_cancelled(&mut self, now: Instant) {
        for (cell, m) in self.migrations.board.cancelled(&self.id) {
            let shipped_here = m.from == self.id
                && self
                    .migrations
                    .shipped
                    .get(&cell)
                    .is_some_and(|s| s.epoch == m.epoch);
            if shipped_here {
                let Some(s) = self.migrations.shipped.remove(&cell) else {
                    continue;
                };
                let Some(owner) = self.map.region_owner(cell).filter(|o| o.owner == self.id) else {
                    continue;
                };
                tracing::warn!(shard = %self.id, cell = %cell, to = %s.to, entities = s.entities.len(), "migration cancelled after the cell was shipped; taking it back");
                self.open_migrated(
                    cell,
                    Incoming {
                        epoch: owner.epoch,
                        frozen_unix_ms: s.frozen_unix_ms,
                        entities: s.entities,
                    },
                    now,
                );
            }
            let coming_here = m.to == self.id
                && self
                    .migrations
                    .incoming
                    .get(&cell)
                    .is_some_and(|i| i.epoch == m.epoch);
            if coming_here {
                self.migrations.incoming.remove(&cell);
                // Hand-offs that waited for the cell go back to its owner.
                for msg in std::mem::take(&mut self.migrations.deferred) {
                    match msg {
                        ToShard::Handoff { to, epoch, entity } if to == cell => {
                            let _ = self
                                .bus
                                .to_shard(&m.from, ToShard::Handoff { to, epoch, entity });
                        }
                        other => self.migrations.deferred.push(other),
                    }
                }
                tracing::warn!(shard = %self.id, cell = %cell, from = %m.from, "migration cancelled; snapshot dropped");
            }
        }
    }

    /// Freezes and ships the cells the board says are leaving this shard.
    pub(super) fn ship_migrations(&mut self, now: Instant) {
        self.settle_cancelled(now);
        for (cell_id, m) in self.migrations.board.outgoing(&self.id) {
            if self.migrations.shipped.contains_key(&cell_id) {
                continue;
            }
            let Some(mut cell) = self.cells.remove(&cell_id) else {
                continue;
            };
            let entities: Vec<EntityTransfer> = cell
                .entity_ids()
                .into_iter()
                .filter_map(|id| cell.extract(id))
                .collect();
            let frozen_unix_ms = now_unix_ms();
            let msg = ToShard::CellSnapshot {
                region: cell_id,
                epoch: m.epoch,
                frozen_tick: self.tick,
                frozen_unix_ms,
                entities: entities.clone(),
            };
            match self.bus.to_shard(&m.to, msg) {
                Ok(()) => {
                    for e in &entities {
                        self.forwarding.remember(e.id, m.to.clone(), now);
                    }
                    tracing::info!(shard = %self.id, cell = %cell_id, to = %m.to, entities = entities.len(), tick = self.tick, "cell frozen and shipped");
                    self.migrations.shipped.insert(
                        cell_id,
                        Shipped {
                            to: m.to.clone(),
                            epoch: m.epoch,
                            frozen_unix_ms,
                            entities,
                        },
                    );
                    self.clear_gauges(cell_id);
                }
                Err(e) => {
                    tracing::error!(shard = %self.id, cell = %cell_id, error = %e, "cannot ship cell; keeping it");
                    for t in entities {
                        cell.insert(t);
                    }
                    self.cells.insert(cell_id, cell);
                }
            }
        }
    }

    /// A migrating cell's snapshot arrived: kept until the map names this
    /// shard its owner at the migration's epoch.
    pub(super) fn on_cell_snapshot(
        &mut self,
        cell: RegionId,
        epoch: Epoch,
        frozen_tick: u64,
        frozen_unix_ms: u64,
        entities: Vec<EntityTransfer>,
        now: Instant,
    ) {
        tracing::info!(shard = %self.id, cell = %cell, epoch = %epoch, frozen_tick, entities = entities.len(), "migrating cell received");
        self.migrations.incoming.insert(
            cell,
            Incoming {
                epoch,
                frozen_unix_ms,
                entities,
            },
        );
        match &self.migrations.notices {
            Some(tx) => {
                let _ = tx.send(ShardNotice::Restored {
                    region: cell,
                    epoch,
                });
            }
            None => {
                tracing::warn!(shard = %self.id, cell = %cell, "no way to report the migration; it will time out")
            }
        }
        // The map may already say so (a fast coordinator).
        self.reconcile(now);
    }
}
