//! Hot reload of an NPC script: the NPC runs the new code from its next
//! call, keeps its state, and a broken version is refused.

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::world::{parse_world, NpcDef};
use tessera_proto::{CellId, Epoch, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Reload"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [0, 0]
"#;

const V1: &str = "fn on_tick() { state.n = (state.n ?? 0) + 1; state.version = 1; }";
const V2: &str = "fn on_tick() { state.n = (state.n ?? 0) + 1000; state.version = 2; }";

fn npc_state(shard: &Shard) -> serde_json::Value {
    let cell = shard.cells().next().expect("one cell");
    let id = cell.entity_ids()[0];
    let script = cell.export(id).unwrap().script.expect("a scripted NPC");
    assert_eq!(script.disabled, None);
    serde_json::from_str(&script.state_json).unwrap()
}

fn run(shard: &mut Shard, ticks: usize) {
    for _ in 0..ticks {
        shard.step(Instant::now());
    }
}

#[test]
fn a_reloaded_script_keeps_each_npcs_state_and_a_broken_one_is_refused() {
    let mut world = parse_world(WORLD).unwrap();
    world.scripts.insert("counter".into(), V1.into());
    world.npcs.push(NpcDef {
        name: "Abacus".into(),
        description: "Counts.".into(),
        pos: Vec3::new(32.0, 0.0, 32.0),
        script: "counter".into(),
        count: 1,
        scatter: 0.0,
    });
    let id = ShardId::new("a");
    let map = CellMap::fixed([(
        CellId::new(0, 0),
        CellOwner {
            owner: id.clone(),
            epoch: Epoch(1),
        },
    )]);
    let bus = LocalBus::new();
    let _inbox = bus.add_shard(id.clone());
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus);
    let mut shard = Shard::new(ShardConfig::new(id), Arc::new(world), dyn_bus, map).unwrap();
    run(&mut shard, 60);
    let before = npc_state(&shard);
    assert_eq!(before["version"], 1);
    let n1 = before["n"].as_i64().unwrap();
    assert!(n1 >= 3, "the script ran: {before}");

    assert_eq!(shard.reload_script("counter", V2).unwrap(), 1);
    run(&mut shard, 30);
    let after = npc_state(&shard);
    assert_eq!(after["version"], 2, "the new code runs");
    let n2 = after["n"].as_i64().unwrap();
    assert!(
        n2 > n1 + 1000 && (n2 - n1) % 1000 == 0,
        "state carried over: {n1} -> {n2}"
    );

    let err = shard
        .reload_script("counter", "fn on_tick() { state.n = ")
        .unwrap_err();
    assert!(err.to_string().contains("counter"), "{err}");
    run(&mut shard, 30);
    let kept = npc_state(&shard);
    assert_eq!(kept["version"], 2, "the old version keeps running");
    assert!(kept["n"].as_i64().unwrap() > n2);
}
