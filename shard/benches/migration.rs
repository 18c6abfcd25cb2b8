//! `cargo bench -p tessera-shard --bench migration`: the simulation stall of
//! a live migration for cells of 100, 1,000 and 5,000 entities, in process:
//! from the source's freeze (its last tick of the cell) to the target's
//! opening of the cell, through the real `Shard` code and the in-process
//! bus (the cluster store's round trips and QUIC are not included; over
//! loopback they add ~40 ms, see docs/performance.md).
//!
//! Then, by cell size (10, 100, 1,000 and 5,000 entities), the parts of a
//! migration on their own: the snapshot (`Cell::extract` of every entity,
//! as `ship_migrations` does; `Cell::export`, the checkpoint's copy that
//! leaves them in place), the `CellSnapshot` on the wire (bincode, framed
//! as the QUIC bus sends it: bytes, encode and decode time) and the restore
//! (`Cell::new` and `Cell::insert` of every entity, as `open_migrated`
//! does).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::migration::{Migration, MigrationBoard, MigrationState};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{EntityTransfer, Envelope, ToShard};
use tessera_proto::frame::{self, MAX_CLUSTER_FRAME};
use tessera_proto::world::{parse_world, NpcDef, WorldDef};
use tessera_proto::{CellId, Epoch, ShardId, Vec3};
use tessera_shard::cell::Cell;
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Bench"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

/// The bench world with a crowd of `n` idle NPCs in cell (0, 0).
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

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    stalls(quick);
    by_cell_size(quick);
}

/// The stall of whole migrations between two shards.
fn stalls(quick: bool) {
    let sizes: &[u32] = if quick { &[100] } else { &[100, 1000, 5000] };
    for &n in sizes {
        let world = Arc::new(crowd_world(n));
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
                s.step(Instant::now());
            }
        }
        let rounds = if quick { 2 } else { 10 };
        let mut stalls = Vec::new();
        let mut from = 0usize;
        for round in 0..rounds {
            let to = 1 - from;
            let epoch = Epoch(2 + round as u64);
            board.set(
                cell.into(),
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
            shards[from].step(Instant::now()); // freezes and ships at the tick boundary
            while let Ok(msg) = inboxes[to].try_recv() {
                shards[to].handle(msg, Instant::now());
            }
            board.remove(cell.into());
            map.set(
                cell,
                CellOwner {
                    owner: ids[to].clone(),
                    epoch,
                },
            );
            shards[to].step(Instant::now()); // opens the cell and ticks it
            stalls.push(started.elapsed());
            let moved = shards[to]
                .cells()
                .find(|c| c.id == cell.into())
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

/// Snapshot, wire and restore of one cell, by its size.
fn by_cell_size(quick: bool) {
    let sizes: &[u32] = if quick { &[10] } else { &[10, 100, 1000, 5000] };
    let rounds = if quick { 2 } else { 10 };
    println!(
        "| entities | snapshot (extract) | export (checkpoint) | encode | snapshot bytes | decode | restore (new + insert) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in sizes {
        let world = crowd_world(n);
        let id = ShardId::new("a");
        let cell_id = CellId::new(0, 0);
        let map = CellMap::fixed([(
            cell_id,
            CellOwner {
                owner: id.clone(),
                epoch: Epoch(1),
            },
        )]);
        let bus = LocalBus::new();
        let _inbox = bus.add_shard(id.clone());
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let mut shard =
            Shard::new(ShardConfig::new(id), Arc::new(world.clone()), bus, map).expect("shard");
        for _ in 0..10 {
            shard.step(Instant::now());
        }
        // The shard's entities as they are after a few ticks, in a cell of
        // our own (the shard does not lend its cells mutably).
        let entities: Vec<EntityTransfer> = {
            let cell = shard
                .cells()
                .find(|c| c.id == cell_id.into())
                .expect("cell");
            cell.entity_ids()
                .into_iter()
                .filter_map(|e| cell.export(e))
                .collect()
        };
        assert_eq!(entities.len(), n as usize);
        let mut cell = restore(&world, cell_id, entities);
        let mut times: [Vec<Duration>; 5] = Default::default();
        let mut bytes = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let exported: Vec<EntityTransfer> = cell
                .entity_ids()
                .into_iter()
                .filter_map(|e| cell.export(e))
                .collect();
            times[1].push(t.elapsed());
            std::hint::black_box(exported);

            let t = Instant::now();
            let entities: Vec<EntityTransfer> = cell
                .entity_ids()
                .into_iter()
                .filter_map(|e| cell.extract(e))
                .collect();
            times[0].push(t.elapsed());
            assert_eq!(entities.len(), n as usize);

            let msg = Envelope::Shard {
                to: ShardId::new("b"),
                msg: ToShard::CellSnapshot {
                    region: cell_id.into(),
                    epoch: Epoch(2),
                    frozen_tick: 10,
                    frozen_unix_ms: 0,
                    entities,
                },
            };
            let t = Instant::now();
            let wire = frame::encode_frame(&msg, MAX_CLUSTER_FRAME).expect("encodes");
            times[2].push(t.elapsed());
            bytes = wire.len();

            let t = Instant::now();
            let decoded: Envelope = frame::decode(&wire[4..], MAX_CLUSTER_FRAME).expect("decodes");
            times[3].push(t.elapsed());
            let Envelope::Shard {
                msg: ToShard::CellSnapshot { entities, .. },
                ..
            } = decoded
            else {
                unreachable!("a cell snapshot was encoded");
            };

            let t = Instant::now();
            cell = restore(&world, cell_id, entities);
            times[4].push(t.elapsed());
            assert_eq!(cell.entity_count(), n as usize);
        }
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            let d = v[v.len() / 2];
            if d < Duration::from_millis(1) {
                format!("{:.1} µs", d.as_secs_f64() * 1e6)
            } else {
                format!("{:.2} ms", d.as_secs_f64() * 1e3)
            }
        };
        let [extract, export, encode, decode, restore] = &mut times;
        println!(
            "| {n} | {} | {} | {} | {bytes} ({:.0} per entity) | {} | {} |",
            med(extract),
            med(export),
            med(encode),
            bytes as f64 / n as f64,
            med(decode),
            med(restore),
        );
    }
}

/// A fresh cell holding `entities`, as `open_migrated` builds it.
fn restore(world: &WorldDef, id: CellId, entities: Vec<EntityTransfer>) -> Cell {
    let mut cell = Cell::new(id.into(), Epoch(2), world);
    for t in entities {
        cell.insert(t);
    }
    cell
}
