//! `cargo bench -p tessera-shard --bench cell_memory`: what entities passing
//! through cells cost in memory, with and without `Cell::compact`. Sixteen
//! cells take turns: a player enters one and leaves it again, a million
//! times, as hand-offs, joins and ghosts do on a busy shard (legion's entity
//! ids are shared by every world, so each cell sees scattered ids). The
//! resident set size (/proc/self/statm) is read before and after each run
//! (`TESSERA_CHURN_PASSES` sets the number of entities, a million by default).

use std::time::Instant;
use tessera_proto::cluster::{EntityTransfer, SessionRef};
use tessera_proto::msg::{EntityKind, Input};
use tessera_proto::world::parse_world;
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RegionId, RouterId, SessionId, Vec3};
use tessera_shard::cell::{Cell, Movement};
use tessera_shard::COMPACT_AFTER;

const WORLD: &str = r#"
name = "Churn"
cell_size = 64
spawn = [10, 0, 10]
[extent]
min = [0, 0]
max = [3, 3]
"#;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn player(id: u64, cell: CellId) -> EntityTransfer {
    let pos = Vec3::new(
        cell.x as f32 * 64.0 + 10.0,
        0.0,
        cell.z as f32 * 64.0 + 10.0,
    );
    EntityTransfer {
        id: EntityId(id),
        kind: EntityKind::Player,
        name: format!("P{id}"),
        description: String::new(),
        pos,
        vel: Vec3::ZERO,
        yaw: 0.0,
        home: pos,
        player: Some(PlayerId(id)),
        session: Some(SessionRef {
            router: RouterId("r".into()),
            session: SessionId(id),
        }),
        input: Input::default(),
        walk_target: None,
        script: None,
    }
}

fn run(passes: u64, compact: bool) -> (u64, u64, f64) {
    let world = parse_world(WORLD).expect("world");
    let ids: Vec<CellId> = world.extent.cells().collect();
    let mut cells: Vec<Cell> = ids
        .iter()
        .map(|&c| Cell::new(RegionId::cell(c), Epoch(1), &world))
        .collect();
    // Residents that stay, 20 a cell.
    for (k, cell) in cells.iter_mut().enumerate() {
        for r in 0..20u64 {
            cell.insert(player(1_000_000_000 + k as u64 * 100 + r, ids[k]));
        }
    }
    let before = rss_bytes();
    let mut compactions = 0;
    let mut compacting = std::time::Duration::ZERO;
    let cells_len = cells.len() as u64;
    for n in 0..passes {
        let k = (n % cells_len) as usize;
        let cell = &mut cells[k];
        cell.insert(player(n + 1, ids[k]));
        cell.extract(EntityId(n + 1));
        // A tick now and then, as a shard runs them (physics lets go of removed bodies
        // when it steps).
        if (n / cells_len).is_multiple_of(4) {
            cell.simulate(1.0 / 30.0, &Movement::default());
        }
        if compact && cell.churn() > COMPACT_AFTER {
            let t = Instant::now();
            cell.compact();
            compacting += t.elapsed();
            compactions += 1;
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    let per_compaction_us = if compactions > 0 {
        compacting.as_secs_f64() * 1e6 / compactions as f64
    } else {
        0.0
    };
    (grown, compactions, per_compaction_us)
}

fn main() {
    // `cargo test --benches` runs bench targets with no arguments; keep that quick.
    let passes: u64 = if std::env::args().any(|a| a == "--bench") {
        std::env::var("TESSERA_CHURN_PASSES")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        20_000
    };
    for compact in [true, false] {
        let (grown, compactions, us) = run(passes, compact);
        println!(
            "{passes} entities through 16 cells, {}: resident set grew {:.1} MiB ({:.0} bytes an entity){}",
            if compact { "compacting" } else { "never compacting" },
            grown as f64 / (1024.0 * 1024.0),
            grown as f64 / passes as f64,
            if compact {
                format!(", {compactions} compactions of 20 entities, {us:.0} us each")
            } else {
                String::new()
            }
        );
    }
}
