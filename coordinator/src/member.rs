//! What every member on the cluster bus (shards, routers) does first: join the bus with its
//! identity, follow the directory of the other members and the cell map. The role libraries
//! (`tessera_shard::member`, `tessera_router::member`) start here.

use crate::membership;
use crate::pki::MemberIdentity;
use crate::store::ClusterStore;
use crate::transport::{Directory, LocalInbox, QuicBus, TransportError};
use crate::{CellMap, CoordinatorError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where a member sits in the cluster: the cluster store and prefix, its identity, and where
/// its bus listens.
#[derive(Clone)]
pub struct Membership {
    pub store: Arc<dyn ClusterStore>,
    pub prefix: String,
    pub identity: Arc<MemberIdentity>,
    /// Where the cluster bus listens.
    pub listen: SocketAddr,
    /// The address peers should dial (default: the bound address, with 127.0.0.1 for an
    /// unspecified IP).
    pub advertise: Option<SocketAddr>,
    /// The registration lease: a dead member's work moves elsewhere after about this long.
    pub lease_ttl: Duration,
    /// The newest cluster format the bus speaks ([`crate::transport::CLUSTER_FORMAT`] unless
    /// the member must talk like the previous release: `--cluster-format`).
    pub cluster_format: u16,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("prefix", &self.prefix)
            .field("identity", &self.identity)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("lease_ttl", &self.lease_ttl)
            .field("cluster_format", &self.cluster_format)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Store(#[from] CoordinatorError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot read the bus's address: {0}")]
    Address(#[from] std::io::Error),
}

/// A member on the bus: the bus, the address it registers, and the cell map it follows.
pub struct Joined {
    pub bus: Arc<QuicBus>,
    pub addr: SocketAddr,
    pub map: CellMap,
}

impl Membership {
    /// Follows the directory of members, starts the bus delivering into `inbox`, and follows
    /// the cell map.
    pub async fn join(&self, inbox: LocalInbox) -> Result<Joined, JoinError> {
        let directory = Directory::default();
        membership::watch_directory(self.store.clone(), &self.prefix, directory.clone()).await?;
        let bus = QuicBus::start_speaking(
            &self.identity,
            self.listen,
            inbox,
            directory,
            self.cluster_format,
        )?;
        let addr = self.advertised(bus.local_addr()?);
        let map = CellMap::watch(self.store.clone(), &self.prefix).await?;
        Ok(Joined { bus, addr, map })
    }

    /// The address peers should dial, given the one the bus bound.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        self.advertise.unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                SocketAddr::new([127, 0, 0, 1].into(), bound.port())
            } else {
                bound
            }
        })
    }
}
