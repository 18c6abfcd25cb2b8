//! The shard: the cells one shard owns, the messages it handles and its
//! fixed-rate tick loop, on a dedicated simulation thread (never on the tokio
//! I/O threads).
//!
//! The state is split by concern, each with its own module: `messages`
//! (one method per message kind), `migrate` (live migration), `open`
//! (opening cells from checkpoints or the world file), `saving` (when
//! checkpoints are written), `load` (tick history and load reports), and
//! the pure `forward` and `joins`. Every entry point takes the time (`now`)
//! as an input, as quinn-proto's `Connection` does: only the tick loop
//! (`run`) and `new` read the clock for decisions, so timing rules are
//! tested without sleeping.
//! Wall-clock stamps that other processes compare (a checkpoint's save
//! time, a migration's freeze time) are still read where they are made.

mod forward;
mod inflight;
mod joins;
mod linkdead;
mod load;
mod messages;
mod migrate;
mod open;
mod pace;
mod reshape;
mod saving;

pub use forward::FORWARD_MEMORY;
pub use joins::JOIN_PATIENCE;
pub use pace::MESSAGE_SLICE;

use crate::cell::{Cell, CellEvent, Movement};
use crate::script::{ScriptEngine, ScriptError};
use crate::{ShardConfig, ShardError};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use forward::Forwarding;
use inflight::InFlight;
use joins::{Join, PendingJoins};
use load::TickHistory;
use migrate::Migrations;
use open::NeighbourCheckpoints;
use pace::{Pacer, Turn};
use saving::Checkpoints;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::{Bus, CellMap};
use tessera_proto::cluster::{CellFrame, PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::world::WorldDef;
use tessera_proto::{EntityId, Epoch, Grid, RegionId, ShardId, Vec3};

/// How many entities may leave a cell's ECS world before it is rebuilt
/// (`Shard::compact_one_cell`): about 1.5 MiB of legion's slots.
pub const COMPACT_AFTER: u64 = 4096;

pub struct Shard {
    pub id: ShardId,
    config: ShardConfig,
    world: Arc<WorldDef>,
    grid: Grid,
    bus: Arc<dyn Bus>,
    map: CellMap,
    /// The cell map version the shard's cells were last reconciled with.
    map_version: u64,
    /// A reconcile is running (it is not re-entered, see `reconcile`).
    reconciling: bool,
    /// The regions this shard simulates (most are whole cells), by id.
    cells: BTreeMap<RegionId, Cell>,
    /// Each simulated region's neighbours in the map (leaf regions that
    /// touch it), rebuilt when the map changes.
    neighbours: HashMap<RegionId, Vec<RegionId>>,
    scripts: ScriptEngine,
    movement: Movement,
    tick: u64,
    /// Script events of this tick (speech) not yet acted on.
    events: Vec<CellEvent>,
    /// Regions that had ghosts to send to each neighbour last tick, so an
    /// emptied set is sent once to clear them.
    ghost_links: HashMap<(RegionId, RegionId), bool>,
    /// Where entities this shard handed to other shards went.
    forwarding: Forwarding,
    /// Hand-offs sent to other shards and not yet known to have arrived.
    in_flight: InFlight,
    /// Joins waiting for this shard's map to catch up.
    pending_joins: PendingJoins,
    migrations: Migrations,
    /// Checkpoint rounds (`None`: checkpoints are off).
    saving: Option<Checkpoints>,
    ticks: TickHistory,
    /// Players whose router is gone.
    linkdead: linkdead::Linkdead,
}

/// What a shard asks its process to record in the cluster store.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardNotice {
    /// A migrating region's snapshot arrived here.
    Restored { region: RegionId, epoch: Epoch },
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
        let saving = match &config.checkpoints {
            Some(c) => Some(Checkpoints::new(
                crate::checkpoint::Writer::start(config.id.clone(), c.db.clone())?,
                c.interval,
            )),
            None => None,
        };
        let mut shard = Shard {
            id: config.id.clone(),
            grid: Grid::new(world.cell_size),
            world,
            bus,
            map,
            map_version: 0,
            reconciling: false,
            cells: BTreeMap::new(),
            neighbours: HashMap::new(),
            scripts,
            movement: config.movement,
            tick: 0,
            events: Vec::new(),
            ghost_links: HashMap::new(),
            forwarding: Forwarding::default(),
            in_flight: InFlight::default(),
            pending_joins: PendingJoins::default(),
            migrations: Migrations::default(),
            saving,
            ticks: TickHistory::default(),
            linkdead: linkdead::Linkdead::default(),
            config,
        };
        shard.reconcile(Instant::now());
        if shard.cells.is_empty() {
            tracing::warn!(shard = %shard.id, "shard owns no cells");
        }
        Ok(shard)
    }

    /// Makes the simulated regions match the cell map: opens regions
    /// assigned to this shard, and stops simulating regions assigned
    /// elsewhere (fencing: a shard simulates a region only while the map
    /// says it owns it).
    ///
    /// Not re-entered: opening a migrated region hands on the messages that
    /// waited for it, and handling those would reconcile again with a newer
    /// map (opening regions the running round's older map does not name,
    /// which that round would then drop as assigned elsewhere). A nested
    /// call only asks for another round, run once this one is done.
    fn reconcile(&mut self, now: Instant) {
        if self.reconciling {
            return;
        }
        self.reconciling = true;
        loop {
            self.reconcile_round(now);
            if self.map.version() == self.map_version {
                break;
            }
        }
        self.reconciling = false;
    }

    fn reconcile_round(&mut self, now: Instant) {
        self.map_version = self.map.version();
        let mine: BTreeMap<RegionId, Epoch> = self.map.regions_of(&self.id).into_iter().collect();
        // Shipped cells stay shipped: the map still names this shard until
        // the coordinator flips the owner.
        self.migrations.shipped.retain(|c, _| mine.contains_key(c));
        // Regions the map split or merged among this shard's own.
        self.reshape(&mine, now);
        // Neighbour checkpoints read while restoring cells, read once.
        let mut neighbours = NeighbourCheckpoints::new();
        for (cell, epoch) in &mine {
            if self.migrations.shipped.contains_key(cell) {
                continue;
            }
            match self.cells.get_mut(cell) {
                Some(c) => c.epoch = *epoch,
                None => match self.migrations.incoming.remove(cell) {
                    Some(inc) if inc.epoch == *epoch => self.open_migrated(*cell, inc, now),
                    _ => self.open_cell(*cell, *epoch, &mut neighbours),
                },
            }
        }
        let lost: Vec<RegionId> = self
            .cells
            .keys()
            .filter(|c| !mine.contains_key(c))
            .copied()
            .collect();
        for cell in lost {
            if let Some(c) = self.cells.remove(&cell) {
                tracing::error!(shard = %self.id, cell = %cell, entities = c.entity_count(), "region assigned elsewhere; no longer simulating it");
                self.clear_gauges(cell);
            }
        }
        self.find_neighbours();
    }

    /// The leaf regions of the map that touch each region simulated here
    /// (any size: a bigger neighbour, smaller ones, siblings). Ghosts go to
    /// these; a region no wider than the ghost margin would need more, and
    /// regions never split below 8 m (docs/regions.md).
    fn find_neighbours(&mut self) {
        let neighbours = self
            .cells
            .keys()
            .map(|r| (*r, self.touching_leaves(*r)))
            .collect();
        self.neighbours = neighbours;
    }

    /// The leaf regions of the map that touch `region`.
    fn touching_leaves(&self, region: RegionId) -> Vec<RegionId> {
        let cell = region.cell_id();
        let mut found = Vec::new();
        for c in std::iter::once(cell).chain(cell.neighbours()) {
            if let Some(tree) = self.map.tree(c) {
                found.extend(
                    tree.leaves(c)
                        .map(|(r, _)| r)
                        .filter(|r| region.touches(*r)),
                );
            }
        }
        found
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

    fn cell_of_entity(&self, id: EntityId) -> Option<RegionId> {
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

    /// Handles one message that arrived at `now`.
    pub fn handle(&mut self, msg: ToShard, now: Instant) {
        // Act on the newest map: a router may already know of a cell this
        // shard was just given.
        if self.map.version() != self.map_version {
            self.reconcile(now);
        }
        match msg {
            ToShard::Join {
                session,
                player,
                name,
                pos,
            } => self.on_join(
                Join {
                    session,
                    player,
                    name,
                    pos,
                    arrived: now,
                },
                now,
            ),
            ToShard::Input { entity, input } => self.on_input(entity, input),
            ToShard::Step { entity, dir } => self.on_step(entity, dir, now),
            ToShard::Say { entity, text } => self.on_say(entity, text),
            ToShard::Leave { entity, session } => self.on_leave(entity, session),
            ToShard::Handoff { to, epoch, entity } => self.on_handoff(to, epoch, entity, now),
            ToShard::CellSnapshot {
                region,
                epoch,
                frozen_tick,
                frozen_unix_ms,
                entities,
            } => self.on_cell_snapshot(region, epoch, frozen_tick, frozen_unix_ms, entities, now),
            ToShard::Ghosts {
                from, to, ghosts, ..
            } => self.on_ghosts(from, to, &ghosts),
            ToShard::Speech {
                regions,
                origin,
                radius,
                speaker,
                name,
                text,
                emote,
            } => self.deliver_speech(&regions, origin, radius, speaker, &name, &text, emote),
        }
    }

    /// One simulation tick of every cell, at `now`.
    pub fn step(&mut self, now: Instant) {
        if self.map.version() != self.map_version {
            self.reconcile(now);
        }
        self.ship_migrations(now);
        if !self.in_flight.is_empty() {
            self.resend_lost_handoffs(now);
        }
        if !self.pending_joins.is_empty() {
            self.retry_joins(now);
        }
        self.tick += 1;
        let dt = 1.0 / self.config.tick_hz as f32;
        let think_every = (self.config.tick_hz as u64 / self.config.think_hz.max(1) as u64).max(1);
        let mut events = std::mem::take(&mut self.events);
        for cell in self.cells.values_mut() {
            // The cell's own cost (for the load report) is measured, not
            // decided on, so it reads the clock itself: the thread's CPU
            // time, the work done (crate::cost::thread_cpu_time).
            let started = crate::cost::thread_cpu_time();
            cell.think(&self.scripts, self.tick, think_every, &mut events);
            cell.simulate(dt, &self.movement);
            cell.cost
                .record(crate::cost::thread_cpu_time().saturating_sub(started));
        }
        // Frames go out before hand-offs: an entity leaving for another
        // shard is still in this tick's frame of the cell that simulated it,
        // so viewers lose sight of it only until the new owner's next tick
        // (under one tick), not for two (benches/handoff.rs).
        self.publish();
        let ids: Vec<RegionId> = self.cells.keys().copied().collect();
        for c in &ids {
            self.handoffs_of(*c, now);
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
        self.compact_one_cell();
        self.forwarding.expire(now);
        self.check_linkdead(now);
    }

    /// Moves the entities that left region `c` to the regions of the map
    /// that now hold them.
    fn handoffs_of(&mut self, c: RegionId, now: Instant) {
        let hysteresis = self.config.hysteresis;
        let Some(cell) = self.cells.get(&c) else {
            return;
        };
        for (entity, pos) in cell.leavers(hysteresis) {
            // Outside the world or unowned: stay (walls keep players in).
            let Some((to, owner)) = self.map.owner_at(&self.grid, pos) else {
                continue;
            };
            if to == c {
                continue;
            }
            let local = self.cells.contains_key(&to);
            let Some(transfer) = self.cells.get_mut(&c).and_then(|cell| cell.extract(entity))
            else {
                continue;
            };
            let kind = if local { "local" } else { "remote" };
            metrics::counter!("tessera_shard_handoffs_total", "shard" => self.id.0.clone(), "kind" => kind)
                .increment(1);
            if local {
                self.accept(to, self.cells[&to].epoch, transfer);
            } else if owner.owner == self.id {
                // Ours by the map but not simulated here: a region this
                // shard has just shipped or is receiving (the map has not
                // flipped yet). Not sent to ourselves: it would leave a
                // forwarding address pointing back here.
                self.on_handoff(to, owner.epoch, transfer, now);
            } else {
                tracing::debug!(shard = %self.id, from = %c, to = %to, entity = %entity, target = %owner.owner, "hand-off to another shard");
                if transfer.player.is_none() {
                    self.mark_dirty(c);
                }
                if let Err(refused) =
                    self.send_handoff(to, owner.epoch, &owner.owner, transfer, now)
                {
                    let (e, transfer) = *refused;
                    // The neighbour is gone: keep the entity here.
                    tracing::error!(shard = %self.id, error = %e, "hand-off failed; keeping entity");
                    if let Some(cell) = self.cells.get_mut(&c) {
                        cell.insert(transfer);
                    }
                }
            }
        }
    }

    /// Rebuilds the ECS world of the cell that most outgrew its entities, if one has
    /// churned more than [`COMPACT_AFTER`] (`Cell::churn`): without it a shard's memory grows
    /// by about 400 bytes for every entity that ever passed through one of its cells (a
    /// hand-off, a join, a ghost entering a margin), about 1 GiB a day under a busy swarm.
    /// One cell a tick at most; a cell of 1,000 entities takes well under a millisecond.
    fn compact_one_cell(&mut self) {
        let Some(cell) = self
            .cells
            .values_mut()
            .filter(|c| c.churn() > COMPACT_AFTER)
            .max_by_key(|c| c.churn())
        else {
            return;
        };
        tracing::debug!(shard = %self.id, cell = %cell.id, churn = cell.churn(), "compacting the cell's ECS world");
        cell.compact();
        metrics::counter!("tessera_shard_cell_compactions_total", "shard" => self.id.0.clone())
            .increment(1);
    }

    /// The leaf regions of the map within `radius` of `origin`, with their
    /// owners.
    fn regions_within(&self, origin: Vec3, radius: f32) -> Vec<(RegionId, ShardId)> {
        let mut out = Vec::new();
        for c in self.grid.cells_within(origin, radius) {
            let Some(tree) = self.map.tree(c) else {
                continue;
            };
            for (region, owner) in tree.leaves(c) {
                if region.distance_xz(&self.grid, origin) <= radius {
                    out.push((region, owner.owner.clone()));
                }
            }
        }
        out
    }

    /// Sends speech to every region within hearing range, on whichever
    /// shard.
    fn speak(&mut self, speaker: EntityId, name: String, origin: Vec3, text: String, emote: bool) {
        let radius = self.config.hearing_radius;
        let mut by_shard: BTreeMap<ShardId, Vec<RegionId>> = BTreeMap::new();
        for (region, owner) in self.regions_within(origin, radius) {
            let shard = if self.cells.contains_key(&region) {
                self.id.clone()
            } else {
                owner
            };
            by_shard.entry(shard).or_default().push(region);
        }
        for (shard, cells) in by_shard {
            if shard == self.id {
                self.deliver_speech(&cells, origin, radius, speaker, &name, &text, emote);
            } else {
                let msg = ToShard::Speech {
                    regions: cells,
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
        cells: &[RegionId],
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

    fn exchange_ghosts(&mut self, ids: &[RegionId]) {
        let margin = self.config.ghost_margin;
        for c in ids {
            let Some(neighbours) = self.neighbours.get(c).cloned() else {
                continue;
            };
            for n in neighbours {
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
                } else if let Some(owner) = self.map.region_owner(n) {
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
                region: cell.id,
                shard: self.id.clone(),
                epoch: cell.epoch,
                tick: self.tick,
                entities: cell.view(),
            };
            self.bus.publish_frame(Arc::new(frame));
        }
    }

    /// Zeroes the per-region gauges of a region this shard stopped
    /// simulating (re-partitioned, shipped or lost), so sums over shards
    /// count each entity once.
    fn clear_gauges(&self, region: RegionId) {
        let labels = [("shard", self.id.0.clone()), ("cell", region.to_string())];
        metrics::gauge!("tessera_shard_entities", &labels).set(0.0);
        metrics::gauge!("tessera_shard_players", &labels).set(0.0);
        metrics::gauge!("tessera_shard_ghosts", &labels).set(0.0);
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
    /// arrive between ticks, so a text player's step is answered at once,
    /// and those that waited are handled before each tick (`pace`). The
    /// only place the shard reads the clock for its decisions.
    pub fn run(mut self, inbox: Receiver<ToShard>, stop: Arc<AtomicBool>) {
        let period = Duration::from_secs_f64(1.0 / self.config.tick_hz as f64);
        let shard_label = self.id.0.clone();
        let mut pacer = Pacer::new(period, Instant::now());
        tracing::info!(shard = %self.id, cells = self.cells.len(), tick_hz = self.config.tick_hz, "shard running");
        while !stop.load(Ordering::Relaxed) {
            let messages_until = match pacer.turn(Instant::now()) {
                Turn::Read(due) => {
                    match inbox.recv_deadline(due) {
                        Ok(msg) => self.handle(msg, Instant::now()),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    continue;
                }
                Turn::Tick { messages_until } => messages_until,
            };
            metrics::gauge!("tessera_shard_inbox_queued", "shard" => shard_label.clone())
                .set(inbox.len() as f64);
            self.handle_waiting(&inbox, messages_until);
            let started = Instant::now();
            #[cfg(feature = "fault-injection")]
            if self.config.panic_at_tick == Some(self.tick) {
                panic!(
                    "injected fault: the simulation thread of {} dies at tick {}",
                    self.id, self.tick
                );
            }
            self.step(started);
            let took = started.elapsed();
            self.record_tick(took);
            self.checkpoint_if_due(started + took);
            self.apply_script_updates();
            metrics::histogram!("tessera_shard_tick_seconds", "shard" => shard_label.clone())
                .record(took.as_secs_f64());
            if let Some(behind) = pacer.ticked(Instant::now()) {
                // Far behind (a stall): skip ticks rather than racing.
                tracing::warn!(shard = %self.id, behind_ms = behind.as_millis() as u64, "tick overrun");
                metrics::counter!("tessera_shard_tick_overruns_total", "shard" => shard_label.clone()).increment(1);
            }
        }
        self.final_checkpoint();
        tracing::info!(shard = %self.id, tick = self.tick, "shard stopped");
    }

    /// Handles the messages already in `inbox`, oldest first, until it is
    /// empty or `until` has passed (at least one, if any waits). Returns
    /// how many.
    pub fn handle_waiting(&mut self, inbox: &Receiver<ToShard>, until: Instant) -> usize {
        let mut handled = 0;
        while let Ok(msg) = inbox.try_recv() {
            let now = Instant::now();
            self.handle(msg, now);
            handled += 1;
            if now >= until {
                break;
            }
        }
        handled
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
}
