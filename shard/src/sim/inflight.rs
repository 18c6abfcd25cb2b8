//! Hand-offs to other shards that are not known to have arrived. The bus
//! takes a hand-off into a queue, not into the other shard's world: a shard
//! frozen or killed just then never takes it, and the entity would be in no
//! shard at all (its player connected but out of the world, as the chaos runs
//! found). So the sender keeps a copy of what it sent until it sees the entity
//! among the target's ghosts (the entity crossed into a border cell, so the
//! target's first ghost update names it), or it comes back, or
//! [`CONFIRM_WINDOW`] passes with the target alive. If the target leaves the
//! cluster or restarts (its incarnation changes) before that, the copy is
//! sent again to whoever simulates the region now ([`InFlight::gone`]); a
//! copy that did arrive after all is dropped there as a duplicate.
//!
//! Pure: the time and the membership are inputs.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tessera_proto::cluster::EntityTransfer;
use tessera_proto::{EntityId, RegionId, ShardId};

/// How long a hand-off to a live target is kept without a sign that it
/// arrived. The failure detector revokes a dead or frozen shard within a few
/// seconds; a target that is still registered with the same incarnation
/// after this long took the hand-off (its queue is bounded and its link
/// re-sends what was in flight).
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(10);

/// One hand-off sent and not yet known to have arrived.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The region it was handed to.
    pub to: RegionId,
    pub entity: EntityTransfer,
    pub target: ShardId,
    /// The target's incarnation when it was sent (`None`: unknown).
    pub incarnation: Option<i64>,
    pub at: Instant,
}

/// The hand-offs this shard sent that are not known to have arrived.
#[derive(Debug, Default)]
pub struct InFlight {
    sent: HashMap<EntityId, Sent>,
}

impl InFlight {
    /// Keeps a copy of a hand-off just sent.
    pub fn record(&mut self, sent: Sent) {
        self.sent.insert(sent.entity.id, sent);
    }

    /// `entity` is known to be simulated somewhere (seen among another
    /// region's ghosts, or back here): its hand-off arrived.
    pub fn arrived(&mut self, entity: EntityId) {
        self.sent.remove(&entity);
    }

    /// Whether a copy of `entity` is kept.
    #[cfg(test)]
    pub fn holds(&self, entity: EntityId) -> bool {
        self.sent.contains_key(&entity)
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Takes out the hand-offs whose target is gone or restarted
    /// (`incarnation_of` answers for the membership now): they must go to
    /// the region's new owner. Hand-offs to a live target older than
    /// [`CONFIRM_WINDOW`] at `now` are forgotten.
    pub fn gone(
        &mut self,
        now: Instant,
        incarnation_of: impl Fn(&ShardId) -> Option<i64>,
    ) -> Vec<Sent> {
        let mut gone = Vec::new();
        self.sent.retain(|_, s| {
            let current = incarnation_of(&s.target);
            if current.is_none() || current != s.incarnation {
                gone.push(s.clone());
                return false;
            }
            now.saturating_duration_since(s.at) < CONFIRM_WINDOW
        });
        gone.sort_by_key(|s| s.entity.id);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::msg::{EntityKind, Input};
    use tessera_proto::{CellId, Vec3};

    fn sent(id: u64, target: &str, incarnation: i64, at: Instant) -> Sent {
        Sent {
            to: RegionId::cell(CellId::new(1, 0)),
            entity: EntityTransfer {
                id: EntityId(id),
                kind: EntityKind::Npc,
                name: format!("n{id}"),
                description: String::new(),
                pos: Vec3::ZERO,
                vel: Vec3::ZERO,
                yaw: 0.0,
                home: Vec3::ZERO,
                player: None,
                session: None,
                input: Input::default(),
                walk_target: None,
                script: None,
            },
            target: ShardId::new(target),
            incarnation: Some(incarnation),
            at,
        }
    }

    #[test]
    fn a_hand_off_to_a_shard_that_left_or_restarted_is_given_back() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.record(sent(1, "b", 7, t0));
        f.record(sent(2, "c", 3, t0));
        f.record(sent(3, "d", 5, t0));
        // b left, c restarted, d is as it was.
        let now = |s: &ShardId| match s.0.as_str() {
            "c" => Some(4),
            "d" => Some(5),
            _ => None,
        };
        let gone: Vec<u64> = f.gone(t0, now).iter().map(|s| s.entity.id.0).collect();
        assert_eq!(gone, vec![1, 2]);
        assert!(f.holds(EntityId(3)));
        assert!(f.gone(t0, now).is_empty(), "given back once");
    }

    #[test]
    fn an_arrived_or_old_hand_off_is_forgotten() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.record(sent(1, "b", 1, t0));
        f.record(sent(2, "b", 1, t0 + Duration::from_secs(5)));
        f.arrived(EntityId(1));
        let alive = |_: &ShardId| Some(1);
        assert!(f.gone(t0 + CONFIRM_WINDOW, alive).is_empty());
        assert!(!f.holds(EntityId(1)));
        assert!(
            f.holds(EntityId(2)),
            "sent 5 s later, still within the window"
        );
        assert!(f
            .gone(t0 + Duration::from_secs(5) + CONFIRM_WINDOW, alive)
            .is_empty());
        assert!(f.is_empty());
        // Once forgotten, the target's death gives nothing back.
        assert!(f.gone(t0 + CONFIRM_WINDOW * 3, |_| None).is_empty());
    }
}
