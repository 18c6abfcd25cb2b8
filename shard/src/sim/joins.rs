//! Joins that wait for this shard's cell map. A router re-joining a player
//! after a failover may learn of a cell's new owner before the owner does;
//! such a join waits here (retried every tick) for at most
//! [`JOIN_PATIENCE`] after it first arrived. Pure: the time is an input.

use std::time::{Duration, Instant};
use tessera_proto::cluster::{SessionRef, ToShard};
use tessera_proto::{PlayerId, Vec3};

/// How long a join waits for this shard's map to name a live owner of its
/// cell before it is refused.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(10);

/// A player asking to enter the world (`ToShard::Join`).
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    pub session: SessionRef,
    pub player: PlayerId,
    pub name: String,
    pub pos: Vec3,
    /// When the join first reached this shard.
    pub arrived: Instant,
}

impl Join {
    /// The message to pass the join on to another shard.
    pub fn message(&self) -> ToShard {
        ToShard::Join {
            session: self.session.clone(),
            player: self.player,
            name: self.name.clone(),
            pos: self.pos,
        }
    }
}

/// What became of a join put aside.
#[derive(Debug, PartialEq)]
pub enum Deferral {
    /// It waits for a later tick.
    Waiting,
    /// It waited too long: refuse it.
    Expired(Join),
}

/// The joins waiting for the map.
#[derive(Debug, Default)]
pub struct PendingJoins {
    waiting: Vec<Join>,
}

impl PendingJoins {
    /// Puts `join` aside at `now`; a newer join of the same session
    /// replaces an older one.
    pub fn defer(&mut self, join: Join, now: Instant) -> Deferral {
        self.waiting.retain(|j| j.session != join.session);
        if now.saturating_duration_since(join.arrived) > JOIN_PATIENCE {
            return Deferral::Expired(join);
        }
        self.waiting.push(join);
        Deferral::Waiting
    }

    /// Every waiting join, to be tried again.
    pub fn take(&mut self) -> Vec<Join> {
        std::mem::take(&mut self.waiting)
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::{RouterId, SessionId};

    fn join(session: u64, arrived: Instant) -> Join {
        Join {
            session: SessionRef {
                router: RouterId("r".into()),
                session: SessionId(session),
            },
            player: PlayerId(session),
            name: "P".into(),
            pos: Vec3::ZERO,
            arrived,
        }
    }

    #[test]
    fn a_join_waits_for_the_patience_and_then_expires() {
        let t0 = Instant::now();
        let mut p = PendingJoins::default();
        assert_eq!(p.defer(join(1, t0), t0 + JOIN_PATIENCE), Deferral::Waiting);
        let again = p.take().pop().unwrap();
        assert_eq!(again.arrived, t0, "a retried join keeps its first arrival");
        let late = t0 + JOIN_PATIENCE + Duration::from_millis(1);
        assert!(matches!(p.defer(again, late), Deferral::Expired(_)));
        assert!(p.is_empty());
    }

    #[test]
    fn a_newer_join_of_the_same_session_replaces_the_older() {
        let t0 = Instant::now();
        let mut p = PendingJoins::default();
        p.defer(join(1, t0), t0);
        p.defer(join(2, t0), t0);
        let mut newer = join(1, t0 + Duration::from_secs(1));
        newer.name = "again".into();
        p.defer(newer, t0 + Duration::from_secs(1));
        let waiting = p.take();
        assert_eq!(waiting.len(), 2);
        assert_eq!(waiting.iter().filter(|j| j.name == "again").count(), 1);
    }
}
