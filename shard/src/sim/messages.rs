//! One method per kind of [`ToShard`] message. `Shard::handle` (in the
//! parent module) acts on the newest cell map and then dispatches here.

use super::inflight::Sent;
use super::joins::{Deferral, Join};
use super::Shard;
use crate::cell::StepOutcome;
use std::time::{Duration, Instant};
use tessera_coordinator::BusError;

use tessera_proto::cluster::{EntityTransfer, GhostState, PlayerEvent, SessionRef, ToShard};
use tessera_proto::msg::{EntityKind, Input, MAX_SAY_CHARS};
use tessera_proto::{Compass, EntityId, Epoch, RegionId, ShardId, Vec3};

/// How long a hand-off whose target left waits for the map to name the region's new owner
/// before the entity is kept by the shard that sent it.
pub const RESEND_PATIENCE: Duration = Duration::from_secs(30);

impl Shard {
    /// Forwards a message for an entity this shard no longer has, to where
    /// it went. Messages for an entity of a migrating cell that has not
    /// opened here yet wait for it. Any other is dropped (counted in
    /// `tessera_shard_messages_dropped_total`): the entity is unknown here.
    fn forward(&mut self, entity: EntityId, msg: ToShard) {
        let dropped = match self.forwarding.shard_of(entity) {
            // Sent back here it would circle without end.
            Some(shard) if *shard == self.id => "forwarding address is this shard",
            Some(shard) => {
                if let Err(e) = self.bus.to_shard(shard, msg) {
                    tracing::warn!(shard = %self.id, entity = %entity, error = %e, "forward failed");
                }
                return;
            }
            None if self.migrations.is_incoming(entity) => {
                self.migrations.deferred.push(msg);
                return;
            }
            None => "unknown entity",
        };
        tracing::debug!(shard = %self.id, entity = %entity, reason = dropped, "message dropped");
        metrics::counter!("tessera_shard_messages_dropped_total", "shard" => self.id.0.clone(), "reason" => dropped)
            .increment(1);
    }

    pub(super) fn on_input(&mut self, entity: EntityId, input: Input) {
        let Some(c) = self.cell_of_entity(entity) else {
            self.forward(entity, ToShard::Input { entity, input });
            return;
        };
        if let Some(cell) = self.cells.get_mut(&c) {
            if !cell.set_input(entity, input) {
                tracing::warn!(shard = %self.id, entity = %entity, "input for a non-player refused");
            }
        }
    }

    /// A text player's step, answered at once with where it ended (and on
    /// which cell and shard, so the next command goes straight there).
    pub(super) fn on_step(&mut self, entity: EntityId, dir: Compass, now: Instant) {
        let Some(c) = self.cell_of_entity(entity) else {
            self.forward(entity, ToShard::Step { entity, dir });
            return;
        };
        let step = self.movement.step;
        let Some(cell) = self.cells.get_mut(&c) else {
            return;
        };
        let session = cell.session(entity);
        let (Some(StepOutcome { pos, blocked }), Some(session)) =
            (cell.step(entity, dir, step), session)
        else {
            tracing::warn!(shard = %self.id, entity = %entity, "step for a non-player refused");
            return;
        };
        self.handoffs_of(c, now);
        let (region, shard) = match self.cell_of_entity(entity) {
            Some(here) => (here, self.id.clone()),
            None => match self.forwarding.shard_of(entity) {
                Some(shard) => (
                    self.map
                        .owner_at(&self.grid, pos)
                        .map(|(r, _)| r)
                        .unwrap_or_else(|| RegionId::cell(self.grid.cell_of(pos))),
                    shard.clone(),
                ),
                None => (c, self.id.clone()),
            },
        };
        let done = PlayerEvent::StepDone {
            pos,
            blocked,
            region,
            shard,
        };
        self.send_player(&session, done);
    }

    pub(super) fn on_say(&mut self, entity: EntityId, text: String) {
        let Some(c) = self.cell_of_entity(entity) else {
            self.forward(entity, ToShard::Say { entity, text });
            return;
        };
        let Some(cell) = self.cells.get(&c) else {
            return;
        };
        let (Some(pos), Some(identity)) = (cell.position(entity), cell.identity(entity)) else {
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

    /// A player leaves the world, but only for the session its avatar is
    /// bound to: a stale goodbye changes nothing.
    pub(super) fn on_leave(&mut self, entity: EntityId, session: SessionRef) {
        let Some(c) = self.cell_of_entity(entity) else {
            self.forward(entity, ToShard::Leave { entity, session });
            return;
        };
        let Some(cell) = self.cells.get_mut(&c) else {
            return;
        };
        let bound = cell.session(entity);
        if bound.as_ref() != Some(&session) {
            // A session that no longer controls the avatar (the player
            // resumed on another router), or a non-player: nothing changes,
            // but the sender stops waiting.
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

    pub(super) fn on_handoff(
        &mut self,
        to: RegionId,
        epoch: Epoch,
        entity: EntityTransfer,
        now: Instant,
    ) {
        if self.migrations.incoming.contains_key(&to) {
            // Into a cell still migrating here: wait for it (and so do
            // messages for the entity: `Migrations::is_incoming`).
            self.migrations
                .deferred
                .push(ToShard::Handoff { to, epoch, entity });
        } else if let Some(target) = self.migrations.shipped.get(&to).map(|s| s.to.clone()) {
            // Into a cell this shard just shipped: follow the cell, and so
            // do messages for the entity.
            self.forwarding.remember(entity.id, target.clone(), now);
            let _ = self
                .bus
                .to_shard(&target, ToShard::Handoff { to, epoch, entity });
        } else {
            if entity.player.is_none() {
                self.mark_dirty(to);
            }
            self.accept(to, epoch, entity);
        }
    }

    pub(super) fn on_ghosts(&mut self, from: RegionId, to: RegionId, ghosts: &[GhostState]) {
        // An entity among another shard's ghosts is simulated there: a hand-off of it that
        // this shard sent has arrived.
        if !self.in_flight.is_empty() {
            for g in ghosts {
                self.in_flight.arrived(g.id);
            }
        }
        if let Some(cell) = self.cells.get_mut(&to) {
            cell.set_ghosts(from, ghosts);
        }
    }

    /// Puts a player into the world. A reconnect while the old avatar is
    /// still here takes it over; a join for a cell this shard's map does
    /// not give it yet waits for the map (`joins`).
    pub(super) fn on_join(&mut self, join: Join, now: Instant) {
        let entity = EntityId::for_player(join.player);
        if let Some(c) = self.cell_of_entity(entity) {
            if let Some(cell) = self.cells.get_mut(&c) {
                cell.rebind(entity, join.session.clone());
                let pos = cell.position(entity).unwrap_or(join.pos);
                self.send_player(
                    &join.session,
                    PlayerEvent::Joined {
                        entity,
                        pos,
                        region: c,
                        shard: self.id.clone(),
                    },
                );
            }
            return;
        }
        let mut pos = if join.pos.is_finite() {
            self.world.extent.clamp_position(&self.grid, join.pos)
        } else {
            self.world.spawn
        };
        pos.y = pos.y.max(0.0);
        let owner = self.map.owner_at(&self.grid, pos);
        let cell_id = match &owner {
            Some((region, _)) => *region,
            None => RegionId::cell(self.grid.cell_of(pos)),
        };
        if !self.cells.contains_key(&cell_id) {
            let join = Join { pos, ..join };
            match owner.map(|(_, o)| o) {
                // Not ours (the map changed under the router): pass it on.
                Some(owner) if owner.owner != self.id && self.bus.has_shard(&owner.owner) => {
                    if self.bus.to_shard(&owner.owner, join.message()).is_err() {
                        self.defer_join(join, now);
                    }
                }
                // Its owner is gone, or nobody owns it yet: this shard's
                // map is behind the router's. Wait for it.
                Some(owner) if owner.owner != self.id => self.defer_join(join, now),
                None => self.defer_join(join, now),
                Some(_) if self.migrations.incoming.contains_key(&cell_id) => {
                    self.migrations.deferred.push(join.message());
                }
                Some(_) => self.send_player(
                    &join.session,
                    PlayerEvent::Error {
                        message: format!("cell {cell_id} is not being simulated right now"),
                    },
                ),
            }
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
            name: join.name,
            description: String::new(),
            pos,
            vel: Vec3::ZERO,
            yaw: 0.0,
            home: pos,
            player: Some(join.player),
            session: Some(join.session.clone()),
            input: Input::default(),
            walk_target: None,
            script: None,
        };
        if let Some(cell) = self.cells.get_mut(&cell_id) {
            cell.insert(transfer);
            tracing::info!(shard = %self.id, cell = %cell_id, player = %join.player, "player joined");
        }
        self.send_player(
            &join.session,
            PlayerEvent::Joined {
                entity,
                pos,
                region: cell_id,
                shard: self.id.clone(),
            },
        );
    }

    /// Keeps a join for a later tick, or refuses it once it waited
    /// [`super::joins::JOIN_PATIENCE`].
    fn defer_join(&mut self, join: Join, now: Instant) {
        if let Deferral::Expired(join) = self.pending_joins.defer(join, now) {
            let cell = self
                .map
                .owner_at(&self.grid, join.pos)
                .map(|(r, _)| r)
                .unwrap_or_else(|| RegionId::cell(self.grid.cell_of(join.pos)));
            tracing::warn!(shard = %self.id, cell = %cell, "join refused: the cell has no live owner");
            self.send_player(
                &join.session,
                PlayerEvent::Error {
                    message: format!("cell {cell} is not being simulated right now"),
                },
            );
        }
    }

    /// Tries the joins that waited for the map again; `on_join` puts one
    /// back (keeping its first arrival) if the map still has no live owner.
    pub(super) fn retry_joins(&mut self, now: Instant) {
        for join in self.pending_joins.take() {
            self.on_join(join, now);
        }
    }

    /// Takes an entity handed to cell `to`.
    pub(super) fn accept(&mut self, to: RegionId, epoch: Epoch, entity: EntityTransfer) {
        // A hand-off delivered twice (the cluster bus re-sends the frame in
        // flight when a stream breaks) must not create a second copy.
        if let Some(here) = self.cell_of_entity(entity.id) {
            tracing::warn!(shard = %self.id, cell = %here, entity = %entity.id, "duplicate hand-off ignored: the entity is already here");
            return;
        }
        self.forwarding.forget(entity.id);
        self.in_flight.arrived(entity.id);
        let Some(cell) = self.cells.get_mut(&to) else {
            self.pass_on(to, entity);
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
                    region: to,
                    shard: self.id.clone(),
                },
            );
        }
    }

    /// An entity handed to region `to`, which is not ours: it goes to the
    /// owner of the region of the map that holds it now (`to` itself, or,
    /// after a split or merge, the region that replaced it), or, if nobody
    /// owns that, stays in our nearest region. It is never dropped.
    fn pass_on(&mut self, to: RegionId, entity: EntityTransfer) {
        let owner = match self.map.region_owner(to) {
            Some(owner) => Some((to, owner)),
            None => self.map.owner_at(&self.grid, entity.pos),
        };
        if let Some((region, _)) = owner {
            if region != to && self.cells.contains_key(&region) {
                // Our own region replaced `to` (a split or merge here).
                let epoch = self.cells[&region].epoch;
                return self.accept(region, epoch, entity);
            }
        }
        match owner {
            Some((to, owner)) if owner.owner != self.id => {
                let msg = ToShard::Handoff {
                    to,
                    epoch: owner.epoch,
                    entity,
                };
                if let Err(e) = self.bus.to_shard(&owner.owner, msg) {
                    tracing::error!(shard = %self.id, cell = %to, error = %e, "cannot pass hand-off on");
                }
            }
            _ => self.keep_nearest(to, entity),
        }
    }

    /// Keeps an entity handed to region `to`, which nobody owns, in this shard's region
    /// nearest to it.
    fn keep_nearest(&mut self, to: RegionId, entity: EntityTransfer) {
        let target = to.centre(&self.grid);
        let nearest = self
            .cells
            .keys()
            .min_by(|a, b| {
                let da = a.centre(&self.grid).distance_xz(target);
                let db = b.centre(&self.grid).distance_xz(target);
                da.total_cmp(&db)
            })
            .copied();
        tracing::error!(shard = %self.id, cell = %to, entity = %entity.id, "hand-off to an unowned cell; keeping it");
        if let Some(c) = nearest {
            let mut e = entity;
            e.pos = c.centre(&self.grid);
            if let Some(cell) = self.cells.get_mut(&c) {
                cell.insert(e);
            }
        }
    }

    /// Sends again the hand-offs whose target left the cluster or restarted before it was
    /// seen to take them (`inflight`), to whoever simulates their region now: this shard, or
    /// another live shard. While the map still names the gone target (or nobody), a
    /// hand-off waits, for at most [`RESEND_PATIENCE`]; then the entity stays here.
    pub(super) fn resend_lost_handoffs(&mut self, now: Instant) {
        let bus = self.bus.clone();
        for sent in self.in_flight.gone(now, |s| bus.shard_incarnation(s)) {
            let id = sent.entity.id;
            let owner = match self.map.region_owner(sent.to) {
                Some(owner) => Some((sent.to, owner)),
                None => self.map.owner_at(&self.grid, sent.entity.pos),
            };
            match owner {
                Some((region, owner)) if owner.owner == self.id => {
                    tracing::warn!(shard = %self.id, entity = %id, gone = %sent.target, cell = %region, "hand-off target left before taking the entity; taking it back");
                    self.count_resent("here");
                    self.forwarding.forget(id);
                    self.on_handoff(region, owner.epoch, sent.entity, now);
                }
                Some((region, owner)) if bus.shard_incarnation(&owner.owner).is_some() => {
                    tracing::warn!(shard = %self.id, entity = %id, gone = %sent.target, to = %owner.owner, cell = %region, "hand-off target left before taking the entity; sending it to the new owner");
                    self.count_resent("elsewhere");
                    if let Err(refused) =
                        self.send_handoff(region, owner.epoch, &owner.owner, sent.entity, now)
                    {
                        let (e, entity) = *refused;
                        tracing::warn!(shard = %self.id, entity = %id, error = %e, "hand-off not sent again; trying next tick");
                        self.in_flight.record(Sent { entity, ..sent });
                    }
                }
                // The map has not caught up with the departure: wait for it.
                _ if now.saturating_duration_since(sent.at) < RESEND_PATIENCE => {
                    self.in_flight.record(sent);
                }
                _ => {
                    self.count_resent("kept");
                    self.forwarding.forget(id);
                    self.keep_nearest(sent.to, sent.entity);
                }
            }
        }
    }

    /// Hands `entity` to region `to` (at `epoch`) on another shard, `target`: on the way it
    /// leaves a forwarding address for messages that follow it and a copy kept until it is
    /// seen to arrive (`inflight`). When the bus refuses it (the target is gone), the entity
    /// is given back with the error.
    pub(super) fn send_handoff(
        &mut self,
        to: RegionId,
        epoch: Epoch,
        target: &ShardId,
        entity: EntityTransfer,
        now: Instant,
    ) -> Result<(), Box<(BusError, EntityTransfer)>> {
        let msg = ToShard::Handoff {
            to,
            epoch,
            entity: entity.clone(),
        };
        if let Err(e) = self.bus.to_shard(target, msg) {
            return Err(Box::new((e, entity)));
        }
        self.forwarding.remember(entity.id, target.clone(), now);
        self.in_flight.record(Sent {
            to,
            entity,
            incarnation: self.bus.shard_incarnation(target),
            target: target.clone(),
            at: now,
        });
        Ok(())
    }

    fn count_resent(&self, outcome: &'static str) {
        metrics::counter!("tessera_shard_handoffs_resent_total", "shard" => self.id.0.clone(), "to" => outcome)
            .increment(1);
    }
}
