//! The router's view of the world: the newest frame of every cell, as the
//! shards publish them. Interest management reads it: a player sees the
//! entities within the interest radius, whichever cell or shard owns them.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tessera_proto::cluster::{CellFrame, ViewEntity};
use tessera_proto::{CellId, EntityId, Grid, Vec3};

#[derive(Default)]
pub struct WorldView {
    /// Each cell's newest frame and when it arrived.
    frames: RwLock<HashMap<CellId, (Arc<CellFrame>, Instant)>>,
    latest_tick: AtomicU64,
}

impl WorldView {
    /// Takes a cell's frame unless a newer one (higher epoch, or same epoch
    /// and later tick, from the same shard) is already there.
    pub fn update(&self, frame: Arc<CellFrame>) {
        self.latest_tick.fetch_max(frame.tick, Ordering::Relaxed);
        let mut frames = self.frames.write();
        let newer = match frames.get(&frame.cell) {
            Some((old, _)) => {
                (frame.epoch, frame.tick) >= (old.epoch, old.tick) || frame.shard != old.shard
            }
            None => true,
        };
        if newer {
            frames.insert(frame.cell, (frame, Instant::now()));
        }
    }

    /// Entities within `radius` of `pos`, each once (an entity being handed
    /// over can show up in two frames: the later arrival wins), nearest
    /// first.
    pub fn around(&self, grid: &Grid, pos: Vec3, radius: f32) -> Vec<ViewEntity> {
        let frames = self.frames.read();
        let mut seen: HashMap<EntityId, (Instant, ViewEntity)> = HashMap::new();
        for cell in grid.cells_within(pos, radius) {
            let Some((frame, at)) = frames.get(&cell) else {
                continue;
            };
            for e in &frame.entities {
                if e.pos.distance_xz(pos) > radius {
                    continue;
                }
                match seen.get(&e.id) {
                    Some((t, _)) if t >= at => {}
                    _ => {
                        seen.insert(e.id, (*at, e.clone()));
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
        self.find_with_time(grid, id, near).map(|(e, _)| e)
    }

    /// Like [`WorldView::find`], with the arrival time of its frame.
    pub fn find_with_time(
        &self,
        grid: &Grid,
        id: EntityId,
        near: Vec3,
    ) -> Option<(ViewEntity, Instant)> {
        let frames = self.frames.read();
        let mut best: Option<(Instant, ViewEntity)> = None;
        for cell in grid.cells_within(near, grid.cell_size) {
            if let Some((frame, at)) = frames.get(&cell) {
                if let Some(e) = frame.entities.iter().find(|e| e.id == id) {
                    if best.as_ref().is_none_or(|(t, _)| at > t) {
                        best = Some((*at, e.clone()));
                    }
                }
            }
        }
        best.map(|(at, e)| (e, at))
    }

    /// The newest tick seen in any frame.
    pub fn latest_tick(&self) -> u64 {
        self.latest_tick.load(Ordering::Relaxed)
    }

    /// Number of cells with a frame.
    pub fn cell_count(&self) -> usize {
        self.frames.read().len()
    }

    /// Total entities in all frames (for metrics and tests).
    pub fn entity_count(&self) -> usize {
        self.frames
            .read()
            .values()
            .map(|(f, _)| f.entities.len())
            .sum()
    }
}
