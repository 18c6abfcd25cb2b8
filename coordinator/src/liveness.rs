//! The liveness watchdog: the leading coordinator notices a dead member in about a second
//! and revokes its lease, so its cells reopen elsewhere without waiting out the lease TTL
//! (20 s by default, long so that members ride out etcd outages).
//!
//! The leader holds one QUIC connection to every registered shard's and router's cluster
//! address, pinged every [`PING`]. A member is declared dead only when two independent
//! signals agree:
//! - it has not been heard on the cluster bus for [`SILENCE`] (no datagram, not even an
//!   acknowledgement of a ping, and no new connection accepted), and
//! - etcd says its lease has not been renewed for more than a second (members renew every
//!   [`RENEW_EVERY`], [`crate::membership`]).
//!
//! A member that is only cut off from etcd is still heard on the bus, so it keeps its cells
//! until it cannot renew (the etcd-outage rule); a member that only the coordinator cannot
//! reach still renews, so it is left alone (and logged). A process killed with `kill -9`,
//! frozen (SIGSTOP) or cut off from everything fails both and is revoked: a frozen one
//! learns on waking that its lease is gone and stops (it is fenced).
//!
//! The connection is accepted by the member's [`crate::transport::QuicBus`] like any cluster
//! peer's; no message is ever sent on it. The certificate it presents must name the role the
//! registration is for. (Members of one role may share a certificate, so its name is not
//! checked: another member of that role answering at a dead one's address keeps the dead
//! one's lease until its TTL runs out.)

use crate::identity::MemberRole;
use crate::membership::RENEW_EVERY;
use crate::pki::{MemberIdentity, PkiError, CLUSTER_NAME};
use crate::store::{ClusterStore, LeaseId};
use crate::transport::Member;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::{RouterId, ShardId};
use tokio::time::Instant;

/// How often the watchdog pings every member.
pub const PING: Duration = Duration::from_millis(200);
/// How long a member may go unheard on the cluster bus before its lease is checked.
pub const SILENCE: Duration = Duration::from_millis(1000);
/// A lease counts as no longer renewed when etcd reports at least this much of its TTL
/// gone: more than a second in fact, since etcd rounds the remainder down to whole seconds.
/// A member renewing every [`RENEW_EVERY`] never shows more than a second.
pub const STALE: Duration = Duration::from_secs(2);
/// How often the watchdog reads the registrations and checks its members.
const ROUND: Duration = Duration::from_millis(250);
/// How long one connection attempt may take.
const CONNECT: Duration = Duration::from_millis(500);

const _: () = assert!(RENEW_EVERY.as_millis() * 2 <= STALE.as_millis());

/// What the watchdog connects with: the coordinator's member certificate.
#[derive(Clone)]
pub struct LivenessConfig {
    client: quinn::ClientConfig,
}

impl std::fmt::Debug for LivenessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivenessConfig").finish_non_exhaustive()
    }
}

impl LivenessConfig {
    pub fn new(identity: &MemberIdentity) -> Result<LivenessConfig, PkiError> {
        let mut client = identity.client_config()?;
        let mut transport = quinn::TransportConfig::default();
        // The idle timeout only bounds a dead connection's life; "unheard" is judged by
        // the datagrams received, against SILENCE.
        transport
            .keep_alive_interval(Some(PING))
            .max_idle_timeout(Some(
                Duration::from_secs(3)
                    .try_into()
                    .expect("3 s is a valid idle timeout"),
            ));
        client.transport_config(Arc::new(transport));
        Ok(LivenessConfig { client })
    }
}

/// A registered member as the watchdog follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Watched {
    member: Member,
    addr: SocketAddr,
    lease: LeaseId,
}

/// Watches every registered shard and router under `prefix` until the task is dropped
/// (the leader runs it while it leads).
pub async fn watch(store: Arc<dyn ClusterStore>, prefix: String, config: LivenessConfig) {
    let mut probes: HashMap<Member, (Watched, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut round = tokio::time::interval(ROUND);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        round.tick().await;
        let Ok(members) = registered(&*store, &prefix).await else {
            // The store is unreachable: nobody can be revoked now anyway.
            continue;
        };
        probes.retain(|_, (w, task)| {
            let keep = !task.is_finished() && members.contains(w);
            if !keep {
                task.abort();
            }
            keep
        });
        for w in members {
            if probes.contains_key(&w.member) {
                continue;
            }
            let task = tokio::spawn(probe(store.clone(), w.clone(), config.clone()));
            probes.insert(w.member.clone(), (w, task));
        }
    }
}

/// Aborts the watchdog when dropped.
pub struct WatchdogGuard(tokio::task::JoinHandle<()>);

impl WatchdogGuard {
    pub fn spawn(store: Arc<dyn ClusterStore>, prefix: String, config: LivenessConfig) -> Self {
        WatchdogGuard(tokio::spawn(watch(store, prefix, config)))
    }
}

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn registered(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Vec<Watched>, crate::StoreError> {
    let mut out = Vec::new();
    for kind in ["shards/", "routers/"] {
        let base = format!("{prefix}{kind}");
        for kv in store.list(&base).await? {
            let (Some(id), Some(lease)) = (kv.key.strip_prefix(&base), kv.lease) else {
                continue;
            };
            let (member, addr) = if kind == "shards/" {
                let Ok(r) =
                    serde_json::from_slice::<crate::membership::ShardRegistration>(&kv.value)
                else {
                    continue;
                };
                (Member::Shard(ShardId::new(id)), r.addr)
            } else {
                let Ok(r) =
                    serde_json::from_slice::<crate::membership::RouterRegistration>(&kv.value)
                else {
                    continue;
                };
                (Member::Router(RouterId(id.to_string())), r.addr)
            };
            out.push(Watched {
                member,
                addr,
                lease,
            });
        }
    }
    Ok(out)
}

fn describe(member: &Member) -> (MemberRole, String) {
    match member {
        Member::Shard(id) => (MemberRole::Shard, id.to_string()),
        Member::Router(id) => (MemberRole::Router, id.0.clone()),
    }
}

/// Follows one member until it is revoked, gone, or re-registered (the task is then
/// aborted and a new one follows the new registration).
async fn probe(store: Arc<dyn ClusterStore>, w: Watched, config: LivenessConfig) {
    let (role, name) = describe(&w.member);
    let bind: SocketAddr = if w.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(member = %name, error = %e, "liveness watchdog cannot open a UDP socket");
            return;
        }
    };
    // Registered a moment ago: it counts as heard now.
    let mut heard = Instant::now();
    let mut conn: Option<(quinn::Connection, u64)> = None;
    let mut reported = false;
    let mut round = tokio::time::interval(ROUND);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        round.tick().await;
        if let Some((c, seen)) = conn.as_mut() {
            let received = c.stats().udp_rx.datagrams;
            if received > *seen {
                *seen = received;
                heard = Instant::now();
            }
            if c.close_reason().is_some() {
                conn = None;
            }
        }
        if conn.is_none() {
            match connect(&endpoint, &config, w.addr, role).await {
                Ok(c) => {
                    let seen = c.stats().udp_rx.datagrams;
                    conn = Some((c, seen));
                    heard = Instant::now();
                }
                Err(why) => {
                    tracing::debug!(member = %name, addr = %w.addr, why, "liveness probe cannot connect")
                }
            }
        }
        let unheard = heard.elapsed();
        if unheard < SILENCE {
            if reported {
                tracing::info!(member = %name, "heard again on the cluster bus");
                reported = false;
            }
            continue;
        }
        match store.lease_time_to_live(w.lease).await {
            // Gone already (it stopped, or its lease ran out): nothing to do.
            Ok(None) => return,
            Ok(Some(ttl)) if ttl.unrenewed_for() >= STALE => {
                tracing::error!(
                    member = %name,
                    role = role.as_str(),
                    addr = %w.addr,
                    unheard_ms = unheard.as_millis() as u64,
                    lease_unrenewed_s = ttl.unrenewed_for().as_secs(),
                    "member is dead (unheard on the cluster bus, lease not renewed): revoking its lease"
                );
                match store.revoke(w.lease).await {
                    Ok(()) => {
                        metrics::counter!("tessera_coordinator_members_declared_dead_total", "role" => role.as_str())
                            .increment(1);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(member = %name, error = %e, "cannot revoke a dead member's lease; retrying")
                    }
                }
            }
            Ok(Some(_)) => {
                if !reported {
                    tracing::warn!(
                        member = %name,
                        addr = %w.addr,
                        unheard_ms = unheard.as_millis() as u64,
                        "member unreachable on the cluster bus but still renewing its lease: left alone"
                    );
                    reported = true;
                }
            }
            Err(e) => {
                tracing::debug!(member = %name, error = %e, "cannot read a member's lease; the store is down?")
            }
        }
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    config: &LivenessConfig,
    addr: SocketAddr,
    role: MemberRole,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(config.client.clone(), addr, CLUSTER_NAME)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(CONNECT, connecting)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    match crate::identity::Peer::of(&conn) {
        Some(peer) if peer.role() == Some(role) => Ok(conn),
        other => {
            conn.close(0u32.into(), b"not the member registered here");
            Err(format!(
                "a member of another role answers at this address: {:?}",
                other.map(|p| p.name().to_string())
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{shard_key, Registration, ShardRegistration};
    use crate::pki::ClusterCa;
    use crate::store::MemStore;
    use crate::transport::{Directory, LocalInbox, QuicBus};

    const PREFIX: &str = "/t/";
    /// Far longer than the test: only the watchdog can make these registrations vanish.
    const TTL: Duration = Duration::from_secs(60);

    async fn bus_of(ca: &ClusterCa, id: &str) -> Arc<QuicBus> {
        let (tx, _rx) = crossbeam_channel::unbounded();
        QuicBus::start(
            &ca.member(MemberRole::Shard, id).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            LocalInbox::Shard(ShardId::new(id), tx),
            Directory::default(),
        )
        .unwrap()
    }

    fn registration(bus: &QuicBus) -> Vec<u8> {
        serde_json::to_vec(&ShardRegistration {
            addr: bus.local_addr().unwrap(),
            node: "n".into(),
            capacity: 1,
            version: "0".into(),
        })
        .unwrap()
    }

    /// Registered under a lease nobody renews.
    async fn unrenewed(store: &Arc<dyn ClusterStore>, id: &str, bus: &QuicBus) -> LeaseId {
        let lease = store.grant_lease(TTL).await.unwrap();
        store
            .put(
                &shard_key(PREFIX, &ShardId::new(id)),
                registration(bus),
                Some(lease),
            )
            .await
            .unwrap();
        lease
    }

    async fn registered(store: &Arc<dyn ClusterStore>, id: &str) -> bool {
        store
            .get(&shard_key(PREFIX, &ShardId::new(id)))
            .await
            .unwrap()
            .is_some()
    }

    /// Of three shards with 60 s leases, the watchdog revokes only the one that is both
    /// unheard on the bus and not renewing ("dead"), within about two seconds; it leaves
    /// alone the one cut off from the store (heard on the bus, not renewing) and the one only
    /// it cannot reach (renewing, its bus closed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_member_both_unheard_and_not_renewing_is_revoked() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let ca = ClusterCa::generate().unwrap();
        let dead_bus = bus_of(&ca, "dead").await;
        let cut_off_bus = bus_of(&ca, "cut-off").await;
        let unreachable_bus = bus_of(&ca, "unreachable").await;
        unrenewed(&store, "dead", &dead_bus).await;
        unrenewed(&store, "cut-off", &cut_off_bus).await;
        let renewing = Registration::register(
            store.clone(),
            shard_key(PREFIX, &ShardId::new("unreachable")),
            registration(&unreachable_bus),
            TTL,
        )
        .await
        .unwrap();
        let coordinator = ca.member(MemberRole::Coordinator, "c").unwrap();
        let _watchdog = WatchdogGuard::spawn(
            store.clone(),
            PREFIX.into(),
            LivenessConfig::new(&coordinator).unwrap(),
        );
        // Let the watchdog connect to all three, then the dead one and the unreachable
        // one go quiet on the bus.
        tokio::time::sleep(Duration::from_millis(600)).await;
        dead_bus.close().await;
        unreachable_bus.close().await;
        let quiet = Instant::now();
        while registered(&store, "dead").await {
            assert!(
                quiet.elapsed() < Duration::from_secs(4),
                "a dead member was not revoked"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let revoked_after = quiet.elapsed();
        assert!(
            revoked_after >= SILENCE,
            "revoked before it was unheard for {SILENCE:?}: {revoked_after:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            registered(&store, "cut-off").await,
            "a member heard on the bus lost its lease"
        );
        assert!(
            registered(&store, "unreachable").await,
            "a member renewing its lease lost it"
        );
        assert!(!*renewing.lost.borrow());
        renewing.revoke().await;
        cut_off_bus.close().await;
    }
}
