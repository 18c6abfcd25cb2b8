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

/// How many more than asked [`WorldView::nearest`] keeps before it drops
/// duplicates (entities being handed over, seen in two frames).
const DUPLICATE_SLACK: usize = 16;

/// Side of the squares of the ground plane a frame's entities are grouped
/// in, so that [`WorldView::nearest`] reads the squares near the player
/// first and stops once nothing farther can be among the nearest, m.
const SQUARE: f32 = 16.0;

/// A region's newest frame, when it arrived, and its entities by square.
struct Arrived {
    frame: Arc<CellFrame>,
    at: Instant,
    squares: Squares,
}

/// A frame's entities grouped by [`SQUARE`], each group with the extent
/// its entities really cover (they can stand a little outside their
/// region, and on any square's edge).
struct Squares {
    /// Indices into the frame's entities, one square's after another's.
    order: Vec<u32>,
    squares: Vec<Square>,
}

struct Square {
    min_x: f32,
    min_z: f32,
    max_x: f32,
    max_z: f32,
    /// Its entities: `order[start..end]`.
    start: u32,
    end: u32,
}

impl Squares {
    fn of(entities: &[ViewEntity]) -> Squares {
        let key = |v: f32| (v / SQUARE).floor() as i32;
        let mut keyed: Vec<((i32, i32), u32)> = entities
            .iter()
            .enumerate()
            .map(|(i, e)| ((key(e.pos.x), key(e.pos.z)), i as u32))
            .collect();
        keyed.sort_unstable();
        let mut out = Squares {
            order: Vec::with_capacity(keyed.len()),
            squares: Vec::new(),
        };
        for run in keyed.chunk_by(|a, b| a.0 == b.0) {
            let start = out.order.len() as u32;
            let mut sq = Square {
                min_x: f32::INFINITY,
                min_z: f32::INFINITY,
                max_x: f32::NEG_INFINITY,
                max_z: f32::NEG_INFINITY,
                start,
                end: start,
            };
            for &(_, i) in run {
                let p = entities[i as usize].pos;
                sq.min_x = sq.min_x.min(p.x);
                sq.min_z = sq.min_z.min(p.z);
                sq.max_x = sq.max_x.max(p.x);
                sq.max_z = sq.max_z.max(p.z);
                out.order.push(i);
            }
            sq.end = out.order.len() as u32;
            out.squares.push(sq);
        }
        out
    }
}

impl Square {
    /// Squared distance from (x, z) to the nearest of its entities' extent:
    /// none of them is nearer.
    fn distance2(&self, x: f32, z: f32) -> f32 {
        let dx = (self.min_x - x).max(x - self.max_x).max(0.0);
        let dz = (self.min_z - z).max(z - self.max_z).max(0.0);
        dx * dx + dz * dz
    }
}

/// Where an entity was last known to be (`pos`, learnt at `at`) becomes
/// `seen_pos` if that was learnt later (`seen_at`): a frame older than what
/// is known never moves it back.
pub fn take_if_newer(pos: &mut Vec3, at: &mut Instant, seen_pos: Vec3, seen_at: Instant) {
    if seen_at > *at {
        *pos = seen_pos;
        *at = seen_at;
    }
}

/// An entity in range, found by [`WorldView::nearest`]: its distance, when
/// its frame arrived, and where it is in that frame.
struct Found<'a> {
    /// Squared distance.
    d2: f32,
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
        // Grouped before the write lock: every snapshot waits on it.
        let squares = Squares::of(&frame.entities);
        let mut frames = self.frames.write();
        let regions = frames.entry(frame.region.cell_id()).or_default();
        let newer = match regions.get(&frame.region) {
            Some(Arrived { frame: old, .. }) => {
                frame.epoch > old.epoch
                    || (frame.epoch == old.epoch
                        && (frame.tick >= old.tick || frame.shard != old.shard))
            }
            None => true,
        };
        let superseded = regions.iter().any(|(r, Arrived { frame: old, .. })| {
            *r != frame.region && r.overlaps(frame.region) && old.epoch > frame.epoch
        });
        if newer && !superseded {
            let region = frame.region;
            regions.retain(|r, _| *r == frame.region || !r.overlaps(frame.region));
            regions.insert(
                frame.region,
                Arrived {
                    frame,
                    at: Instant::now(),
                    squares,
                },
            );
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
    /// hottest loop (docs/performance.md, "Capacity per core"): it reads
    /// each frame's entities by [`SQUARE`], nearest squares first, and stops
    /// at the first ring of squares beyond the nearest it has found (in a
    /// swarm that sees itself, the scan no longer grows with everyone in
    /// range); it gathers references into the frames, not copies, compares
    /// squared distances, and copies only the entities it keeps. An entity
    /// being handed over can be in two frames at once; it counts once, and
    /// where both copies are among the nearest (they stand a tick apart, so
    /// they almost always are) the later arrival wins. Only the kept are
    /// checked for that, with [`DUPLICATE_SLACK`] more kept than asked so
    /// that a duplicate does not cost a place.
    pub fn nearest(&self, grid: &Grid, pos: Vec3, radius: f32, limit: usize) -> Vec<ViewEntity> {
        self.nearest_to(grid, pos, radius, limit, None).0
    }

    /// [`WorldView::nearest`] for the player whose entity is `me`: also
    /// where `me` stands and when the frame it was found in arrived (None
    /// if `me` is not among the nearest), so a snapshot learns where its
    /// player stands from the same pass ([`crate::session::Player::saw`]).
    pub fn nearest_to(
        &self,
        grid: &Grid,
        pos: Vec3,
        radius: f32,
        limit: usize,
        me: Option<EntityId>,
    ) -> (Vec<ViewEntity>, Option<(Vec3, Instant)>) {
        let frames = self.frames.read();
        let r2 = radius * radius;
        let order = |a: &Found, b: &Found| a.d2.total_cmp(&b.d2).then(a.e.id.cmp(&b.e.id));
        let keep = limit.saturating_add(DUPLICATE_SLACK);
        // The squares in range, by ring of SQUARE around the player:
        // nearer rings first, so the search can stop at the first ring
        // beyond the `keep`-th nearest entity found so far.
        let mut squares: Vec<(u32, &Arrived, &Square)> = Vec::new();
        for cell in grid.cells_within(pos, radius) {
            let Some(regions) = frames.get(&cell) else {
                continue;
            };
            for a in regions.values() {
                if a.frame.region.distance_xz(grid, pos) > radius {
                    continue;
                }
                for sq in &a.squares.squares {
                    let d2 = sq.distance2(pos.x, pos.z);
                    if d2 <= r2 {
                        squares.push(((d2.sqrt() / SQUARE) as u32, a, sq));
                    }
                }
            }
        }
        squares.sort_unstable_by_key(|(ring, _, _)| *ring);
        // Entities farther than `bound` (squared) cannot be among the
        // `keep` nearest.
        let mut bound = r2;
        let mut found: Vec<Found> = Vec::new();
        for (ring, a, sq) in squares {
            let inner = ring as f32 * SQUARE;
            if inner * inner > bound {
                break;
            }
            for &i in &a.squares.order[sq.start as usize..sq.end as usize] {
                let e = &a.frame.entities[i as usize];
                let (dx, dz) = (e.pos.x - pos.x, e.pos.z - pos.z);
                let d2 = dx * dx + dz * dz;
                if d2 <= bound {
                    found.push(Found { d2, at: a.at, e });
                }
            }
            if found.len() > keep && (bound == r2 || found.len() > keep.saturating_mul(2)) {
                found.select_nth_unstable_by(keep - 1, order);
                found.truncate(keep);
                bound = found[keep - 1].d2;
            }
        }
        if found.len() > keep {
            found.select_nth_unstable_by(keep, order);
            found.truncate(keep);
        }
        // One copy of each entity: the later arrival.
        let mut slot: FxHashMap<EntityId, usize> =
            FxHashMap::with_capacity_and_hasher(found.len(), Default::default());
        let mut unique: Vec<Found> = Vec::with_capacity(found.len());
        for f in found {
            match slot.entry(f.e.id) {
                Entry::Vacant(v) => {
                    v.insert(unique.len());
                    unique.push(f);
                }
                Entry::Occupied(o) => {
                    let old = &mut unique[*o.get()];
                    if f.at > old.at {
                        *old = f;
                    }
                }
            }
        }
        unique.sort_unstable_by(order);
        unique.truncate(limit);
        let seen = me.and_then(|me| {
            unique
                .iter()
                .find(|f| f.e.id == me)
                .map(|f| (f.e.pos, f.at))
        });
        (unique.into_iter().map(|f| f.e.clone()).collect(), seen)
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
            for Arrived { frame, at, .. } in frames.get(&cell).into_iter().flat_map(|r| r.values())
            {
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
            take_if_newer(pos, at, e.pos, seen);
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
            .map(|a| a.frame.entities.len())
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

    #[test]
    fn an_entity_in_two_frames_counts_once_and_the_later_arrival_wins() {
        let view = WorldView::default();
        let grid = Grid::new(64.0);
        let entity = |id: u64, x: f32| ViewEntity {
            id: EntityId(id),
            kind: tessera_proto::msg::EntityKind::Player,
            name: Arc::from("P"),
            pos: Vec3::new(x, 0.0, 10.0),
            vel: Vec3::ZERO,
            yaw: 0.0,
            ack_input: 0,
        };
        let frame = |cell: i32, entities: Vec<ViewEntity>| {
            Arc::new(CellFrame {
                region: RegionId::cell(CellId::new(cell, 0)),
                shard: ShardId::new(if cell == 0 { "a" } else { "b" }),
                epoch: Epoch(1),
                tick: 1,
                entities,
            })
        };
        // Entity 7 is crossing from cell 0 into cell 1: the old owner's
        // frame still has it at 63.9, the new owner's (later) at 64.1.
        let mut west: Vec<ViewEntity> = (100..140)
            .map(|k| entity(k, 30.0 + (k - 100) as f32 * 0.5))
            .collect();
        west.push(entity(7, 63.9));
        view.update(frame(0, west));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut east: Vec<ViewEntity> = (200..240)
            .map(|k| entity(k, 65.0 + (k - 200) as f32 * 0.5))
            .collect();
        east.push(entity(7, 64.1));
        view.update(frame(1, east));
        for limit in [1, 5, 30, 200] {
            let near = view.nearest(&grid, Vec3::new(64.0, 0.0, 10.0), 100.0, limit);
            assert_eq!(near.len(), limit.min(81), "limit {limit}");
            let sevens: Vec<_> = near.iter().filter(|e| e.id == EntityId(7)).collect();
            assert_eq!(sevens.len(), 1, "limit {limit}");
            assert_eq!(sevens[0].pos.x, 64.1, "limit {limit}");
            let ids: std::collections::HashSet<_> = near.iter().map(|e| e.id).collect();
            assert_eq!(ids.len(), near.len(), "limit {limit}: no entity twice");
        }
    }

    proptest::proptest! {
        /// Whatever the crowd, wherever the player: the nearest found by
        /// squares are the nearest found by reading everyone.
        #[test]
        fn nearest_reads_squares_and_finds_what_a_full_scan_finds(
            spots in proptest::collection::vec((-70.0f32..134.0, -70.0f32..134.0), 0..400),
            clumps in proptest::collection::vec((0.0f32..64.0, 0.0f32..64.0), 0..3),
            at in (-40.0f32..110.0, -40.0f32..110.0),
            limit in 0usize..120,
            radius in 5.0f32..120.0,
        ) {
            let view = WorldView::default();
            let grid = Grid::new(64.0);
            let mut all: Vec<ViewEntity> = Vec::new();
            let mut k = 0u64;
            let mut put = |x: f32, z: f32, all: &mut Vec<ViewEntity>| {
                k += 1;
                all.push(ViewEntity {
                    id: EntityId(k),
                    kind: tessera_proto::msg::EntityKind::Player,
                    name: Arc::from("P"),
                    pos: Vec3::new(x, 0.0, z),
                    vel: Vec3::ZERO,
                    yaw: 0.0,
                    ack_input: 0,
                });
            };
            for (x, z) in &spots {
                put(*x, *z, &mut all);
            }
            // Crowds: many in a few metres, some on the same spot.
            for (cx, cz) in &clumps {
                for i in 0..60 {
                    let f = i as f32;
                    put(cx + (f * 0.37) % 4.0, cz + (f * 0.71) % 4.0, &mut all);
                }
            }
            // Each entity in the frame of the cell it stands in, some a
            // little outside it (hysteresis: their frame is the old cell's).
            let mut by_cell: std::collections::BTreeMap<(i32, i32), Vec<ViewEntity>> = Default::default();
            for e in &all {
                let key = |v: f32| ((v - 2.0) / 64.0).floor() as i32;
                by_cell.entry((key(e.pos.x), key(e.pos.z))).or_default().push(e.clone());
            }
            for ((x, z), entities) in by_cell {
                view.update(Arc::new(CellFrame {
                    region: RegionId::cell(CellId::new(x, z)),
                    shard: ShardId::new("a"),
                    epoch: Epoch(1),
                    tick: 1,
                    entities,
                }));
            }
            let pos = Vec3::new(at.0, 0.0, at.1);
            // A full scan: every entity of every frame in range.
            let frames_in_range = |e: &ViewEntity| {
                let cell = CellId::new(((e.pos.x - 2.0) / 64.0).floor() as i32, ((e.pos.z - 2.0) / 64.0).floor() as i32);
                RegionId::cell(cell).distance_xz(&grid, pos) <= radius
                    && grid.cells_within(pos, radius).contains(&cell)
            };
            let d2 = |e: &ViewEntity| {
                let (dx, dz) = (e.pos.x - pos.x, e.pos.z - pos.z);
                dx * dx + dz * dz
            };
            let mut expected: Vec<&ViewEntity> = all
                .iter()
                .filter(|e| frames_in_range(e) && d2(e) <= radius * radius)
                .collect();
            expected.sort_by(|a, b| d2(a).total_cmp(&d2(b)).then(a.id.cmp(&b.id)));
            expected.truncate(limit);
            let got = view.nearest(&grid, pos, radius, limit);
            let got: Vec<EntityId> = got.iter().map(|e| e.id).collect();
            let expected: Vec<EntityId> = expected.iter().map(|e| e.id).collect();
            proptest::prop_assert_eq!(got, expected);
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
