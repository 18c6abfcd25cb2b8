//! Where this shard sent entities it no longer has, so that messages
//! already on their way to it follow them. Pure: the time is an input.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tessera_proto::{EntityId, ShardId};

/// How long a shard remembers where it handed an entity, to forward
/// messages that were already on their way.
pub const FORWARD_MEMORY: Duration = Duration::from_secs(30);

/// Forwarding addresses of entities handed to other shards.
#[derive(Debug, Default)]
pub struct Forwarding {
    sent: HashMap<EntityId, Forwarded>,
}

#[derive(Debug)]
struct Forwarded {
    to: ShardId,
    at: Instant,
}

impl Forwarding {
    /// `entity` left for `to` at `now`.
    pub fn remember(&mut self, entity: EntityId, to: ShardId, now: Instant) {
        self.sent.insert(entity, Forwarded { to, at: now });
    }

    /// `entity` is simulated here again (or was never sent after all).
    pub fn forget(&mut self, entity: EntityId) {
        self.sent.remove(&entity);
    }

    /// Where `entity` went, if this shard still remembers.
    pub fn shard_of(&self, entity: EntityId) -> Option<&ShardId> {
        self.sent.get(&entity).map(|f| &f.to)
    }

    /// Drops addresses older than [`FORWARD_MEMORY`] at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.sent
            .retain(|_, f| now.saturating_duration_since(f.at) < FORWARD_MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_kept_for_the_forward_memory_and_then_dropped() {
        let t0 = Instant::now();
        let mut f = Forwarding::default();
        f.remember(EntityId(7), ShardId::new("b"), t0);
        f.expire(t0 + FORWARD_MEMORY - Duration::from_millis(1));
        assert_eq!(f.shard_of(EntityId(7)), Some(&ShardId::new("b")));
        f.expire(t0 + FORWARD_MEMORY);
        assert_eq!(f.shard_of(EntityId(7)), None);
    }

    #[test]
    fn a_new_hand_off_renews_the_address() {
        let t0 = Instant::now();
        let mut f = Forwarding::default();
        f.remember(EntityId(7), ShardId::new("b"), t0);
        f.remember(EntityId(7), ShardId::new("c"), t0 + Duration::from_secs(20));
        f.expire(t0 + FORWARD_MEMORY + Duration::from_secs(1));
        assert_eq!(f.shard_of(EntityId(7)), Some(&ShardId::new("c")));
        f.forget(EntityId(7));
        assert_eq!(f.shard_of(EntityId(7)), None);
    }
}
