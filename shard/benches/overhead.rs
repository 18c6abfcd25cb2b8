//! `cargo bench -p tessera-shard --bench overhead`: what the shard costs
//! on top of the libraries it is built on (issue 5).
//!
//! For N wandering NPCs (1,000, 10,000 and 50,000) it times, per tick:
//!
//! - `shard`: `Shard::step` of the default world plus N `wanderer` NPCs,
//!   all 16 cells owned by one shard (scripts think at 3 Hz, frames are
//!   built every tick);
//! - `rapier`: the same bodies, at the same places and split into the same
//!   cells, as bare rapier3d: kinematic capsules with the shard's collision
//!   groups, one `KinematicCharacterController::move_shape` per moving body
//!   and one `PhysicsPipeline::step` (through `PhysicsWorld`, as the cell
//!   does) per cell. As many bodies move as moved in the shard's ticks;
//! - `legion`: a bare legion pass over the same N entities with the shard's
//!   components: plan the moves, write them back, damp every velocity
//!   (the ECS half of `Cell::simulate`);
//! - `rapier+legion`: both in one loop, i.e. `Cell::simulate` rebuilt from
//!   the bare libraries. `shard ÷ (rapier+legion)` is the overhead.
//!
//! It also times, outside the shard's ticks, parts the bare loop does not
//! do: the scripts' `on_tick` calls (the same `ScriptEngine`, the same
//! share of NPCs per tick), building the cell frames (`Cell::view`), and
//! finding leavers and the ghost states for the eight neighbours of every
//! cell (`Cell::leavers`, `Cell::border_states`).
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does 1,000 NPCs
//! for a few ticks only.

mod common;

use legion::{Entity, IntoQuery, World};
use rapier3d::control::{CharacterAutostep, CharacterLength, KinematicCharacterController};
use rapier3d::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::msg::EntityKind;
use tessera_proto::world::WorldDef;
use tessera_proto::{EntityId, Grid, RegionId, Vec3};
use tessera_shard::cell::{
    static_collider, Body, Identity, Motion, Npc, CAPSULE_CENTRE, CAPSULE_HALF, CAPSULE_RADIUS,
};
use tessera_shard::script::{derive_seed, ScriptCtx, ScriptEngine, ScriptInstance};
use tessera_shard::{ScriptLimits, Shard};

const NPC_GROUP: Group = Group::GROUP_3;
const NPC_SPEED: f32 = 1.5;
const TICK_HZ: u32 = 30;
/// `tick_hz / think_hz` of the default `ShardConfig`.
const THINK_EVERY: u64 = 10;
/// Bare movers turn round after this many ticks (1.5 m), so they stay
/// where the shard's NPCs were.
const TURN_EVERY: u64 = 30;

struct Run {
    n: u32,
    /// Disc radius the extra NPCs are spread over, m.
    scatter: f32,
    warm: u32,
    ticks: u32,
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs: Vec<Run> = if quick {
        vec![Run {
            n: 1000,
            scatter: 110.0,
            warm: 5,
            ticks: 3,
        }]
    } else {
        vec![
            Run {
                n: 1000,
                scatter: 110.0,
                warm: 240,
                ticks: 300,
            },
            Run {
                n: 10_000,
                scatter: 110.0,
                warm: 240,
                ticks: 100,
            },
            // The default world is 256 m square: a wider disc keeps 50k
            // NPCs at about one per square metre.
            Run {
                n: 50_000,
                scatter: 125.0,
                warm: 120,
                ticks: 30,
            },
        ]
    };
    println!(
        "| NPCs (total) | moving | shard | rapier | legion | rapier+legion | shard ÷ (rapier+legion) | scripts | frames | leavers + ghost states | ghosts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        measure(&run);
    }
}

fn measure(run: &Run) {
    let world = if run.scatter == 110.0 {
        common::world_with_wanderers(run.n)
    } else {
        common::world_with_wanderers_scattered(run.n, run.scatter)
    };
    let total = world.npc_total();
    let wanderer = world.scripts.get("wanderer").expect("wanderer").clone();
    let grid = Grid::new(world.cell_size);
    let mut shard = common::shard(world.clone(), run.warm);

    // The shard, tick by tick; between ticks (untimed) who moved, and the
    // frames' cost.
    let mut before = positions(&shard);
    let mut shard_times = Vec::new();
    let mut frame_times = Vec::new();
    let mut border_times = Vec::new();
    let mut moved_total = 0usize;
    for _ in 0..run.ticks {
        let t = Instant::now();
        shard.step(Instant::now());
        shard_times.push(t.elapsed());
        let t = Instant::now();
        let frames: usize = shard.cells().map(|c| c.view().len()).sum();
        frame_times.push(t.elapsed());
        std::hint::black_box(frames);
        let t = Instant::now();
        let mut borders = 0;
        for c in shard.cells() {
            borders += c.leavers(1.0).len();
            for n in c.id.cell_id().neighbours() {
                borders += c.border_states(RegionId::cell(n), 4.0).len();
            }
        }
        border_times.push(t.elapsed());
        std::hint::black_box(borders);
        let after = positions(&shard);
        moved_total += after
            .iter()
            .filter(|(id, p)| before.get(id).is_some_and(|b| b.distance(**p) > 1e-5))
            .count();
        before = after;
    }
    let moving = moved_total as f64 / run.ticks as f64 / before.len().max(1) as f64;
    let ghosts: usize = shard.cells().map(|c| c.ghost_count()).sum();

    // The same bodies in bare rapier + legion, split into the same cells.
    let mut bare = Bare::new(&shard, &world, &grid, moving);
    drop(shard);
    let rapier = time_ticks(run.ticks, |tick| bare.rapier_tick(tick));
    let legion = time_ticks(run.ticks, |_| bare.legion_tick());
    let both = time_ticks(run.ticks, |_| bare.simulate_tick());

    // The scripts alone: the shard's share of `on_tick` calls per tick.
    let scripts = time_scripts(&wanderer, total, run.ticks);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let shard_mean = mean(&shard_times);
    println!(
        "| {} ({total}) | {:.0} % | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× | {:.2} ms | {:.2} ms | {:.2} ms | {ghosts} |",
        run.n,
        moving * 100.0,
        ms(shard_mean),
        ms(rapier),
        ms(legion),
        ms(both),
        shard_mean.as_secs_f64() / both.as_secs_f64(),
        ms(scripts),
        ms(mean(&frame_times)),
        ms(mean(&border_times)),
    );
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len().max(1) as u32
}

fn time_ticks(ticks: u32, mut tick: impl FnMut(u64)) -> Duration {
    let mut times = Vec::with_capacity(ticks as usize);
    for i in 0..ticks {
        let t = Instant::now();
        tick(i as u64);
        times.push(t.elapsed());
    }
    mean(&times)
}

fn positions(shard: &Shard) -> HashMap<EntityId, Vec3> {
    shard
        .cells()
        .flat_map(|c| c.view())
        .map(|e| (e.id, e.pos))
        .collect()
}

/// `n` wanderer instances, initialised, then `ticks` ticks of `on_tick`
/// for the tenth whose think slot it is (as `Cell::think` picks them).
fn time_scripts(source: &str, n: usize, ticks: u32) -> Duration {
    let mut engine = ScriptEngine::new(ScriptLimits::default());
    engine
        .compile("wanderer", source)
        .expect("wanderer compiles");
    let mut npcs: Vec<(EntityId, String, ScriptInstance)> = (0..n)
        .map(|i| {
            (
                EntityId(EntityId::NPC_BIT | i as u64),
                format!("Rambler {}", i + 1),
                ScriptInstance::new("wanderer"),
            )
        })
        .collect();
    let home = Vec3::new(0.0, 0.0, 0.0);
    for (id, name, inst) in npcs.iter_mut() {
        let ctx = ScriptCtx {
            entity: *id,
            name,
            pos: home,
            home,
            tick: 0,
            seed: derive_seed(*id, 0, 0),
        };
        std::hint::black_box(engine.init(inst, &ctx));
    }
    time_ticks(ticks, |i| {
        let tick = 1000 + i;
        for (id, name, inst) in npcs.iter_mut() {
            if !(tick + id.0).is_multiple_of(THINK_EVERY) {
                continue;
            }
            let ctx = ScriptCtx {
                entity: *id,
                name,
                pos: home,
                home,
                tick,
                seed: derive_seed(*id, tick, 0),
            };
            std::hint::black_box(engine.on_tick(inst, &ctx));
        }
    })
}

/// One cell rebuilt from the bare libraries.
struct BareCell {
    physics: PhysicsWorld,
    controller: KinematicCharacterController,
    ecs: World,
    /// Bodies that move, with their heading (unit, on the ground).
    movers: Vec<(RigidBodyHandle, Vec3)>,
}

struct Bare {
    cells: BTreeMap<RegionId, BareCell>,
    dt: f32,
}

impl Bare {
    /// Every entity of `shard` at its place; the first `moving` share of
    /// each cell walks.
    fn new(shard: &Shard, world: &WorldDef, grid: &Grid, moving: f64) -> Bare {
        let mut cells = BTreeMap::new();
        for cell in shard.cells() {
            let (x0, z0, x1, z1) = grid.bounds(cell.id.cell_id());
            let mut physics = PhysicsWorld::new();
            physics.gravity = Vector::ZERO;
            // The cell's ground slab, as `Cell::new` makes it (8 m margin).
            let ground = ColliderBuilder::cuboid((x1 - x0) / 2.0 + 8.0, 0.5, (z1 - z0) / 2.0 + 8.0)
                .translation(Vector::new((x0 + x1) / 2.0, -0.5, (z0 + z1) / 2.0))
                .build();
            physics.colliders.insert(ground);
            // The world's static geometry near the cell, as `Cell::new`
            // adds it (the world's edge walls are left out).
            for shape in &world.statics {
                let (fx0, fz0, fx1, fz1) = shape.footprint();
                if fx1 < x0 - 8.0 || fx0 > x1 + 8.0 || fz1 < z0 - 8.0 || fz0 > z1 + 8.0 {
                    continue;
                }
                physics.colliders.insert(static_collider(shape));
            }
            physics.step();
            let controller = KinematicCharacterController {
                offset: CharacterLength::Absolute(0.02),
                autostep: Some(CharacterAutostep {
                    max_height: CharacterLength::Absolute(0.4),
                    min_width: CharacterLength::Absolute(0.2),
                    include_dynamic_bodies: false,
                }),
                snap_to_ground: Some(CharacterLength::Absolute(0.5)),
                ..KinematicCharacterController::default()
            };
            let mut ecs = World::default();
            let mut movers = Vec::new();
            let view = cell.view();
            let walkers = (view.len() as f64 * moving).round() as usize;
            for (i, e) in view.iter().enumerate() {
                let body = RigidBodyBuilder::kinematic_position_based()
                    .can_sleep(false)
                    .translation(Vector::new(e.pos.x, e.pos.y + CAPSULE_CENTRE, e.pos.z))
                    .user_data(e.id.0 as u128)
                    .build();
                let collider = ColliderBuilder::capsule_y(CAPSULE_HALF, CAPSULE_RADIUS)
                    .collision_groups(InteractionGroups::new(
                        NPC_GROUP,
                        Group::ALL,
                        InteractionTestMode::And,
                    ))
                    .build();
                let handle = physics.insert(body, collider).0;
                let walks = i < walkers;
                let a = i as f32 * 2.399_963;
                let heading = Vec3::new(a.cos(), 0.0, a.sin());
                if walks {
                    movers.push((handle, heading));
                }
                ecs.push((
                    Identity {
                        id: e.id,
                        kind: EntityKind::Npc,
                        name: e.name.clone(),
                        description: Arc::from("A bench wanderer."),
                    },
                    Motion {
                        pos: e.pos,
                        vel: Vec3::ZERO,
                        yaw: 0.0,
                    },
                    Body(handle),
                    Npc {
                        home: e.pos,
                        walk_target: walks.then(|| e.pos + heading.scale(1.5)),
                        script: Some(ScriptInstance::new("wanderer")),
                    },
                ));
            }
            physics.step();
            cells.insert(
                cell.id,
                BareCell {
                    physics,
                    controller,
                    ecs,
                    movers,
                },
            );
        }
        Bare {
            cells,
            dt: 1.0 / TICK_HZ as f32,
        }
    }

    /// rapier alone: a sweep per mover, then one step per cell.
    fn rapier_tick(&mut self, tick: u64) {
        let dt = self.dt;
        let sign = if (tick / TURN_EVERY).is_multiple_of(2) {
            1.0
        } else {
            -1.0
        };
        for cell in self.cells.values_mut() {
            let mut results = Vec::with_capacity(cell.movers.len());
            for (handle, heading) in &cell.movers {
                let desired = heading.scale(sign * NPC_SPEED * dt);
                if let Some(pos) = cell.sweep(*handle, desired, dt) {
                    results.push((*handle, pos));
                }
            }
            cell.commit(&results, dt);
        }
    }

    /// legion alone: plan, write back, damp (no physics: the planned move
    /// is taken as it is).
    fn legion_tick(&mut self) {
        let dt = self.dt;
        for cell in self.cells.values_mut() {
            let moves = cell.plan(dt);
            let results: Vec<(Entity, Vec3, f32)> = moves
                .into_iter()
                .map(|(entity, _, from, v, yaw)| (entity, from + v.scale(dt), yaw))
                .collect();
            cell.write_back(results, dt);
        }
    }

    /// Both, as `Cell::simulate` does them.
    fn simulate_tick(&mut self) {
        let dt = self.dt;
        for cell in self.cells.values_mut() {
            let moves = cell.plan(dt);
            let mut bodies = Vec::with_capacity(moves.len());
            let mut results = Vec::with_capacity(moves.len());
            for (entity, handle, _, v, yaw) in moves {
                if let Some(pos) = cell.sweep(handle, v.scale(dt), dt) {
                    bodies.push((handle, pos));
                    results.push((entity, pos, yaw));
                }
            }
            cell.commit(&bodies, dt);
            cell.write_back(results, dt);
        }
    }
}

impl BareCell {
    fn sweep(&self, handle: RigidBodyHandle, desired: Vec3, dt: f32) -> Option<Vec3> {
        let body = self.physics.bodies.get(handle)?;
        let collider = self.physics.colliders.get(*body.colliders().first()?)?;
        let filter =
            QueryFilter::default()
                .exclude_rigid_body(handle)
                .groups(InteractionGroups::new(
                    NPC_GROUP,
                    Group::ALL & !NPC_GROUP,
                    InteractionTestMode::And,
                ));
        let queries = self.physics.query_pipeline_with_filter(filter);
        let pos = *body.position();
        let moved = self.controller.move_shape(
            dt,
            &queries,
            collider.shape(),
            &pos,
            Vector::new(desired.x, desired.y, desired.z),
            |_| {},
        );
        let c = pos.translation + moved.translation;
        Some(Vec3::new(c.x, (c.y - CAPSULE_CENTRE).max(0.0), c.z))
    }

    fn commit(&mut self, moved: &[(RigidBodyHandle, Vec3)], dt: f32) {
        for (handle, pos) in moved {
            if let Some(b) = self.physics.bodies.get_mut(*handle) {
                b.set_next_kinematic_translation(Vector::new(pos.x, pos.y + CAPSULE_CENTRE, pos.z));
            }
        }
        self.physics.integration_parameters.dt = dt;
        self.physics.step();
    }

    /// The NPCs walking somewhere: (entity, body, from, velocity, yaw).
    fn plan(&self, dt: f32) -> Vec<(Entity, RigidBodyHandle, Vec3, Vec3, f32)> {
        let mut moves = Vec::new();
        let mut npcs = <(Entity, &Body, &Motion, &Npc)>::query();
        for (entity, body, motion, npc) in npcs.iter(&self.ecs) {
            let Some(target) = npc.walk_target else {
                continue;
            };
            let d = target - motion.pos;
            let dist = d.length_xz();
            if dist < 0.2 {
                continue;
            }
            let speed = NPC_SPEED.min(dist / dt);
            let v = Vec3::new(d.x / dist * speed, 0.0, d.z / dist * speed);
            moves.push((*entity, body.0, motion.pos, v, d.x.atan2(-d.z)));
        }
        moves
    }

    /// New positions into the ECS; an NPC that arrived turns round (the
    /// shard's would stop until its script picks a new target).
    fn write_back(&mut self, results: Vec<(Entity, Vec3, f32)>, dt: f32) {
        for (entity, pos, yaw) in results {
            if let Some(mut entry) = self.ecs.entry(entity) {
                let arrived = {
                    let Ok(m) = entry.get_component_mut::<Motion>() else {
                        continue;
                    };
                    m.vel = (pos - m.pos).scale(1.0 / dt);
                    m.pos = pos;
                    m.yaw = yaw;
                    pos
                };
                if let Ok(npc) = entry.get_component_mut::<Npc>() {
                    if let Some(t) = npc.walk_target.filter(|t| t.distance_xz(arrived) < 0.3) {
                        let back = npc.home.scale(2.0) - t;
                        npc.walk_target = Some(back);
                    }
                }
            }
        }
        let mut rest = <&mut Motion>::query();
        for m in rest.iter_mut(&mut self.ecs) {
            m.vel = m.vel.scale(0.0f32.max(1.0 - 10.0 * dt));
        }
    }
}
