//! The shard: the cells one shard owns, the messages it handles and its
//! fixed-rate tick loop, on a dedicated simulation thread (never on the tokio
//! I/O threads).

use crate::cell::{Cell, CellEvent, Movement};
use crate::script::{ScriptEngine, ScriptError, ScriptInstance};
use crate::{ShardConfig, ShardError};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::membership::{CellLoad, ShardLoad};
use tessera_coordinator::migration::{now_unix_ms, MigrationBoard};
use tessera_coordinator::{Bus, CellMap};
use tessera_proto::cluster::{
    CellFrame, EntityTransfer, PlayerEvent, ScriptState, SessionRef, ToRouter, ToShard,
};
use tessera_proto::msg::{EntityKind, Input, MAX_SAY_CHARS};
use tessera_proto::world::WorldDef;
use tessera_proto::{CellId, EntityId, Epoch, Grid, ShardId, Vec3};

/// How long a shard remembers where it handed an entity, to forward
/// messages that were already on their way.
const FORWARD_MEMORY: Duration = Duration::from_secs(30);

/// Neighbour cells' checkpoints as a restore reads them (saved at, entity
/// ids), kept for one reconcile so each is read at most once.
type NeighbourCheckpoints = HashMap<CellId, Option<(u64, Vec<EntityId>)>>;

/// How long a join waits for this shard's map to name a live owner of its
/// cell before it is refused.
const JOIN_PATIENCE: Duration = Duration::from_secs(10);

pub struct Shard {
    pub id: ShardId,
    config: ShardConfig,
    world: Arc<WorldDef>,
    grid: Grid,
    bus: Arc<dyn Bus>,
    map: CellMap,
    cells: BTreeMap<CellId, Cell>,
    scripts: ScriptEngine,
    movement: Movement,
    tick: u64,
    /// Where entities this shard handed to other shards went.
    forwarded: HashMap<EntityId, (ShardId, Instant)>,
    events: Vec<CellEvent>,
    /// Cells that had ghosts to send to each neighbour last tick, so an
    /// emptied set is sent once to clear them.
    ghost_links: HashMap<(CellId, CellId), bool>,
    /// The cell map version the shard's cells were last reconciled with.
    map_version: u64,
    /// Recent tick durations (microseconds), for load reports.
    recent_ticks: std::collections::VecDeque<u32>,
    /// Where the latest load report is published for the process to send.
    load: Arc<parking_lot::Mutex<ShardLoad>>,
    /// Migrations in flight (from the cluster store).
    migrations: MigrationBoard,
    /// Tells the shard's process what it must record in the cluster store.
    notices: Option<tokio::sync::mpsc::UnboundedSender<ShardNotice>>,
    /// Cells this shard froze and shipped, and to whom; not simulated here
    /// any more, whatever the map still says.
    shipped: HashMap<CellId, Shipped>,
    /// Cells shipped to this shard, waiting for the map to make it owner.
    incoming: HashMap<CellId, Incoming>,
    /// Messages for entities of incoming cells, replayed once they open.
    deferred: Vec<ToShard>,
    /// Stall of the last migration into this shard, ms.
    last_stall_ms: Option<u64>,
    /// Where checkpoints go, and when the next round is due.
    checkpoints: Option<(crate::checkpoint::Writer, Instant)>,
    /// Cells an NPC entered from, or left to, another shard since their
    /// last checkpoint: written at the end of the tick, so a failover
    /// neither loses nor duplicates that NPC.
    dirty: std::collections::BTreeSet<CellId>,
    /// Joins for cells whose owner, as far as this shard's map knows, is
    /// gone: the map is about to catch up (a router re-joining a player
    /// after a failover may see the new owner first). Retried every tick.
    pending_joins: Vec<(Instant, ToShard)>,
}

/// What a shard asks its process to record in the cluster store.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardNotice {
    /// A migrating cell's snapshot arrived here.
    Restored { cell: CellId, epoch: Epoch },
}

/// A cell this shard froze and shipped, kept until the map names the
/// target, so a cancelled migration can take it back.
struct Shipped {
    to: ShardId,
    epoch: Epoch,
    frozen_unix_ms: u64,
    entities: Vec<EntityTransfer>,
}

struct Incoming {
    epoch: Epoch,
    frozen_unix_ms: u64,
    entities: Vec<EntityTransfer>,
}

impl Shard {
    /// Builds the shard's cells from the cell map and spawns the world's
    /// NPCs that start in them.
    pub fn new(
        config: ShardConfig,
        world: Arc<WorldDef>,
        bus: Arc<dyn Bus>,
        map: CellMap,
    ) -> Result<Shard, ShardError> {
        let mut scripts = ScriptEngine::new(config.script_limits.clone());
        for (name, source) in &world.scripts {
            if let Err(e) = scripts.compile(name, source) {
                // Instances of a broken script start disabled; the shard runs.
                tracing::error!(script = %name, error = %e, "script does not compile");
            }
        }
        let grid = Grid::new(world.cell_size);
        let mut shard = Shard {
            id: config.id.clone(),
            world,
            grid,
            bus,
            map,
            cells: BTreeMap::new(),
            scripts,
            movement: config.movement,
            tick: 0,
            forwarded: HashMap::new(),
            events: Vec::new(),
            ghost_links: HashMap::new(),
            map_version: 0,
            recent_ticks: std::collections::VecDeque::new(),
            load: Arc::new(parking_lot::Mutex::new(ShardLoad::default())),
            migrations: MigrationBoard::default(),
            notices: None,
            shipped: HashMap::new(),
            incoming: HashMap::new(),
            deferred: Vec::new(),
            last_stall_ms: None,
            checkpoints: None,
            dirty: Default::default(),
            pending_joins: Vec::new(),
            config,
        };
        if let Some(c) = &shard.config.checkpoints {
            let writer = crate::checkpoint::Writer::start(shard.id.clone(), c.db.clone())?;
            shard.checkpoints = Some((writer, Instant::now() + c.interval));
        }
        shard.reconcile();
        if shard.cells.is_empty() {
            tracing::warn!(shard = %shard.id, "shard owns no cells");
        }
        Ok(shard)
    }

    /// Makes the simulated cells match the cell map: opens cells assigned
    /// to this shard, and stops simulating cells assigned elsewhere (fencing:
    /// a shard simulates a cell only while the map says it owns it).
    fn reconcile(&mut self) {
        self.map_version = self.map.version();
        let mine: BTreeMap<CellId, Epoch> = self.map.cells_of(&self.id).into_iter().collect();
        // Shipped cells stay shipped: the map still names this shard until
        // the coordinator flips the owner.
        self.shipped.retain(|c, _| mine.contains_key(c));
        // Neighbour checkpoints read while restoring cells, read once.
        let mut neighbours = NeighbourCheckpoints::new();
        for (cell, epoch) in &mine {
            if self.shipped.contains_key(cell) {
                continue;
            }
            match self.cells.get_mut(cell) {
                Some(c) => c.epoch = *epoch,
                None => match self.incoming.remove(cell) {
                    Some(inc) if inc.epoch == *epoch => self.open_migrated(*cell, inc),
                    _ => self.open_cell(*cell, *epoch, &mut neighbours),
                },
            }
        }
        let lost: Vec<CellId> = self
            .cells
            .keys()
            .filter(|c| !mine.contains_key(c))
            .copied()
            .collect();
        for cell in lost {
            if let Some(c) = self.cells.remove(&cell) {
                tracing::error!(shard = %self.id, cell = %cell, entities = c.entity_count(), "cell assigned elsewhere; no longer simulating it");
            }
        }
    }

    /// Opens a cell from a migration snapshot: its entities exactly as the
    /// old owner froze them, then the messages that waited for them.
    fn open_migrated(&mut self, id: CellId, inc: Incoming) {
        let mut cell = Cell::new(id, inc.epoch, &self.world);
        let mut sessions = Vec::new();
        for t in inc.entities {
            self.forwarded.remove(&t.id);
            if let Some(s) = &t.session {
                sessions.push(s.clone());
            }
            cell.insert(t);
        }
        let stall_ms = now_unix_ms().saturating_sub(inc.frozen_unix_ms);
        metrics::histogram!("tessera_shard_migration_stall_seconds", "shard" => self.id.0.clone())
            .record(stall_ms as f64 / 1000.0);
        tracing::info!(shard = %self.id, cell = %id, epoch = %inc.epoch, entities = cell.entity_count(), stall_ms, "migrated cell opened");
        self.last_stall_ms = Some(stall_ms);
        self.cells.insert(id, cell);
        // The new owner's checkpoint, at once: it also fences the old owner's late writes.
        self.checkpoint(&[id]);
        for s in sessions {
            self.send_player(
                &s,
                PlayerEvent::OwnerChanged {
                    cell: id,
                    shard: self.id.clone(),
                },
            );
        }
        for msg in std::mem::take(&mut self.deferred) {
            self.handle(msg);
        }
    }

    /// Undoes what cancelled migrations left: a cell this shard shipped
    /// opens here again from what it shipped (the owner never flipped), and
    /// a snapshot shipped here is forgotten.
    fn settle_cancelled(&mut self) {
        for (cell, m) in self.migrations.cancelled(&self.id) {
            if m.from == self.id && self.shipped.get(&cell).is_some_and(|s| s.epoch == m.epoch) {
                let Some(s) = self.shipped.remove(&cell) else {
                    continue;
                };
                let Some(owner) = self.map.owner(cell).filter(|o| o.owner == self.id) else {
                    continue;
                };
                tracing::warn!(shard = %self.id, cell = %cell, to = %s.to, entities = s.entities.len(), "migration cancelled after the cell was shipped; taking it back");
                self.open_migrated(
                    cell,
                    Incoming {
                        epoch: owner.epoch,
                        frozen_unix_ms: s.frozen_unix_ms,
                        entities: s.entities,
                    },
                );
            }
            if m.to == self.id && self.incoming.get(&cell).is_some_and(|i| i.epoch == m.epoch) {
                self.incoming.remove(&cell);
                // Hand-offs that waited for the cell go back to its owner.
                for msg in std::mem::take(&mut self.deferred) {
                    match msg {
                        ToShard::Handoff { to, epoch, entity } if to == cell => {
                            let _ = self
                                .bus
                                .to_shard(&m.from, ToShard::Handoff { to, epoch, entity });
                        }
                        other => self.deferred.push(other),
                    }
                }
                tracing::warn!(shard = %self.id, cell = %cell, from = %m.from, "migration cancelled; snapshot dropped");
            }
        }
    }

    /// Freezes and ships the cells the board says are leaving this shard.
    fn ship_migrations(&mut self) {
        self.settle_cancelled();
        for (cell_id, m) in self.migrations.outgoing(&self.id) {
            if self.shipped.contains_key(&cell_id) || !self.cells.contains_key(&cell_id) {
                continue;
            }
            let Some(mut cell) = self.cells.remove(&cell_id) else {
                continue;
            };
            let entities: Vec<EntityTransfer> = cell
                .entity_ids()
                .into_iter()
                .filter_map(|id| cell.extract(id))
                .collect();
            let frozen_unix_ms = now_unix_ms();
            let msg = ToShard::CellSnapshot {
                cell: cell_id,
                epoch: m.epoch,
                frozen_tick: self.tick,
                frozen_unix_ms,
                entities: entities.clone(),
            };
            match self.bus.to_shard(&m.to, msg) {
                Ok(()) => {
                    let now = Instant::now();
                    for e in &entities {
                        self.forwarded.insert(e.id, (m.to.clone(), now));
                    }
                    tracing::info!(shard = %self.id, cell = %cell_id, to = %m.to, entities = entities.len(), tick = self.tick, "cell frozen and shipped");
                    self.shipped.insert(
                        cell_id,
                        Shipped {
                            to: m.to.clone(),
                            epoch: m.epoch,
                            frozen_unix_ms,
                            entities,
                        },
                    );
                    let labels = [("shard", self.id.0.clone()), ("cell", cell_id.to_string())];
                    metrics::gauge!("tessera_shard_entities", &labels).set(0.0);
                    metrics::gauge!("tessera_shard_players", &labels).set(0.0);
                }
                Err(e) => {
                    tracing::error!(shard = %self.id, cell = %cell_id, error = %e, "cannot ship cell; keeping it");
                    for t in entities {
                        cell.insert(t);
                    }
                    self.cells.insert(cell_id, cell);
                }
            }
        }
    }

    /// True if `entity` is in a cell shipped here that has not opened yet.
    fn is_incoming(&self, entity: EntityId) -> bool {
        self.incoming
            .values()
            .any(|inc| inc.entities.iter().any(|e| e.id == entity))
    }

    /// Opens a cell this shard was given without a migration: from its last checkpoint if
    /// there is one (a failover, or a restart of the whole world), else from the world file.
    fn open_cell(&mut self, id: CellId, epoch: Epoch, neighbours: &mut NeighbourCheckpoints) {
        let Some(c) = &self.config.checkpoints else {
            return self.open_fresh(id, epoch);
        };
        match crate::checkpoint::claim(&c.db, id, epoch) {
            Ok(Some(cp)) => self.open_checkpoint(id, epoch, cp, neighbours),
            Ok(None) => self.open_fresh(id, epoch),
            Err(e) => {
                // Availability over state: the cell runs, from the world file.
                metrics::counter!("tessera_shard_checkpoint_errors_total", "shard" => self.id.0.clone())
                    .increment(1);
                tracing::error!(shard = %self.id, cell = %id, epoch = %epoch, error = %e, "cannot read the cell's checkpoint; opening it from the world file");
                self.open_fresh(id, epoch);
            }
        }
    }

    /// Opens a cell as its last checkpoint left it, without its players (their routers re-join
    /// them here).
    fn open_checkpoint(
        &mut self,
        id: CellId,
        epoch: Epoch,
        cp: crate::checkpoint::CellCheckpoint,
        neighbours: &mut NeighbourCheckpoints,
    ) {
        let mut cell = Cell::new(id, epoch, &self.world);
        let age_ms = now_unix_ms().saturating_sub(cp.saved_unix_ms);
        let elsewhere = self.entities_that_moved_on(id, cp.saved_unix_ms, neighbours);
        let mut players = 0;
        for t in cp.entities {
            if t.player.is_some() {
                players += 1;
                continue;
            }
            if elsewhere.contains(&t.id) {
                tracing::info!(shard = %self.id, cell = %id, entity = %t.id, "not restored: it is in a neighbour cell now");
                continue;
            }
            self.forwarded.remove(&t.id);
            cell.insert(t);
        }
        tracing::info!(shard = %self.id, cell = %id, epoch = %epoch, entities = cell.entity_count(), players_left_to_routers = players, from_shard = %cp.shard, from_epoch = %cp.epoch, checkpoint_tick = cp.tick, age_ms, "cell restored from its checkpoint");
        metrics::counter!("tessera_shard_cells_restored_total", "shard" => self.id.0.clone())
            .increment(1);
        self.cells.insert(id, cell);
    }

    /// Entities in the neighbours of `id` as they are now: simulated here,
    /// or in a checkpoint newer than `since` (unix ms). An entity of an
    /// older checkpoint of `id` that is among them walked on after it.
    fn entities_that_moved_on(
        &self,
        id: CellId,
        since: u64,
        neighbours: &mut NeighbourCheckpoints,
    ) -> std::collections::HashSet<EntityId> {
        let mut ids = std::collections::HashSet::new();
        let Some(c) = &self.config.checkpoints else {
            return ids;
        };
        for dx in -1..=1 {
            for dz in -1..=1 {
                let n = CellId::new(id.x + dx, id.z + dz);
                if n == id {
                    continue;
                }
                if let Some(cell) = self.cells.get(&n) {
                    ids.extend(cell.entity_ids());
                    continue;
                }
                let other = neighbours.entry(n).or_insert_with(|| {
                    crate::checkpoint::load(&c.db, n)
                        .ok()
                        .flatten()
                        .map(|cp| (cp.saved_unix_ms, cp.entities.iter().map(|e| e.id).collect()))
                });
                if let Some((saved, entities)) = other {
                    if *saved > since {
                        ids.extend(entities.iter().copied());
                    }
                }
            }
        }
        ids
    }

    /// Keeps a join for a later tick (see `pending_joins`), at most
    /// [`JOIN_PATIENCE`] after it first arrived (`since`).
    fn defer_join(&mut self, msg: ToShard, since: Instant) {
        let ToShard::Join { session, .. } = &msg else {
            return;
        };
        // A newer join of the same session replaces an older one.
        self.pending_joins
            .retain(|(_, m)| !matches!(m, ToShard::Join { session: s, .. } if s == session));
        if since.elapsed() > JOIN_PATIENCE {
            let cell = match &msg {
                ToShard::Join { pos, .. } => self.grid.cell_of(*pos),
                _ => return,
            };
            tracing::warn!(shard = %self.id, cell = %cell, "join refused: the cell has no live owner");
            self.send_player(
                session,
                PlayerEvent::Error {
                    message: format!("cell {cell} is not being simulated right now"),
                },
            );
            return;
        }
        self.pending_joins.push((since, msg));
    }

    /// Tries the joins that waited for the map again.
    fn retry_joins(&mut self) {
        for (since, msg) in std::mem::take(&mut self.pending_joins) {
            // `join` defers it again (keeping its first arrival) if the map
            // still has no live owner for it.
            if let ToShard::Join {
                session,
                player,
                name,
                pos,
            } = msg
            {
                self.join(session, player, name, pos, since);
            }
        }
    }

    fn open_fresh(&mut self, id: CellId, epoch: Epoch) {
        let mut cell = Cell::new(id, epoch, &self.world);
        for (index, (name, pos, def)) in self.world.npc_spawns().into_iter().enumerate() {
            if self.grid.cell_of(pos) != id {
                continue;
            }
            let entity = EntityId(EntityId::NPC_BIT | index as u64);
            let mut script = ScriptInstance::new(&def.script);
            let mut walk_target = None;
            if !self.world.scripts.contains_key(&def.script) {
                script.disabled = Some(format!("unknown script {}", def.script));
            } else {
                let ctx = crate::script::ScriptCtx {
                    entity,
                    name: &name,
                    pos,
                    home: pos,
                    tick: self.tick,
                    seed: crate::script::derive_seed(entity, self.tick, 0),
                };
                // A new world: nobody is around to hear, so only movement
                // matters.
                for action in self.scripts.init(&mut script, &ctx) {
                    match action {
                        crate::script::ScriptAction::WalkTo(t) => walk_target = Some(t),
                        crate::script::ScriptAction::Stop => walk_target = None,
                        _ => {}
                    }
                }
            }
            cell.insert(EntityTransfer {
                id: entity,
                kind: EntityKind::Npc,
                name,
                description: def.description.clone(),
                pos,
                vel: Vec3::ZERO,
                yaw: 0.0,
                home: pos,
                player: None,
                session: None,
                input: Input::default(),
                walk_target,
                script: Some(ScriptState {
                    script: script.script,
                    state_json: script.state.to_string(),
                    disabled: script.disabled,
                }),
            });
        }
        tracing::info!(shard = %self.id, cell = %id, epoch = %epoch, entities = cell.entity_count(), "cell opened");
        self.cells.insert(id, cell);
    }

    /// Follows migrations on `board` and reports progress on `notices`.
    pub fn with_migrations(
        mut self,
        board: MigrationBoard,
        notices: tokio::sync::mpsc::UnboundedSender<ShardNotice>,
    ) -> Shard {
        self.migrations = board;
        self.notices = Some(notices);
        self
    }

    /// The latest load report, refreshed about once a second by the tick
    /// loop.
    pub fn load_board(&self) -> Arc<parking_lot::Mutex<ShardLoad>> {
        self.load.clone()
    }

    fn record_tick(&mut self, took: Duration) {
        const KEEP: usize = 300;
        if self.recent_ticks.len() == KEEP {
            self.recent_ticks.pop_front();
        }
        self.recent_ticks
            .push_back(took.as_micros().min(u32::MAX as u128) as u32);
        if self.tick.is_multiple_of(self.config.tick_hz.max(1) as u64) {
            let report = self.load_report();
            self.record_load_gauges(&report);
            *self.load.lock() = report;
        }
    }

    /// Shard-wide gauges, refreshed with the load report (once a second):
    /// cells owned, and the mean tick time over the last ticks as a fraction
    /// of the tick budget (what a shard autoscaler targets).
    fn record_load_gauges(&self, report: &ShardLoad) {
        let shard = self.id.0.clone();
        metrics::gauge!("tessera_shard_cells", "shard" => shard.clone())
            .set(self.cells.len() as f64);
        metrics::gauge!("tessera_shard_tick_utilization_ratio", "shard" => shard)
            .set(tick_utilization(&self.recent_ticks, report.tick_budget_ms));
    }

    /// Load of this shard and its cells now.
    pub fn load_report(&self) -> ShardLoad {
        let mut sorted: Vec<u32> = self.recent_ticks.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            sorted[i] as f64 / 1000.0
        };
        let cells: Vec<CellLoad> = self
            .cells
            .values()
            .map(|c| CellLoad {
                cell: c.id,
                epoch: c.epoch,
                entities: c.entity_count(),
                players: c.player_count(),
                ghosts: c.ghost_count(),
                tick_ms: c.cost.mean_ms(),
                tick_p99_ms: c.cost.p99_ms(),
            })
            .collect();
        ShardLoad {
            tick: self.tick,
            tick_p50_ms: pct(0.5),
            tick_p99_ms: pct(0.99),
            tick_budget_ms: 1000.0 / self.config.tick_hz.max(1) as f64,
            entities: cells.iter().map(|c| c.entities).sum(),
            players: cells.iter().map(|c| c.players).sum(),
            last_migration_stall_ms: self.last_stall_ms,
            cells,
        }
    }

    pub fn cells(&self) -> impl Iterator<Item = &Cell> {
        self.cells.values()
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Number of entities owned by this shard.
    pub fn entity_count(&self) -> usize {
        self.cells.values().map(|c| c.entity_count()).sum()
    }

    fn cell_of_entity(&self, id: EntityId) -> Option<CellId> {
        self.cells
            .iter()
            .find(|(_, c)| c.contains(id))
            .map(|(id, _)| *id)
    }

    fn send_player(&self, session: &SessionRef, event: PlayerEvent) {
        let msg = ToRouter::Player {
            session: session.session,
            event,
        };
        if let Err(e) = self.bus.to_router(&session.router, msg) {
            tracing::debug!(shard = %self.id, error = %e, "player event not delivered");
        }
    }

    /// Forwards a message for an entity this shard no longer has. Returns
    /// false if we never knew where it went.
    /// Messages for an entity of a migrating cell that has not opened here
    /// yet wait for it.
    fn forward(&mut self, entity: EntityId, msg: ToShard) -> bool {
        match self.forwarded.get(&entity) {
            Some((shard, _)) => {
                if let Err(e) = self.bus.to_shard(shard, msg) {
                    tracing::warn!(shard = %self.id, entity = %entity, error = %e, "forward failed");
                }
                true
            }
            None if self.is_incoming(entity) => {
                self.deferred.push(msg);
                true
            }
            None => false,
        }
    }

    /// Handles one message.
    pub fn handle(&mut self, msg: ToShard) {
        // Act on the newest map: a router may already know of a cell this
        // shard was just given.
        if self.map.version() != self.map_version {
            self.reconcile();
        }
        match msg {
            ToShard::Join {
                session,
                player,
                name,
                pos,
            } => self.join(session, player, name, pos, Instant::now()),
            ToShard::Input { entity, input } => {
                let cell = self.cell_of_entity(entity);
                match cell {
                    Some(c) => {
                        if let Some(cell) = self.cells.get_mut(&c) {
                            if !cell.set_input(entity, input) {
                                tracing::warn!(shard = %self.id, entity = %entity, "input for a non-player refused");
                            }
                        }
                    }
                    None => {
                        self.forward(entity, ToShard::Input { entity, input });
                    }
                }
            }
            ToShard::Step { entity, dir } => match self.cell_of_entity(entity) {
                Some(c) => {
                    let step = self.movement.step;
                    let Some(cell) = self.cells.get_mut(&c) else {
                        return;
                    };
                    let session = cell.session(entity);
                    match (cell.step(entity, dir, step), session) {
                        (Some((pos, blocked)), Some(session)) => {
                            // Hand off at once, and say where the entity is
                            // now, so the next command goes straight there.
                            self.handoffs_of(c);
                            let (cell, shard) = match self.cell_of_entity(entity) {
                                Some(now) => (now, self.id.clone()),
                                None => match self.forwarded.get(&entity) {
                                    Some((shard, _)) => (self.grid.cell_of(pos), shard.clone()),
                                    None => (c, self.id.clone()),
                                },
                            };
                            let done = PlayerEvent::StepDone {
                                pos,
                                blocked,
                                cell,
                                shard,
                            };
                            self.send_player(&session, done);
                        }
                        _ => {
                            tracing::warn!(shard = %self.id, entity = %entity, "step for a non-player refused")
                        }
                    }
                }
                None => {
                    self.forward(entity, ToShard::Step { entity, dir });
                }
            },
            ToShard::Say { entity, text } => match self.cell_of_entity(entity) {
                Some(c) => {
                    let Some(cell) = self.cells.get(&c) else {
                        return;
                    };
                    let (Some(pos), Some(identity)) =
                        (cell.position(entity), cell.identity(entity))
                    else {
                        return;
                    };
                    let text: String = tessera_proto::msg::clean_text(&text)
                        .chars()
                        .take(MAX_SAY_CHARS)
                        .collect();
                    if text.is_empty() {
                        return;
                    }
                    self.speak(entity, identity.name.to_string(), pos, text, false);
                }
                None => {
                    self.forward(entity, ToShard::Say { entity, text });
                }
            },
            ToShard::Leave { entity, session } => match self.cell_of_entity(entity) {
                Some(c) => {
                    let Some(cell) = self.cells.get_mut(&c) else {
                        return;
                    };
                    let bound = cell.session(entity);
                    if bound.as_ref() != Some(&session) {
                        // A session that no longer controls the avatar (the
                        // player resumed on another router), or a non-player:
                        // nothing changes, but the sender stops waiting.
                        let Some(pos) = cell.position(entity) else {
                            return;
                        };
                        match bound {
                            Some(bound) => {
                                tracing::info!(shard = %self.id, cell = %c, entity = %entity, stale = ?session, bound = ?bound, "leave from a stale session ignored")
                            }
                            None => {
                                tracing::warn!(shard = %self.id, cell = %c, entity = %entity, "leave for a non-player refused")
                            }
                        }
                        self.send_player(&session, PlayerEvent::Left { pos });
                        return;
                    }
                    if let Some(t) = cell.extract(entity) {
                        tracing::info!(shard = %self.id, cell = %c, entity = %entity, "player left");
                        self.send_player(&session, PlayerEvent::Left { pos: t.pos });
                    }
                }
                None => {
                    self.forward(entity, ToShard::Leave { entity, session });
                }
            },
            ToShard::Handoff { to, epoch, entity } => {
                if self.incoming.contains_key(&to) {
                    // Into a cell still migrating here: wait for it.
                    self.deferred.push(ToShard::Handoff { to, epoch, entity });
                } else if let Some(target) = self.shipped.get(&to).map(|s| s.to.clone()) {
                    // Into a cell this shard just shipped: follow the cell.
                    let _ = self
                        .bus
                        .to_shard(&target, ToShard::Handoff { to, epoch, entity });
                } else {
                    if entity.player.is_none() {
                        self.dirty.insert(to);
                    }
                    self.accept(to, epoch, entity);
                }
            }
            ToShard::CellSnapshot {
                cell,
                epoch,
                frozen_tick,
                frozen_unix_ms,
                entities,
            } => {
                tracing::info!(shard = %self.id, cell = %cell, epoch = %epoch, frozen_tick, entities = entities.len(), "migrating cell received");
                self.incoming.insert(
                    cell,
                    Incoming {
                        epoch,
                        frozen_unix_ms,
                        entities,
                    },
                );
                match &self.notices {
                    Some(tx) => {
                        let _ = tx.send(ShardNotice::Restored { cell, epoch });
                    }
                    None => {
                        tracing::warn!(shard = %self.id, cell = %cell, "no way to report the migration; it will time out")
                    }
                }
                // The map may already say so (a fast coordinator).
                self.reconcile();
            }
            ToShard::Ghosts {
                from, to, ghosts, ..
            } => {
                if let Some(cell) = self.cells.get_mut(&to) {
                    cell.set_ghosts(from, &ghosts);
                }
            }
            ToShard::Speech {
                cells,
                origin,
                radius,
                speaker,
                name,
                text,
                emote,
            } => self.deliver_speech(&cells, origin, radius, speaker, &name, &text, emote),
        }
    }

    /// Puts a player into the world; `arrived` is when the join first
    /// reached this shard (it may have waited for the map).
    fn join(
        &mut self,
        session: SessionRef,
        player: tessera_proto::PlayerId,
        name: String,
        pos: Vec3,
        arrived: Instant,
    ) {
        let entity = EntityId::for_player(player);
        // A reconnect while the old avatar is still in the world takes it over.
        if let Some(c) = self.cell_of_entity(entity) {
            if let Some(cell) = self.cells.get_mut(&c) {
                cell.rebind(entity, session.clone());
                let pos = cell.position(entity).unwrap_or(pos);
                self.send_player(
                    &session,
                    PlayerEvent::Joined {
                        entity,
                        pos,
                        cell: c,
                        shard: self.id.clone(),
                    },
                );
            }
            return;
        }
        let mut pos = if pos.is_finite() {
            self.world.extent.clamp_position(&self.grid, pos)
        } else {
            self.world.spawn
        };
        pos.y = pos.y.max(0.0);
        let cell_id = self.grid.cell_of(pos);
        if !self.cells.contains_key(&cell_id) {
            let msg = ToShard::Join {
                session: session.clone(),
                player,
                name: name.clone(),
                pos,
            };
            match self.map.owner(cell_id) {
                // Not ours (the map changed under the router): pass it on.
                Some(owner) if owner.owner != self.id && self.bus.has_shard(&owner.owner) => {
                    if self.bus.to_shard(&owner.owner, msg.clone()).is_ok() {
                        return;
                    }
                    self.defer_join(msg, arrived);
                    return;
                }
                // Its owner is gone, or nobody owns it yet: this shard's
                // map is behind the router's. Wait for it.
                Some(owner) if owner.owner != self.id => {
                    self.defer_join(msg, arrived);
                    return;
                }
                None => {
                    self.defer_join(msg, arrived);
                    return;
                }
                Some(_) if self.incoming.contains_key(&cell_id) => {
                    self.deferred.push(msg);
                    return;
                }
                Some(_) => {}
            }
            self.send_player(
                &session,
                PlayerEvent::Error {
                    message: format!("cell {cell_id} is not being simulated right now"),
                },
            );
            return;
        }
        // Not on top of someone else (a crowd logging in at the spawn).
        let pos = self
            .cells
            .get(&cell_id)
            .map(|c| c.free_spot(pos))
            .unwrap_or(pos);
        let transfer = EntityTransfer {
            id: entity,
            kind: EntityKind::Player,
            name,
            description: String::new(),
            pos,
            vel: Vec3::ZERO,
            yaw: 0.0,
            home: pos,
            player: Some(player),
            session: Some(session.clone()),
            input: Input::default(),
            walk_target: None,
            script: None,
        };
        if let Some(cell) = self.cells.get_mut(&cell_id) {
            cell.insert(transfer);
            tracing::info!(shard = %self.id, cell = %cell_id, player = %player, "player joined");
        }
        self.send_player(
            &session,
            PlayerEvent::Joined {
                entity,
                pos,
                cell: cell_id,
                shard: self.id.clone(),
            },
        );
    }

    /// Takes an entity handed to cell `to`.
    fn accept(&mut self, to: CellId, epoch: Epoch, entity: EntityTransfer) {
        // A hand-off delivered twice (the cluster bus re-sends the frame in
        // flight when a stream breaks) must not create a second copy.
        if let Some(here) = self.cell_of_entity(entity.id) {
            tracing::warn!(shard = %self.id, cell = %here, entity = %entity.id, "duplicate hand-off ignored: the entity is already here");
            return;
        }
        self.forwarded.remove(&entity.id);
        let Some(cell) = self.cells.get_mut(&to) else {
            // Not ours any more: pass it to the owner. Never drop it.
            match self.map.owner(to) {
                Some(owner) if owner.owner != self.id => {
                    let msg = ToShard::Handoff {
                        to,
                        epoch: owner.epoch,
                        entity,
                    };
                    if let Err(e) = self.bus.to_shard(&owner.owner, msg) {
                        tracing::error!(shard = %self.id, cell = %to, error = %e, "cannot pass hand-off on");
                    }
                }
                _ => {
                    // Nobody owns it: keep the entity in our nearest cell.
                    let nearest = self
                        .cells
                        .keys()
                        .min_by_key(|c| (c.x - to.x).abs() + (c.z - to.z).abs())
                        .copied();
                    tracing::error!(shard = %self.id, cell = %to, entity = %entity.id, "hand-off to an unowned cell; keeping it");
                    if let Some(c) = nearest {
                        let mut e = entity;
                        e.pos = self.grid.centre(c);
                        if let Some(cell) = self.cells.get_mut(&c) {
                            cell.insert(e);
                        }
                    }
                }
            }
            return;
        };
        if epoch < cell.epoch {
            tracing::warn!(shard = %self.id, cell = %to, epoch = %epoch, current = %cell.epoch, "hand-off with an old epoch; accepted (entity is never dropped)");
        }
        let session = entity.session.clone();
        cell.insert(entity);
        if let Some(session) = session {
            self.send_player(
                &session,
                PlayerEvent::OwnerChanged {
                    cell: to,
                    shard: self.id.clone(),
                },
            );
        }
    }

    /// Moves the entities that left cell `c` to their new cells.
    fn handoffs_of(&mut self, c: CellId) {
        let hysteresis = self.config.hysteresis;
        let Some(cell) = self.cells.get(&c) else {
            return;
        };
        for (entity, to) in cell.leavers(hysteresis) {
            let owner = self.map.owner(to);
            let local = self.cells.contains_key(&to);
            if !local && owner.is_none() {
                // Outside the world or unowned: stay (walls keep players in).
                continue;
            }
            let Some(transfer) = self.cells.get_mut(&c).and_then(|cell| cell.extract(entity))
            else {
                continue;
            };
            let kind = if local { "local" } else { "remote" };
            metrics::counter!("tessera_shard_handoffs_total", "shard" => self.id.0.clone(), "kind" => kind)
                .increment(1);
            if local {
                self.accept(to, self.cells[&to].epoch, transfer);
            } else if let Some(owner) = owner {
                tracing::debug!(shard = %self.id, from = %c, to = %to, entity = %entity, target = %owner.owner, "hand-off to another shard");
                if transfer.player.is_none() {
                    self.dirty.insert(c);
                }
                self.forwarded
                    .insert(entity, (owner.owner.clone(), Instant::now()));
                let msg = ToShard::Handoff {
                    to,
                    epoch: owner.epoch,
                    entity: transfer.clone(),
                };
                if let Err(e) = self.bus.to_shard(&owner.owner, msg) {
                    // The neighbour is gone: keep the entity here.
                    tracing::error!(shard = %self.id, error = %e, "hand-off failed; keeping entity");
                    self.forwarded.remove(&entity);
                    if let Some(cell) = self.cells.get_mut(&c) {
                        cell.insert(transfer);
                    }
                }
            }
        }
    }

    /// Sends speech to every cell within hearing range, on whichever shard.
    fn speak(&mut self, speaker: EntityId, name: String, origin: Vec3, text: String, emote: bool) {
        let radius = self.config.hearing_radius;
        let mut by_shard: BTreeMap<ShardId, Vec<CellId>> = BTreeMap::new();
        for c in self.grid.cells_within(origin, radius) {
            if self.cells.contains_key(&c) {
                by_shard.entry(self.id.clone()).or_default().push(c);
            } else if let Some(owner) = self.map.owner(c) {
                by_shard.entry(owner.owner).or_default().push(c);
            }
        }
        for (shard, cells) in by_shard {
            if shard == self.id {
                self.deliver_speech(&cells, origin, radius, speaker, &name, &text, emote);
            } else {
                let msg = ToShard::Speech {
                    cells,
                    origin,
                    radius,
                    speaker,
                    name: name.clone(),
                    text: text.clone(),
                    emote,
                };
                if let Err(e) = self.bus.to_shard(&shard, msg) {
                    tracing::warn!(shard = %self.id, error = %e, "speech not delivered");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_speech(
        &mut self,
        cells: &[CellId],
        origin: Vec3,
        radius: f32,
        speaker: EntityId,
        name: &str,
        text: &str,
        emote: bool,
    ) {
        let mut events = std::mem::take(&mut self.events);
        for c in cells {
            let Some(cell) = self.cells.get_mut(c) else {
                continue;
            };
            for session in cell.listeners(origin, radius, speaker) {
                let event = PlayerEvent::Heard {
                    speaker,
                    name: name.to_string(),
                    text: text.to_string(),
                    emote,
                };
                let msg = ToRouter::Player {
                    session: session.session,
                    event,
                };
                let _ = self.bus.to_router(&session.router, msg);
            }
            // Only players' speech makes NPCs answer, so NPCs cannot talk in
            // a loop.
            if speaker.is_player() && !emote {
                cell.hear(
                    &self.scripts,
                    self.tick,
                    origin,
                    radius,
                    speaker,
                    name,
                    text,
                    &mut events,
                );
            }
        }
        self.events = events;
    }

    /// One simulation tick of every cell.
    pub fn step(&mut self) {
        if self.map.version() != self.map_version {
            self.reconcile();
        }
        self.ship_migrations();
        if !self.pending_joins.is_empty() {
            self.retry_joins();
        }
        self.tick += 1;
        let dt = 1.0 / self.config.tick_hz as f32;
        let think_every = (self.config.tick_hz as u64 / self.config.think_hz.max(1) as u64).max(1);
        let mut events = std::mem::take(&mut self.events);
        for cell in self.cells.values_mut() {
            let started = Instant::now();
            cell.think(&self.scripts, self.tick, think_every, &mut events);
            cell.simulate(dt, &self.movement);
            cell.cost.record(started.elapsed());
        }
        // Frames go out before hand-offs: an entity leaving for another
        // shard is still in this tick's frame of the cell that simulated it,
        // so viewers lose sight of it only until the new owner's next tick
        // (under one tick), not for two (benches/handoff.rs).
        self.publish();
        let ids: Vec<CellId> = self.cells.keys().copied().collect();
        for c in &ids {
            self.handoffs_of(*c);
        }
        self.exchange_ghosts(&ids);
        for ev in events.drain(..) {
            match ev {
                CellEvent::Say {
                    speaker,
                    name,
                    pos,
                    text,
                    emote,
                } => self.speak(speaker, name, pos, text, emote),
            }
        }
        events.extend(std::mem::take(&mut self.events));
        self.events = events;
        self.record_counts();
        let now = Instant::now();
        self.forwarded
            .retain(|_, (_, at)| now.duration_since(*at) < FORWARD_MEMORY);
    }

    fn exchange_ghosts(&mut self, ids: &[CellId]) {
        let margin = self.config.ghost_margin;
        for c in ids {
            for n in c.neighbours() {
                let Some(states) = self.cells.get(c).map(|cell| cell.border_states(n, margin))
                else {
                    continue;
                };
                let had = self.ghost_links.get(&(*c, n)).copied().unwrap_or(false);
                if states.is_empty() && !had {
                    continue;
                }
                self.ghost_links.insert((*c, n), !states.is_empty());
                if let Some(cell) = self.cells.get_mut(&n) {
                    cell.set_ghosts(*c, &states);
                } else if let Some(owner) = self.map.owner(n) {
                    let msg = ToShard::Ghosts {
                        from: *c,
                        to: n,
                        tick: self.tick,
                        ghosts: states,
                    };
                    let _ = self.bus.to_shard(&owner.owner, msg);
                }
            }
        }
    }

    fn publish(&self) {
        for cell in self.cells.values() {
            let frame = CellFrame {
                cell: cell.id,
                shard: self.id.clone(),
                epoch: cell.epoch,
                tick: self.tick,
                entities: cell.view(),
            };
            self.bus.publish_frame(Arc::new(frame));
        }
    }

    /// Entity, player and ghost gauges per cell, after the tick's hand-offs.
    fn record_counts(&self) {
        let shard = self.id.0.clone();
        for cell in self.cells.values() {
            let labels = [("shard", shard.clone()), ("cell", cell.id.to_string())];
            metrics::gauge!("tessera_shard_entities", &labels).set(cell.entity_count() as f64);
            metrics::gauge!("tessera_shard_players", &labels).set(cell.player_count() as f64);
            metrics::gauge!("tessera_shard_ghosts", &labels).set(cell.ghost_count() as f64);
        }
    }

    /// Runs the tick loop until `stop` is set. Messages are handled as they
    /// arrive between ticks, so a text player's step is answered at once.
    pub fn run(mut self, inbox: Receiver<ToShard>, stop: Arc<AtomicBool>) {
        let period = Duration::from_secs_f64(1.0 / self.config.tick_hz as f64);
        let shard_label = self.id.0.clone();
        let mut next = Instant::now() + period;
        tracing::info!(shard = %self.id, cells = self.cells.len(), tick_hz = self.config.tick_hz, "shard running");
        while !stop.load(Ordering::Relaxed) {
            // Ticks come first: a flood of messages must not starve them.
            if Instant::now() < next {
                match inbox.recv_deadline(next) {
                    Ok(msg) => {
                        self.handle(msg);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let started = Instant::now();
            self.step();
            let took = started.elapsed();
            self.record_tick(took);
            self.checkpoint_if_due();
            self.apply_script_updates();
            metrics::histogram!("tessera_shard_tick_seconds", "shard" => shard_label.clone())
                .record(took.as_secs_f64());
            next += period;
            let now = Instant::now();
            if now > next + period * 5 {
                // Far behind (a stall): skip ticks rather than racing.
                tracing::warn!(shard = %self.id, behind_ms = (now - next).as_millis() as u64, "tick overrun");
                metrics::counter!("tessera_shard_tick_overruns_total", "shard" => shard_label.clone()).increment(1);
                next = now + period;
            }
        }
        self.final_checkpoint();
        tracing::info!(shard = %self.id, tick = self.tick, "shard stopped");
    }

    /// Loads a new version of script `name` (hot reload): every NPC running
    /// it keeps its state and runs the new code from its next call. Returns
    /// how many NPCs of this shard run it; a version that does not compile
    /// is refused and the old one keeps running.
    pub fn reload_script(&mut self, name: &str, source: &str) -> Result<usize, ScriptError> {
        self.scripts.reload(name, source)?;
        Ok(self
            .cells
            .values_mut()
            .map(|cell| cell.script_reloaded(name))
            .sum())
    }

    fn apply_script_updates(&mut self) {
        let Some(updates) = self.config.script_updates.clone() else {
            return;
        };
        while let Ok(update) = updates.try_recv() {
            match self.reload_script(&update.name, &update.source) {
                Ok(npcs) => {
                    metrics::counter!("tessera_shard_script_reloads_total", "shard" => self.id.0.clone())
                        .increment(1);
                    tracing::info!(shard = %self.id, script = %update.name, npcs, "script reloaded")
                }
                Err(e) => {
                    tracing::error!(shard = %self.id, script = %update.name, error = %e, "new script version refused; the old one keeps running")
                }
            }
        }
    }

    /// The current state of `cells`, as checkpoints.
    fn capture(&self, cells: &[CellId]) -> Vec<crate::checkpoint::CellCheckpoint> {
        let saved_unix_ms = now_unix_ms();
        cells
            .iter()
            .filter_map(|id| self.cells.get(id))
            .map(|cell| crate::checkpoint::CellCheckpoint {
                cell: cell.id,
                epoch: cell.epoch,
                shard: self.id.clone(),
                tick: self.tick,
                saved_unix_ms,
                entities: cell
                    .entity_ids()
                    .into_iter()
                    .filter_map(|e| cell.export(e))
                    .collect(),
            })
            .collect()
    }

    /// Queues checkpoints of `cells` for the writer thread; false if the
    /// writer is still busy with earlier ones.
    fn checkpoint(&self, cells: &[CellId]) -> bool {
        match &self.checkpoints {
            Some((writer, _)) => writer.submit(self.capture(cells)),
            None => true,
        }
    }

    fn checkpoint_if_due(&mut self) {
        let (Some((_, due)), Some(c)) = (&mut self.checkpoints, &self.config.checkpoints) else {
            return;
        };
        let now = Instant::now();
        // A full round when one is due, else the cells NPCs crossed into or
        // out of since the last round.
        let ids: Vec<CellId> = if now >= *due {
            *due = now + c.interval;
            self.cells.keys().copied().collect()
        } else if !self.dirty.is_empty() {
            self.dirty.iter().copied().collect()
        } else {
            return;
        };
        if self.checkpoint(&ids) {
            self.dirty.clear();
        }
    }

    /// On a clean stop, the cells still here are written before the thread ends.
    fn final_checkpoint(&mut self) {
        let ids: Vec<CellId> = self.cells.keys().copied().collect();
        let last = self.capture(&ids);
        if let Some((writer, _)) = self.checkpoints.take() {
            writer.finish(last);
        }
    }
}

/// The mean of `ticks_us` (tick durations in microseconds) as a fraction of
/// `budget_ms`; 0 with no ticks or no budget.
fn tick_utilization(ticks_us: &std::collections::VecDeque<u32>, budget_ms: f64) -> f64 {
    if ticks_us.is_empty() || budget_ms <= 0.0 {
        return 0.0;
    }
    let mean_us = ticks_us.iter().map(|&t| t as f64).sum::<f64>() / ticks_us.len() as f64;
    mean_us / 1000.0 / budget_ms
}

#[cfg(test)]
mod utilization_tests {
    use super::tick_utilization;
    use std::collections::VecDeque;

    #[test]
    fn utilization_is_the_mean_tick_over_the_budget() {
        let ticks: VecDeque<u32> = [10_000, 20_000, 30_000].into_iter().collect();
        let u = tick_utilization(&ticks, 40.0);
        assert!((u - 0.5).abs() < 1e-9, "{u}");
    }

    #[test]
    fn utilization_without_ticks_or_budget_is_zero() {
        assert_eq!(tick_utilization(&VecDeque::new(), 33.3), 0.0);
        let ticks: VecDeque<u32> = [1_000].into_iter().collect();
        assert_eq!(tick_utilization(&ticks, 0.0), 0.0);
    }
}
