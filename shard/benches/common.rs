//! Shared set-up of the shard benchmarks: the default world plus a crowd of
//! wandering NPCs, all cells owned by one shard (the worst case for one
//! simulation thread).

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::world::{NpcDef, WorldDef};
use tessera_proto::{Epoch, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

pub fn world_with_wanderers(extra: u32) -> WorldDef {
    world_with_wanderers_scattered(extra, 110.0)
}

/// The default world plus `extra` wanderers spread over a disc of radius
/// `scatter` around the origin (the world is 256 m square).
pub fn world_with_wanderers_scattered(extra: u32, scatter: f32) -> WorldDef {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../worlds/default");
    let mut world =
        tessera_shard::worldfile::load_world_dir(std::path::Path::new(dir)).expect("default world");
    if extra > 0 {
        world.npcs.push(NpcDef {
            name: "Rambler".into(),
            description: "A bench wanderer.".into(),
            pos: Vec3::new(0.0, 0.0, 0.0),
            script: "wanderer".into(),
            count: extra,
            scatter,
        });
    }
    world
}

/// A shard owning every cell, its NPCs spawned, warmed up for `warm` ticks.
pub fn shard(world: WorldDef, warm: u32) -> Shard {
    let id = ShardId::new("bench");
    let map = CellMap::fixed(world.extent.cells().map(|c| {
        (
            c,
            CellOwner {
                owner: id.clone(),
                epoch: Epoch(1),
            },
        )
    }));
    let bus = LocalBus::new();
    let _inbox = bus.add_shard(id.clone());
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let mut shard = Shard::new(ShardConfig::new(id), Arc::new(world), bus, map).expect("shard");
    for _ in 0..warm {
        shard.step(Instant::now());
    }
    shard
}
