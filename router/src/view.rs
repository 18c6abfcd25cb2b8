//! The router's view of the world: the newest frame of every region (a
//! whole cell, or a quadrant of a split one), as the shards publish them.
//! Interest management reads it: a player sees the entities within the
//! interest radius, whichever region or shard owns them.

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tessera_proto::cluster::{CellFrame, ViewEntity};
use tessera_proto::{CellId, EntityId, Grid, RegionId, Vec3};
use tokio::sync::watch;

/// A region's newest frame and when it arrived.
type Arrived = (Arc<CellFrame>, Instant);

/// An entity in range, found by [`WorldView::nearest`]: its distance, when
/// its frame arrived, and where it is in that frame.
struct Found<'a> {
    d: f32,
    at: Instant,
    e: &'a ViewEntity,
}

#[derive(Default)]
pub struct WorldView {
    /// The newest frame of each region, grouped by cell: a split cell has
    /// one per region, a whole cell one.
    frames: RwLock<HashMap<CellId, HashMap<RegionId, Arrived>>>,
    latest_tick: AtomicU64,
    /// Regions someone waits on for frames ([`WorldView::frames_of`]); a
    /// region nobody waits on any more is dropped at its next frame.
    signals: Mutex<HashMap<RegionId, watch::Sender<()>>>,
}

impl WorldView {
    /// Takes a region's frame unless a newer one is already there: a
    /// higher epoch always wins (a late frame from a region's old owner
    /// never overrides the new owner's); within an epoch, the later tick
    /// (ticks of different shards are not comparable, so another shard's
    /// frame is taken). Frames of regions that overlap it (the whole cell
    /// before a split, the quadrants before a merge) have lower epochs
    /// (docs/regions.md, Epochs) and are dropped; a frame older than an
    /// overlapping one is ignored.
    pub fn update(&self, frame: Arc<CellFrame>) {
        self.latest_tick.fetch_max(frame.tick, Ordering::Relaxed);
        let mut frames = self.frames.write();
        let regions = frames.entry(frame.region.cell_id()).or_default();
        let newer = match regions.get(&frame.region) {
            Some((old, _)) => {
                frame.epoch > old.epoch
                    || (frame.epoch == old.epoch
                        && (frame.tick >= old.tick || frame.shard != old.shard))
            }
            None => true,
        };
        let superseded = regions.iter().any(|(r, (old, _))| {
            *r != frame.region && r.overlaps(frame.region) && old.epoch > frame.epoch
        });
        if newer && !superseded {
            let region = frame.region;
            regions.retain(|r, _| *r == frame.region || !r.overlaps(frame.region));
            regions.insert(frame.region, (frame, Instant::now()));
            drop(frames);
            let mut signals = self.signals.lock();
            if let Some(tx) = signals.get(&region) {
                if tx.receiver_count() == 0 {
                    signals.remove(&region);
                } else {
                    tx.send_replace(());
                }
            }
        }
    }

    /// Changes whenever a frame of `region` is taken: a QUIC connection
    /// times its snapshots to the frames of its player's region
    /// ([`crate::interest::SnapshotClock`]). Per region, not per cell: a
    /// split cell publishes a frame per region per tick, and waking every
    /// player of the cell for each (seven regions: 210 wake-ups a second
    /// each) starved a one-core router.
    pub fn frames_of(&self, region: RegionId) -> watch::Receiver<()> {
        self.signals
            .lock()
            .entry(region)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Entities within `radius` of `pos`, each once (an entity being handed
    /// over can show up in two frames: the later arrival wins), nearest
    /// first.
    pub fn around(&self, grid: &Grid, pos: Vec3, radius: f32) -> Vec<ViewEntity> {
        self.nearest(grid, pos, radius, usize::MAX)
    }

    /// The `limit` entities nearest to `pos` within `radius`, nearest
    /// first: [`WorldView::around`] without sorting what is cut off (a
    /// crowd of thousands costs a selection, not a sort).
    ///
    /// Every QUIC player asks this 20 times a second, so it is the router's
    /// hottest loop (docs/performance.md, "Capacity per core"): it gathers
    /// references into the frames, not copies, finds an entity seen twice
    /// with an id-keyed map of a fast non-cryptographic hash (entity ids
    /// are the shards' own, not attacker-chosen), and copies only the
    /// entities it keeps.
    pub fn nearest(&self, grid: &Grid, pos: Vec3, radius: f32, limit: usize) -> Vec<ViewEntity> {
        let frames = self.frames.read();
        let mut within: Vec<&Arrived> = Vec::new();
        for cell in grid.cells_within(pos, radius) {
            if let Some(regions) = frames.get(&cell) {
                within.extend(
                    regions
                        .values()
                        .filter(|(frame, _)| frame.region.distance_xz(grid, pos) <= radius),
                );
            }
        }
        let total: usize = within.iter().map(|(frame, _)| frame.entities.len()).sum();
        let mut found: Vec<Found> = Vec::with_capacity(total);
        let mut slot: FxHashMap<EntityId, usize> =
            FxHashMap::with_capacity_and_hasher(total, Default::default());
        for (frame, at) in within {
            for e in &frame.entities {
                let d = e.pos.distance_xz(pos);
                if d > radius {
                    continue;
                }
                let f = Found { d, at: *at, e };
                match slot.entry(e.id) {
                    Entry::Vacant(v) => {
                        v.insert(found.len());
                        found.push(f);
                    }
                    Entry::Occupied(o) => {
                        let old = &mut found[*o.get()];
                        if f.at > old.at {
                            *old = f;
                        }
                    }
                }
            }
        }
        let order = |a: &Found, b: &Found| a.d.total_cmp(&b.d).then(a.e.id.cmp(&b.e.id));
        if found.len() > limit {
            found.select_nth_unstable_by(limit, order);
            found.truncate(limit);
        }
        found.sort_unstable_by(order);
        found.into_iter().map(|f| f.e.clone()).collect()
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
            for (frame, at) in frames.get(&cell).into_iter().flat_map(|r| r.values()) {
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
    /// Follows an entity from frame to frame: `pos` is where it was last
    /// known to be and `at` when that was learnt. A frame that arrived
    /// after `at` and holds the entity near `pos` (within a cell) replaces
    /// both, so the search moves along with the entity however far it
    /// goes. Returns the (possibly updated) position.
    pub fn follow(&self, grid: &Grid, id: EntityId, pos: &mut Vec3, at: &mut Instant) -> Vec3 {
        if let Some((e, seen)) = self.find_with_time(grid, id, *pos) {
            if seen > *at {
                *pos = e.pos;
                *at = seen;
            }
        }
        *pos
    }

    pub fn latest_tick(&self) -> u64 {
        self.latest_tick.load(Ordering::Relaxed)
    }

    /// Number of regions with a frame.
    pub fn cell_count(&self) -> usize {
        self.frames.read().values().map(|r| r.len()).sum()
    }

    /// Total entities in all frames (for metrics and tests).
    pub fn entity_count(&self) -> usize {
        self.frames
            .read()
            .values()
            .flat_map(|r| r.values())
            .map(|(f, _)| f.entities.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::{Epoch, ShardId};

    fn frame(shard: &str, epoch: u64, tick: u64, x: f32) -> Arc<CellFrame> {
        Arc::new(CellFrame {
            region: RegionId::cell(CellId::new(0, 0)),
            shard: ShardId::new(shard),
            epoch: Epoch(epoch),
            tick,
            entities: vec![ViewEntity {
                id: EntityId(1),
                kind: tessera_proto::msg::EntityKind::Player,
                name: Arc::from("Ann"),
                pos: Vec3::new(x, 0.0, 1.0),
                vel: Vec3::ZERO,
                yaw: 0.0,
                ack_input: 0,
            }],
        })
    }

    /// A player who only sends inputs walks 300 m east across five cells;
    /// the router must know where they are at every step (it once searched
    /// only within a cell of where they had joined, and lost them).
    #[test]
    fn follow_keeps_up_with_an_entity_walking_across_many_cells() {
        let view = WorldView::default();
        let grid = Grid::new(64.0);
        let start = Vec3::new(-100.0, 0.0, 1.0);
        let mut pos = start;
        let mut at = Instant::now();
        let mut last_cell = None;
        for step in 0..150u64 {
            std::thread::sleep(std::time::Duration::from_micros(50));
            let x = start.x + step as f32 * 2.0;
            let cell = grid.cell_of(Vec3::new(x, 0.0, 1.0));
            let mut f = (*frame("a", 1, step + 1, x)).clone();
            f.region = RegionId::cell(cell);
            // The cell it left is published again, without it.
            if let Some(old) = last_cell.filter(|c| *c != cell) {
                view.update(Arc::new(CellFrame {
                    region: RegionId::cell(old),
                    entities: Vec::new(),
                    ..f.clone()
                }));
            }
            view.update(Arc::new(f));
            last_cell = Some(cell);
            let got = view.follow(&grid, EntityId(1), &mut pos, &mut at);
            assert_eq!(got.x, x, "step {step}");
        }
        assert!(pos.distance_xz(start) > 290.0);
    }

    #[test]
    fn a_late_frame_from_the_old_owner_does_not_override_the_new_one() {
        let view = WorldView::default();
        let grid = Grid::new(64.0);
        view.update(frame("a", 1, 500, 1.0));
        view.update(frame("b", 2, 10, 2.0)); // migrated: new owner, new epoch
        view.update(frame("a", 1, 501, 9.0)); // late frame from the old owner
        let e = view.find(&grid, EntityId(1), Vec3::ZERO).unwrap();
        assert_eq!(e.pos.x, 2.0);
        view.update(frame("b", 2, 9, 3.0)); // older tick of the same owner
        assert_eq!(
            view.find(&grid, EntityId(1), Vec3::ZERO).unwrap().pos.x,
            2.0
        );
        view.update(frame("b", 2, 11, 4.0));
        assert_eq!(
            view.find(&grid, EntityId(1), Vec3::ZERO).unwrap().pos.x,
            4.0
        );
    }

    #[test]
    fn nearest_is_the_head_of_around() {
        let view = WorldView::default();
        let grid = Grid::new(64.0);
        let entities: Vec<ViewEntity> = (0..200u64)
            .map(|k| ViewEntity {
                id: EntityId(k),
                kind: tessera_proto::msg::EntityKind::Npc,
                name: Arc::from("N"),
                // Scrambled distances, some out of range.
                pos: Vec3::new(((k * 37) % 150) as f32, 0.0, 1.0),
                vel: Vec3::ZERO,
                yaw: 0.0,
                ack_input: 0,
            })
            .collect();
        view.update(Arc::new(CellFrame {
            region: RegionId::cell(CellId::new(0, 0)),
            shard: ShardId::new("a"),
            epoch: Epoch(1),
            tick: 1,
            entities,
        }));
        let all = view.around(&grid, Vec3::ZERO, 100.0);
        assert!(all.len() > 100 && all.len() < 200);
        for limit in [0, 1, 10, 64, 500] {
            let n = view.nearest(&grid, Vec3::ZERO, 100.0, limit);
            assert_eq!(n, all[..limit.min(all.len())].to_vec(), "limit {limit}");
        }
    }

    fn region_frame(region: &str, epoch: u64, ids: &[u64], x: f32) -> Arc<CellFrame> {
        Arc::new(CellFrame {
            region: region.parse().unwrap(),
            shard: ShardId::new("a"),
            epoch: Epoch(epoch),
            tick: 1,
            entities: ids
                .iter()
                .map(|id| ViewEntity {
                    id: EntityId(*id),
                    kind: tessera_proto::msg::EntityKind::Npc,
                    name: Arc::from("N"),
                    pos: Vec3::new(x, 0.0, 10.0),
                    vel: Vec3::ZERO,
                    yaw: 0.0,
                    ack_input: 0,
                })
                .collect(),
        })
    }

    /// After a split the quadrants' frames replace the whole cell's, a late
    /// frame of the whole cell changes nothing, and a merge's frame
    /// replaces the quadrants'.
    #[test]
    fn frames_of_a_split_cell_replace_the_whole_cells_and_back() {
        let view = WorldView::default();
        let grid = Grid::new(64.0);
        let ids = |v: &WorldView| {
            let mut ids: Vec<u64> = v
                .around(&grid, Vec3::new(32.0, 0.0, 32.0), 100.0)
                .iter()
                .map(|e| e.id.0)
                .collect();
            ids.sort();
            ids
        };
        view.update(region_frame("0,0", 3, &[1, 2, 3], 10.0));
        assert_eq!(ids(&view), vec![1, 2, 3]);
        // Split (epoch 4): entity 3 left the world meanwhile.
        view.update(region_frame("0,0/0", 4, &[1], 10.0));
        view.update(region_frame("0,0/1", 4, &[2], 40.0));
        assert_eq!(ids(&view), vec![1, 2], "the whole cell's frame is gone");
        assert_eq!(view.cell_count(), 2);
        view.update(region_frame("0,0", 3, &[1, 2, 3], 10.0));
        assert_eq!(ids(&view), vec![1, 2], "a late frame of the old layout");
        // Merge (epoch 5).
        view.update(region_frame("0,0", 5, &[2], 10.0));
        assert_eq!(ids(&view), vec![2]);
        assert_eq!(view.cell_count(), 1);
    }

    /// A connection waiting on a region hears of that region's frames
    /// only (not of its siblings'); a region nobody waits on any more is
    /// forgotten.
    #[test]
    fn frames_of_a_region_signal_their_arrival() {
        let view = WorldView::default();
        let mut here = view.frames_of(RegionId::cell(CellId::new(0, 0)));
        let mut there = view.frames_of(RegionId::cell(CellId::new(5, 5)));
        let quadrant = view.frames_of("1,0/2".parse().unwrap());
        assert!(!here.has_changed().unwrap());
        view.update(frame("a", 1, 1, 1.0)); // cell 0,0
        assert!(here.has_changed().unwrap());
        assert!(!there.has_changed().unwrap());
        view.update(region_frame("1,0/3", 1, &[7], 100.0));
        assert!(!quadrant.has_changed().unwrap(), "a sibling's frame");
        view.update(region_frame("1,0/2", 1, &[8], 70.0));
        assert!(quadrant.has_changed().unwrap());
        here.borrow_and_update();
        view.update(frame("a", 1, 0, 1.0)); // an older tick: not taken
        assert!(!here.has_changed().unwrap());
        drop(there.borrow_and_update());
        drop(there);
        let mut far = (*frame("a", 1, 1, 330.0)).clone();
        far.region = RegionId::cell(CellId::new(5, 5));
        view.update(Arc::new(far));
        assert_eq!(view.signals.lock().len(), 2, "5,5 has no listener left");
    }
}
