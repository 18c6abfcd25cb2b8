//! Cluster membership: every shard and router registers itself under a
//! lease (`shards/<id>`, `routers/<id>`, docs/cluster-keys.md) and keeps the
//! lease alive; everyone watches the registrations to know where to send
//! cluster messages ([`Directory`]).

use crate::store::{follow, ClusterStore, Follow, LeaseId, WatchEvent};
use crate::transport::{Directory, Member};
use crate::CoordinatorError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::{RouterId, ShardId};
use tokio::sync::watch;

/// A shard's registration (`<prefix>shards/<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRegistration {
    /// Cluster (QUIC) address peers dial.
    pub addr: SocketAddr,
    /// The machine it runs on (k8s node name, hostname).
    pub node: String,
    /// Relative capacity; placement gives bigger shards more cells.
    pub capacity: u32,
    pub version: String,
}

/// A router's registration (`<prefix>routers/<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterRegistration {
    pub addr: SocketAddr,
    pub telnet: SocketAddr,
    pub quic: SocketAddr,
    pub version: String,
    /// The router is stopping: telnet gateways resume no player on it.
    #[serde(default)]
    pub draining: bool,
}

impl RouterRegistration {
    /// Where players reach this router over QUIC: the QUIC address, with
    /// the cluster address's IP when it listens on every interface.
    pub fn player_quic_addr(&self) -> SocketAddr {
        if self.quic.ip().is_unspecified() {
            SocketAddr::new(self.addr.ip(), self.quic.port())
        } else {
            self.quic
        }
    }
}

/// A shard's load report (`<prefix>load/<id>`, under the shard's lease),
/// refreshed about once a second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardLoad {
    pub tick: u64,
    /// Tick durations over the last few seconds, milliseconds.
    pub tick_p50_ms: f64,
    pub tick_p99_ms: f64,
    /// 1 / tick rate, milliseconds.
    pub tick_budget_ms: f64,
    pub entities: usize,
    pub players: usize,
    /// Stall of the last cell migrated into this shard: the old owner's
    /// last tick of it to this shard's first, milliseconds.
    #[serde(default)]
    pub last_migration_stall_ms: Option<u64>,
    pub cells: Vec<CellLoad>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellLoad {
    pub cell: tessera_proto::CellId,
    /// The region of `cell` this entry is about, in text form, when the
    /// cell is split (docs/regions.md); absent for a whole cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub epoch: tessera_proto::Epoch,
    pub entities: usize,
    pub players: usize,
    pub ghosts: usize,
    /// This cell's step (scripts + physics) over the last 64 ticks,
    /// milliseconds: mean and 99th percentile. Zero from shards that
    /// predate per-cell costs.
    #[serde(default)]
    pub tick_ms: f64,
    #[serde(default)]
    pub tick_p99_ms: f64,
}

pub fn load_key(prefix: &str, id: &ShardId) -> String {
    format!("{prefix}load/{id}")
}

pub fn shard_key(prefix: &str, id: &ShardId) -> String {
    format!("{prefix}shards/{id}")
}

pub fn router_key(prefix: &str, id: &RouterId) -> String {
    format!("{prefix}routers/{id}")
}

/// The longest a member waits between two renewals of its registration lease, whatever its
/// TTL: a member that stops renewing is noticed within a second or so by the liveness
/// watchdog ([`crate::liveness`]), and a member whose lease was revoked learns it as soon.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// A registration kept alive in the background. `lost` turns true when the
/// lease has not been renewed for its TTL minus a safety margin (a quarter
/// of the TTL, at least 500 ms), counted from when the last successful
/// renewal was sent, that is *before* etcd can expire it and let another
/// member take over: the member must then stop acting as one (a shard stops
/// simulating). This holds even when a renewal hangs (a partition that
/// drops packets): the wait for it is cut at that deadline. An etcd outage
/// shorter than that is ridden out (etcd extends leases when it comes
/// back).
pub struct Registration {
    pub lease: LeaseId,
    pub lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    store: Arc<dyn ClusterStore>,
}

impl Registration {
    /// Puts `value` at `key` under a new lease of `ttl` and renews it every
    /// third of the TTL, or every [`RENEW_EVERY`] if that is sooner.
    pub async fn register(
        store: Arc<dyn ClusterStore>,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Registration, CoordinatorError> {
        // The lease lives at least `ttl` from the moment a grant or renewal
        // was *sent* (etcd starts the TTL when it handles the request).
        let granted = tokio::time::Instant::now();
        let lease = store.grant_lease(ttl).await?;
        store.put(&key, value, Some(lease)).await?;
        let (tx, rx) = watch::channel(false);
        let s = store.clone();
        let task = tokio::spawn(async move {
            let period = (ttl / 3).min(RENEW_EVERY);
            let margin = (ttl / 4).max(Duration::from_millis(500)).min(ttl / 2);
            let mut renewed = granted;
            let mut next = granted + period;
            loop {
                // Lost at `deadline` whatever the store does: a renewal
                // that hangs (a partition drops packets silently) must not
                // keep the member acting past its lease.
                let deadline = renewed + ttl - margin;
                tokio::time::sleep_until(next.min(deadline)).await;
                let sent = tokio::time::Instant::now();
                let outcome = if sent >= deadline {
                    Err(None)
                } else {
                    match tokio::time::timeout_at(deadline, s.keep_alive(lease)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Some(e)),
                        Err(_) => Err(None),
                    }
                };
                match outcome {
                    Ok(()) => {
                        renewed = sent;
                        next = sent + period;
                    }
                    Err(Some(e @ crate::StoreError::LeaseNotFound(_))) => {
                        tracing::error!(key = %key, error = %e, "registration lost");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(Some(e)) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(key = %key, error = %e, "lease keep-alive failed; retrying");
                        next = tokio::time::Instant::now() + period.min(Duration::from_millis(250));
                    }
                    Err(_) => {
                        tracing::error!(
                            key = %key,
                            unrenewed_ms = renewed.elapsed().as_millis() as u64,
                            "registration lost: the lease was not renewed in time"
                        );
                        let _ = tx.send(true);
                        return;
                    }
                }
            }
        });
        Ok(Registration {
            lease,
            lost: rx,
            task,
            store,
        })
    }

    /// Revokes the lease: the registration disappears at once.
    pub async fn revoke(self) {
        self.task.abort();
        let _ = self.store.revoke(self.lease).await;
    }
}

/// Keeps `directory` equal to the registrations under `prefix`.
pub async fn watch_directory(
    store: Arc<dyn ClusterStore>,
    prefix: &str,
    directory: Directory,
) -> Result<(), CoordinatorError> {
    let p = prefix.to_string();
    follow(store, prefix.to_string(), move |f| match f {
        Follow::Snapshot(kvs) => {
            let fresh = Directory::default();
            for kv in kvs {
                apply(&p, &fresh, &WatchEvent::Put(kv));
            }
            directory.replace_with(&fresh);
        }
        Follow::Event(ev) => apply(&p, &directory, &ev),
    })
    .await?;
    Ok(())
}

fn member_of(prefix: &str, key: &str) -> Option<Member> {
    let rest = key.strip_prefix(prefix)?;
    if let Some(id) = rest.strip_prefix("shards/") {
        return Some(Member::Shard(ShardId::new(id)));
    }
    rest.strip_prefix("routers/")
        .map(|id| Member::Router(RouterId(id.to_string())))
}

fn apply(prefix: &str, directory: &Directory, ev: &WatchEvent) {
    match ev {
        WatchEvent::Put(kv) => {
            let Some(member) = member_of(prefix, &kv.key) else {
                return;
            };
            let addr = match &member {
                Member::Shard(_) => serde_json::from_slice::<ShardRegistration>(&kv.value)
                    .map(|r| r.addr)
                    .ok(),
                Member::Router(_) => serde_json::from_slice::<RouterRegistration>(&kv.value)
                    .map(|r| r.addr)
                    .ok(),
            };
            match addr {
                // The lease is the registration's incarnation: new at every start.
                Some(a) => directory.register(member, a, kv.lease.unwrap_or(0)),
                None => tracing::warn!(key = %kv.key, "bad registration value"),
            }
        }
        WatchEvent::Delete { key, .. } => {
            if let Some(member) = member_of(prefix, key) {
                directory.remove(&member);
            }
        }
    }
}

/// The live shards and their registrations.
pub async fn live_shards(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Vec<(ShardId, ShardRegistration)>, CoordinatorError> {
    let shard_prefix = format!("{prefix}shards/");
    let mut out = Vec::new();
    for kv in store.list(&shard_prefix).await? {
        let Some(id) = kv.key.strip_prefix(&shard_prefix) else {
            continue;
        };
        match serde_json::from_slice::<ShardRegistration>(&kv.value) {
            Ok(r) => out.push((ShardId::new(id), r)),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad shard registration"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[tokio::test]
    async fn directory_follows_registrations() {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let dir = Directory::default();
        watch_directory(store.clone(), "/t/", dir.clone())
            .await
            .unwrap();
        let reg = ShardRegistration {
            addr: "127.0.0.1:7000".parse().unwrap(),
            node: "n1".into(),
            capacity: 1,
            version: "0".into(),
        };
        let r = Registration::register(
            store.clone(),
            shard_key("/t/", &ShardId::new("s1")),
            serde_json::to_vec(&reg).unwrap(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(dir.get(&Member::Shard(ShardId::new("s1"))), Some(reg.addr));
        assert_eq!(live_shards(&*store, "/t/").await.unwrap().len(), 1);
        r.revoke().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(dir.get(&Member::Shard(ShardId::new("s1"))), None);
    }
}
