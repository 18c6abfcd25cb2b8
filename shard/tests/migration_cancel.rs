//! A migration the coordinator cancels after the source shipped the cell:
//! the source takes the cell back from what it shipped, the target forgets
//! the snapshot, and no entity is lost or duplicated.

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::migration::{Migration, MigrationBoard, MigrationState};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::world::{parse_world, NpcDef};
use tessera_proto::{CellId, Epoch, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Cancel"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

fn count(shard: &Shard, cell: CellId) -> usize {
    shard
        .cells()
        .find(|c| c.id == cell.into())
        .map(|c| c.entity_count())
        .unwrap_or(0)
}

#[test]
fn a_cancelled_migration_gives_the_cell_back_to_its_source() {
    let mut world = parse_world(WORLD).unwrap();
    world
        .scripts
        .insert("idle".into(), "fn on_tick() { }".into());
    world.npcs.push(NpcDef {
        name: "Crowd".into(),
        description: "Part of a crowd.".into(),
        pos: Vec3::new(32.0, 0.0, 32.0),
        script: "idle".into(),
        count: 50,
        scatter: 20.0,
    });
    let world = Arc::new(world);
    let (a, b) = (ShardId::new("a"), ShardId::new("b"));
    let cell = CellId::new(0, 0);
    let owner = |s: &ShardId| CellOwner {
        owner: s.clone(),
        epoch: Epoch(1),
    };
    let map = CellMap::fixed([(cell, owner(&a)), (CellId::new(1, 0), owner(&b))]);
    let bus = LocalBus::new();
    let inbox_a = bus.add_shard(a.clone());
    let inbox_b = bus.add_shard(b.clone());
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let board = MigrationBoard::default();
    let (tx, _notices) = tokio::sync::mpsc::unbounded_channel();
    let shard = |id: &ShardId| {
        Shard::new(
            ShardConfig::new(id.clone()),
            world.clone(),
            dyn_bus.clone(),
            map.clone(),
        )
        .unwrap()
        .with_migrations(board.clone(), tx.clone())
    };
    let (mut sa, mut sb) = (shard(&a), shard(&b));
    sa.step(Instant::now());
    sb.step(Instant::now());
    assert_eq!(count(&sa, cell), 50);

    let mut m = Migration {
        from: a.clone(),
        to: b.clone(),
        epoch: Epoch(2),
        state: MigrationState::Requested,
        requested_unix_ms: 0,
        authority: None,
        cancelled_unix_ms: None,
    };
    board.set(cell.into(), m.clone());
    sa.step(Instant::now()); // freezes and ships
    assert_eq!(count(&sa, cell), 0, "the source stops simulating the cell");
    while let Ok(msg) = inbox_b.try_recv() {
        sb.handle(msg, Instant::now());
    }
    sb.step(Instant::now());
    assert_eq!(
        count(&sb, cell),
        0,
        "not the target's before the map says so"
    );

    // The coordinator gives up (the target went quiet, say): the owner never flips.
    m.state = MigrationState::Cancelled;
    m.cancelled_unix_ms = Some(1);
    board.set(cell.into(), m);
    sa.step(Instant::now());
    sb.step(Instant::now());
    assert_eq!(count(&sa, cell), 50, "the source took the cell back");
    assert_eq!(sa.entity_count() + sb.entity_count(), 50);
    // Nothing the target held comes back to the source as a duplicate.
    while let Ok(msg) = inbox_a.try_recv() {
        sa.handle(msg, Instant::now());
    }
    sa.step(Instant::now());
    assert_eq!(sa.entity_count() + sb.entity_count(), 50);
}
