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
}

/// In-process bus: shard inboxes are crossbeam channels (the shard's
/// simulation thread blocks on them between ticks), router inboxes are
/// tokio channels.
#[derive(Clone, Default)]
pub struct LocalBus {
    shards: Arc<RwLock<HashMap<ShardId, cb::Sender<ToShard>>>>,
    routers: Arc<RwLock<HashMap<RouterId, mpsc::UnboundedSender<ToRouter>>>>,
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Registers a shard and returns its inbox.
    pub fn add_shard(&self, id: ShardId) -> cb::Receiver<ToShard> {
        let (tx, rx) = cb::unbounded();
        self.shards.write().insert(id, tx);
        rx
    }

    pub fn remove_shard(&self, id: &ShardId) {
        self.shards.write().remove(id);
    }

    /// Registers a router and returns its inbox.
    pub fn add_router(&self, id: RouterId) -> mpsc::UnboundedReceiver<ToRouter> {
        let (tx, rx) = mpsc::unbounded_channel();
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
        tx.send(msg).map_err(|_| BusError::NoShard(shard.clone()))
    }

    fn to_router(&self, router: &RouterId, msg: ToRouter) -> Result<(), BusError> {
        let routers = self.routers.read();
        let tx = routers
            .get(router)
            .ok_or_else(|| BusError::NoRouter(router.clone()))?;
        tx.send(msg).map_err(|_| BusError::NoRouter(router.clone()))
    }

    fn publish_frame(&self, frame: Arc<CellFrame>) {
        for tx in self.routers.read().values() {
            let _ = tx.send(ToRouter::Frame(frame.clone()));
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
