//! A router as a cluster member: what `tessera router` and `tessera up --etcd` run.
//!
//! The lifecycle, in order: join the cluster bus and follow the cell map
//! ([`tessera_coordinator::member`]); start the router (telnet, telnet over TLS, QUIC);
//! register under a lease (shards send frames only to registered routers) and, once the
//! router listens, record its real addresses; serve until `shutdown`. On shutdown the
//! registration is first marked draining, so telnet gateways resume the router's players
//! elsewhere; it stays (shards still answer the players' leaves) until the router has stopped
//! and saved every player, then it is revoked. If a task the router cannot serve without dies
//! (the bus inbox pump, an accept loop, ...: [`crate::EssentialTasks`]), the router stops at
//! once: the registration is revoked and the cluster bus closed without waiting for the lease
//! to run out, and `run` returns [`RouterError::TaskDied`] (the process exits non-zero). The
//! state is published on a watch channel ([`RouterState`]).

use crate::{chat::ChatLink, Router, RouterAddrs, RouterConfig, RouterError};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_auth::Accounts;
use tessera_coordinator::member::{JoinError, Membership};
use tessera_coordinator::membership::{router_key, Registration, RouterRegistration};
use tessera_coordinator::transport::LocalInbox;
use tessera_coordinator::{Bus, CoordinatorError};
use tessera_persistence::Database;
use tessera_proto::world::WorldDef;
use tokio::sync::watch;

/// How a router member runs.
pub struct MemberConfig {
    /// The router itself (its listeners, limits, data dir). Its `relay_cas` are set to the
    /// member's trust bundle: telnet gateways of this cluster may relay.
    pub router: RouterConfig,
    pub world: std::sync::Arc<WorldDef>,
    pub membership: Membership,
    pub accounts: Accounts,
    pub chat: Option<ChatLink>,
    /// Players' saved state.
    pub db: Database,
}

/// Where a router member is in its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouterState {
    Starting,
    /// Registered and listening: peers dial `cluster`, players `addrs`.
    Serving {
        cluster: SocketAddr,
        addrs: RouterAddrs,
    },
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
    Router(#[from] RouterError),
    #[error("the router stopped before it was ready")]
    NotReady,
    /// Frozen or cut off past its lease, the router's registration was revoked: shards
    /// stopped sending it frames and events, so it cannot serve its players.
    #[error("router {0} lost its registration (frozen or cut off past its lease) and stopped")]
    LeaseLost(String),
}

/// Runs a router member until `shutdown`; returns once every player is saved and the
/// registration is gone.
pub async fn run(
    config: MemberConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    state: watch::Sender<RouterState>,
) -> Result<(), MemberError> {
    let MemberConfig {
        mut router,
        world,
        membership,
        accounts,
        chat,
        db,
    } = config;
    let id = router.id.clone();
    let (store, prefix) = (membership.store.clone(), membership.prefix.clone());
    let (tx, inbox) = tessera_coordinator::bus::router_inbox();
    let joined = membership.join(LocalInbox::Router(id.clone(), tx)).await?;
    // Telnet gateways are cluster members: their certificates let them relay.
    router.relay_cas = membership.identity.roots().to_vec();
    let (telnet, quic) = (router.telnet, router.quic);
    let bus: std::sync::Arc<dyn Bus> = joined.bus.clone();
    let router = Router::new(router, world, bus, joined.map, accounts, chat, db);
    let cluster = joined.addr;
    let registration = move |telnet, quic, draining| RouterRegistration {
        addr: cluster,
        telnet,
        quic,
        version: env!("CARGO_PKG_VERSION").into(),
        draining,
    };
    let encode = |r: &RouterRegistration| {
        serde_json::to_vec(r).map_err(|e| CoordinatorError::BadValue {
            key: router_key(&prefix, &id),
            reason: e.to_string(),
        })
    };
    // On shutdown the registration is marked draining first (see the module documentation).
    let (lease_tx, lease_rx) = tokio::sync::oneshot::channel::<(i64, SocketAddr, SocketAddr)>();
    let (draining_store, draining_key) = (store.clone(), router_key(&prefix, &id));
    let marked = async move {
        shutdown.await;
        if let Ok((lease, telnet, quic)) = lease_rx.await {
            let value = serde_json::to_vec(&registration(telnet, quic, true)).unwrap_or_default();
            if let Err(e) = draining_store.put(&draining_key, value, Some(lease)).await {
                tracing::warn!(error = %e, "cannot mark the router draining");
            }
        }
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(crate::run(router, inbox, ready_tx, marked));
    // Register first (shards send frames to registered routers only), then wait for the
    // router to be ready.
    let reg = Registration::register(
        store.clone(),
        router_key(&prefix, &id),
        encode(&registration(telnet, quic, false))?,
        membership.lease_ttl.max(Duration::from_secs(1)),
    )
    .await?;
    let addrs = match ready_rx.await {
        Ok(a) => a,
        Err(_) => {
            reg.revoke().await;
            return match task.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(MemberError::NotReady),
            };
        }
    };
    // Record the real addresses (ports may have been 0).
    store
        .put(
            &router_key(&prefix, &id),
            encode(&registration(addrs.telnet, addrs.quic, false))?,
            Some(reg.lease),
        )
        .await?;
    let _ = lease_tx.send((reg.lease, addrs.telnet, addrs.quic));
    let _ = state.send(RouterState::Serving { cluster, addrs });
    let mut task = task;
    let mut lost = reg.lost.clone();
    let outcome = tokio::select! {
        ended = &mut task => match ended {
            Ok(r) => r.map_err(MemberError::from),
            Err(e) => Err(MemberError::Router(RouterError::Unavailable(format!(
                "the router task failed: {e}"
            )))),
        },
        // Revoked while it was frozen or cut off (the liveness watchdog, or its lease ran
        // out): shards no longer send it anything, so it stops, and its players resume on
        // another router (or on this one, started again with a new registration).
        Ok(_) = lost.wait_for(|l| *l) => {
            tracing::error!(router = %id, "the router's registration was revoked (it was frozen or cut off past its lease); stopping so that it can start again with a new one");
            task.abort();
            Err(MemberError::LeaseLost(id.to_string()))
        }
    };
    // Also when the router died (a task it cannot serve without ended): the registration
    // goes now rather than when the lease runs out, so shards and telnet gateways stop
    // counting on this router at once.
    reg.revoke().await;
    // Peers learn at once that this member is gone (a successor may take its address).
    joined.bus.close().await;
    outcome
}
