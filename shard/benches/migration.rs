//! `cargo bench -p tessera-shard --bench migration`: the simulation stall of
//! a live migration for cells of 100, 1,000 and 5,000 entities, in process:
//! from the source's freeze (its last tick of the cell) to the target's
//! opening of the cell, through the real `Shard` code and the in-process
//! bus (the cluster store's round trips and QUIC are not included; over
//! loopback they add ~40 ms, see docs/performance.md).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::migration::{Migration, MigrationBoard, MigrationState};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::world::{parse_world, NpcDef};
use tessera_proto::{CellId, Epoch, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Bench"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u32] = if quick { &[100] } else { &[100, 1000, 5000] };
    for &n in sizes {
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
        let world = Arc::new(world);
        let (a, b) = (ShardId::new("a"), ShardId::new("b"));
        let cell = CellId::new(0, 0);
        let map = CellMap::fixed([
            (
                cell,
                CellOwner {
                    owner: a.clone(),
                    epoch: Epoch(1),
                },
            ),
            (
                CellId::new(1, 0),
                CellOwner {
                    owner: b.clone(),
                    epoch: Epoch(1),
                },
            ),
        ]);
        let bus = LocalBus::new();
        let inbox_a = bus.add_shard(a.clone());
        let inbox_b = bus.add_shard(b.clone());
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let board = MigrationBoard::default();
        let (tx, _notices) = tokio::sync::mpsc::unbounded_channel();
        let mut shards = [
            Shard::new(
                ShardConfig::new(a.clone()),
                world.clone(),
                dyn_bus.clone(),
                map.clone(),
            )
            .expect("shard a")
            .with_migrations(board.clone(), tx.clone()),
            Shard::new(
                ShardConfig::new(b.clone()),
                world.clone(),
                dyn_bus.clone(),
                map.clone(),
            )
            .expect("shard b")
            .with_migrations(board.clone(), tx),
        ];
        let inboxes = [inbox_a, inbox_b];
        let ids = [a, b];
        for s in shards.iter_mut() {
            for _ in 0..10 {
                s.step();
            }
        }
        let rounds = if quick { 2 } else { 10 };
        let mut stalls = Vec::new();
        let mut from = 0usize;
        for round in 0..rounds {
            let to = 1 - from;
            let epoch = Epoch(2 + round as u64);
            board.set(
                cell,
                Migration {
                    from: ids[from].clone(),
                    to: ids[to].clone(),
                    epoch,
                    state: MigrationState::Requested,
                    requested_unix_ms: 0,
                    authority: None,
                    cancelled_unix_ms: None,
                },
            );
            let started = Instant::now();
            shards[from].step(); // freezes and ships at the tick boundary
            while let Ok(msg) = inboxes[to].try_recv() {
                shards[to].handle(msg);
            }
            board.remove(cell);
            map.set(
                cell,
                CellOwner {
                    owner: ids[to].clone(),
                    epoch,
                },
            );
            shards[to].step(); // opens the cell and ticks it
            stalls.push(started.elapsed());
            let moved = shards[to]
                .cells()
                .find(|c| c.id == cell)
                .map(|c| c.entity_count())
                .unwrap_or(0);
            assert_eq!(moved, n as usize, "every entity arrived");
            from = to;
        }
        stalls.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "migration of a cell with {n} entities over {rounds} moves: median {:.2} ms, max {:.2} ms",
            ms(stalls[stalls.len() / 2]),
            ms(*stalls.last().expect("at least one"))
        );
    }
}
