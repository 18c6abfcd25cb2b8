//! `cargo bench -p tessera-shard --bench reshape`: the simulation stall of a
//! split and of a merge of a crowded cell (100, 1,000 and 5,000 entities),
//! through the real `Shard` code: the map changes, and the shard's next
//! tick re-partitions the region (every entity extracted from one physics
//! world and inserted into another) before it simulates. The stall is how
//! much longer that tick takes than an ordinary one (the median of the
//! ticks around it). The cluster store's compare-and-put and its watch are
//! not included (they do not stop the simulation: the shard acts on the
//! map at a tick boundary whenever it arrives).
//!
//! Without `--bench` (as `cargo test --benches` runs it) only the
//! 100-entity crowd, once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::world::{parse_world, NpcDef, WorldDef};
use tessera_proto::{CellId, Epoch, RegionId, RegionTree, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Bench"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [0, 0]
"#;

/// The bench world with a crowd of `n` idle NPCs around the middle of
/// cell (0, 0), across all four quadrants.
fn crowd_world(n: u32) -> WorldDef {
    let mut world = parse_world(WORLD).expect("world");
    world
        .scripts
        .insert("idle".into(), "fn on_tick() { }".into());
    world.npcs.push(NpcDef {
        name: "Crowd".into(),
        description: "Part of a crowd.".into(),
        pos: Vec3::new(32.0, 0.0, 32.0),
        script: "idle".into(),
        count: n,
        scatter: 28.0,
    });
    world
}

fn owner(epoch: u64) -> CellOwner {
    CellOwner {
        owner: ShardId::new("a"),
        epoch: Epoch(epoch),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Ticks `shard` `n` times, returning each tick's duration.
fn ticks(shard: &mut Shard, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            shard.step(Instant::now());
            t.elapsed()
        })
        .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u32] = if quick { &[100] } else { &[100, 1000, 5000] };
    let rounds = if quick { 1 } else { 5 };
    println!("entities  op     tick_ms  ordinary_tick_ms  stall_ms (median of {rounds})");
    for &n in sizes {
        let world = Arc::new(crowd_world(n));
        let cell = CellId::new(0, 0);
        let map = CellMap::fixed([(cell, owner(1))]);
        let bus = LocalBus::new();
        let _inbox = bus.add_shard(ShardId::new("a"));
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus);
        let mut shard = Shard::new(
            ShardConfig::new(ShardId::new("a")),
            world,
            dyn_bus,
            map.clone(),
        )
        .expect("shard");
        ticks(&mut shard, 30);
        assert_eq!(shard.entity_count(), n as usize);
        let mut epoch = 1;
        let (mut split, mut merge, mut ordinary) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            ordinary.extend(ticks(&mut shard, 15));
            epoch += 1;
            let mut tree = RegionTree::whole(owner(epoch - 1));
            tree.split(
                RegionId::cell(cell),
                [owner(epoch), owner(epoch), owner(epoch), owner(epoch)],
            )
            .expect("split");
            map.set_tree(cell, tree);
            split.push(ticks(&mut shard, 1)[0]);
            assert_eq!(shard.cells().count(), 4);
            assert_eq!(
                shard.entity_count(),
                n as usize,
                "lost or duplicated in the split"
            );
            ordinary.extend(ticks(&mut shard, 15));
            epoch += 1;
            map.set(cell, owner(epoch));
            merge.push(ticks(&mut shard, 1)[0]);
            assert_eq!(shard.cells().count(), 1);
            assert_eq!(
                shard.entity_count(),
                n as usize,
                "lost or duplicated in the merge"
            );
        }
        let base = median(ordinary);
        for (op, v) in [("split", split), ("merge", merge)] {
            let tick = median(v);
            println!(
                "{n:8}  {op:5}  {:7.2}  {:16.2}  {:8.2}",
                tick.as_secs_f64() * 1e3,
                base.as_secs_f64() * 1e3,
                tick.saturating_sub(base).as_secs_f64() * 1e3
            );
        }
    }
}
