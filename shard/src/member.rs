//! A shard as a cluster member: what `tessera shard` and `tessera up --etcd` run.
//!
//! The lifecycle, in order: join the cluster bus and follow the cell map
//! ([`tessera_coordinator::member`]); follow the migrations, checked against the cluster's
//! trust ([`ClusterTrust`]); start the simulation thread; take cells again whatever drain
//! cordoned this id before; register under a lease and report the load every second; then run
//! until `shutdown` or until the lease is lost. On shutdown the shard drains (hands every cell
//! to the other shards by live migration, players stay connected) if `drain_timeout` is not
//! zero; on a lost lease it stops simulating at once, since its cells are being given to
//! others. Either way it then stops the simulation, revokes its registration and removes its
//! drain mark. If the simulation thread dies (a panic), the registration is revoked at once,
//! so the cells fail over without waiting for the lease to run out, and `run` returns
//! [`MemberError::SimulationDied`] (the process exits non-zero). The state it is in is published on a watch channel ([`ShardState`]) for
//! readiness checks.

use crate::sim::ShardNotice;
use crate::{LoadBoard, Shard, ShardConfig, ShardError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_coordinator::authority::ClusterTrust;
use tessera_coordinator::member::{JoinError, Membership};
use tessera_coordinator::membership::{load_key, shard_key, Registration, ShardRegistration};
use tessera_coordinator::migration::{drain, draining_key, mark_restored, MigrationBoard};
use tessera_coordinator::store::LeaseId;
use tessera_coordinator::transport::LocalInbox;
use tessera_coordinator::{Bus, ClusterStore, CoordinatorError};
use tessera_proto::world::WorldDef;
use tessera_proto::ShardId;
use tokio::sync::watch;

/// How a shard member runs.
pub struct MemberConfig {
    /// The simulation (id, tick rate, checkpoints, script updates).
    pub shard: ShardConfig,
    pub world: Arc<WorldDef>,
    pub membership: Membership,
    /// Checks migration requests, and signs this shard's drain.
    pub trust: ClusterTrust,
    /// Relative capacity of this machine (the rebalancer's share).
    pub capacity: u32,
    /// The node it runs on, for `tessera ctl shards`.
    pub node: String,
    /// On shutdown, how long to wait for the cells to move away (zero: stop at once; the cells
    /// then fail over from their checkpoints).
    pub drain_timeout: Duration,
}

/// Where a shard member is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    Starting,
    /// Registered: the coordinator may give it cells. Peers dial `addr`.
    Serving {
        addr: SocketAddr,
    },
    /// Handing its cells away.
    Draining,
}

/// How a shard member ended.
#[derive(Debug)]
pub struct Stopped {
    /// The drain, if there was one: how many cells moved, or why it did not finish.
    pub drained: Option<Result<usize, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Cluster(#[from] CoordinatorError),
    #[error(transparent)]
    Store(#[from] tessera_coordinator::StoreError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("shard {0} lost its etcd lease and stopped simulating")]
    LeaseLost(ShardId),
    #[error("the simulation thread of shard {0} died; its registration is revoked so its cells fail over now")]
    SimulationDied(ShardId),
}

/// Why a shard member stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Shutdown,
    LeaseLost,
    SimulationDied,
}

/// Runs a shard member until `shutdown` (then drains and stops) or until its lease is lost.
pub async fn run(
    config: MemberConfig,
    shutdown: impl Future<Output = ()>,
    state: watch::Sender<ShardState>,
) -> Result<Stopped, MemberError> {
    let MemberConfig {
        shard,
        world,
        membership,
        trust,
        capacity,
        node,
        drain_timeout,
    } = config;
    let id = shard.id.clone();
    let (store, prefix) = (membership.store.clone(), membership.prefix.clone());
    let (tx, inbox) = tessera_coordinator::bus::shard_inbox();
    let joined = membership.join(LocalInbox::Shard(id.clone(), tx)).await?;
    let bus: Arc<dyn Bus> = joined.bus.clone();
    let board = MigrationBoard::watch(store.clone(), &prefix, Some(trust.clone())).await?;
    let (notice_tx, notices) = tokio::sync::mpsc::unbounded_channel();
    let sim = Shard::new(shard, world, bus, joined.map)?.with_migrations(board, notice_tx);
    let handle = crate::spawn_shard(sim, inbox)?;
    record_restored(store.clone(), prefix.clone(), id.clone(), notices);
    // A (re)started shard takes cells again, whatever drain cordoned it.
    store.delete(&draining_key(&prefix, &id)).await?;
    let registration = ShardRegistration {
        addr: joined.addr,
        node,
        capacity,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let value = serde_json::to_vec(&registration).map_err(|e| CoordinatorError::BadValue {
        key: shard_key(&prefix, &id),
        reason: e.to_string(),
    })?;
    let reg = Registration::register(
        store.clone(),
        shard_key(&prefix, &id),
        value,
        membership.lease_ttl.max(Duration::from_secs(1)),
    )
    .await?;
    publish_load(
        store.clone(),
        load_key(&prefix, &id),
        reg.lease,
        handle.load.clone(),
    );
    let _ = state.send(ShardState::Serving { addr: joined.addr });
    let mut lost_rx = reg.lost.clone();
    let mut ended = handle.ended();
    let why = tokio::select! {
        _ = shutdown => Stop::Shutdown,
        _ = async { lost_rx.wait_for(|l| *l).await.is_ok() } => Stop::LeaseLost,
        _ = async { ended.wait_for(|e| *e).await.is_ok() } => Stop::SimulationDied,
    };
    if why == Stop::SimulationDied {
        // Its cells must not wait for the lease to expire with nobody simulating them:
        // revoke it now, and the coordinator gives them to the other shards.
        tracing::error!(shard = %id, "the simulation thread died; giving up the registration");
        metrics::counter!("tessera_shard_simulation_deaths_total").increment(1);
        reg.revoke().await;
        joined.bus.close().await;
        return Err(MemberError::SimulationDied(id));
    }
    let lost = why == Stop::LeaseLost;
    let mut drained = None;
    if !lost && !drain_timeout.is_zero() {
        let _ = state.send(ShardState::Draining);
        tracing::info!(shard = %id, "draining");
        let signer = trust.member(format!("shard:{id}"));
        drained = Some(
            drain(&*store, &prefix, &id, drain_timeout, &signer)
                .await
                .map_err(|e| e.to_string()),
        );
        // Let forwarded messages reach the new owners.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handle.stop();
    // Peers learn at once that this member is gone (a successor may take its address).
    joined.bus.close().await;
    if lost {
        return Err(MemberError::LeaseLost(id));
    }
    reg.revoke().await;
    // Unregistered now, so nothing can give it cells: drop the cordon too.
    // In Kubernetes a new pod never reuses the name, so it would stay forever.
    if let Err(e) = store.delete(&draining_key(&prefix, &id)).await {
        tracing::warn!(shard = %id, error = %e, "cannot remove the drain mark");
    }
    Ok(Stopped { drained })
}

/// Records in the cluster store the migrations the simulation reports restored (the target's
/// half of a live migration), retrying a while if the store does not answer.
pub fn record_restored(
    store: Arc<dyn ClusterStore>,
    prefix: String,
    me: ShardId,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<ShardNotice>,
) {
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            let ShardNotice::Restored {
                region: cell,
                epoch,
            } = notice;
            for attempt in 0..20 {
                match mark_restored(&*store, &prefix, cell, &me, epoch).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(cell = %cell, attempt, error = %e, "cannot record a restored migration; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
    });
}

/// Publishes a shard's load report every second, under its registration lease (the
/// coordinator's rebalancer and `tessera ctl` read it).
pub fn publish_load(store: Arc<dyn ClusterStore>, key: String, lease: LeaseId, board: LoadBoard) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let report = board.lock().clone();
            if let Ok(value) = serde_json::to_vec(&report) {
                if let Err(e) = store.put(&key, value, Some(lease)).await {
                    tracing::debug!(error = %e, "load report not written");
                }
            }
        }
    });
}
