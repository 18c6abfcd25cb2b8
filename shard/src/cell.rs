//! One cell: a legion ECS world, a rapier3d physics world, and the script
//! instances of its NPCs. Only the shard thread that owns the cell touches
//! it.
//!
//! Positions are the entity's feet; the physics body of a character is a
//! kinematic capsule whose centre is `CAPSULE_CENTRE` above them.

use crate::script::{derive_seed, ScriptAction, ScriptCtx, ScriptEngine, ScriptInstance};
use legion::{Entity, EntityStore, IntoQuery, World};
use rapier3d::control::{CharacterAutostep, CharacterLength, KinematicCharacterController};
use rapier3d::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::cluster::{EntityTransfer, GhostState, ScriptState, SessionRef, ViewEntity};
use tessera_proto::msg::{EntityKind, Input};
use tessera_proto::world::{StaticShape, WorldDef};
use tessera_proto::{Compass, EntityId, Epoch, Grid, PlayerId, Rect, RegionId, Vec3};

/// Half height of the cylinder part of a character capsule.
pub const CAPSULE_HALF: f32 = 0.5;
pub const CAPSULE_RADIUS: f32 = 0.4;
/// Height of the capsule centre above the feet (it hovers 5 cm, so a
/// character sliding over flat ground never scrapes it).
pub const CAPSULE_CENTRE: f32 = CAPSULE_HALF + CAPSULE_RADIUS + 0.05;
/// Static geometry this far outside a cell is still added to it, so that
/// entities near a border collide with what lies just across it.
const STATIC_MARGIN: f32 = 8.0;
/// Collision groups: players bump into everything; NPCs bump into statics
/// and players but walk through each other (the usual MMO trade: crowds of
/// NPCs would otherwise cost most of a tick in contact resolution).
const PLAYER_GROUP: Group = Group::GROUP_2;
const NPC_GROUP: Group = Group::GROUP_3;

fn groups_of(kind: EntityKind) -> InteractionGroups {
    let member = match kind {
        EntityKind::Player => PLAYER_GROUP,
        EntityKind::Npc => NPC_GROUP,
    };
    InteractionGroups::new(member, Group::ALL, InteractionTestMode::And)
}

/// What a moving character of a group sweeps against.
fn sweep_groups(member: Group) -> InteractionGroups {
    let filter = if member == NPC_GROUP {
        Group::ALL & !NPC_GROUP
    } else {
        Group::ALL
    };
    InteractionGroups::new(member, filter, InteractionTestMode::And)
}

/// What a free move keeps clear around the swept capsule, m: more than
/// the controller's ground prediction (its offset plus 5 cm), within which
/// it would take contacts (and be dragged along by a moving neighbour).
const FREE_MOVE_MARGIN: f32 = 0.1;
/// ... and below it: more than the controller's snap to the ground plus its
/// offset, within which it would pull the character down onto something.
const FREE_MOVE_BELOW: f32 = 0.6;

/// How fast characters fall (kinematic, constant speed), m/s.
const FALL_SPEED: f32 = 6.0;

/// Tunables of movement, shared by all cells of a shard.
#[derive(Clone, Copy, Debug)]
pub struct Movement {
    /// Top speed of a player, m/s. Inputs can ask for less, never more.
    pub player_speed: f32,
    pub npc_speed: f32,
    /// Length of one text-player step, m.
    pub step: f32,
}

impl Default for Movement {
    fn default() -> Self {
        Movement {
            player_speed: 6.0,
            npc_speed: 1.5,
            step: 3.0,
        }
    }
}

/// Who and what an entity is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: EntityId,
    pub kind: EntityKind,
    pub name: Arc<str>,
    pub description: Arc<str>,
}

/// Kinematic state, mirrored from physics after every step.
#[derive(Clone, Copy, Debug)]
pub struct Motion {
    pub pos: Vec3,
    pub vel: Vec3,
    pub yaw: f32,
}

/// The physics body of an entity in this cell's physics world.
#[derive(Clone, Copy, Debug)]
pub struct Body(pub RigidBodyHandle);

/// A player-controlled entity.
#[derive(Clone, Debug)]
pub struct Pilot {
    pub player: PlayerId,
    pub session: SessionRef,
    pub input: Input,
}

/// A scripted NPC.
#[derive(Clone, Debug)]
pub struct Npc {
    pub home: Vec3,
    pub walk_target: Option<Vec3>,
    pub script: Option<ScriptInstance>,
}

/// A read-only copy of an entity owned by a neighbouring region.
#[derive(Clone, Copy, Debug)]
pub struct Ghost {
    pub from: RegionId,
}

/// Something a cell wants the shard to do after a tick or command.
#[derive(Debug, Clone, PartialEq)]
pub enum CellEvent {
    /// An NPC speaks.
    Say {
        speaker: EntityId,
        name: String,
        pos: Vec3,
        text: String,
        emote: bool,
    },
}

/// Where a text player's step ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    pub pos: Vec3,
    /// The step was cut short (a wall, a steep slope).
    pub blocked: bool,
}

/// One region's simulation: a whole cell, or a quadrant of a split one
/// (docs/regions.md). The name stays `Cell`: most regions are cells.
pub struct Cell {
    pub id: RegionId,
    pub epoch: Epoch,
    /// The region's square on the ground plane.
    bounds: Rect,
    ecs: World,
    physics: PhysicsWorld,
    controller: KinematicCharacterController,
    /// The ground slab, the one collider a free move may have near it.
    ground: ColliderHandle,
    index: HashMap<EntityId, Entity>,
    ghosts: HashMap<EntityId, Entity>,
    /// Entities pushed into `ecs` since it was made, owned and ghosts ([`Cell::churn`]).
    created: u64,
    grid: Grid,
    /// Recent step durations (load reports).
    pub cost: crate::cost::StepCost,
}

fn to_vector(v: Vec3) -> Vector {
    Vector::new(v.x, v.y, v.z)
}

fn from_vector(v: Vector) -> Vec3 {
    Vec3::new(v.x, v.y, v.z)
}

fn yaw_of(dx: f32, dz: f32) -> f32 {
    // 0 = north (-Z), clockwise towards east (+X).
    dx.atan2(-dz)
}

impl Cell {
    /// An empty region with the world's static geometry near it.
    pub fn new(id: RegionId, epoch: Epoch, world: &WorldDef) -> Cell {
        let grid = Grid::new(world.cell_size);
        let mut physics = PhysicsWorld::new();
        physics.gravity = Vector::ZERO;
        let bounds = id.bounds(&grid);
        let (x0, z0, x1, z1) = (bounds.min_x, bounds.min_z, bounds.max_x, bounds.max_z);
        let (mx0, mz0, mx1, mz1) = (
            x0 - STATIC_MARGIN,
            z0 - STATIC_MARGIN,
            x1 + STATIC_MARGIN,
            z1 + STATIC_MARGIN,
        );
        // Ground: a slab whose top is y = 0.
        let ground = ColliderBuilder::cuboid((mx1 - mx0) / 2.0, 0.5, (mz1 - mz0) / 2.0)
            .translation(Vector::new((mx0 + mx1) / 2.0, -0.5, (mz0 + mz1) / 2.0))
            .build();
        let ground = physics.colliders.insert(ground);
        for shape in &world.statics {
            let (fx0, fz0, fx1, fz1) = shape.footprint();
            if fx1 < mx0 || fx0 > mx1 || fz1 < mz0 || fz0 > mz1 {
                continue;
            }
            physics.colliders.insert(static_collider(shape));
        }
        // Walls at the edge of the world (near any region of an edge cell).
        let cell = id.cell_id();
        let (wx0, wz0, _, _) = grid.bounds(world.extent.min);
        let (_, _, wx1, wz1) = grid.bounds(world.extent.max);
        let wall = |cx: f32, cz: f32, hx: f32, hz: f32| {
            ColliderBuilder::cuboid(hx, 10.0, hz)
                .translation(Vector::new(cx, 10.0, cz))
                .build()
        };
        let (wcx, wcz) = ((wx0 + wx1) / 2.0, (wz0 + wz1) / 2.0);
        let (whx, whz) = ((wx1 - wx0) / 2.0 + 1.0, (wz1 - wz0) / 2.0 + 1.0);
        if cell.x == world.extent.min.x {
            physics.colliders.insert(wall(wx0 - 0.5, wcz, 0.5, whz));
        }
        if cell.x == world.extent.max.x {
            physics.colliders.insert(wall(wx1 + 0.5, wcz, 0.5, whz));
        }
        if cell.z == world.extent.min.z {
            physics.colliders.insert(wall(wcx, wz0 - 0.5, whx, 0.5));
        }
        if cell.z == world.extent.max.z {
            physics.colliders.insert(wall(wcx, wz1 + 0.5, whx, 0.5));
        }
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
        // One step puts the static colliders into the broad phase, so the
        // very first sweep already sees them.
        physics.step();
        Cell {
            id,
            epoch,
            bounds,
            ecs: World::default(),
            physics,
            controller,
            ground,
            index: HashMap::new(),
            ghosts: HashMap::new(),
            created: 0,
            grid,
            cost: Default::default(),
        }
    }

    /// Number of entities this cell owns (ghosts excluded).
    pub fn entity_count(&self) -> usize {
        self.index.len()
    }

    pub fn player_count(&self) -> usize {
        <&Pilot>::query().iter(&self.ecs).count()
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn entity_ids(&self) -> Vec<EntityId> {
        let mut ids: Vec<_> = self.index.keys().copied().collect();
        ids.sort();
        ids
    }

    fn add_body(&mut self, id: EntityId, kind: EntityKind, pos: Vec3) -> RigidBodyHandle {
        let body = RigidBodyBuilder::kinematic_position_based()
            .can_sleep(false)
            .translation(Vector::new(pos.x, pos.y + CAPSULE_CENTRE, pos.z))
            .user_data(id.0 as u128)
            .build();
        let collider = ColliderBuilder::capsule_y(CAPSULE_HALF, CAPSULE_RADIUS)
            .collision_groups(groups_of(kind))
            .build();
        self.physics.insert(body, collider).0
    }

    /// Adds an entity handed to this cell (or created in it).
    pub fn insert(&mut self, t: EntityTransfer) {
        if self.index.contains_key(&t.id) {
            tracing::error!(cell = %self.id, entity = %t.id, "entity already in cell; refusing duplicate");
            return;
        }
        self.remove_ghost(t.id);
        let handle = self.add_body(t.id, t.kind, t.pos);
        let identity = Identity {
            id: t.id,
            kind: t.kind,
            name: t.name.into(),
            description: t.description.into(),
        };
        let motion = Motion {
            pos: t.pos,
            vel: t.vel,
            yaw: t.yaw,
        };
        self.created += 1;
        let entity = match (t.player, t.session) {
            (Some(player), Some(session)) => self.ecs.push((
                identity,
                motion,
                Body(handle),
                Pilot {
                    player,
                    session,
                    input: t.input,
                },
            )),
            _ => {
                let script = t.script.map(|s| ScriptInstance {
                    script: s.script,
                    state: serde_json::from_str(&s.state_json)
                        .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
                    disabled: s.disabled,
                });
                self.ecs.push((
                    identity,
                    motion,
                    Body(handle),
                    Npc {
                        home: t.home,
                        walk_target: t.walk_target,
                        script,
                    },
                ))
            }
        };
        self.index.insert(t.id, entity);
    }

    /// Removes an entity and returns everything needed to re-create it.
    pub fn extract(&mut self, id: EntityId) -> Option<EntityTransfer> {
        let transfer = self.export(id)?;
        let entity = self.index.remove(&id)?;
        let body = *self
            .ecs
            .entry_ref(entity)
            .ok()?
            .get_component::<Body>()
            .ok()?;
        self.ecs.remove(entity);
        self.physics.remove_body_with_colliders(body.0, true);
        Some(transfer)
    }

    /// Everything needed to re-create an entity, leaving it in place (checkpoints).
    pub fn export(&self, id: EntityId) -> Option<EntityTransfer> {
        let entity = *self.index.get(&id)?;
        let entry = self.ecs.entry_ref(entity).ok()?;
        let identity = entry.get_component::<Identity>().ok()?.clone();
        let motion = *entry.get_component::<Motion>().ok()?;
        let pilot = entry.get_component::<Pilot>().ok().cloned();
        let npc = entry.get_component::<Npc>().ok().cloned();
        let script = npc
            .as_ref()
            .and_then(|n| n.script.as_ref())
            .map(|s| ScriptState {
                script: s.script.clone(),
                state_json: s.state.to_string(),
                disabled: s.disabled.clone(),
            });
        Some(EntityTransfer {
            id,
            kind: identity.kind,
            name: identity.name.to_string(),
            description: identity.description.to_string(),
            pos: motion.pos,
            vel: motion.vel,
            yaw: motion.yaw,
            home: npc.as_ref().map(|n| n.home).unwrap_or(motion.pos),
            player: pilot.as_ref().map(|p| p.player),
            session: pilot.as_ref().map(|p| p.session.clone()),
            input: pilot.as_ref().map(|p| p.input).unwrap_or_default(),
            walk_target: npc.as_ref().and_then(|n| n.walk_target),
            script,
        })
    }

    pub fn position(&self, id: EntityId) -> Option<Vec3> {
        let entity = *self.index.get(&id)?;
        let entry = self.ecs.entry_ref(entity).ok()?;
        entry.get_component::<Motion>().ok().map(|m| m.pos)
    }

    pub fn identity(&self, id: EntityId) -> Option<Identity> {
        let entity = *self.index.get(&id)?;
        let entry = self.ecs.entry_ref(entity).ok()?;
        entry.get_component::<Identity>().ok().cloned()
    }

    /// The session controlling `id`, if a player does.
    pub fn session(&self, id: EntityId) -> Option<SessionRef> {
        let entity = *self.index.get(&id)?;
        let entry = self.ecs.entry_ref(entity).ok()?;
        entry
            .get_component::<Pilot>()
            .ok()
            .map(|p| p.session.clone())
    }

    /// Rebinds a player entity to a new session (a reconnect).
    pub fn rebind(&mut self, id: EntityId, session: SessionRef) -> bool {
        let Some(&entity) = self.index.get(&id) else {
            return false;
        };
        let Some(mut entry) = self.ecs.entry(entity) else {
            return false;
        };
        match entry.get_component_mut::<Pilot>() {
            Ok(p) => {
                p.session = session;
                p.input = Input::default();
                true
            }
            Err(_) => false,
        }
    }

    /// Records the newest movement input of a player. Returns false if the
    /// entity is not a player of this cell (inputs for anything else are
    /// refused).
    pub fn set_input(&mut self, id: EntityId, input: Input) -> bool {
        let Some(&entity) = self.index.get(&id) else {
            return false;
        };
        let Some(mut entry) = self.ecs.entry(entity) else {
            return false;
        };
        match entry.get_component_mut::<Pilot>() {
            Ok(p) => {
                // Late, reordered datagrams must not undo newer inputs.
                if input.seq >= p.input.seq || p.input.seq.wrapping_sub(input.seq) > u32::MAX / 2 {
                    p.input = input.sanitized();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// A character's body, its capsule, and the queries it moves against:
    /// everything but itself and what its group walks through.
    fn mover(&self, handle: RigidBodyHandle) -> Option<(&RigidBody, &Collider, QueryPipeline<'_>)> {
        let body = self.physics.bodies.get(handle)?;
        let collider = self.physics.colliders.get(*body.colliders().first()?)?;
        let filter = QueryFilter::default()
            .exclude_rigid_body(handle)
            .groups(sweep_groups(collider.collision_groups().memberships));
        Some((
            body,
            collider,
            self.physics.query_pipeline_with_filter(filter),
        ))
    }

    /// Moves a character by `desired` metres against the obstacles of this
    /// cell; returns the new feet position.
    fn sweep(&self, handle: RigidBodyHandle, desired: Vec3, dt: f32) -> Option<Vec3> {
        if let Some(feet) = self.free_move(handle, desired) {
            return Some(feet);
        }
        self.controlled_move(handle, desired, dt)
    }

    /// A move on open ground: a character standing on the ground slab
    /// whose swept capsule, with [`FREE_MOVE_MARGIN`] around it and
    /// [`FREE_MOVE_BELOW`] under it, meets no collider but the ground in
    /// the broad phase goes the whole way and stays on the ground, which is
    /// what the character controller would find, without its casts and
    /// contact manifolds (most of a tick's cost in a swarm;
    /// docs/performance.md, "Capacity per core"). `None` when anything else
    /// is near: the controller decides then.
    fn free_move(&self, handle: RigidBodyHandle, desired: Vec3) -> Option<Vec3> {
        if desired.y != 0.0 {
            return None;
        }
        let (body, collider, queries) = self.mover(handle)?;
        let start = body.position();
        let feet = start.translation.y - CAPSULE_CENTRE;
        if feet.abs() > 0.001 {
            return None;
        }
        let end = Pose::from_parts(start.translation + to_vector(desired), start.rotation);
        let swept = collider
            .shape()
            .compute_aabb(start)
            .merged(&collider.shape().compute_aabb(&end));
        // The controller finds what it meets through the same broad phase,
        // within these bounds, so where this finds only the ground, so
        // would it.
        let swept = Aabb::new(
            swept.mins - Vector::new(FREE_MOVE_MARGIN, FREE_MOVE_BELOW, FREE_MOVE_MARGIN),
            swept.maxs + Vector::splat(FREE_MOVE_MARGIN),
        );
        let mut near = queries.intersect_aabb_conservative(swept);
        if near.any(|(other, _)| other != self.ground) {
            return None;
        }
        Some(Vec3::new(
            start.translation.x + desired.x,
            0.0,
            start.translation.z + desired.z,
        ))
    }

    /// A move decided by the character controller: slides along walls,
    /// climbs steps, follows slopes.
    fn controlled_move(&self, handle: RigidBodyHandle, desired: Vec3, dt: f32) -> Option<Vec3> {
        let (body, collider, queries) = self.mover(handle)?;
        let pos = *body.position();
        let moved = self.controller.move_shape(
            dt,
            &queries,
            collider.shape(),
            &pos,
            to_vector(desired),
            |_| {},
        );
        let centre = from_vector(pos.translation + moved.translation);
        Some(Vec3::new(
            centre.x,
            (centre.y - CAPSULE_CENTRE).max(0.0),
            centre.z,
        ))
    }

    /// Lets a character at `pos` (moved there, not yet in physics) drop by
    /// up to `drop` metres onto whatever is below it.
    fn fall(&self, handle: RigidBodyHandle, pos: Vec3, drop: f32) -> Option<Vec3> {
        if pos.y <= 0.001 {
            return Some(Vec3::new(pos.x, 0.0, pos.z));
        }
        let (body, collider, queries) = self.mover(handle)?;
        let from = Pose::from_parts(
            Vector::new(pos.x, pos.y + CAPSULE_CENTRE, pos.z),
            body.position().rotation,
        );
        let moved = self.controller.move_shape(
            0.1,
            &queries,
            collider.shape(),
            &from,
            Vector::new(0.0, -drop.min(pos.y), 0.0),
            |_| {},
        );
        Some(Vec3::new(
            pos.x,
            (pos.y + moved.translation.y).max(0.0),
            pos.z,
        ))
    }

    /// One text-player step: moves at once, blocked by obstacles. `None`
    /// if `id` is not a player of this cell.
    pub fn step(&mut self, id: EntityId, dir: Compass, len: f32) -> Option<StepOutcome> {
        let entity = *self.index.get(&id)?;
        let (handle, old) = {
            let entry = self.ecs.entry_ref(entity).ok()?;
            entry.get_component::<Pilot>().ok()?;
            (
                entry.get_component::<Body>().ok()?.0,
                entry.get_component::<Motion>().ok()?.pos,
            )
        };
        let unit = dir.unit();
        // Several short sweeps, so slopes and steps are followed like walking.
        let mut pos = old;
        let parts = 6;
        for _ in 0..parts {
            let desired = Vec3::new(
                unit.x * len / parts as f32,
                0.0,
                unit.z * len / parts as f32,
            );
            let next = self.sweep(handle, desired, 0.1)?;
            let next = self.fall(handle, next, 0.3)?;
            self.teleport_body(handle, next);
            pos = next;
        }
        let moved = pos.distance_xz(old);
        let mut entry = self.ecs.entry(entity)?;
        if let Ok(m) = entry.get_component_mut::<Motion>() {
            m.pos = pos;
            m.yaw = yaw_of(unit.x, unit.z);
        }
        Some(StepOutcome {
            pos,
            blocked: moved < len * 0.95,
        })
    }

    #[cfg(test)]
    fn body_of(&self, id: EntityId) -> Option<RigidBodyHandle> {
        let entry = self.ecs.entry_ref(*self.index.get(&id)?).ok()?;
        Some(entry.get_component::<Body>().ok()?.0)
    }

    fn teleport_body(&mut self, handle: RigidBodyHandle, pos: Vec3) {
        if let Some(b) = self.physics.bodies.get_mut(handle) {
            b.set_translation(Vector::new(pos.x, pos.y + CAPSULE_CENTRE, pos.z), true);
        }
    }

    /// Runs scripts whose think slot is this tick. Returns speech.
    pub fn think(
        &mut self,
        scripts: &ScriptEngine,
        tick: u64,
        think_every: u64,
        events: &mut Vec<CellEvent>,
    ) {
        let every = think_every.max(1);
        self.run_scripts(
            tick,
            0,
            |i, _| (tick + i.id.0).is_multiple_of(every),
            |script, ctx| scripts.on_tick(script, ctx),
            events,
        );
    }

    /// Delivers speech to the NPCs of this cell within `radius` of `origin`
    /// (not to the speaker itself).
    #[allow(clippy::too_many_arguments)]
    pub fn hear(
        &mut self,
        scripts: &ScriptEngine,
        tick: u64,
        origin: Vec3,
        radius: f32,
        speaker: EntityId,
        speaker_name: &str,
        text: &str,
        events: &mut Vec<CellEvent>,
    ) {
        self.run_scripts(
            tick,
            1 + speaker.0,
            |i, m| i.id != speaker && m.pos.distance(origin) <= radius,
            |script, ctx| scripts.on_hear(script, ctx, speaker_name, text),
            events,
        );
    }

    /// Calls `call` on the script of every NPC `wants` picks and applies
    /// the actions it returns. `salt` keeps calls of one tick apart in
    /// their random numbers.
    fn run_scripts(
        &mut self,
        tick: u64,
        salt: u64,
        wants: impl Fn(&Identity, &Motion) -> bool,
        mut call: impl FnMut(&mut ScriptInstance, &ScriptCtx) -> Vec<ScriptAction>,
        events: &mut Vec<CellEvent>,
    ) {
        let mut query = <(&Identity, &Motion, &mut Npc)>::query();
        for (identity, motion, npc) in query.iter_mut(&mut self.ecs) {
            if !wants(identity, motion) {
                continue;
            }
            let Some(script) = npc.script.as_mut() else {
                continue;
            };
            let ctx = ScriptCtx {
                entity: identity.id,
                name: &identity.name,
                pos: motion.pos,
                home: npc.home,
                tick,
                seed: derive_seed(identity.id, tick, salt),
            };
            let actions = call(script, &ctx);
            apply_actions(identity, motion, &mut npc.walk_target, actions, events);
        }
    }

    /// The nearest place to `want` in this cell where a character fits:
    /// clear of every other character (by distance, so characters that
    /// arrived since the last physics step count too) and of static
    /// geometry. Searched on a spiral out to about 20 m; `want` itself if
    /// nothing is free. Players arriving at one spot (a crowd logging in at
    /// the spawn) would otherwise be pushed apart by the physics for many
    /// ticks.
    pub fn free_spot(&self, want: Vec3) -> Vec3 {
        const CLEARANCE: f32 = 2.0 * CAPSULE_RADIUS + 0.2;
        const TRIES: u32 = 400;
        let others: Vec<Vec3> = <&Motion>::query().iter(&self.ecs).map(|m| m.pos).collect();
        let (x0, z0, x1, z1) = (
            self.bounds.min_x,
            self.bounds.min_z,
            self.bounds.max_x,
            self.bounds.max_z,
        );
        let margin = CAPSULE_RADIUS + 0.1;
        let filter = QueryFilter::only_fixed();
        let statics = self.physics.query_pipeline_with_filter(filter);
        let shape = Capsule::new_y(CAPSULE_HALF, CAPSULE_RADIUS);
        for k in 0..TRIES {
            // Golden-angle spiral: evenly spread, about 1 m apart.
            let r = (k as f32).sqrt();
            let a = k as f32 * 2.399_963;
            let c = Vec3::new(want.x + r * a.cos(), want.y, want.z + r * a.sin());
            if c.x < x0 + margin || c.x > x1 - margin || c.z < z0 + margin || c.z > z1 - margin {
                continue;
            }
            if others
                .iter()
                .any(|o| o.distance_xz(c) < CLEARANCE && (o.y - c.y).abs() < 2.0)
            {
                continue;
            }
            let pose = Pose::from_parts(
                Vector::new(c.x, c.y + CAPSULE_CENTRE, c.z),
                Rotation::IDENTITY,
            );
            if statics.intersect_shape(pose, &shape).next().is_some() {
                continue;
            }
            return c;
        }
        want
    }

    /// Gives every instance of `script` that stopped on an error a fresh
    /// start (a new version was loaded); returns how many instances run it.
    pub fn script_reloaded(&mut self, script: &str) -> usize {
        let mut query = <&mut Npc>::query();
        let mut n = 0;
        for npc in query.iter_mut(&mut self.ecs) {
            if let Some(inst) = npc.script.as_mut().filter(|i| i.script == script) {
                inst.disabled = None;
                n += 1;
            }
        }
        n
    }

    /// Every player of this cell: its entity, account, session and position.
    pub fn pilots(&self) -> Vec<(EntityId, tessera_proto::PlayerId, SessionRef, Vec3)> {
        let mut query = <(&Identity, &Motion, &Pilot)>::query();
        query
            .iter(&self.ecs)
            .map(|(i, m, p)| (i.id, p.player, p.session.clone(), m.pos))
            .collect()
    }

    /// Players of this cell within `radius` of `origin`, except `speaker`.
    pub fn listeners(&self, origin: Vec3, radius: f32, speaker: EntityId) -> Vec<SessionRef> {
        let mut query = <(&Identity, &Motion, &Pilot)>::query();
        query
            .iter(&self.ecs)
            .filter(|(i, m, _)| i.id != speaker && m.pos.distance(origin) <= radius)
            .map(|(_, _, p)| p.session.clone())
            .collect()
    }

    /// Advances movement and physics by `dt`.
    pub fn simulate(&mut self, dt: f32, movement: &Movement) {
        // Plan every move against the positions of the previous tick.
        let mut moves: Vec<(Entity, RigidBodyHandle, Vec3, f32)> = Vec::new();
        {
            let mut players = <(Entity, &Body, &Motion, &Pilot)>::query();
            for (entity, body, motion, pilot) in players.iter(&self.ecs) {
                let i = pilot.input;
                let v = Vec3::new(i.move_x, 0.0, i.move_z).scale(movement.player_speed);
                if v.length_xz() < 1e-3 && motion.pos.y <= 0.01 {
                    continue;
                }
                moves.push((*entity, body.0, v, i.yaw));
            }
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
                let speed = movement.npc_speed.min(dist / dt);
                let v = Vec3::new(d.x / dist * speed, 0.0, d.z / dist * speed);
                moves.push((*entity, body.0, v, yaw_of(d.x, d.z)));
            }
        }
        let mut results = Vec::with_capacity(moves.len());
        for (entity, handle, v, yaw) in moves {
            let desired = Vec3::new(v.x * dt, 0.0, v.z * dt);
            let pos = self
                .sweep(handle, desired, dt)
                .and_then(|p| self.fall(handle, p, FALL_SPEED * dt));
            if let Some(pos) = pos {
                results.push((entity, handle, pos, yaw));
            }
        }
        for (_, handle, pos, _) in &results {
            if let Some(b) = self.physics.bodies.get_mut(*handle) {
                b.set_next_kinematic_translation(Vector::new(pos.x, pos.y + CAPSULE_CENTRE, pos.z));
            }
        }
        self.physics.integration_parameters.dt = dt;
        self.physics.step();
        // Everything slows towards rest; what moved this tick gets its
        // velocity from the move below.
        let mut rest = <&mut Motion>::query();
        for m in rest.iter_mut(&mut self.ecs) {
            m.vel = m.vel.scale(0.0f32.max(1.0 - 10.0 * dt));
            // Exactly at rest, so that an idle entity's frame stops
            // changing (routers skip unchanged entities).
            if m.vel.length_xz() < 0.01 && m.vel.y.abs() < 0.01 {
                m.vel = Vec3::ZERO;
            }
        }
        for (entity, _, pos, yaw) in results {
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
                    if npc
                        .walk_target
                        .is_some_and(|t| t.distance_xz(arrived) < 0.3)
                    {
                        npc.walk_target = None;
                    }
                }
            }
        }
    }

    /// Entities more than `hysteresis` metres outside this region, and
    /// where they are: the shard hands each to the region of the map that
    /// holds that position.
    pub fn leavers(&self, hysteresis: f32) -> Vec<(EntityId, Vec3)> {
        let mut query = <(&Identity, &Motion)>::query();
        query
            .iter(&self.ecs)
            .filter(|(i, _)| self.index.contains_key(&i.id))
            .filter(|(_, m)| self.bounds.border_distance(m.pos) < -hysteresis)
            .map(|(i, m)| (i.id, m.pos))
            .collect()
    }

    /// Owned entities within `margin` metres of neighbour region `to`.
    pub fn border_states(&self, to: RegionId, margin: f32) -> Vec<GhostState> {
        let rect = to.bounds(&self.grid);
        let mut query = <(&Identity, &Motion)>::query();
        query
            .iter(&self.ecs)
            .filter(|(i, m)| {
                self.index.contains_key(&i.id) && rect.border_distance(m.pos) >= -margin
            })
            .map(|(i, m)| GhostState {
                id: i.id,
                kind: i.kind,
                pos: m.pos,
                yaw: m.yaw,
            })
            .collect()
    }

    /// Replaces the ghosts coming from region `from`.
    pub fn set_ghosts(&mut self, from: RegionId, states: &[GhostState]) {
        let keep: std::collections::HashSet<EntityId> = states.iter().map(|g| g.id).collect();
        let stale: Vec<EntityId> = {
            let mut q = <(&Identity, &Ghost)>::query();
            q.iter(&self.ecs)
                .filter(|(i, g)| g.from == from && !keep.contains(&i.id))
                .map(|(i, _)| i.id)
                .collect()
        };
        for id in stale {
            self.remove_ghost(id);
        }
        for g in states {
            if self.index.contains_key(&g.id) {
                // We own it (it has just been handed to us); not a ghost.
                continue;
            }
            match self.ghosts.get(&g.id) {
                Some(&entity) => {
                    let Some(mut entry) = self.ecs.entry(entity) else {
                        continue;
                    };
                    let handle = entry.get_component::<Body>().map(|b| b.0).ok();
                    if let Ok(m) = entry.get_component_mut::<Motion>() {
                        m.pos = g.pos;
                        m.yaw = g.yaw;
                    }
                    if let Ok(gh) = entry.get_component_mut::<Ghost>() {
                        gh.from = from;
                    }
                    if let Some(b) = handle.and_then(|h| self.physics.bodies.get_mut(h)) {
                        b.set_next_kinematic_translation(Vector::new(
                            g.pos.x,
                            g.pos.y + CAPSULE_CENTRE,
                            g.pos.z,
                        ));
                    }
                }
                None => {
                    let handle = self.add_body(g.id, g.kind, g.pos);
                    self.created += 1;
                    let entity = self.ecs.push((
                        Identity {
                            id: g.id,
                            kind: g.kind,
                            name: Arc::from(""),
                            description: Arc::from(""),
                        },
                        Motion {
                            pos: g.pos,
                            vel: Vec3::ZERO,
                            yaw: g.yaw,
                        },
                        Body(handle),
                        Ghost { from },
                    ));
                    self.ghosts.insert(g.id, entity);
                }
            }
        }
    }

    fn remove_ghost(&mut self, id: EntityId) {
        if let Some(entity) = self.ghosts.remove(&id) {
            if let Some(entry) = self.ecs.entry(entity) {
                if let Ok(b) = entry.get_component::<Body>() {
                    let h = b.0;
                    self.physics.remove_body_with_colliders(h, true);
                }
            }
            self.ecs.remove(entity);
        }
    }

    pub fn ghost_count(&self) -> usize {
        self.ghosts.len()
    }

    /// Entities that left this cell's ECS world (handed off, removed, ghosts that went)
    /// since it was made. legion 0.4 never frees the slot a world kept for an entity: its
    /// location map holds a block of 16 slots (about 400 bytes) for every 16 entity ids it
    /// ever saw, and entity ids are shared by every world of the process, so each entity that
    /// passes through a cell costs it about a block for good, until [`Cell::compact`].
    pub fn churn(&self) -> u64 {
        self.created
            .saturating_sub((self.index.len() + self.ghosts.len()) as u64)
    }

    /// Moves every entity, owned and ghost, into a fresh ECS world, which keeps slots for
    /// them alone ([`Cell::churn`] becomes 0). Physics bodies, scripts' state, sessions and
    /// inputs are kept as they are; only legion's handles change.
    pub fn compact(&mut self) {
        let mut fresh = World::default();
        let mut index = HashMap::with_capacity(self.index.len());
        let mut ghosts = HashMap::with_capacity(self.ghosts.len());
        for (owned, from, to) in [
            (true, &self.index, &mut index),
            (false, &self.ghosts, &mut ghosts),
        ] {
            for (&id, &entity) in from {
                let Ok(entry) = self.ecs.entry_ref(entity) else {
                    continue;
                };
                let (Ok(identity), Ok(motion), Ok(body)) = (
                    entry.get_component::<Identity>(),
                    entry.get_component::<Motion>(),
                    entry.get_component::<Body>(),
                ) else {
                    continue;
                };
                let base = (identity.clone(), *motion, *body);
                let moved = if !owned {
                    let Ok(ghost) = entry.get_component::<Ghost>() else {
                        continue;
                    };
                    fresh.push((base.0, base.1, base.2, *ghost))
                } else if let Ok(pilot) = entry.get_component::<Pilot>() {
                    fresh.push((base.0, base.1, base.2, pilot.clone()))
                } else if let Ok(npc) = entry.get_component::<Npc>() {
                    fresh.push((base.0, base.1, base.2, npc.clone()))
                } else {
                    fresh.push(base)
                };
                to.insert(id, moved);
            }
        }
        self.ecs = fresh;
        self.created = (index.len() + ghosts.len()) as u64;
        self.index = index;
        self.ghosts = ghosts;
    }

    /// The owned entities as routers see them.
    pub fn view(&self) -> Vec<ViewEntity> {
        let mut query = <(&Identity, &Motion, Option<&Pilot>)>::query();
        query
            .iter(&self.ecs)
            .filter(|(i, _, _)| self.index.contains_key(&i.id))
            .map(|(i, m, p)| ViewEntity {
                id: i.id,
                kind: i.kind,
                name: i.name.clone(),
                pos: m.pos,
                vel: m.vel,
                yaw: m.yaw,
                ack_input: p.map(|p| p.input.seq).unwrap_or(0),
            })
            .collect()
    }
}

fn apply_actions(
    identity: &Identity,
    motion: &Motion,
    walk_target: &mut Option<Vec3>,
    actions: Vec<ScriptAction>,
    events: &mut Vec<CellEvent>,
) {
    for action in actions {
        match action {
            ScriptAction::Say(text) => events.push(CellEvent::Say {
                speaker: identity.id,
                name: identity.name.to_string(),
                pos: motion.pos,
                text,
                emote: false,
            }),
            ScriptAction::Emote(text) => events.push(CellEvent::Say {
                speaker: identity.id,
                name: identity.name.to_string(),
                pos: motion.pos,
                text,
                emote: true,
            }),
            ScriptAction::WalkTo(target) => {
                if target.is_finite() {
                    *walk_target = Some(Vec3::new(target.x, 0.0, target.z));
                }
            }
            ScriptAction::Stop => *walk_target = None,
        }
    }
}

/// The fixed collider of a piece of static geometry (also what the
/// overhead bench's bare physics is built from).
pub fn static_collider(shape: &StaticShape) -> Collider {
    match shape {
        StaticShape::Box {
            center,
            half_extents,
            yaw_deg,
            ..
        } => ColliderBuilder::cuboid(half_extents.x, half_extents.y, half_extents.z)
            .position(Pose::from_parts(
                to_vector(*center),
                Rotation::from_rotation_y(yaw_deg.to_radians()),
            ))
            .build(),
        StaticShape::Ramp {
            center,
            half_extents,
            yaw_deg,
            pitch_deg,
            ..
        } => ColliderBuilder::cuboid(half_extents.x, half_extents.y, half_extents.z)
            .position(Pose::from_parts(
                to_vector(*center),
                Rotation::from_rotation_y(yaw_deg.to_radians())
                    * Rotation::from_rotation_x(pitch_deg.to_radians()),
            ))
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::world::parse_world;
    use tessera_proto::CellId;
    use tessera_proto::{RouterId, SessionId};

    const WORLD: &str = r#"
name = "Test"
cell_size = 64
spawn = [10, 0, 10]
[extent]
min = [0, 0]
max = [1, 1]
[[box]]
name = "Wall"
center = [20, 2, 10]
size = [1, 4, 10]
"#;

    fn player(id: u64, pos: Vec3) -> EntityTransfer {
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

    fn cell() -> Cell {
        let world = parse_world(WORLD).expect("test world parses");
        Cell::new(RegionId::cell(CellId::new(0, 0)), Epoch(1), &world)
    }

    #[test]
    fn compacting_keeps_every_entity_and_forgets_the_ones_that_left() {
        let mut c = cell();
        let mut npc = player(1000, Vec3::new(30.0, 0.0, 30.0));
        npc.kind = EntityKind::Npc;
        npc.player = None;
        npc.session = None;
        npc.walk_target = Some(Vec3::new(31.0, 0.0, 30.0));
        npc.script = Some(ScriptState {
            script: "greeter".into(),
            state_json: r#"{"greeted":3}"#.into(),
            disabled: None,
        });
        c.insert(npc.clone());
        c.insert(player(1, Vec3::new(10.0, 0.0, 10.0)));
        // Players pass through; ghosts come and go at the border.
        for id in 2..500u64 {
            c.insert(player(id, Vec3::new(12.0, 0.0, 12.0)));
            assert!(c.extract(EntityId(id)).is_some());
        }
        let from = RegionId::cell(CellId::new(1, 0));
        for round in 0..50u64 {
            let states: Vec<GhostState> = (0..4)
                .map(|k| GhostState {
                    id: EntityId(10_000 + round * 4 + k),
                    kind: EntityKind::Player,
                    pos: Vec3::new(63.0, 0.0, 10.0 + k as f32),
                    yaw: 0.0,
                })
                .collect();
            c.set_ghosts(from, &states);
        }
        assert_eq!((c.entity_count(), c.ghost_count()), (2, 4));
        assert_eq!(c.churn(), 498 + 196);
        let before: Vec<_> = [1000, 1].map(|id| c.export(EntityId(id)).unwrap()).into();

        c.compact();
        assert_eq!(c.churn(), 0);
        assert_eq!((c.entity_count(), c.ghost_count()), (2, 4));
        let after: Vec<_> = [1000, 1].map(|id| c.export(EntityId(id)).unwrap()).into();
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
        // The moved entities still act: a step, a session, ghosts replaced by the next update.
        assert!(c.session(EntityId(1)).is_some());
        assert!(!c.step(EntityId(1), Compass::North, 3.0).unwrap().blocked);
        c.set_ghosts(from, &[]);
        assert_eq!(c.ghost_count(), 0);
        c.simulate(1.0 / 30.0, &Movement::default());
        assert_eq!(c.view().len(), 2);
    }

    #[test]
    fn a_step_on_open_ground_moves_the_full_length() {
        let mut c = cell();
        c.insert(player(1, Vec3::new(10.0, 0.0, 10.0)));
        let StepOutcome { pos, blocked } = c.step(EntityId(1), Compass::North, 3.0).unwrap();
        assert!(!blocked, "{pos:?}");
        assert!(
            (pos.z - 7.0).abs() < 0.05 && (pos.x - 10.0).abs() < 0.05,
            "{pos:?}"
        );
        assert!(pos.y.abs() < 0.05);
    }

    #[test]
    fn a_free_move_goes_where_the_controller_would() {
        // Players scattered near the wall (x 19.5..20.5) and near each
        // other, each moved at random: wherever the free move applies, it
        // must land exactly where the controller does.
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut c = cell();
        let mut rng = StdRng::seed_from_u64(7);
        let mut next = || rng.gen_range(-1.0f32..1.0);
        for id in 1..=40 {
            let pos = Vec3::new(20.0 + next() * 4.0, 0.0, 10.0 + next() * 8.0);
            c.insert(player(id, pos));
        }
        c.simulate(1.0 / 30.0, &Movement::default());
        let (mut free, mut controlled) = (0, 0);
        for round in 0..400u64 {
            let handle = c.body_of(EntityId(1 + round % 40)).unwrap();
            let desired = Vec3::new(next() * 0.3, 0.0, next() * 0.3);
            let by_controller = c.controlled_move(handle, desired, 1.0 / 30.0).unwrap();
            match c.free_move(handle, desired) {
                Some(pos) => {
                    free += 1;
                    assert!(
                        pos.distance_xz(by_controller) < 1e-4
                            && (pos.y - by_controller.y).abs() < 1e-4,
                        "{desired:?}: free {pos:?}, controller {by_controller:?}"
                    );
                }
                None => controlled += 1,
            }
        }
        // Both kinds happened.
        assert!(
            free > 50 && controlled > 50,
            "{free} free, {controlled} controlled"
        );
    }

    #[test]
    fn a_wall_or_a_neighbour_leaves_the_move_to_the_controller() {
        let mut c = cell();
        c.insert(player(1, Vec3::new(18.9, 0.0, 10.0)));
        c.insert(player(2, Vec3::new(40.0, 0.0, 40.0)));
        c.insert(player(3, Vec3::new(41.0, 0.0, 40.0)));
        c.insert(player(4, Vec3::new(40.0, 0.0, 50.0)));
        c.simulate(1.0 / 30.0, &Movement::default());
        let east = Vec3::new(0.2, 0.0, 0.0);
        let body = |c: &Cell, id| c.body_of(EntityId(id)).unwrap();
        // The wall's west face is 0.2 m from player 1's capsule.
        assert_eq!(c.free_move(body(&c, 1), east), None);
        // Players 2 and 3 stand a metre apart (their capsules 0.2 m).
        assert_eq!(c.free_move(body(&c, 2), east), None);
        assert!(c.free_move(body(&c, 4), east).is_some());
        // Into the wall: the controller stops the move short of it.
        let pos = c.sweep(body(&c, 1), Vec3::new(2.0, 0.0, 0.0), 0.1).unwrap();
        assert!(pos.x < 19.2, "{pos:?}");
    }

    #[test]
    fn a_wall_blocks_a_step() {
        let mut c = cell();
        c.insert(player(1, Vec3::new(18.0, 0.0, 10.0)));
        let StepOutcome { pos, blocked } = c.step(EntityId(1), Compass::East, 3.0).unwrap();
        assert!(blocked);
        // The wall's west face is at x = 19.5, the capsule radius 0.4.
        assert!(pos.x < 19.2 && pos.x > 18.5, "{pos:?}");
    }

    #[test]
    fn inputs_move_players_at_clamped_speed_and_npcs_refuse_inputs() {
        let mut c = cell();
        c.insert(player(1, Vec3::new(10.0, 0.0, 30.0)));
        let input = Input {
            seq: 1,
            move_x: 100.0, // a speed hack: clamped to unit length
            move_z: 0.0,
            yaw: 0.0,
            jump: false,
        };
        assert!(c.set_input(EntityId(1), input));
        let m = Movement::default();
        for _ in 0..30 {
            c.simulate(1.0 / 30.0, &m);
        }
        let pos = c.position(EntityId(1)).unwrap();
        assert!((pos.x - 16.0).abs() < 0.3, "one second at 6 m/s: {pos:?}");
        // Frames report the speed it moves at (clients extrapolate with it).
        let vel = c
            .view()
            .into_iter()
            .find(|e| e.id == EntityId(1))
            .unwrap()
            .vel;
        assert!(
            (vel.x - 6.0).abs() < 0.1,
            "moving at 6 m/s, reported {vel:?}"
        );
        // Standing still, the velocity decays to nothing.
        assert!(c.set_input(
            EntityId(1),
            Input {
                seq: 2,
                move_x: 0.0,
                ..input
            }
        ));
        for _ in 0..30 {
            c.simulate(1.0 / 30.0, &m);
        }
        let vel = c
            .view()
            .into_iter()
            .find(|e| e.id == EntityId(1))
            .unwrap()
            .vel;
        assert!(vel.length_xz() < 0.01, "at rest, reported {vel:?}");
        let mut npc = player(2, Vec3::new(30.0, 0.0, 30.0));
        npc.kind = EntityKind::Npc;
        npc.player = None;
        npc.session = None;
        c.insert(npc);
        assert!(!c.set_input(EntityId(2), input));
    }

    #[test]
    fn extract_and_insert_keep_everything() {
        let mut a = cell();
        let mut t = player(1, Vec3::new(63.5, 0.0, 10.0));
        t.input.seq = 42;
        a.insert(t.clone());
        let out = a.extract(EntityId(1)).unwrap();
        assert_eq!(a.entity_count(), 0);
        assert_eq!(out, t);
        let world = parse_world(WORLD).unwrap();
        let mut b = Cell::new(RegionId::cell(CellId::new(1, 0)), Epoch(1), &world);
        b.insert(out.clone());
        assert_eq!(b.extract(EntityId(1)).unwrap(), out);
    }

    #[test]
    fn leavers_respect_hysteresis_and_ghosts_follow() {
        let mut a = cell();
        a.insert(player(1, Vec3::new(64.5, 0.0, 10.0)));
        assert!(a.leavers(1.0).is_empty(), "0.5 m past the border stays");
        a.insert(player(2, Vec3::new(65.5, 0.0, 12.0)));
        assert_eq!(
            a.leavers(1.0),
            vec![(EntityId(2), Vec3::new(65.5, 0.0, 12.0))]
        );
        let ghosts = a.border_states(RegionId::cell(CellId::new(1, 0)), 4.0);
        assert_eq!(ghosts.len(), 2);
        let world = parse_world(WORLD).unwrap();
        let mut b = Cell::new(RegionId::cell(CellId::new(1, 0)), Epoch(1), &world);
        b.set_ghosts(a.id, &ghosts);
        assert_eq!(b.ghost_count(), 2);
        assert_eq!(b.entity_count(), 0, "ghosts are not owned");
        b.set_ghosts(a.id, &ghosts[..1]);
        assert_eq!(b.ghost_count(), 1);
    }
}
