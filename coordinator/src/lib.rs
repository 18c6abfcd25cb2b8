//! The cluster's control plane: the cluster store (etcd, or the in-process
//! store of single-node mode), the cell map built on it, cell placement, and
//! the message bus that carries cluster messages between roles.
//!
//! Only this crate writes cell ownership (`cells/<x>,<z>` keys). Shards and
//! routers read the map through [`CellMap`].

pub mod authority;
pub mod bus;
pub mod cellmap;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod control;
pub mod ctl;
pub mod etcd;
pub mod identity;
pub mod liveness;
pub mod member;
pub mod membership;
pub mod migration;
pub mod operators;
pub mod pki;
pub mod placement;
pub mod rebalance;
pub mod reshape;
pub mod store;
pub mod transport;

pub use bus::{Bus, BusError, LocalBus};
pub use cellmap::{CellMap, CellOwner};
pub use etcd::{EtcdConnectError, EtcdStore, EtcdTls};
pub use store::{ClusterStore, MemStore, StoreError};

/// Default key prefix in the cluster store.
pub const DEFAULT_PREFIX: &str = "/tessera/";

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no shards to place cells on")]
    NoShards,
    #[error("bad value under {key}: {reason}")]
    BadValue { key: String, reason: String },
}
