//! The routers a gateway may put players on: the registrations under
//! `<prefix>routers/` in the cluster store, kept current by a watch, and
//! which one takes the next player (the fewest of this gateway's players,
//! never a draining one, not the one that just failed if there is another).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_coordinator::membership::RouterRegistration;
use tessera_coordinator::store::{follow, Follow, WatchEvent};
use tessera_coordinator::{ClusterStore, StoreError};

/// One router as the gateway sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownRouter {
    pub id: String,
    /// Where players reach it (QUIC).
    pub addr: SocketAddr,
    pub draining: bool,
    /// This gateway's players on it now.
    pub players: usize,
}

/// The routers, shared by every connection of a gateway.
#[derive(Clone, Default)]
pub struct RouterSet {
    inner: Arc<Mutex<HashMap<String, KnownRouter>>>,
}

/// A player placed on a router; dropping it gives the place back.
pub struct Placement {
    set: RouterSet,
    pub router: KnownRouter,
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Some(r) = self.set.inner.lock().get_mut(&self.router.id) {
            r.players = r.players.saturating_sub(1);
        }
    }
}

impl RouterSet {
    /// Routers that take players now.
    pub fn available(&self) -> usize {
        self.inner.lock().values().filter(|r| !r.draining).count()
    }

    /// All routers known, sorted by id.
    pub fn list(&self) -> Vec<KnownRouter> {
        let mut all: Vec<KnownRouter> = self.inner.lock().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Picks the router for a player (see [`pick`]) and counts the player
    /// on it.
    pub fn place(&self, avoid: Option<&str>) -> Option<Placement> {
        let mut inner = self.inner.lock();
        let id = pick(inner.values(), avoid)?;
        let router = inner.get_mut(&id)?;
        router.players += 1;
        let router = router.clone();
        drop(inner);
        Some(Placement {
            set: self.clone(),
            router,
        })
    }

    fn upsert(&self, id: String, reg: &RouterRegistration) {
        let mut inner = self.inner.lock();
        let players = inner.get(&id).map_or(0, |r| r.players);
        inner.insert(id.clone(), known(id, reg, players));
    }

    fn remove(&self, id: &str) {
        self.inner.lock().remove(id);
    }

    /// Replaces every router with `fresh`, keeping the counts of those that
    /// stay.
    fn replace(&self, fresh: Vec<(String, RouterRegistration)>) {
        let mut inner = self.inner.lock();
        let next = fresh
            .into_iter()
            .map(|(id, reg)| {
                let players = inner.get(&id).map_or(0, |r| r.players);
                (id.clone(), known(id, &reg, players))
            })
            .collect();
        *inner = next;
    }

    /// Keeps this set equal to the router registrations under `prefix` in
    /// `store`, for as long as the process lives. Returns once the first
    /// listing is in.
    pub async fn follow(
        &self,
        store: Arc<dyn ClusterStore>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        let dir = format!("{prefix}routers/");
        let set = self.clone();
        let d = dir.clone();
        follow(store, dir, move |f| match f {
            Follow::Snapshot(kvs) => set.replace(
                kvs.iter()
                    .filter_map(|kv| parse(&d, &kv.key, &kv.value))
                    .collect(),
            ),
            Follow::Event(WatchEvent::Put(kv)) => {
                if let Some((id, reg)) = parse(&d, &kv.key, &kv.value) {
                    tracing::info!(router = %id, addr = %reg.player_quic_addr(), draining = reg.draining, "router registration");
                    set.upsert(id, &reg);
                }
            }
            Follow::Event(WatchEvent::Delete { key, .. }) => {
                if let Some(id) = key.strip_prefix(&d) {
                    tracing::info!(router = %id, "router gone");
                    set.remove(id);
                }
            }
        })
        .await
    }
}

fn known(id: String, reg: &RouterRegistration, players: usize) -> KnownRouter {
    KnownRouter {
        id,
        addr: reg.player_quic_addr(),
        draining: reg.draining,
        players,
    }
}

fn parse(dir: &str, key: &str, value: &[u8]) -> Option<(String, RouterRegistration)> {
    let id = key.strip_prefix(dir)?;
    match serde_json::from_slice::<RouterRegistration>(value) {
        Ok(reg) => Some((id.to_string(), reg)),
        Err(e) => {
            tracing::warn!(key, error = %e, "bad router registration");
            None
        }
    }
}

/// The router for the next player: not draining; among those, not `avoid`
/// (the router a player just lost) unless it is the only one; then the one
/// with the fewest of this gateway's players, ties by id.
pub fn pick<'a>(
    routers: impl IntoIterator<Item = &'a KnownRouter>,
    avoid: Option<&str>,
) -> Option<String> {
    let live: Vec<&KnownRouter> = routers.into_iter().filter(|r| !r.draining).collect();
    let others: Vec<&KnownRouter> = live
        .iter()
        .copied()
        .filter(|r| Some(r.id.as_str()) != avoid)
        .collect();
    let choices = if others.is_empty() { live } else { others };
    choices
        .into_iter()
        .min_by(|a, b| a.players.cmp(&b.players).then_with(|| a.id.cmp(&b.id)))
        .map(|r| r.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(id: &str, players: usize, draining: bool) -> KnownRouter {
        KnownRouter {
            id: id.into(),
            addr: "127.0.0.1:4433".parse().unwrap(),
            draining,
            players,
        }
    }

    #[test]
    fn the_least_loaded_live_router_takes_the_next_player() {
        let rs = [
            router("a", 3, false),
            router("b", 1, false),
            router("c", 0, true),
        ];
        assert_eq!(pick(&rs, None).as_deref(), Some("b"));
        assert_eq!(pick(&rs, Some("b")).as_deref(), Some("a"));
        assert_eq!(pick(&rs[..1], Some("a")).as_deref(), Some("a"));
        assert_eq!(pick(&[router("c", 0, true)], None), None);
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn placements_count_players_until_dropped() {
        let set = RouterSet::default();
        let reg = |port| RouterRegistration {
            addr: "10.0.0.5:7000".parse().unwrap(),
            telnet: "0.0.0.0:4000".parse().unwrap(),
            quic: SocketAddr::from(([0, 0, 0, 0], port)),
            version: "0".into(),
            draining: false,
        };
        set.upsert("a".into(), &reg(4433));
        set.upsert("b".into(), &reg(4434));
        let p1 = set.place(None).unwrap();
        let p2 = set.place(None).unwrap();
        assert_ne!(p1.router.id, p2.router.id, "spread");
        assert_eq!(p1.router.addr.ip().to_string(), "10.0.0.5");
        drop(p1);
        let p3 = set.place(None).unwrap();
        assert_ne!(p3.router.id, p2.router.id);
        // A draining router takes nobody; an update keeps the count.
        let mut d = reg(4434);
        d.draining = true;
        set.upsert("b".into(), &d);
        assert_eq!(set.available(), 1);
        assert_eq!(set.list()[1].players, 1);
        assert_eq!(set.place(Some("a")).unwrap().router.id, "a");
    }
}
