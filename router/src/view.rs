//! The router's view of the world: the newest frame of every cell, as the
//! shards publish them. Interest management reads it: a player sees the
//! entities within the interest radius, whichever cell or shard owns them.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::cluster::{CellFrame, ViewEntity};
use tessera_proto::{CellId, EntityId, Grid, Vec3};

#[derive(Default)]
pub struct WorldView {
    frames: RwLock<HashMap<CellId, Arc<CellFrame>>>,
    latest_tick: std::sync::atomic::AtomicU64,
}

impl WorldView {
    /// Takes a cell's frame unless a newer one (higher epoch, or same epoch
    /// and later tick) is already there.
    pub fn update(&self, frame: Arc<CellFrame>) {
        self.latest_tick
            .fetch_max(frame.tick, std::sync::atomic::Ordering::Relaxed);
        let mut frames = self.frames.write();
        let newer = match frames.get(&frame.cell) {
            Some(old) => {
                (frame.epoch, frame.tick) >= (old.epoch, old.tick) || frame.shard != old.shard
            }
            None => true,
        };
        if newer {
            frames.insert(frame.cell, frame);
        }
    }

    /// Entities within `radius` of `pos`, each once (an entity being handed
    /// over can show up in two frames: the later tick wins).
    pub fn around(&self, grid: &Grid, pos: Vec3, radius: f32) -> Vec<ViewEntity> {
        let frames = self.frames.read();
        let mut seen: HashMap<EntityId, (u64, ViewEntity)> = HashMap::new();
        for cell in grid.cells_within(pos, radius) {
            let Some(frame) = frames.get(&cell) else {
                continue;
            };
            for e in &frame.entities {
                if e.pos.distance_xz(pos) > radius {
                    continue;
                }
                match seen.get(&e.id) {
                    Some((tick, _)) if *tick >= frame.tick => {}
                    _ => {
                        seen.insert(e.id, (frame.tick, e.clone()));
                    }
                }
            }
        }
        let mut out: Vec<ViewEntity> = seen.into_values().map(|(_, e)| e).collect();
        out.sort_by(|a, b| {
            a.pos
                .distance_xz(pos)
                .total_cmp(&b.pos.distance_xz(pos))
                .then(a.id.cmp(&b.id))
        });
        out
    }

    /// Finds one entity near where it was last seen.
    pub fn find(&self, grid: &Grid, id: EntityId, near: Vec3) -> Option<ViewEntity> {
        let frames = self.frames.read();
        let mut best: Option<(u64, ViewEntity)> = None;
        for cell in grid.cells_within(near, grid.cell_size) {
            if let Some(frame) = frames.get(&cell) {
                if let Some(e) = frame.entities.iter().find(|e| e.id == id) {
                    if best.as_ref().is_none_or(|(t, _)| frame.tick > *t) {
                        best = Some((frame.tick, e.clone()));
                    }
                }
            }
        }
        best.map(|(_, e)| e)
    }

    /// The newest tick seen in any frame.
    pub fn latest_tick(&self) -> u64 {
        self.latest_tick.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Total entities in all frames (for metrics and tests).
    pub fn entity_count(&self) -> usize {
        self.frames.read().values().map(|f| f.entities.len()).sum()
    }
}
