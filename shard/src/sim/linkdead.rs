//! Linkdead avatars: a player whose session's router is gone (crashed, or restarted
//! under the same id, which ends its old sessions) is *linkdead*. The avatar stays where it
//! stands for [`ShardConfig::linkdead`](crate::ShardConfig) (60 s by default), so a player
//! whose client or telnet gateway comes back through another router finds it there (the
//! join rebinds it); after that it is removed. Its position is saved through a live router
//! (`ToRouter::SavePlayer`) as soon as it goes linkdead and again when it is removed: shards
//! may not write player records themselves (persistence key spaces, docs/security.md).
//!
//! Checked once a second: a router is gone when the bus no longer lists it, or lists a
//! different incarnation of it than the one the session was seen with.

use super::Shard;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tessera_proto::cluster::{SessionRef, ToRouter};
use tessera_proto::{EntityId, PlayerId, RegionId, Vec3};

/// How often avatars are checked.
const ROUND: Duration = Duration::from_secs(1);

/// What the shard knows about its players' routers.
#[derive(Default)]
pub(super) struct Linkdead {
    seen: HashMap<EntityId, Watch>,
    last_round: Option<Instant>,
}

impl Linkdead {
    /// Players whose router is gone, now.
    pub(super) fn count(&self) -> usize {
        self.seen
            .values()
            .filter(|w| w.gone_since.is_some())
            .count()
    }
}

struct Watch {
    session: SessionRef,
    /// The router's incarnation when first seen with this session (`None`: not seen yet).
    incarnation: Option<i64>,
    gone_since: Option<Instant>,
}

impl Shard {
    /// Finds players whose router is gone, saves where they stand, and removes those gone
    /// for longer than the linkdead time.
    pub(super) fn check_linkdead(&mut self, now: Instant) {
        if self
            .linkdead
            .last_round
            .is_some_and(|t| now.duration_since(t) < ROUND)
        {
            return;
        }
        self.linkdead.last_round = Some(now);
        let timeout = self.config.linkdead;
        let mut present = HashSet::new();
        let mut newly_gone: Vec<(PlayerId, Vec3)> = Vec::new();
        let mut expired: Vec<(RegionId, EntityId, PlayerId)> = Vec::new();
        for (region, cell) in &self.cells {
            for (entity, player, session, pos) in cell.pilots() {
                present.insert(entity);
                let current = self.bus.router_incarnation(&session.router);
                let w = self.linkdead.seen.entry(entity).or_insert_with(|| Watch {
                    session: session.clone(),
                    incarnation: current,
                    gone_since: None,
                });
                if w.session != session {
                    // Rebound to a new session (the player came back): start over.
                    *w = Watch {
                        session,
                        incarnation: current,
                        gone_since: None,
                    };
                    continue;
                }
                // A router not listed yet when the session was first seen (the shard's
                // directory lags the router's registration) counts once it shows up.
                if w.incarnation.is_none() && w.gone_since.is_none() {
                    w.incarnation = current;
                }
                let alive = current.is_some() && current == w.incarnation;
                match (alive, w.gone_since) {
                    (true, _) => w.gone_since = None,
                    (false, None) => {
                        w.gone_since = Some(now);
                        tracing::info!(shard = %self.id, cell = %region, entity = %entity, router = %session.router, "player linkdead: its router is gone");
                        newly_gone.push((player, pos));
                    }
                    (false, Some(since)) if now.duration_since(since) >= timeout => {
                        expired.push((*region, entity, player));
                    }
                    (false, Some(_)) => {}
                }
            }
        }
        self.linkdead.seen.retain(|e, _| present.contains(e));
        for (player, pos) in newly_gone {
            self.save_player(player, pos);
        }
        for (region, entity, player) in expired {
            let Some(t) = self.cells.get_mut(&region).and_then(|c| c.extract(entity)) else {
                continue;
            };
            self.linkdead.seen.remove(&entity);
            tracing::info!(shard = %self.id, cell = %region, entity = %entity, linkdead_s = timeout.as_secs(), "linkdead player removed");
            metrics::counter!("tessera_shard_linkdead_removed_total", "shard" => self.id.0.clone())
                .increment(1);
            self.save_player(player, t.pos);
        }
        metrics::gauge!("tessera_shard_linkdead_players", "shard" => self.id.0.clone())
            .set(self.linkdead.count() as f64);
    }

    /// Asks a live router to save `player`'s position.
    fn save_player(&self, player: PlayerId, pos: Vec3) {
        let routers = self.bus.routers();
        // Spread the saves; any live router will do.
        let Some(router) = routers.get(player.0 as usize % routers.len().max(1)) else {
            tracing::warn!(shard = %self.id, player = %player, "no live router to save a linkdead player's position");
            return;
        };
        if let Err(e) = self
            .bus
            .to_router(router, ToRouter::SavePlayer { player, pos })
        {
            tracing::warn!(shard = %self.id, player = %player, error = %e, "cannot ask a router to save a linkdead player");
        }
    }
}
