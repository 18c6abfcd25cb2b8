//! The message bus between roles: router -> shard, shard -> shard and
//! shard -> router. [`LocalBus`] connects roles inside one process (`tessera
//! up`); a networked bus carries the same `tessera_proto::cluster` messages
//! as bincode frames over QUIC.

use crossbeam_channel as cb;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tessera_proto::cluster::{CellFrame, ToRouter, ToShard};
use tessera_proto::{RouterId, ShardId};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("shard {0} is not reachable")]
    NoShard(ShardId),
    #[error("router {0} is not reachable")]
    NoRouter(RouterId),
    /// The link to a member holds [`crate::transport::LINK_QUEUE_BYTES`] of messages that
    /// may not be dropped: the member is not keeping up.
    #[error(
        "the cluster link to {to} is full ({queued_bytes} bytes waiting): it is not keeping up"
    )]
    Full { to: String, queued_bytes: usize },
}

/// Most messages waiting in a shard's inbox. A shard whose simulation thread falls this far
/// behind (stuck, or starved of CPU) refuses more (`BusError::Full`; ghost sets are dropped)
/// rather than let the inbox grow without bound.
pub const SHARD_INBOX: usize = 65_536;

/// A shard's inbox: bounded at [`SHARD_INBOX`].
pub fn shard_inbox() -> (cb::Sender<ToShard>, cb::Receiver<ToShard>) {
    cb::bounded(SHARD_INBOX)
}

/// Puts `msg` into a shard's inbox without blocking: refused when the inbox is full (ghost
/// sets, superseded by the next, are dropped instead) or closed.
pub fn offer(tx: &cb::Sender<ToShard>, shard: &ShardId, msg: ToShard) -> Result<(), BusError> {
    match tx.try_send(msg) {
        Ok(()) => Ok(()),
        Err(cb::TrySendError::Full(ToShard::Ghosts { .. })) => {
            metrics::counter!("tessera_shard_inbox_dropped_total", "shard" => shard.0.clone())
                .increment(1);
            Ok(())
        }
        Err(cb::TrySendError::Full(_)) => {
            metrics::counter!("tessera_shard_inbox_refused_total", "shard" => shard.0.clone())
                .increment(1);
            Err(BusError::Full {
                to: format!("shard/{shard} (inbox)"),
                queued_bytes: 0,
            })
        }
        Err(cb::TrySendError::Disconnected(_)) => Err(BusError::NoShard(shard.clone())),
    }
}

/// Most messages waiting in a router's inbox. A router whose loop falls this far behind
/// drops cell frames (superseded by the next) and refuses anything else (`BusError::Full`).
pub const ROUTER_INBOX: usize = 65_536;

/// A router's inbox: bounded at [`ROUTER_INBOX`].
pub fn router_inbox() -> (mpsc::Sender<ToRouter>, mpsc::Receiver<ToRouter>) {
    mpsc::channel(ROUTER_INBOX)
}

/// Puts `msg` into a router's inbox without blocking: refused when the inbox is full (cell
/// frames, superseded by the next, are dropped instead) or closed.
pub fn offer_router(
    tx: &mpsc::Sender<ToRouter>,
    router: &RouterId,
    msg: ToRouter,
) -> Result<(), BusError> {
    match tx.try_send(msg) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(ToRouter::Frame(_))) => {
            metrics::counter!("tessera_router_inbox_dropped_total", "router" => router.0.clone())
                .increment(1);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("tessera_router_inbox_refused_total", "router" => router.0.clone())
                .increment(1);
            Err(BusError::Full {
                to: format!("router/{router} (inbox)"),
                queued_bytes: 0,
            })
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(BusError::NoRouter(router.clone())),
    }
}

/// Delivery of cluster messages. Sends never block; a message to a member
/// that is gone is an error the caller decides about.
pub trait Bus: Send + Sync + 'static {
    fn to_shard(&self, shard: &ShardId, msg: ToShard) -> Result<(), BusError>;
    fn to_router(&self, router: &RouterId, msg: ToRouter) -> Result<(), BusError>;
    /// Sends a cell's frame to every router (routers filter by interest).
    fn publish_frame(&self, frame: Arc<CellFrame>);
    /// Whether `shard` is a current member (registered and not gone).
    fn has_shard(&self, shard: &ShardId) -> bool;
    /// The incarnation of `router` if it is a current member: it changes when the router
    /// restarts under the same id, whose earlier sessions are then gone (`None`: no such
    /// router).
    fn router_incarnation(&self, router: &RouterId) -> Option<i64>;
    /// Every current router.
    fn routers(&self) -> Vec<RouterId>;
    /// The incarnation of `shard` if it is a current member: it changes when the shard
    /// restarts under the same id, whose earlier entities are then gone (`None`: no such
    /// shard). In one process a shard never restarts.
    fn shard_incarnation(&self, shard: &ShardId) -> Option<i64> {
        self.has_shard(shard).then_some(0)
    }
}

/// In-process bus: shard inboxes are crossbeam channels (the shard's
/// simulation thread blocks on them between ticks), router inboxes are
/// tokio channels.
#[derive(Clone, Default)]
pub struct LocalBus {
    shards: Arc<RwLock<HashMap<ShardId, cb::Sender<ToShard>>>>,
    routers: Arc<RwLock<HashMap<RouterId, mpsc::Sender<ToRouter>>>>,
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Registers a shard and returns its inbox.
    pub fn add_shard(&self, id: ShardId) -> cb::Receiver<ToShard> {
        let (tx, rx) = shard_inbox();
        self.shards.write().insert(id, tx);
        rx
    }

    pub fn remove_shard(&self, id: &ShardId) {
        self.shards.write().remove(id);
    }

    /// Registers a router and returns its inbox.
    pub fn add_router(&self, id: RouterId) -> mpsc::Receiver<ToRouter> {
        let (tx, rx) = router_inbox();
        self.routers.write().insert(id, tx);
        rx
    }

    pub fn remove_router(&self, id: &RouterId) {
        self.routers.write().remove(id);
    }
}

impl Bus for LocalBus {
    fn to_shard(&self, shard: &ShardId, msg: ToShard) -> Result<(), BusError> {
        let shards = self.shards.read();
        let tx = shards
            .get(shard)
            .ok_or_else(|| BusError::NoShard(shard.clone()))?;
        offer(tx, shard, msg)
    }

    fn to_router(&self, router: &RouterId, msg: ToRouter) -> Result<(), BusError> {
        let routers = self.routers.read();
        let tx = routers
            .get(router)
            .ok_or_else(|| BusError::NoRouter(router.clone()))?;
        offer_router(tx, router, msg)
    }

    fn publish_frame(&self, frame: Arc<CellFrame>) {
        for (id, tx) in self.routers.read().iter() {
            let _ = offer_router(tx, id, ToRouter::Frame(frame.clone()));
        }
    }

    fn has_shard(&self, shard: &ShardId) -> bool {
        self.shards.read().contains_key(shard)
    }

    fn router_incarnation(&self, router: &RouterId) -> Option<i64> {
        self.routers.read().contains_key(router).then_some(0)
    }

    fn routers(&self) -> Vec<RouterId> {
        let mut ids: Vec<RouterId> = self.routers.read().keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::{Compass, EntityId};

    /// A shard whose simulation thread reads nothing: its inbox stops at [`SHARD_INBOX`]
    /// messages; further commands are refused with a clear error, ghost sets dropped
    /// (issue 16, item 2).
    #[test]
    fn a_shard_inbox_that_is_never_read_stays_bounded() {
        let bus = LocalBus::new();
        let s = ShardId::new("stuck");
        let inbox = bus.add_shard(s.clone());
        let step = || ToShard::Step {
            entity: EntityId(1),
            dir: Compass::North,
        };
        for _ in 0..SHARD_INBOX {
            bus.to_shard(&s, step()).unwrap();
        }
        let err = bus.to_shard(&s, step()).unwrap_err();
        assert!(
            matches!(err, BusError::Full { .. }) && err.to_string().contains("not keeping up"),
            "{err}"
        );
        let ghosts = ToShard::Ghosts {
            from: tessera_proto::CellId::new(0, 0).into(),
            to: tessera_proto::CellId::new(1, 0).into(),
            tick: 1,
            ghosts: Vec::new(),
        };
        bus.to_shard(&s, ghosts)
            .expect("ghost sets are dropped, not refused");
        assert_eq!(inbox.len(), SHARD_INBOX);
        // Once it reads again, it takes messages again.
        inbox.recv().unwrap();
        bus.to_shard(&s, step()).unwrap();
    }

    /// A router whose loop reads nothing: its inbox stops at [`ROUTER_INBOX`] messages;
    /// cell frames are dropped, player events refused with a clear error (issue 16, item 2:
    /// every inbox is bounded).
    #[test]
    fn a_router_inbox_that_is_never_read_stays_bounded() {
        let bus = LocalBus::new();
        let r = RouterId("stuck".into());
        let mut inbox = bus.add_router(r.clone());
        let event = || ToRouter::SavePlayer {
            player: tessera_proto::PlayerId(1),
            pos: tessera_proto::Vec3::ZERO,
        };
        for _ in 0..ROUTER_INBOX {
            bus.to_router(&r, event()).unwrap();
        }
        let err = bus.to_router(&r, event()).unwrap_err();
        assert!(
            matches!(err, BusError::Full { .. }) && err.to_string().contains("not keeping up"),
            "{err}"
        );
        let frame = Arc::new(CellFrame {
            region: tessera_proto::CellId::new(0, 0).into(),
            shard: ShardId::new("s"),
            epoch: tessera_proto::Epoch(1),
            tick: 1,
            entities: Vec::new(),
        });
        bus.publish_frame(frame.clone());
        bus.to_router(&r, ToRouter::Frame(frame))
            .expect("frames are dropped, not refused");
        assert_eq!(inbox.len(), ROUTER_INBOX);
        inbox.try_recv().unwrap();
        bus.to_router(&r, event()).unwrap();
    }
}
