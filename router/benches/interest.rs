//! `cargo bench -p tessera-router --bench interest`: what one player's
//! snapshot costs the router (issue 5), at 10, 100 and 1,000 visible
//! entities.
//!
//! A `WorldView` holds one frame per 64 m cell; V entities lie within the
//! default interest radius (100 m) of the player, spread over the cells
//! around it, and as many again lie in those cells but beyond the radius
//! (they are scanned and dropped). One snapshot is `WorldView::around`, the
//! player's interest plan (`tessera_router::interest`: the 64 nearest) and
//! its datagrams (`encode_snapshot`), for a player who sees all of it for
//! the first time, so every known entity is sent: the most one snapshot
//! costs. Sending itself and the `EntityAppeared`/`EntityGone` control
//! messages are left out.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does a few
//! rounds of each size only.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::cluster::{CellFrame, ViewEntity};
use tessera_proto::frame::MAX_DATAGRAM;
use tessera_proto::msg::EntityKind;
use tessera_proto::{EntityId, Epoch, Grid, ShardId, Vec3};
use tessera_router::interest::{encode_snapshot, Interest, MAX_VISIBLE};
use tessera_router::WorldView;

const INTEREST_RADIUS: f32 = 100.0;
const CELL_SIZE: f32 = 64.0;
const PLAYER: Vec3 = Vec3::new(10.0, 0.0, 10.0);

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let grid = Grid::new(CELL_SIZE);
    let player = PLAYER;
    println!(
        "| visible entities | µs per player per snapshot | of which `around` | datagrams | bytes per snapshot |"
    );
    println!("|---|---|---|---|---|");
    for visible in [10usize, 100, 1000] {
        let view = world_view(&grid, player, visible);
        let rounds = if quick {
            3
        } else {
            (200_000 / visible).clamp(200, 20_000)
        };
        // Warm up, and check what is seen.
        let seen = view.around(&grid, player, INTEREST_RADIUS).len();
        assert_eq!(seen, visible, "the view holds what it should");
        let mut around_total = Duration::ZERO;
        let mut total = Duration::ZERO;
        let mut sizes = (0usize, 0usize);
        for _ in 0..rounds {
            let t = Instant::now();
            let entities = view.nearest(&grid, player, INTEREST_RADIUS, MAX_VISIBLE + 1);
            around_total += t.elapsed();
            let datagrams = datagrams(view.latest_tick(), &entities);
            total += t.elapsed();
            sizes = (datagrams.len(), datagrams.iter().map(Vec::len).sum());
            std::hint::black_box(datagrams);
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / rounds as f64;
        println!(
            "| {visible} | {:.1} | {:.1} | {} | {} |",
            us(total),
            us(around_total),
            sizes.0,
            sizes.1
        );
    }
}

/// Frames for the cells around `player`: `visible` entities within the
/// interest radius and as many beyond it, on golden-angle spirals.
fn world_view(grid: &Grid, player: Vec3, visible: usize) -> WorldView {
    let mut cells: std::collections::BTreeMap<_, Vec<ViewEntity>> = Default::default();
    let name: Arc<str> = Arc::from("Rambler");
    for i in 0..2 * visible {
        let (r0, r1) = if i < visible {
            (0.0, INTEREST_RADIUS - 0.5)
        } else {
            (INTEREST_RADIUS + 0.5, INTEREST_RADIUS + 30.0)
        };
        let k = (i % visible) as f32 + 0.5;
        let r = r0 + (r1 - r0) * (k / visible as f32).sqrt();
        let (s, c) = (k * 2.399_963).sin_cos();
        let pos = Vec3::new(player.x + r * c, 0.0, player.z + r * s);
        cells
            .entry(grid.cell_of(pos))
            .or_default()
            .push(ViewEntity {
                id: EntityId(EntityId::NPC_BIT | i as u64),
                kind: EntityKind::Npc,
                name: name.clone(),
                pos,
                vel: Vec3::new(1.0, 0.0, -0.5),
                yaw: 1.25,
                ack_input: 0,
            });
    }
    let view = WorldView::default();
    for (cell, entities) in cells {
        view.update(Arc::new(CellFrame {
            region: cell.into(),
            shard: ShardId::new("shard-1"),
            epoch: Epoch(1),
            tick: 1000,
            entities,
        }));
    }
    view
}

/// The datagrams of one snapshot, as `quic.rs` `snapshot()` builds them:
/// the interest plan of a player seeing this for the first time (every
/// known entity is sent: the most a snapshot carries), then the encoding.
fn datagrams(tick: u64, visible: &[ViewEntity]) -> Vec<Vec<u8>> {
    let me = visible.first().map(|e| e.id).unwrap_or(EntityId(0));
    let plan = Interest::default().plan(me, PLAYER, visible);
    encode_snapshot(tick, plan.ack_input, PLAYER, &plan.updates, MAX_DATAGRAM)
}
