//! Splits and merges on the shard's side (docs/regions.md).
//!
//! The coordinator splits a region by replacing its leaf in the cell map
//! with four leaves of the same owner, and merges every leaf under a split
//! region (at any depth), once one shard owns them all, into that region,
//! each in one compare-and-put. The owner
//! sees the change when it reconciles with the map, at a tick boundary:
//! the regions it simulated that the map replaced by overlapping regions of
//! its own are re-partitioned at once. Every entity (players, NPCs with
//! their script state, pending input, session) moves into the new region
//! that holds its position; one the map now gives to another shard (the
//! map moved on meanwhile) is handed to that shard. Nothing is lost or
//! duplicated, and no message has to cross the network, so the stall is
//! the time to move the entities between the physics worlds. Moving a
//! quadrant to another shard is then an ordinary live migration.

use super::Shard;
use crate::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;
use tessera_proto::cluster::{EntityTransfer, PlayerEvent, ToShard};
use tessera_proto::{Epoch, RegionId};

/// What a reconcile re-partitioned.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reshaped {
    /// Regions simulated before, replaced by smaller ones.
    pub(super) split: usize,
    /// Regions opened in place of smaller ones.
    pub(super) merged: usize,
}

impl Shard {
    /// Re-partitions the simulated regions the map replaced by overlapping
    /// regions of this shard (`mine`: every leaf the map gives this shard).
    pub(super) fn reshape(&mut self, mine: &BTreeMap<RegionId, Epoch>, now: Instant) -> Reshaped {
        // A region shipped here whose owner flip and replacement (the merge
        // that gathered it) reached this shard in one map change never
        // opened on its own: open it now, so it is re-partitioned with the
        // others and its entities (and the messages that waited for them)
        // are not lost.
        let stranded: Vec<RegionId> = self
            .migrations
            .incoming
            .keys()
            .filter(|r| !mine.contains_key(r) && mine.keys().any(|m| m.overlaps(**r)))
            .copied()
            .collect();
        for r in stranded {
            if let Some(inc) = self.migrations.incoming.remove(&r) {
                tracing::info!(shard = %self.id, region = %r, "a migrated region replaced before it opened; opening it to re-partition it");
                self.open_migrated(r, inc, now);
            }
        }
        let old: Vec<RegionId> = self
            .cells
            .keys()
            .filter(|r| !mine.contains_key(r) && mine.keys().any(|m| m.overlaps(**r)))
            .copied()
            .collect();
        if old.is_empty() {
            return Reshaped::default();
        }
        let started = Instant::now();
        let new: Vec<(RegionId, Epoch)> = mine
            .iter()
            .filter(|(m, _)| !self.cells.contains_key(m) && old.iter().any(|o| o.overlaps(**m)))
            .map(|(m, e)| (*m, *e))
            .collect();
        let reshaped = Reshaped {
            split: old
                .iter()
                .filter(|o| new.iter().any(|(n, _)| o.contains(*n) && **o != *n))
                .count(),
            merged: new
                .iter()
                .filter(|(n, _)| old.iter().any(|o| n.contains(*o) && *o != *n))
                .count(),
        };
        let mut entities: Vec<(RegionId, EntityTransfer)> = Vec::new();
        for r in &old {
            if let Some(mut cell) = self.cells.remove(r) {
                for id in cell.entity_ids() {
                    if let Some(t) = cell.extract(id) {
                        entities.push((*r, t));
                    }
                }
            }
            self.ghost_links
                .retain(|(from, to), _| from != r && to != r);
            self.clear_gauges(*r);
        }
        for (region, epoch) in &new {
            self.cells
                .insert(*region, Cell::new(*region, *epoch, &self.world));
        }
        let moved = entities.len();
        for (from, t) in entities {
            self.place(from, t, now);
        }
        let stall = started.elapsed();
        let shard = self.id.0.clone();
        metrics::histogram!("tessera_shard_reshape_stall_seconds", "shard" => shard.clone())
            .record(stall.as_secs_f64());
        if reshaped.split > 0 {
            metrics::counter!("tessera_shard_splits_total", "shard" => shard.clone())
                .increment(reshaped.split as u64);
        }
        if reshaped.merged > 0 {
            metrics::counter!("tessera_shard_merges_total", "shard" => shard)
                .increment(reshaped.merged as u64);
        }
        let old_names: Vec<String> = old.iter().map(|r| r.to_string()).collect();
        let new_names: Vec<String> = new.iter().map(|(r, _)| r.to_string()).collect();
        tracing::info!(shard = %self.id, from = ?old_names, to = ?new_names, entities = moved, stall_us = stall.as_micros() as u64, tick = self.tick, "regions re-partitioned");
        // The new regions' checkpoints at once: a failover restores them,
        // not the replaced regions' older ones.
        let ids: Vec<RegionId> = new.iter().map(|(r, _)| *r).collect();
        self.checkpoint(&ids);
        reshaped
    }

    /// Puts an entity of a replaced region `from` where the map says it is
    /// now: one of the `new` regions, another region of this shard, or
    /// another shard's (a hand-off). If the map names nobody, it goes to
    /// this shard's nearest region.
    fn place(&mut self, from: RegionId, t: EntityTransfer, now: Instant) {
        let session = t.session.clone();
        let target = self.map.owner_at(&self.grid, t.pos);
        let region = match target {
            Some((region, _)) if self.cells.contains_key(&region) => region,
            Some((region, owner)) if owner.owner != self.id => {
                if t.player.is_none() {
                    self.mark_dirty(from);
                }
                self.forwarding.remember(t.id, owner.owner.clone(), now);
                let msg = ToShard::Handoff {
                    to: region,
                    epoch: owner.epoch,
                    entity: t,
                };
                if let Err(e) = self.bus.to_shard(&owner.owner, msg) {
                    tracing::error!(shard = %self.id, region = %region, error = %e, "cannot hand an entity of a re-partitioned region on");
                }
                return;
            }
            _ => {
                let Some(nearest) = self.cells.keys().copied().min_by(|a, b| {
                    let da = a.distance_xz(&self.grid, t.pos);
                    let db = b.distance_xz(&self.grid, t.pos);
                    da.total_cmp(&db)
                }) else {
                    return;
                };
                nearest
            }
        };
        if let Some(cell) = self.cells.get_mut(&region) {
            cell.insert(t);
        }
        if let Some(session) = session {
            self.send_player(
                &session,
                PlayerEvent::OwnerChanged {
                    region,
                    shard: self.id.clone(),
                },
            );
        }
    }
}
